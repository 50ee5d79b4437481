// Command kiln-runner is the runtime half of a standalone executable: `kiln
// build` appends a compiled network (shared object, weights, manifest; see
// rt.AppendPayload) to a copy of this program, and the result runs that
// network:
//
//	./inception_v4 --input x.npy --output y.npy
//	./inception_v4 --image photo.jpg --top 5
//	./inception_v4 --bench [--iters N] [--threads T] [--isa avx2] [--batch N]
//	./inception_v4 --serve 127.0.0.1:8080 [--max-delay 2ms] [--no-batching]
//
// It links the runtime (package rt), ir/tensor, runtime/imageprep, the
// standard library and golang.org/x/sys only: none of the compiler (dsl,
// passes, codegen, llir, participle, protobuf), so a built model carries no
// compiler. TestRunnerDeps enforces this with `go list -deps`.
//
// Run without a payload (the plain runner as `make build` leaves it in
// bin/kiln-runner) it says so and exits with status 1. Exit codes: 0
// success, 1 failure, 2 usage error.
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
	"github.com/kiln-dev/kiln/runtime/imageprep"
)

func main() {
	name := "kiln-runner"
	if len(os.Args) > 0 {
		name = os.Args[0]
	}
	os.Exit(run(name, "", os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the network appended to the executable at exe ("" is the running
// executable) with the command-line args and returns the exit status. name
// is the program name used in messages and usage.
func run(name, exe string, args []string, stdout, stderr io.Writer) int {
	if code, ok := runGPU(name, exe, args, stdout, stderr); ok { // a GPU artifact (gpu.go)
		return code
	}
	bundle, found, err := rt.FindBundle(exe)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	if !found {
		fmt.Fprintf(stderr, "%s: this executable carries no compiled network: it is the kiln runner, "+
			"to which `kiln build NETWORK -o OUT` appends one (run OUT instead)\n", name)
		return 1
	}
	defer bundle.Close()
	batches := bundle.Batches()
	man := &bundle.Artifacts[len(batches)-1].Manifest // the largest batch describes the artifact
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	input := fs.String("input", "", "input tensor `X.npy`, float32 N×"+tensor.ShapeString(man.Input.Shape[1:])+" (any N: the smallest compiled batch that fits, padded, or chunks of the largest)")
	output := fs.String("output", "", "write the output tensor to `Y.npy`")
	image := fs.String("image", "", "classify an image `FILE` (JPEG or PNG) with the network's preprocessing")
	top := fs.Int("top", 5, "with --image: print the `K` best classes")
	bench := fs.Bool("bench", false, "time repeated inferences and print the median latency")
	iters := fs.Int("iters", 20, "with --bench: timed `N` inferences after warm-up")
	threads := fs.Int("threads", 0, "worker `threads` per inference (0: all cores)")
	isa := fs.String("isa", "", "force the instruction set `ISA` ("+isaList(man.ISAs)+"); default $KILN_ISA or the best available")
	noWeightsCheck := fs.Bool("no-weights-check", os.Getenv("KILN_WEIGHTS_CHECK") == "off",
		"skip the SHA-256 check of the weights at start (default $KILN_WEIGHTS_CHECK=off); the kernels and manifest are always checked")
	info := fs.Bool("info", false, "print the network's identity (kiln version, source and weights hashes, targets, batch, shapes, preprocessing) and exit")
	benchBatch := fs.Int("batch", 0, "with --bench: time the program compiled for batch `N` ("+joinInts(batches)+"; default the largest)")
	tap := fs.String("tap", "", "with --input: write the value of the compiled-in module `NAME` (kiln build --tap) instead of the network output")
	sf := registerServeFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s [--input X.npy --output Y.npy | --image FILE [--top K] | --bench [--batch N] | --serve ADDR]\n\n", name)
		fmt.Fprintf(fs.Output(), "%s compiled by kiln: input %s, output %s, batch %s, ISAs %s.\n\nFlags:\n",
			man.Network, tensor.ShapeString(man.Input.Shape), tensor.ShapeString(man.Output.Shape), joinInts(batches), isaList(man.ISAs))
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
	if fs.NArg() > 0 {
		return usage("unexpected arguments")
	}
	if *info {
		printInfo(stdout, man, batches...)
		return 0
	}
	modes := 0
	for _, on := range []bool{*input != "", *image != "", *bench, sf.addr != ""} {
		if on {
			modes++
		}
	}
	if modes != 1 {
		return usage("give exactly one of --input (with --output), --image, --bench or --serve")
	}
	if *input != "" && *output == "" {
		return usage("--input needs --output")
	}
	tapIdx := -1
	if *tap != "" {
		var names []string
		for i, t := range man.Taps {
			if t.Name == *tap {
				tapIdx = i
			}
			names = append(names, t.Name)
		}
		if *input == "" {
			return usage("--tap needs --input")
		}
		if tapIdx < 0 {
			if len(names) == 0 {
				return usage(fmt.Sprintf("--tap %s: this binary has no taps (build it with kiln build --tap %s)", *tap, *tap))
			}
			return usage(fmt.Sprintf("--tap %s: not compiled in (taps: %s)", *tap, strings.Join(names, ", ")))
		}
	}
	if *threads < 0 || *iters <= 0 || *top <= 0 {
		return usage("--threads must be >= 0, --iters and --top positive")
	}
	if *iters > maxIters {
		return usage(fmt.Sprintf("--iters %d: at most %d", *iters, maxIters))
	}
	if n, msg := capThreads(*threads, numCPU()); msg != "" {
		fmt.Fprintf(stderr, "%s: %s\n", name, msg)
		*threads = n
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	// The weights are mapped from this executable; by default they are copied
	// into huge-page memory and the mapping released (faster kernels, same
	// resident size). KILN_WEIGHTS=mmap keeps the zero-copy mapping.
	copyWeights := os.Getenv("KILN_WEIGHTS") != "mmap"
	if *benchBatch != 0 && (!*bench || !slices.Contains(batches, *benchBatch)) {
		return usage(fmt.Sprintf("--batch %d: takes --bench and one of the compiled batch sizes (%s)", *benchBatch, joinInts(batches)))
	}
	mm, err := rt.OpenMulti(bundle, rt.Options{ISA: *isa, Threads: *threads, CopyWeights: copyWeights, SkipWeightsCheck: *noWeightsCheck})
	if err != nil {
		return fail(err)
	}
	defer mm.Close()
	if copyWeights {
		bundle.Close()
	}
	m := mm.Largest()
	out := make([]float32, numel(man.Output.Shape))
	switch {
	case *input != "":
		y, err := runInput(mm, man, *input, tapIdx)
		if err != nil {
			return fail(err)
		}
		if err := tensor.WriteNPYFile(*output, y); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "wrote %s: %s\n", *output, tensor.ShapeString(y.Shape))
	case *image != "":
		pp := man.Preprocess
		if pp == nil {
			return fail(fmt.Errorf("this network has no image preprocessing (built from a network without a 3xSxS input)"))
		}
		cfg := imageprep.Config{Size: pp.Size, CropPct: pp.CropPct, Mean: pp.Mean, Std: pp.Std}
		x, err := imageprep.LoadFile(*image, cfg)
		if err != nil {
			return fail(err)
		}
		// One sample: the smallest compiled batch, padded with zeros.
		out = out[:mm.OutRow()]
		if err := mm.Run(x, out); err != nil {
			return fail(err)
		}
		printTop(stdout, out[:numel(man.Output.Shape)/man.Batch], *top, man.Labels)
	case sf.addr != "":
		if err := serveModel(stdout, stderr, mm, man, sf); err != nil {
			return fail(err)
		}
	case *bench:
		if *benchBatch != 0 {
			m = mm.Model(*benchBatch)
		}
		if err := benchmark(stdout, m, m.Manifest(), *iters); err != nil {
			return fail(err)
		}
	}
	return 0
}

// benchmark runs 3 warm-up inferences on a fixed input (sin(i)), then iters
// timed ones, and prints their order statistics by rt.SummarizeLatency (the
// percentile definition kiln bench and bench/peers use) and the throughput
// at the median.
func benchmark(w io.Writer, m *rt.Model, man *rt.Manifest, iters int) error {
	in := make([]float32, numel(man.Input.Shape))
	for i := range in {
		in[i] = float32(math.Sin(float64(i)))
	}
	out := make([]float32, numel(man.Output.Shape))
	for i := 0; i < 3; i++ {
		if err := m.Run(in, out); err != nil {
			return err
		}
	}
	ms := make([]float64, iters)
	for i := range ms {
		t0 := time.Now()
		if err := m.Run(in, out); err != nil {
			return err
		}
		ms[i] = float64(time.Since(t0).Nanoseconds()) / 1e6
	}
	lat := rt.SummarizeLatency(ms)
	var macs int64
	for _, k := range man.Kernels {
		macs += k.MACs
	}
	fmt.Fprintf(w, "%s batch %d, %s, %d threads: median %.2f ms (p10 %.2f, p90 %.2f) over %d runs, %.1f GFLOP/s\n",
		man.Network, man.Batch, m.ISA(), m.Threads(), lat.Median, lat.P10, lat.P90, lat.N, 2*float64(macs)/(lat.Median/1e3)/1e9)
	return nil
}

// printTop prints the k largest softmax probabilities of logits (or of
// probabilities, if the network ends in softmax), best first.
func printTop(w io.Writer, logits []float32, k int, labels []string) {
	mx := math.Inf(-1)
	for _, v := range logits {
		mx = math.Max(mx, float64(v))
	}
	var sum float64
	p := make([]float64, len(logits))
	for i, v := range logits {
		p[i] = math.Exp(float64(v) - mx)
		sum += p[i]
	}
	idx := make([]int, len(p))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return p[idx[a]] > p[idx[b]] })
	for _, i := range idx[:min(k, len(idx))] {
		label := ""
		if i < len(labels) {
			label = "  " + labels[i]
		}
		fmt.Fprintf(w, "%5d  %.4f%s\n", i, p[i]/sum, label)
	}
}

// isaList joins ISA names with "+" (avx512+avx2).
func isaList(isas []string) string {
	s := ""
	for i, x := range isas {
		if i > 0 {
			s += "+"
		}
		s += x
	}
	return s
}

func numel(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

func equalShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
