package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"time"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
)

func init() {
	register(&command{name: "demo", args: "[FILE]", summary: "the main job end to end: compile a network (default inception_v4) into a standalone binary, run it on a built-in sample, report latency, % of the measured FMA peak and agreement with the interpreter",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			threads := fs.Int("threads", 2, "worker `threads` for the compiled binary")
			outDir := fs.String("out", "out", "`directory` for the built binary, the sample and the outputs")
			iters := fs.Int("iters", 20, "timed inferences of the binary's --bench")
			return func(args []string) error {
				file := "inception_v4"
				if len(args) > 1 {
					return usagef("want at most one FILE")
				}
				if len(args) == 1 {
					file = args[0]
				}
				if *threads < 1 || *iters < 1 {
					return usagef("--threads and --iters must be positive")
				}
				return demo(e, file, *outDir, *threads, *iters)
			}
		}})
}

var benchLine = regexp.MustCompile(`median ([0-9.]+) ms .* ([0-9.]+) GFLOP/s`)

func demo(e *env, file, outDir string, threads, iters int) error {
	g, err := loadNet(file, dsl.Options{Batch: 1})
	if err != nil {
		return err
	}
	_, learnable := countParams(g)
	macs := totalMACs(g)
	in := g.Inputs()[0]
	fmt.Fprintf(e.stdout, "network     %s: %s parameters, %s MACs, input %s, procedural weights\n", g.Name, commas(learnable), commas(macs), in.Type)
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	params, err := loadWeights(g, "")
	if err != nil {
		return err
	}
	bt, err := lookupBuildTarget(hostTarget())
	if err != nil {
		return err
	}
	// The runner the binary is built on (bin/kiln-runner, make build): fail
	// now rather than after a minute of compiling.
	if _, err := runnerFor(bt); err != nil {
		return err
	}
	// 1. Compile into a standalone executable (kiln build).
	t0 := time.Now()
	var pf pipeFlags
	c, err := compileNet(g, params, bt, &pf, nil)
	if err != nil {
		return err
	}
	bin, err := filepath.Abs(filepath.Join(outDir, g.Name))
	if err != nil {
		return err
	}
	if err := writeStandalone(context.Background(), c, g, bt, bin); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "build       %s (%s, %s) in %.1f s\n", bin, bt.name, isaList(c.prog.Manifest.ISAs), time.Since(t0).Seconds())
	// 2. The built-in sample: the fixtures' procedural "input" tensor.
	x, err := tensor.Generate("input", in.Type.Shape)
	if err != nil {
		return err
	}
	sample := filepath.Join(outDir, "sample.npy")
	if err := tensor.WriteNPYFile(sample, x); err != nil {
		return err
	}
	// 3. Run the binary on it, and time it.
	logits := filepath.Join(outDir, "logits.npy")
	if out, err := exec.Command(bin, "--input", sample, "--output", logits, "--threads", strconv.Itoa(threads)).CombinedOutput(); err != nil {
		return fmt.Errorf("running %s: %v\n%s", bin, err, out)
	}
	out, err := exec.Command(bin, "--bench", "--iters", strconv.Itoa(iters), "--threads", strconv.Itoa(threads)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("running %s --bench: %v\n%s", bin, err, out)
	}
	m := benchLine.FindSubmatch(out)
	if m == nil {
		return fmt.Errorf("unexpected --bench output: %s", out)
	}
	median, _ := strconv.ParseFloat(string(m[1]), 64)
	gflops, _ := strconv.ParseFloat(string(m[2]), 64)
	fmt.Fprintf(e.stdout, "latency     %s", bytes.TrimSpace(out))
	fmt.Fprintln(e.stdout)
	// 4. The machine's FMA peak, measured now for the ISA the binary used.
	isa := c.prog.Manifest.ISAs[0]
	if mi := regexp.MustCompile(`batch \d+, (\w+),`).FindSubmatch(out); mi != nil {
		isa = string(mi[1])
	}
	pk, err := buildPeak(bt)
	if err != nil {
		return err
	}
	peak, err := pk.measure(isa, threads)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "FMA peak    %.1f GFLOP/s (%s, %d threads, measured now) -> the network ran at %.1f%% of peak (%.2f ms per image)\n",
		peak.GFLOPs, isa, threads, 100*gflops/peak.GFLOPs, median)
	// 5. Agreement with the reference interpreter.
	t1 := time.Now()
	ref, err := interp.Run(g, params, map[string]*tensor.Tensor{in.Name: x}, interp.Options{})
	if err != nil {
		return err
	}
	y, err := tensor.ReadNPYFile(logits)
	if err != nil {
		return err
	}
	d, err := tensor.MaxAbsDiff(y, ref.Outputs[0])
	if err != nil {
		return err
	}
	rel := d / tensor.MaxAbs(ref.Outputs[0])
	// The bound compiled code is held to everywhere (fixtures README's
	// strict bound; TestNetworksCompiled).
	const tol = 1e-5
	verdict := "OK"
	if !(rel <= tol) {
		verdict = "MISMATCH"
	}
	fmt.Fprintf(e.stdout, "agreement   max|binary - interpreter| = %.2e x max|interpreter| (tolerance %g): %s (interpreter took %.2f s)\n", rel, tol, verdict, time.Since(t1).Seconds())
	idx := make([]int, len(y.Data))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return y.Data[idx[a]] > y.Data[idx[b]] })
	fmt.Fprintf(e.stdout, "top-5       ")
	for _, i := range idx[:min(5, len(idx))] {
		fmt.Fprintf(e.stdout, "%d:%.4f ", i, y.Data[i])
	}
	fmt.Fprintln(e.stdout)
	if verdict != "OK" {
		return fmt.Errorf("the compiled binary disagrees with the interpreter")
	}
	return nil
}
