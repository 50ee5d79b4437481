package tests

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestMultiBatchBinary builds tiny for batches 1 and 3 into one executable
// (issue 11 item 6) and checks: 1 and 3 samples run on their own programs,
// 2 on batch 3 padded with zeros, 5 in a chunk of 3 and a padded chunk of 2,
// each against the interpreter at 1e-5; --info lists both sizes; --bench
// --batch selects one; the weights are stored once; kiln check takes the
// list and kiln plan says it takes one size; and damage to each part of the
// format-3 payload (the second program's kernels, the index, the weights, a
// truncation) is refused naming the part.
func TestMultiBatchBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kiln and a network")
	}
	bin, work := t.TempDir(), t.TempDir()
	kiln := buildKiln(t, bin)
	exe := filepath.Join(bin, "tiny13")
	single := filepath.Join(bin, "tiny3")
	for _, c := range [][]string{{"--batch", "1,3", "-o", exe}, {"--batch", "3", "-o", single}} {
		if out, err := exec.Command(kiln, append([]string{"build", "tiny"}, c...)...).CombinedOutput(); err != nil {
			t.Fatalf("kiln build %v: %v\n%s", c, err, out)
		}
	}
	for _, n := range []int{1, 2, 3, 5} {
		x, err := tensor.Generate("input", []int{n, 3, 32, 32})
		if err != nil {
			t.Fatal(err)
		}
		in := filepath.Join(work, fmt.Sprintf("x%d.npy", n))
		if err := tensor.WriteNPYFile(in, x); err != nil {
			t.Fatal(err)
		}
		ref := filepath.Join(work, fmt.Sprintf("ref%d.npy", n))
		if out, err := exec.Command(kiln, "run", "tiny", "--input", in, "--output", ref).CombinedOutput(); err != nil {
			t.Fatalf("kiln run: %v\n%s", err, out)
		}
		y := fmt.Sprintf("y%d.npy", n)
		r := runIn(t, work, exe, "--input", filepath.Base(in), "--output", y)
		if r.code != 0 {
			t.Fatalf("batch %d: exit %d\n%s%s", n, r.code, r.stdout, r.stderr)
		}
		got, err := tensor.ReadNPYFile(filepath.Join(work, y))
		if err != nil {
			t.Fatal(err)
		}
		want, err := tensor.ReadNPYFile(ref)
		if err != nil {
			t.Fatal(err)
		}
		if got.Shape[0] != n {
			t.Fatalf("batch %d: output shape %v", n, got.Shape)
		}
		compare(t, fmt.Sprintf("tiny --batch 1,3 on %d samples", n), got, want, 1e-5)
	}

	testServe(t, exe, work)

	r := runIn(t, work, exe, "--info")
	if r.code != 0 || !strings.Contains(r.stdout, "batch:        1,3") {
		t.Errorf("--info: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runIn(t, work, exe, "--bench", "--iters", "2", "--batch", "1")
	if r.code != 0 || !strings.Contains(r.stdout, "tiny batch 1,") {
		t.Errorf("--bench --batch 1: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runIn(t, work, exe, "--bench", "--iters", "2", "--batch", "2")
	if r.code != 2 || !strings.Contains(r.stderr, "one of the compiled batch sizes (1,3)") {
		t.Errorf("--bench --batch 2: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	good, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	runner, err := os.Stat(filepath.Join(bin, "kiln-runner"))
	if err != nil {
		t.Fatal(err)
	}
	n := len(good)
	tr := good[n-80:] // magic, weights and index offset/size, index digest, self-check
	if string(tr[:8]) != "KILNPAY3" {
		t.Fatalf("trailer magic %q", tr[:8])
	}
	field := func(i int) int { return int(binary.LittleEndian.Uint64(tr[8+8*i:])) }
	wOff, wLen, iOff, iLen := field(0), field(1), field(2), field(3)
	var idx struct {
		Programs []struct {
			Offset, Size int
		}
	}
	if err := json.Unmarshal(good[iOff:iOff+iLen], &idx); err != nil || len(idx.Programs) != 2 {
		t.Fatalf("index: %v, %d programs", err, len(idx.Programs))
	}
	so2 := idx.Programs[1]
	// The weights are stored once: the file is the runner, the two shared
	// objects, one weights blob, the index and the trailer, plus alignment.
	if pad := n - int(runner.Size()) - idx.Programs[0].Size - so2.Size - wLen - iLen - 80; pad < 0 || pad >= 4*4096 {
		t.Errorf("%d bytes unaccounted for (runner %d, programs %d+%d, weights %d, index %d)", pad, runner.Size(), idx.Programs[0].Size, so2.Size, wLen, iLen)
	}
	// A single-batch build keeps payload format 2.
	one, err := os.ReadFile(single)
	if err != nil {
		t.Fatal(err)
	}
	if m := one[len(one)-96:][:8]; string(m) != "KILNPAY2" {
		t.Errorf("--batch 3: trailer magic %q, want KILNPAY2", m)
	}

	// kiln check takes the list, kiln plan one size.
	if out, err := exec.Command(kiln, "check", "tiny", "--batch", "1,3").CombinedOutput(); err != nil || strings.Count(string(out), "ok tiny") != 2 {
		t.Errorf("kiln check --batch 1,3: %v\n%s", err, out)
	}
	out, err := exec.Command(kiln, "plan", "tiny", "--batch", "1,3").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "this command takes one batch size") {
		t.Errorf("kiln plan --batch 1,3: %v\n%s", err, out)
	}

	cases := []struct {
		name string
		edit func([]byte) []byte
		want string
	}{
		{"second program's kernels", func(b []byte) []byte { b[so2.Offset+so2.Size/2] ^= 0xff; return b }, "program 2 of 2 (batch 3): open artifact \"tiny\": the shared object (kernels) is damaged"},
		{"index", func(b []byte) []byte { b[iOff+iLen/2] ^= 0x01; return b }, "the index (manifests) is damaged"},
		{"weights", func(b []byte) []byte { b[wOff+wLen/2] ^= 0x01; return b }, "the weights are damaged"},
		{"trailer magic", func(b []byte) []byte { b[n-80] = 'k'; return b }, "the trailer's magic"},
		{"truncated", func(b []byte) []byte { return b[:wOff+4096] }, "truncated, or run through strip"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "tiny13")
			if err := os.WriteFile(p, c.edit(bytes.Clone(good)), 0o755); err != nil {
				t.Fatal(err)
			}
			r := runIn(t, work, p, "--bench", "--iters", "1")
			if r.code != 1 || !strings.Contains(r.stderr, c.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit 1 and %q", r.code, r.stderr, c.want)
			}
		})
	}
}

// testServe runs exe --serve on a free loopback port: POST /v1/predict of
// the 2-sample input written by TestMultiBatchBinary (padded to batch 3)
// matches the interpreter's output, /metrics counts it, and SIGTERM shuts
// the server down with exit status 0.
func testServe(t *testing.T, exe, work string) {
	cmd := exec.Command(exe, "--serve", "127.0.0.1:0", "--threads", "1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	_, rest, ok := strings.Cut(line, "http://")
	if err != nil || !ok {
		t.Fatalf("--serve: %q, %v\n%s", line, err, stderr.String())
	}
	url := "http://" + strings.Fields(rest)[0]
	body, err := os.ReadFile(filepath.Join(work, "x2.npy"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(url+"/v1/predict", "application/x-npy", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Shape   []int
		Outputs [][]float32
	}
	err = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("POST /v1/predict: %d, %v", resp.StatusCode, err)
	}
	want, err := tensor.ReadNPYFile(filepath.Join(work, "ref2.npy"))
	if err != nil {
		t.Fatal(err)
	}
	flat := &tensor.Tensor{Shape: got.Shape}
	for _, r := range got.Outputs {
		flat.Data = append(flat.Data, r...)
	}
	compare(t, "--serve on 2 samples", flat, want, 1e-5)
	resp, err = http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(m), `kiln_requests_total{code="200"} 1`) {
		t.Errorf("/metrics:\n%s", m)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("--serve after SIGTERM: %v\n%s", err, stderr.String())
	}
}
