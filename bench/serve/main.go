// Command serve is the load test of OUT --serve (package serve): it posts
// one-sample .npy requests from C concurrent clients on loopback, bounded in
// count (--requests) and time (--duration), and reports throughput and the
// p50/p99 latency (rt.Percentile), with and without dynamic batching:
//
//	go run ./bench/serve --exe out/tiny --requests 2000 --concurrency 16
//	go run ./bench/serve --url http://127.0.0.1:8080 --requests 500
//
// With --exe it starts the executable twice on a free loopback port
// (--serve, then --serve --no-batching), waits for /healthz, runs the load
// and stops it with SIGTERM. The mean batch is read from the server's
// /metrics (kiln_batch_samples_sum / _count).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
)

func main() {
	exe := flag.String("exe", "", "built executable `OUT` to serve and load, with and without dynamic batching")
	url := flag.String("url", "", "load an already running server at `URL` instead")
	requests := flag.Int("requests", 2000, "requests per run (at most 100000)")
	conc := flag.Int("concurrency", 16, "concurrent clients (at most 1024)")
	dur := flag.Duration("duration", 60*time.Second, "stop a run after this long even if requests remain")
	maxDelay := flag.String("max-delay", "2ms", "with --exe: the server's --max-delay")
	threads := flag.Int("threads", 0, "with --exe: the server's --threads (0: all cores)")
	flag.Parse()
	if (*exe == "") == (*url == "") || *requests <= 0 || *requests > 100000 || *conc <= 0 || *conc > 1024 || *dur <= 0 {
		fmt.Fprintln(os.Stderr, "usage: serve (--exe OUT | --url URL) [--requests N<=100000] [--concurrency C<=1024] [--duration D]")
		os.Exit(2)
	}
	if *url != "" {
		r, err := load(*url, *requests, *conc, *dur)
		if err != nil {
			fmt.Fprintln(os.Stderr, "serve:", err)
			os.Exit(1)
		}
		fmt.Println(r)
		return
	}
	fmt.Printf("%s: %d requests of 1 sample, %d concurrent clients, loopback\n", *exe, *requests, *conc)
	for _, extra := range [][]string{{"--max-delay", *maxDelay}, {"--no-batching"}} {
		r, err := runServer(*exe, extra, *threads, func(u string) (string, error) { return load(u, *requests, *conc, *dur) })
		if err != nil {
			fmt.Fprintln(os.Stderr, "serve:", err)
			os.Exit(1)
		}
		fmt.Printf("  %-22s %s\n", strings.Join(extra, " ")+":", r)
	}
}

// runServer starts exe --serve on a free loopback port with extra flags,
// waits for /healthz, calls f with its URL and stops it with SIGTERM.
func runServer(exe string, extra []string, threads int, f func(url string) (string, error)) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	ln.Close()
	args := append([]string{"--serve", addr, "--threads", strconv.Itoa(threads), "--max-inflight", "1024"}, extra...)
	cmd := exec.Command(exe, args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Start(); err != nil {
		return "", err
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	u := "http://" + addr
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(u + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s --serve did not come up: %s", exe, stderr.String())
		}
	}
	return f(u)
}

// load posts up to n one-sample requests from conc clients for at most d
// and summarizes them.
func load(u string, n, conc int, d time.Duration) (string, error) {
	var info struct {
		Input []int `json:"input"`
	}
	resp, err := http.Get(u + "/v1/info")
	if err != nil {
		return "", err
	}
	err = json.NewDecoder(resp.Body).Decode(&info)
	resp.Body.Close()
	if err != nil || len(info.Input) == 0 {
		return "", fmt.Errorf("GET /v1/info: %v", err)
	}
	x := tensor.New(info.Input...)
	for i := range x.Data {
		x.Data[i] = float32(math.Sin(float64(i)))
	}
	var body bytes.Buffer
	if err := tensor.WriteNPY(&body, x); err != nil {
		return "", err
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc}, Timeout: 30 * time.Second}
	var next, failed atomic.Int64
	var firstErr atomic.Value
	lat := make([][]float64, conc)
	t0 := time.Now()
	deadline := t0.Add(d)
	var wg sync.WaitGroup
	for c := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) && time.Now().Before(deadline) {
				s := time.Now()
				resp, err := client.Post(u+"/v1/predict", "application/x-npy", bytes.NewReader(body.Bytes()))
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				lat[c] = append(lat[c], float64(time.Since(s).Nanoseconds())/1e6)
			}
		}()
	}
	wg.Wait()
	wall := time.Since(t0).Seconds()
	var all []float64
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return "", fmt.Errorf("no request succeeded: %v", firstErr.Load())
	}
	sort.Float64s(all)
	mean, err := meanBatch(u)
	if err != nil {
		return "", err
	}
	s := fmt.Sprintf("%d ok in %.2f s: %.0f req/s, p50 %.2f ms, p99 %.2f ms, mean batch %.2f", len(all), wall, float64(len(all))/wall,
		rt.Percentile(all, 50), rt.Percentile(all, 99), mean)
	if f := failed.Load(); f > 0 {
		s += fmt.Sprintf(", %d failed (first: %v)", f, firstErr.Load())
	}
	return s, nil
}

// meanBatch reads kiln_batch_samples_sum / _count from /metrics.
func meanBatch(u string) (float64, error) {
	resp, err := http.Get(u + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum, count float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "kiln_batch_samples_sum":
			sum = v
		case "kiln_batch_samples_count":
			count = v
		}
	}
	if count == 0 {
		return 0, errors.New("/metrics: no kiln_batch_samples")
	}
	return sum / count, nil
}
