package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
	"github.com/kiln-dev/kiln/runtime/cuda"
	"github.com/kiln-dev/kiln/runtime/imageprep"
)

// loadDriver returns the CUDA driver; tests replace it with cuda.Fake.
var loadDriver = cuda.LoadDriver

// programFlag reports whether args name a GPU program file (--program
// FILE or --program=FILE) and returns it.
func programFlag(args []string) (string, bool) {
	for i, a := range args {
		a = "-" + strings.TrimLeft(a, "-")
		if a == "-program" && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, "-program="); ok {
			return v, true
		}
	}
	return "", false
}

// runGPU runs a GPU artifact: the one appended to exe (kiln build --target
// cuda-sm90), or the program file named by --program. ok is false when
// there is neither, so the CPU path runs. The modes are the CPU runner's
// (--input/--output, --image, --bench) plus --profile (per-kernel times)
// and --reference/--tolerance (agreement with a reference output, for
// scripts/gpu-check.sh).
//
// KILN_CUDA_DRIVER=fake replaces the NVIDIA driver by runtime/cuda's fake
// (no GPU needed; kernels do not run, so outputs are zeros and times are
// the fake's 0.01 ms per launch): for testing scripts such as
// scripts/gpu-check.sh on a machine without a GPU.
func runGPU(name, exe string, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	if os.Getenv("KILN_CUDA_DRIVER") == "fake" {
		loadDriver = func() (cuda.Driver, error) { return cuda.NewFake(), nil }
	}
	path, isProgram := programFlag(args)
	if !isProgram {
		path = exe
	}
	a, found, err := cuda.FindPayload(path)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1, true
	}
	if !found {
		if isProgram {
			fmt.Fprintf(stderr, "%s: --program %s: not a GPU program (build one with kiln build --target cuda-sm90 --format program)\n", name, path)
			return 1, true
		}
		return 0, false
	}
	return runGPUArtifact(name, a, args, stdout, stderr), true
}

func runGPUArtifact(name string, a *cuda.Artifact, args []string, stdout, stderr io.Writer) int {
	man := &a.Manifest
	prog := &man.Program
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.String("program", "", "run the GPU program `FILE` (kiln build --target cuda-sm90 --format program) instead of the one appended to this executable")
	input := fs.String("input", "", "input tensor `X.npy`, float32 "+tensor.ShapeString(prog.Input.Shape))
	output := fs.String("output", "", "write the output tensor to `Y.npy`")
	image := fs.String("image", "", "classify an image `FILE` (JPEG or PNG) with the network's preprocessing")
	top := fs.Int("top", 5, "with --image: print the `K` best classes")
	bench := fs.Bool("bench", false, "time the network: the CUDA graph's replay (CUDA events, no host copies) and whole inferences (wall clock, with copies)")
	profile := fs.Bool("profile", false, "with --bench: also time every kernel (CUDA events between launches, no graph) and list them by time with % of peak")
	iters := fs.Int("iters", 100, "with --bench: timed `N` runs after warm-up")
	reference := fs.String("reference", "", "with --input: compare the output with `REF.npy`; exit 1 unless max|y-ref| <= tolerance x max|ref| and every row's top-1 agrees")
	tolerance := fs.Float64("tolerance", 0, "with --reference: relative tolerance `T` (default 1e-4 for fp32 programs, 2e-2 for tf32 and bf16)")
	weightsFile := fs.String("weights-file", "", "the weights blob `FILE` of a program built with --weights-external (kiln build ... --format weights)")
	device := fs.Int("device", 0, "GPU ordinal `N`")
	noGraph := fs.Bool("no-graph", false, "launch the kernels one by one instead of replaying the captured CUDA graph")
	info := fs.Bool("info", false, "print the program's identity and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s [--input X.npy --output Y.npy [--reference R.npy] | --image FILE | --bench [--profile]]\n\n", name)
		fmt.Fprintf(fs.Output(), "%s compiled by kiln for %s (%s): input %s, output %s.\n\nFlags:\n",
			man.Network, prog.Target, prog.Precision, tensor.ShapeString(prog.Input.Shape), tensor.ShapeString(prog.Output.Shape))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usage := func(msg string) int {
		fmt.Fprintf(stderr, "%s: %s\nRun '%s -h' for usage.\n", name, msg, name)
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	if fs.NArg() > 0 {
		return usage("unexpected arguments")
	}
	if *info {
		printGPUInfo(stdout, man)
		return 0
	}
	modes := 0
	for _, on := range []bool{*input != "", *image != "", *bench} {
		if on {
			modes++
		}
	}
	switch {
	case modes != 1:
		return usage("give exactly one of --input (with --output), --image or --bench")
	case *input != "" && *output == "" && *reference == "":
		return usage("--input needs --output or --reference")
	case *reference == "" && *tolerance != 0, *reference != "" && *input == "":
		return usage("--reference goes with --input, --tolerance with --reference")
	case *profile && !*bench:
		return usage("--profile goes with --bench")
	case *iters <= 0 || *iters > maxIters || *top <= 0:
		return usage(fmt.Sprintf("--iters must be in 1..%d and --top positive", maxIters))
	}
	// The driver first: on a machine without one, that is the news.
	drv, err := loadDriver()
	if err != nil {
		return fail(err)
	}
	if man.WeightsExternal {
		if *weightsFile == "" {
			return fail(cuda.ErrWeightsExternal)
		}
		w, err := os.ReadFile(*weightsFile)
		if err != nil {
			return fail(err)
		}
		if err := a.SetWeights(w, *weightsFile); err != nil {
			return fail(err)
		}
	} else if *weightsFile != "" {
		return usage("--weights-file: this program carries its weights")
	}
	p := a.Program()
	m, err := cuda.Open(drv, p, p.Weights, cuda.Options{Device: *device, NoGraph: *noGraph})
	if err != nil {
		return fail(err)
	}
	defer m.Close()
	a.Weights = nil // uploaded; let the GC have them
	in := make([]float32, cuda.Numel(p.Input.Shape))
	out := make([]float32, cuda.Numel(p.Output.Shape))
	switch {
	case *input != "":
		x, err := tensor.ReadNPYFileLimit(*input, tensor.NPYLimit(len(in)))
		if err != nil {
			return fail(err)
		}
		if !slices.Equal(x.Shape, p.Input.Shape) {
			return fail(fmt.Errorf("input %s: shape %s, this program takes %s (built for batch %d)", *input,
				tensor.ShapeString(x.Shape), tensor.ShapeString(p.Input.Shape), p.Batch))
		}
		if err := m.Run(x.Data, out); err != nil {
			return fail(err)
		}
		y := &tensor.Tensor{Shape: slices.Clone(p.Output.Shape), Data: out}
		if *output != "" {
			if err := tensor.WriteNPYFile(*output, y); err != nil {
				return fail(err)
			}
			fmt.Fprintf(stdout, "wrote %s: %s\n", *output, tensor.ShapeString(y.Shape))
		}
		if *reference != "" {
			return checkReference(stdout, stderr, name, man, y, *reference, *tolerance)
		}
	case *image != "":
		pp := man.Preprocess
		if pp == nil {
			return fail(fmt.Errorf("this network has no image preprocessing (built from a network without a 3xSxS input)"))
		}
		x, err := imageprep.LoadFile(*image, imageprep.Config{Size: pp.Size, CropPct: pp.CropPct, Mean: pp.Mean, Std: pp.Std})
		if err != nil {
			return fail(err)
		}
		copy(in, x) // one sample, the rest of the batch zeros
		if err := m.Run(in, out); err != nil {
			return fail(err)
		}
		printTop(stdout, out[:len(out)/p.Batch], *top, man.Labels)
	case *bench:
		if err := benchGPU(stdout, m, man, in, out, *iters, *profile); err != nil {
			return fail(err)
		}
	}
	return 0
}

// checkReference compares y with the tensor in path and prints one line:
// max|y-ref|, its ratio to max|ref|, the tolerance and the top-1 agreement
// per row. It returns 0 when within tolerance with every top-1 equal, else 1.
func checkReference(stdout, stderr io.Writer, name string, man *cuda.Manifest, y *tensor.Tensor, path string, tol float64) int {
	ref, err := tensor.ReadNPYFile(path)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	if !slices.Equal(ref.Shape, y.Shape) {
		fmt.Fprintf(stderr, "%s: reference %s has shape %s, the output %s\n", name, path, tensor.ShapeString(ref.Shape), tensor.ShapeString(y.Shape))
		return 1
	}
	if tol == 0 {
		tol = 1e-4
		if man.Program.Precision != cuda.FP32 {
			tol = 2e-2
		}
	}
	ag, err := cuda.Compare(y.Data, ref.Data, y.Shape[0])
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	verdict := "PASS"
	if !ag.Within(tol, true) {
		verdict = "FAIL"
	}
	fmt.Fprintf(stdout, "%s %s %s: max|y-ref| %.3g = %.3g x max|ref| (%.3g; tolerance %.0e), top-1 %d/%d rows agree: %s\n",
		man.Network, man.Program.Target, man.Program.Precision, ag.MaxDiff, ag.MaxDiff/math.Max(ag.MaxRef, 1e-30), ag.MaxRef, tol, ag.Top1Same, ag.Rows, verdict)
	if verdict == "FAIL" {
		return 1
	}
	return 0
}

// benchGPU prints, for the fixed input sin(i): the GPU time of the
// replayed graph (CUDA events, median of iters after iters/5 warm-up
// replays, 2 to 10),
// the wall-clock time of whole inferences (copies and synchronization
// included), images per second and the FLOP rate as % of the device's
// dense peak for the program's precision; with profile, every kernel's
// time from one launch-by-launch run (the median of 5).
func benchGPU(w io.Writer, m *cuda.Model, man *cuda.Manifest, in, out []float32, iters int, profile bool) error {
	p := m.Program()
	for i := range in {
		in[i] = float32(math.Sin(float64(i)))
	}
	for range 3 {
		if err := m.Run(in, out); err != nil {
			return err
		}
	}
	gpu, err := m.Time(max(2, min(10, iters/5)), iters)
	if err != nil {
		return err
	}
	wall := make([]float64, min(iters, 20))
	for i := range wall {
		t0 := time.Now()
		if err := m.Run(in, out); err != nil {
			return err
		}
		wall[i] = float64(time.Since(t0).Nanoseconds()) / 1e6
	}
	g, wl := rt.SummarizeLatency(gpu), rt.SummarizeLatency(wall)
	d := m.Device()
	peak := cuda.PeakFLOPs(d, p.Precision)
	flops := float64(p.FLOPs())
	rate := flops / (g.Median / 1e3)
	fmt.Fprintf(w, "device: %s (sm_%d, %d SMs, %.0f MHz, driver %d.%d)\n", d.Name, d.SM, d.SMs, float64(d.ClockKHz)/1e3, d.Driver/1000, d.Driver%1000/10)
	fmt.Fprintf(w, "%s %s %s batch %d: graph median %.3f ms (p10 %.3f, p90 %.3f) over %d replays; inference with copies %.3f ms; %.0f img/s; %.1f TFLOP/s",
		man.Network, p.Target, p.Precision, p.Batch, g.Median, g.P10, g.P90, g.N, wl.Median, float64(p.Batch)/(g.Median/1e3), rate/1e12)
	if peak > 0 {
		fmt.Fprintf(w, " = %.1f%% of the %s peak %.0f TFLOP/s", 100*rate/peak, p.Precision, peak/1e12)
	}
	fmt.Fprintln(w)
	if !profile {
		return nil
	}
	const runs = 5
	per := make([][]float64, len(p.Launches))
	for r := 0; r < runs; r++ {
		kt, err := m.Profile(in, out)
		if err != nil {
			return err
		}
		for i, k := range kt {
			per[i] = append(per[i], k.MS)
		}
	}
	type row struct {
		i  int
		ms float64
	}
	rows := make([]row, len(per))
	var sum float64
	for i, v := range per {
		rows[i] = row{i, rt.SummarizeLatency(v).Median}
		sum += rows[i].ms
	}
	sort.SliceStable(rows, func(a, b int) bool { return rows[a].ms > rows[b].ms })
	fmt.Fprintf(w, "kernels (launch by launch, median of %d runs; sum %.3f ms):\n", runs, sum)
	fmt.Fprintf(w, "%8s %6s %7s  %-10s %-18s %s\n", "ms", "share", "%peak", "op", "kernel", "label")
	for _, r := range rows {
		l := p.Launches[r.i]
		pk := "-"
		if l.FLOPs > 0 && peak > 0 && r.ms > 0 {
			pk = fmt.Sprintf("%.1f", 100*float64(l.FLOPs)/(r.ms/1e3)/peak)
		}
		fmt.Fprintf(w, "%8.4f %5.1f%% %7s  %-10s %-18s %s\n", r.ms, 100*r.ms/math.Max(sum, 1e-12), pk, l.Op, l.Kernel, l.Label)
	}
	return nil
}

func printGPUInfo(w io.Writer, man *cuda.Manifest) {
	p := &man.Program
	fmt.Fprintf(w, "network:      %s\n", man.Network)
	if b := man.Build; b != nil {
		fmt.Fprintf(w, "built by:     kiln %s\n", b.KilnVersion)
		if b.Procedural {
			fmt.Fprintf(w, "weights:      procedural (not trained: outputs are not predictions)\n")
		} else {
			fmt.Fprintf(w, "weights:      %s sha256:%s\n", b.Weights, b.WeightsHash)
		}
	}
	fmt.Fprintf(w, "target:       %s (sm_%d), precision %s\n", p.Target, p.SM, p.Precision)
	fmt.Fprintf(w, "batch:        %d\n", p.Batch)
	fmt.Fprintf(w, "input:        %s %s\n", p.Input.Name, tensor.ShapeString(p.Input.Shape))
	fmt.Fprintf(w, "output:       %s %s\n", p.Output.Name, tensor.ShapeString(p.Output.Shape))
	fmt.Fprintf(w, "kernels:      %d launches, %.2f GFLOP per run, %d-byte PTX module\n", len(p.Launches), float64(p.FLOPs())/1e9, len(p.PTX))
	fmt.Fprintf(w, "memory:       arena %.1f MiB, weights %.1f MiB", float64(p.ArenaBytes)/(1<<20), float64(p.WeightsBytes)/(1<<20))
	if man.WeightsExternal {
		fmt.Fprintf(w, " (external, sha256:%s)", man.WeightsSHA256)
	}
	fmt.Fprintln(w)
}
