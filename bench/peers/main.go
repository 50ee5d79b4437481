// Command peers compares Kiln with ONNX Runtime, a peer CPU inference engine,
// on the same networks with the same weights: first for agreement, then for
// speed. run.sh (next to this file) is the one command that installs ONNX
// Runtime from npm, builds kiln and runs it:
//
//	bash bench/peers/run.sh [flags]
//
// For each network it:
//
//  1. exports the network as written with `kiln export --onnx` (batch 1,
//     3x299x299, procedural weights unless -weights-dir is set), runs it in
//     ONNX Runtime (ort_run.js) and in Kiln, both the reference interpreter
//     (`kiln run`) and the compiled code (`kiln run --backend cpu`), on one
//     deterministic input, and checks max|a-b| <= tol x max|interp| for
//     ORT vs interpreter, ORT vs compiled and compiled vs interpreter;
//  2. for every batch size, builds the standalone executable (`kiln build`)
//     and exports the model at that batch, then for every thread count times
//     both engines alternately in this one process: Kiln runs the artifact
//     the standalone executable carries in-process (the runtime package, as
//     the executable's --bench does), ORT runs in a persistent
//     `node ort_bench.js --serve` child with its intra-op thread count set.
//     Each round runs one untimed and -iters timed inferences of Kiln, then
//     the same of ORT (A B A B ...), so that drifts in the machine's speed
//     hit both; both also agree on the bench input (checked). Each round
//     starts after a pause (-settle, 100 ms): ORT's intra-op pool spins
//     for tens of milliseconds after a run (measured: about 22 ms of CPU
//     over 40 ms after a batch-8 run at 2 threads), and without the pause
//     that spinning thread competed with Kiln's next round for one of two
//     cores, making Kiln's two-thread figures slower than its one-thread
//     ones.
//
// It prints a table of median latencies and the ratio ORT/Kiln (above 1:
// Kiln is faster) and exits with status 1 if any check failed. Medians and
// p10/p90 come from rt.SummarizeLatency (linear interpolation between the
// closest ranks), the definition kiln bench and the standalone --bench use.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
)

// config holds the command-line settings.
type config struct {
	kiln, node, peers, work string
	nets                    []string
	batches, threads        []int
	size                    int
	rounds, iters           int
	settle                  time.Duration
	tol                     float64
	check, bench            bool
	weightsDir              string
	copyWeights             bool
	corpus                  bool
	imported                map[string]importedNet // nets.go
}

func main() {
	var c config
	var nets, batches, threads string
	flag.StringVar(&c.kiln, "kiln", "bin/kiln", "the kiln `binary` (run.sh builds it)")
	flag.StringVar(&c.node, "node", "node", "Node.js `binary`")
	flag.StringVar(&c.peers, "peers", "bench/peers", "`dir`ectory of ort_run.js, ort_bench.js and node_modules")
	flag.StringVar(&c.work, "work", "bench/peers/work", "`dir`ectory for models, executables and tensors")
	flag.StringVar(&nets, "nets", "inception_v4,inception_resnet_v2,inception_resnet_v1", "comma-separated `networks`")
	flag.StringVar(&batches, "batches", "1,8", "comma-separated batch `sizes` to time")
	flag.StringVar(&threads, "threads", "1,2", "comma-separated thread `counts` to time")
	flag.IntVar(&c.size, "size", 299, "input height and width `S` (3xSxS)")
	flag.IntVar(&c.rounds, "rounds", 5, "alternation `rounds` per configuration")
	flag.IntVar(&c.iters, "iters", 3, "timed inferences per engine and round (after one untimed)")
	flag.DurationVar(&c.settle, "settle", 100*time.Millisecond, "pause before each engine's round, so the other engine's idle threads (ORT's spinning pool) have stopped")
	flag.Float64Var(&c.tol, "tol", 1e-4, "agreement `tolerance`, relative to max|reference|")
	flag.BoolVar(&c.check, "check", true, "run the agreement check at batch 1")
	flag.BoolVar(&c.bench, "bench", true, "run the timings")
	flag.BoolVar(&c.copyWeights, "copy-weights", true, "load Kiln's weights as the standalone executable does by default (copied into huge-page memory); false keeps them mapped from the executable file (KILN_WEIGHTS=mmap)")
	flag.BoolVar(&c.corpus, "corpus", false, "run every tests/corpus/*.kiln network (after -nets if given; use with -size 32)")
	flag.StringVar(&c.weightsDir, "weights-dir", "", "`dir`ectory with NET.safetensors checkpoints (default: procedural weights)")
	flag.Parse()
	var err error
	c.nets = strings.Split(nets, ",")
	if c.corpus {
		if !flagSet("nets") {
			c.nets = nil // -corpus alone: the corpus only
		}
		more, err := corpusNets(".")
		if err != nil {
			fatal(err)
		}
		c.nets = append(c.nets, more...)
	}
	if c.batches, err = intList(batches); err == nil {
		c.threads, err = intList(threads)
	}
	if err != nil || flag.NArg() > 0 || c.rounds <= 0 || c.iters <= 0 || c.size <= 0 {
		fmt.Fprintln(os.Stderr, "peers: bad arguments (see -h)")
		os.Exit(2)
	}
	if err := os.MkdirAll(c.work, 0o755); err != nil {
		fatal(err)
	}
	if err := c.importONNX(); err != nil {
		fatal(err)
	}
	failed := false
	var checks []checkResult
	var rows []benchRow
	fmt.Printf("machine: %s, %d CPUs; kiln %s; %s\n", cpuModel(), runtime.NumCPU(), c.kiln, ortVersion(&c))
	for _, net := range c.nets {
		if c.check {
			res, err := c.checkNet(net)
			if err != nil {
				fatal(err)
			}
			checks = append(checks, res...)
		}
		if c.bench {
			r, err := c.benchNet(net)
			if err != nil {
				fatal(err)
			}
			rows = append(rows, r...)
		}
	}
	if len(checks) > 0 {
		fmt.Printf("\nAgreement at batch 1, 3x%dx%d (max|a-b| / max|reference| <= %g):\n\n", c.size, c.size, c.tol)
		fmt.Println("| network | a vs b | max abs diff | max abs ref | ratio | ok |")
		fmt.Println("|---|---|---|---|---|---|")
		for _, r := range checks {
			fmt.Printf("| %s | %s | %.3g | %.3g | %.2e | %s |\n", label(r.net), r.what, r.diff, r.ref, r.diff/r.ref, okString(r.ok))
			failed = failed || !r.ok
		}
	}
	if len(rows) > 0 {
		fmt.Printf("\nLatency per batch, median over %d rounds x %d inferences each, alternating Kiln and ORT (ratio > 1: Kiln faster):\n\n", c.rounds, c.iters)
		fmt.Println("| network | batch | threads | Kiln ms (p10-p90) | ORT ms (p10-p90) | ORT / Kiln | Kiln GFLOP/s | ORT GFLOP/s | outputs agree |")
		fmt.Println("|---|---|---|---|---|---|---|---|---|")
		for _, r := range rows {
			k, o := r.kiln, r.ort
			fmt.Printf("| %s | %d | %d | %s (%s-%s) | %s (%s-%s) | %.2f | %.0f | %.0f | %s (%.1e) |\n",
				label(r.net), r.batch, r.threads, ms(k.Median), ms(k.P10), ms(k.P90), ms(o.Median), ms(o.P10), ms(o.P90), o.Median/k.Median,
				2*float64(r.macs)/k.Median/1e6, 2*float64(r.macs)/o.Median/1e6, okString(r.agree), r.diff)
			failed = failed || !r.agree
		}
	}
	if failed {
		fmt.Println("\nFAILED: some outputs disagree beyond the tolerance")
		os.Exit(1)
	}
}

// ms formats milliseconds with three significant digits or one decimal.
func ms(v float64) string {
	if v < 10 {
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func okString(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "peers: %v\n", err)
	os.Exit(1)
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad number %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// run runs a command, echoing it, and returns its standard output; its
// standard error passes through.
func run(name string, args ...string) (string, error) {
	fmt.Printf("$ %s %s\n", name, strings.Join(args, " "))
	start := time.Now()
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if s := strings.TrimSpace(string(out)); s != "" {
		fmt.Printf("  %s\n", strings.ReplaceAll(s, "\n", "\n  "))
	}
	fmt.Printf("  (%.1f s)\n", time.Since(start).Seconds())
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return string(out), nil
}

func (c *config) weightArgs(net string) []string {
	if im, ok := c.imported[net]; ok {
		return []string{"--weights", im.weights}
	}
	if c.weightsDir == "" {
		return nil
	}
	return []string{"--weights", filepath.Join(c.weightsDir, net+".safetensors")}
}

func (c *config) inputShape() string { return fmt.Sprintf("3x%dx%d", c.size, c.size) }

// export writes NET at batch b to the work directory and returns the path.
func (c *config) export(net string, b int) (string, error) {
	if isONNX(net) {
		return net, nil // ORT runs the ONNX file as given
	}
	p := filepath.Join(c.work, fmt.Sprintf("%s-b%d.onnx", label(net), b))
	args := append([]string{"export", "--onnx", net, "--batch", strconv.Itoa(b), "--input", c.inputShape(), "-o", p}, c.weightArgs(net)...)
	_, err := run(c.kiln, args...)
	return p, err
}

// checkResult is one agreement check.
type checkResult struct {
	net, what string
	diff, ref float64
	ok        bool
}

// compare checks a against the reference ref within c.tol x max|ref|.
func (c *config) compare(net, what, a, ref string) (checkResult, error) {
	ta, err := tensor.ReadNPYFile(a)
	if err != nil {
		return checkResult{}, err
	}
	tr, err := tensor.ReadNPYFile(ref)
	if err != nil {
		return checkResult{}, err
	}
	d, err := tensor.MaxAbsDiff(ta, tr)
	if err != nil {
		return checkResult{}, fmt.Errorf("%s %s: %w", net, what, err)
	}
	m := tensor.MaxAbs(tr)
	r := checkResult{net: net, what: what, diff: d, ref: m, ok: d <= c.tol*m && m > 0}
	fmt.Printf("  %s %s: max|diff| %.3g, max|ref| %.3g, ratio %.2e: %s\n", net, what, d, m, d/m, okString(r.ok))
	return r, nil
}

// checkNet runs the batch-1 agreement checks of one network.
func (c *config) checkNet(net string) ([]checkResult, error) {
	fmt.Printf("\n== %s: agreement at batch 1\n", net)
	model, err := c.export(net, 1)
	if err != nil {
		return nil, err
	}
	x := tensor.New(1, 3, c.size, c.size)
	for i := range x.Data {
		x.Data[i] = float32(math.Sin(0.37*float64(i)) + 0.1*math.Cos(1.3*float64(i)))
	}
	xp := filepath.Join(c.work, label(net)+"-x.npy")
	if err := tensor.WriteNPYFile(xp, x); err != nil {
		return nil, err
	}
	interp, cpu, ort := filepath.Join(c.work, label(net)+"-interp.npy"), filepath.Join(c.work, label(net)+"-cpu.npy"), filepath.Join(c.work, label(net)+"-ort.npy")
	w := c.weightArgs(net)
	if _, err := run(c.kiln, append([]string{"run", c.source(net), "--input", xp, "--output", interp}, w...)...); err != nil {
		return nil, err
	}
	if _, err := run(c.kiln, append([]string{"run", c.source(net), "--backend", "cpu", "--input", xp, "--output", cpu}, w...)...); err != nil {
		return nil, err
	}
	if _, err := run(c.node, filepath.Join(c.peers, "ort_run.js"), model, xp, ort); err != nil {
		return nil, err
	}
	var out []checkResult
	for _, p := range [][3]string{{"ORT vs interpreter", ort, interp}, {"ORT vs compiled (cpu)", ort, cpu}, {"compiled (cpu) vs interpreter", cpu, interp}} {
		r, err := c.compare(net, p[0], p[1], p[2])
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// benchRow is one timed configuration.
type benchRow struct {
	net            string
	batch, threads int
	macs           int64
	kiln, ort      rt.Latency
	agree          bool
	diff           float64 // max|kiln-ort| / max|kiln| on the bench input
}

// benchNet times one network at every batch size and thread count.
func (c *config) benchNet(net string) ([]benchRow, error) {
	var rows []benchRow
	for _, b := range c.batches {
		fmt.Printf("\n== %s: timing at batch %d\n", net, b)
		model := filepath.Join(c.work, fmt.Sprintf("%s-b%d.onnx", label(net), b))
		if _, err := os.Stat(model); err != nil || !c.check || b != 1 || isONNX(net) {
			if model, err = c.export(net, b); err != nil {
				return nil, err
			}
		}
		exe := filepath.Join(c.work, fmt.Sprintf("%s-b%d.kiln", label(net), b))
		args := append([]string{"build", c.source(net), "--batch", strconv.Itoa(b), "--input", c.inputShape(), "-o", exe}, c.weightArgs(net)...)
		if _, err := run(c.kiln, args...); err != nil {
			return nil, err
		}
		for _, t := range c.threads {
			row, err := c.benchOne(net, b, t, exe, model)
			if err != nil {
				return nil, err
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// benchOne times Kiln (in-process, the artifact of exe) and ORT (a
// persistent ort_bench.js child) alternately at one thread count.
func (c *config) benchOne(net string, batch, threads int, exe, model string) (benchRow, error) {
	row := benchRow{net: net, batch: batch, threads: threads}
	a, found, err := rt.FindPayload(exe)
	if err != nil {
		return row, err
	}
	if !found {
		return row, fmt.Errorf("%s carries no kiln network", exe)
	}
	defer a.Close()
	m, err := rt.Open(*a, rt.Options{Threads: threads, CopyWeights: c.copyWeights})
	if err != nil {
		return row, err
	}
	defer m.Close()
	man := m.Manifest()
	for _, k := range man.Kernels {
		row.macs += k.MACs
	}
	in := make([]float32, numel(man.Input.Shape))
	for i := range in {
		in[i] = float32(math.Sin(float64(i))) // the input of ort_bench.js and of --bench
	}
	out := make([]float32, numel(man.Output.Shape))

	ort, err := startORT(c, model, threads, man.Input.Shape)
	if err != nil {
		return row, err
	}
	defer ort.close()

	// Agreement on the bench input at this batch.
	if err := m.Run(in, out); err != nil {
		return row, err
	}
	dump := filepath.Join(c.work, fmt.Sprintf("%s-b%d-bench-ort.npy", label(net), batch))
	if err := ort.call("dump "+dump, nil); err != nil {
		return row, err
	}
	ty, err := tensor.ReadNPYFile(dump)
	if err != nil {
		return row, err
	}
	d, err := tensor.MaxAbsDiff(ty, &tensor.Tensor{Shape: man.Output.Shape, Data: out})
	if err != nil {
		return row, err
	}
	ref := tensor.MaxAbs(&tensor.Tensor{Shape: man.Output.Shape, Data: out})
	row.diff, row.agree = d/ref, d <= c.tol*ref && ref > 0

	var kt, ot []float64
	for r := 0; r < c.rounds; r++ {
		time.Sleep(c.settle)
		for i := 0; i <= c.iters; i++ {
			t0 := time.Now()
			if err := m.Run(in, out); err != nil {
				return row, err
			}
			if i > 0 {
				kt = append(kt, float64(time.Since(t0).Nanoseconds())/1e6)
			}
		}
		var resp struct {
			Times []float64 `json:"times_ms"`
		}
		time.Sleep(c.settle)
		if err := ort.call(fmt.Sprintf("run %d", c.iters+1), &resp); err != nil {
			return row, err
		}
		if len(resp.Times) != c.iters+1 {
			return row, fmt.Errorf("ort_bench.js returned %d timings, want %d", len(resp.Times), c.iters+1)
		}
		ot = append(ot, resp.Times[1:]...)
		k, o := rt.SummarizeLatency(kt[len(kt)-c.iters:]), rt.SummarizeLatency(resp.Times[1:])
		fmt.Printf("  %s batch %d threads %d round %d: Kiln %s ms, ORT %s ms\n", net, batch, threads, r+1, ms(k.Median), ms(o.Median))
	}
	row.kiln, row.ort = rt.SummarizeLatency(kt), rt.SummarizeLatency(ot)
	fmt.Printf("  => Kiln (%s) median %s ms, ORT median %s ms, ORT/Kiln %.2f; outputs agree: %s (%.1e)\n",
		m.ISA(), ms(row.kiln.Median), ms(row.ort.Median), row.ort.Median/row.kiln.Median, okString(row.agree), row.diff)
	return row, nil
}

func numel(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// ortServer is a running `node ort_bench.js --serve`.
type ortServer struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startORT(c *config, model string, threads int, shape []int) (*ortServer, error) {
	// --shape: Kiln's input shape, for ONNX files with a symbolic batch.
	cmd := exec.Command(c.node, filepath.Join(c.peers, "ort_bench.js"), model, "--threads", strconv.Itoa(threads), "--warmup", "1",
		"--shape", tensor.ShapeString(shape), "--serve")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start ort_bench.js: %w", err)
	}
	s := &ortServer{cmd: cmd, in: in, out: bufio.NewReader(out)}
	var ready struct {
		Ready bool   `json:"ready"`
		ORT   string `json:"ort"`
	}
	if err := s.read(&ready); err != nil || !ready.Ready {
		s.close()
		return nil, fmt.Errorf("ort_bench.js did not start: %v", err)
	}
	return s, nil
}

// call sends one command line and decodes the JSON answer into v (if non-nil).
func (s *ortServer) call(line string, v any) error {
	if _, err := io.WriteString(s.in, line+"\n"); err != nil {
		return fmt.Errorf("ort_bench.js: %w", err)
	}
	var raw json.RawMessage
	if err := s.read(&raw); err != nil {
		return err
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Error != "" {
		return fmt.Errorf("ort_bench.js: %s", e.Error)
	}
	if v != nil {
		return json.Unmarshal(raw, v)
	}
	return nil
}

func (s *ortServer) read(v any) error {
	line, err := s.out.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("ort_bench.js exited: %w", err)
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("ort_bench.js answered %q: %w", line, err)
	}
	return nil
}

func (s *ortServer) close() {
	io.WriteString(s.in, "quit\n")
	s.in.Close()
	s.cmd.Wait()
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// ortVersion reads the installed onnxruntime-node version.
func ortVersion(c *config) string {
	b, err := os.ReadFile(filepath.Join(c.peers, "node_modules", "onnxruntime-node", "package.json"))
	if err != nil {
		return "onnxruntime-node not installed"
	}
	var p struct {
		Version string `json:"version"`
	}
	json.Unmarshal(b, &p)
	return "onnxruntime-node " + p.Version
}
