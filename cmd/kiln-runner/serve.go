package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	rt "github.com/kiln-dev/kiln/runtime"
	"github.com/kiln-dev/kiln/serve"
)

// serveFlags are the flags of OUT --serve ADDR (package serve).
type serveFlags struct {
	addr        string
	maxDelay    time.Duration
	noBatching  bool
	maxBody     int64
	maxInFlight int
	queueWait   time.Duration
	timeout     time.Duration
	drain       time.Duration
}

func registerServeFlags(fs *flag.FlagSet) *serveFlags {
	var f serveFlags
	fs.StringVar(&f.addr, "serve", "", "serve the network over HTTP on `ADDR` (e.g. 127.0.0.1:8080): POST /v1/predict, GET /healthz, /v1/info, /metrics")
	fs.DurationVar(&f.maxDelay, "max-delay", 2*time.Millisecond, "with --serve: the longest a request waits for others to join its batch (0: batch only the requests already queued)")
	fs.BoolVar(&f.noBatching, "no-batching", false, "with --serve: run every request on its own (no dynamic batching)")
	fs.Int64Var(&f.maxBody, "max-body-bytes", 64<<20, "with --serve: refuse request bodies over `BYTES` (413)")
	fs.IntVar(&f.maxInFlight, "max-inflight", 64, "with --serve: requests decoded, queued or run at once; more wait --queue-wait, then get 429")
	fs.DurationVar(&f.queueWait, "queue-wait", time.Second, "with --serve: how long a request waits for a slot before 429")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "with --serve: limit to read a request and to write its response")
	fs.DurationVar(&f.drain, "drain", 30*time.Second, "with --serve: on SIGINT/SIGTERM, how long to let requests in flight finish")
	return &f
}

// serveModel serves mm on f.addr until SIGINT or SIGTERM, then drains the
// requests in flight and returns.
func serveModel(stdout, stderr io.Writer, mm *rt.MultiModel, man *rt.Manifest, f *serveFlags) error {
	if f.maxDelay < 0 || f.maxBody <= 0 || f.maxInFlight <= 0 || f.timeout <= 0 {
		return fmt.Errorf("--max-delay must be >= 0, --max-body-bytes, --max-inflight and --timeout positive")
	}
	delay := max(f.maxDelay, time.Nanosecond) // 0: batch only what is already queued
	s, err := serve.New(serve.Config{Model: mm, Manifest: man, MaxDelay: delay, NoBatching: f.noBatching,
		MaxBodyBytes: f.maxBody, MaxInFlight: f.maxInFlight, QueueWait: f.queueWait, Workers: mm.Largest().MaxSessions()})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	mode := fmt.Sprintf("dynamic batching up to %d samples, max delay %s", mm.MaxBatch(), f.maxDelay)
	if f.noBatching {
		mode = "no batching"
	}
	err = serve.ListenAndServe(ctx, s, f.addr, f.timeout, f.drain, func(a net.Addr) {
		fmt.Fprintf(stdout, "serving %s on http://%s (batches %s; %s)\n", man.Network, a, joinInts(mm.Batches()), mode)
	})
	if err == nil {
		fmt.Fprintln(stderr, "shut down: requests in flight answered")
	}
	return err
}
