// Command kilnstep times Kiln's compiled training step (trainer.Compiled,
// the engine of kiln train --backend compiled) on one network at one batch
// size, the Kiln side of bench/train/run.sh -net inception_v4.
//
// The step is the paper's (Szegedy et al. 2016, section 4; docs/TRAINING.md):
// forward with BatchNorm in training mode, cross-entropy with label
// smoothing 0.1, backward, RMSProp in PyTorch's form (lr 0.045, alpha 0.9,
// eps 1.0, momentum 0.9; train.PaperRMSProp). Parameters are the procedural
// ones (tensor.Generate, as kiln train without --init); the input is a fixed
// pseudo-random batch in [-1, 1] (data.Hash) with labels i mod classes, so
// no data loading is timed, as on the PyTorch side (torch_train.py).
//
// Timing: -warmup untimed Compiled.Step calls (the first compiles through
// LLVM, or loads from the object cache), then -steps timed ones, each as kiln
// train calls it (parameters passed back, updated state copied out). It
// prints one JSON line: img/s of those steps, img/s of the native step alone
// (rt.Model.Run, without Step's state copies), the compile time, the arena
// bytes of the plan (rt.Manifest.ArenaBytes: activations, gradients,
// parameters and optimizer state), and the process's peak and final
// resident sets (VmHWM, VmRSS of /proc/self/status; the peak includes the
// compile), and the peak of the steps after the compile
// (step_peak_rss_mib: the Go heap returned to the OS and VmHWM reset after
// the first step; -1 where the kernel cannot reset it). Use -warmup 2 or
// more so that the timed steps do not fault that heap back in. With -profile it also prints, to stderr, -steps
// profiled steps (rt.Model.Profile: thread 0's time per kernel including its
// barrier wait) summed per kernel kind, strided convolutions apart.
//
// Usage:
//
//	kilnstep [-net inception_v4] [-batch 16] [-input 3x299x299] [-steps 5]
//	         [-warmup 2] [-threads 2] [-profile]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
	"github.com/kiln-dev/kiln/train"
	"github.com/kiln-dev/kiln/train/data"
	"github.com/kiln-dev/kiln/train/trainer"
)

func main() {
	net := flag.String("net", "inception_v4", "built-in network `NAME` (archs/NAME.kiln)")
	batch := flag.Int("batch", 16, "batch size")
	input := flag.String("input", "", "per-sample input shape `CxHxW` (default: the network's)")
	steps := flag.Int("steps", 5, "timed steps")
	warmup := flag.Int("warmup", 2, "untimed steps first (the first compiles)")
	threads := flag.Int("threads", 2, "runtime threads")
	profile := flag.Bool("profile", false, "print the time per kernel kind of -steps profiled steps to stderr")
	flag.Parse()
	if *batch <= 0 || *steps <= 0 || *warmup < 1 || *threads <= 0 {
		fatal(fmt.Errorf("-batch, -steps and -threads must be positive and -warmup at least 1"))
	}
	res, err := run(*net, *batch, *input, *steps, *warmup, *threads, *profile)
	if err != nil {
		fatal(err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "kilnstep:", err)
	os.Exit(1)
}

// parseShape parses CxHxW.
func parseShape(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, "x")
	if len(parts) != 3 {
		return nil, fmt.Errorf("-input %q: want CxHxW", s)
	}
	out := make([]int, 3)
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("-input %q: %q is not a positive integer", s, p)
		}
		out[i] = v
	}
	return out, nil
}

// run builds and times the step; the result is main's JSON object.
func run(net string, batch int, inputShape string, steps, warmup, threads int, profile bool) (map[string]any, error) {
	shape, err := parseShape(inputShape)
	if err != nil {
		return nil, err
	}
	g, err := dsl.LoadFile(net+".kiln", dsl.Options{FS: archs.FS, Batch: batch, InputShape: shape})
	if err != nil {
		return nil, err
	}
	sg, err := train.Step(g, train.StepOptions{Smoothing: 0.1, Optimizer: train.PaperRMSProp})
	if err != nil {
		return nil, err
	}
	params, err := g.GeneratedParams()
	if err != nil {
		return nil, err
	}
	for _, s := range sg.State {
		params[s.Name] = s.Initial()
	}
	in := g.Inputs()[0]
	x := tensor.New(in.Type.Shape...)
	for i := range x.Data {
		x.Data[i] = float32(data.Hash(7, 0, uint64(i))%2001)/1000 - 1
	}
	classes := sg.Graph.Nodes[sg.Graph.Outputs[1]].Type.Shape[1]
	target := tensor.New(batch, classes)
	for i := 0; i < batch; i++ {
		target.Data[i*classes+i%classes] = 1
	}
	inputs := map[string]*tensor.Tensor{in.Name: x, sg.Target: target}

	ce := &trainer.Compiled{Threads: threads}
	defer ce.Close()
	step := func() (float32, error) {
		loss, ups, err := ce.Step(sg, params, inputs)
		for k, v := range ups {
			params[k] = v
		}
		return loss, err
	}
	t0 := time.Now()
	if _, err := step(); err != nil {
		return nil, err
	}
	compile := time.Since(t0)
	// The compile's garbage is not the step's: return it to the OS and
	// restart the peak resident set (VmHWM) here, before the other warm-up
	// steps (which fault the step's own heap back in), so that
	// step_peak_rss_mib is the peak of the steps after the compile.
	buildPeak := statusMiB("VmHWM")
	debug.FreeOSMemory()
	stepPeak := resetPeakRSS()
	for i := 1; i < warmup; i++ {
		if _, err := step(); err != nil {
			return nil, err
		}
	}
	t0 = time.Now()
	var loss float32
	for i := 0; i < steps; i++ {
		if loss, err = step(); err != nil {
			return nil, err
		}
	}
	sec := time.Since(t0).Seconds()
	stepPeakMiB := -1.0
	if stepPeak {
		stepPeakMiB = statusMiB("VmHWM")
	}
	m := ce.Model()
	out := make([]float32, outLen(m))
	t0 = time.Now()
	for i := 0; i < steps; i++ {
		if err := m.Run(x.Data, out); err != nil {
			return nil, err
		}
	}
	runSec := time.Since(t0).Seconds()
	if profile {
		// The compiled step's kernels are named k<node> after the nodes of
		// the planned graph (lower.Kernel); plan it again, as Compiled does,
		// to tell strided convolutions apart.
		st, err := passes.RunTraining(sg.Graph, passes.Options{})
		if err != nil {
			return nil, err
		}
		strides := map[string]string{}
		for i, n := range st.Graph.Nodes {
			if s := n.Attrs.Ints("stride"); len(s) == 2 && (s[0] != 1 || s[1] != 1) {
				strides[fmt.Sprintf("k%d", i)] = fmt.Sprintf("%dx%d", s[0], s[1])
			}
		}
		if err := printProfile(m, x.Data, out, strides, steps); err != nil {
			return nil, err
		}
	}
	return map[string]any{
		"framework": "kiln", "net": net, "batch": batch, "input": in.Type.Shape[1:], "threads": threads,
		"isa": m.ISA(), "steps": steps, "warmup": warmup, "compile_s": round(compile.Seconds(), 2),
		"seconds": round(sec, 4), "img_per_s": round(float64(steps*batch)/sec, 2),
		"run_img_per_s": round(float64(steps*batch)/runSec, 2), "last_loss": round(float64(loss), 5),
		"arena_bytes": m.Manifest().ArenaBytes, "peak_rss_mib": max(buildPeak, statusMiB("VmHWM")), "rss_mib": statusMiB("VmRSS"), "step_peak_rss_mib": stepPeakMiB,
	}, nil
}

func outLen(m *rt.Model) int {
	n := 1
	for _, d := range m.Manifest().Output.Shape {
		n *= d
	}
	return n
}

// printProfile runs steps profiled steps and prints the mean time per step
// per kernel kind,
// largest first, with GFLOP/s = 2·MACs/time where the manifest counts MACs.
// Convolution kernels whose node is strided (strides: kernel name k<node>
// → stride) are counted apart.
func printProfile(m *rt.Model, x, out []float32, strides map[string]string, steps int) error {
	man := m.Manifest()
	d := make([]time.Duration, len(man.Kernels))
	for s := 0; s < steps; s++ {
		ds, err := m.Profile(x, out)
		if err != nil {
			return err
		}
		for i, v := range ds {
			d[i] += v / time.Duration(steps)
		}
	}
	by := map[string]time.Duration{}
	macs := map[string]int64{}
	count := map[string]int{}
	var total time.Duration
	for i, k := range man.Kernels {
		kind := k.Op
		if s, ok := strides[k.Name]; ok && strings.Contains(k.Op, "conv") {
			kind += " stride " + s
		}
		by[kind] += d[i]
		macs[kind] += k.MACs
		count[kind]++
		total += d[i]
	}
	kinds := make([]string, 0, len(by))
	for k := range by {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool { return by[kinds[i]] > by[kinds[j]] })
	fmt.Fprintf(os.Stderr, "profile: mean of %d steps, %.1f ms in %d kernels (thread 0, barrier waits included)\n", steps, float64(total)/1e6, len(man.Kernels))
	for _, k := range kinds {
		line := fmt.Sprintf("  %-34s %5d kernels %9.1f ms %5.1f%%", k, count[k], float64(by[k])/1e6, 100*float64(by[k])/float64(total))
		if macs[k] > 0 && by[k] > 0 {
			line += fmt.Sprintf(" %7.1f GFLOP/s", 2*float64(macs[k])/by[k].Seconds()/1e9)
		}
		fmt.Fprintln(os.Stderr, line)
	}
	return nil
}

// resetPeakRSS restarts the process's VmHWM at its current resident set
// (writing 5 to /proc/self/clear_refs, Linux 4.0+: proc(5)); false when
// the kernel refuses.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// statusMiB is the field key (VmHWM: peak resident set, VmRSS: current) of
// /proc/self/status in MiB (0 when unreadable).
func statusMiB(key string) float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			if err == nil {
				return round(kb/1024, 1)
			}
		}
	}
	return 0
}

func round(v float64, digits int) float64 {
	p := 1.0
	for i := 0; i < digits; i++ {
		p *= 10
	}
	return float64(int64(v*p+0.5)) / p
}
