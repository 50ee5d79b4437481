package main

import (
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
)

// benchMinRuns is the fewest timed runs kiln bench makes; benchMaxRuns stops
// a run that would otherwise keep going until --min-time on tiny networks.
const (
	benchMinRuns = 10
	benchMaxRuns = 100000
)

func init() {
	register(&command{name: "bench", args: "FILE | --peak",
		summary: "time a network compiled for this CPU: latency median/p10/p90, GFLOP/s and % of the FMA peak measured on the spot; --peak: measure that peak",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			var nf netFlags
			nf.register(fs)
			threads := fs.Int("threads", 0, "threads per inference `T` (0: all cores); with --peak, measure 1, 2, ..., T threads")
			isa := fs.String("isa", "", "force the instruction set `ISA` (avx512, avx2, neon); default $KILN_ISA or the best available;\nwith --peak, measure only this ISA")
			layers := fs.Bool("layers", false, "also time every kernel (rt.Model.Profile on every run; thread 0's time, its barrier wait included)\n"+
				"and list the fused kernels by median time: IR label, op, shape, time, share of the summed kernel\n"+
				"times, GFLOP/s and % of peak; then the 10 kernels with MACs furthest below the peak")
			format := fs.String("format", "table", "output `format`: table; csv (a header row, a scope=network row, then with --layers one\n"+
				"scope=kernel row per kernel by time; with --peak one row per ISA and thread count); json (one\n"+
				"object, stable snake_case field names, times in ms, percentages in percent)")
			weights := fs.String("weights", "", "safetensors `file` with the network's weights (timm names); default: procedural weights")
			stripPrefix := fs.String("strip-prefix", "", "remove `PREFIX` from every --weights name that starts with it (e.g. module. from a DataParallel state dict)")
			minTime := fs.Duration("min-time", 2*time.Second, "after the warm-up, time inferences for at least this `duration` and at least 10 runs;\n"+
				"the report gives median, p10 and p90 latency and GFLOP/s = 2 x MACs / median latency\n"+
				"(MACs of the conv and dense kernels, as kiln stats counts them)")
			warmup := fs.Int("warmup", 3, "untimed warm-up inferences `N` before timing (at least 3)")
			gpuTarget := fs.String("target", "", "time on an NVIDIA GPU instead: `TARGET` cuda-sm80 or cuda-sm90 (with --precision; --layers gives per-kernel times; bench_cuda.go)")
			var gf gpuFlags
			gf.register(fs, false)
			peak := fs.Bool("peak", false, "measure this CPU's FMA peak instead of a network (no FILE): for every ISA the CPU runs\n"+
				"(avx512 and avx2 on x86-64, neon on arm64) and 1..T threads: the fastest of 0.5 s of runs of\n"+
				"2^18 iterations of independent vector FMA chains in registers (24 zmm, 12 ymm or 24 q per\n"+
				"thread; about a millisecond per run), in GFLOP/s.\n"+
				"kiln bench FILE measures the same peak for its ISA and thread count right after timing\n"+
				"the network: it is the denominator of every % of peak")
			return func(args []string) error {
				switch *format {
				case "table", "csv", "json":
				default:
					return usagef("--format must be table, csv or json, got %q", *format)
				}
				if *threads < 0 {
					return usagef("--threads must not be negative")
				}
				if *minTime <= 0 {
					return usagef("--min-time must be positive, got %v", *minTime)
				}
				if *warmup < 3 {
					return usagef("--warmup must be at least 3, got %d", *warmup)
				}
				if *peak {
					if len(args) > 0 {
						return usagef("--peak takes no FILE (got %s)", strings.Join(args, " "))
					}
					var bad []string
					fs.Visit(func(f *flag.Flag) {
						switch f.Name {
						case "peak", "threads", "isa", "format":
						default:
							bad = append(bad, "--"+f.Name)
						}
					})
					if len(bad) > 0 {
						return usagef("--peak takes only --threads, --isa and --format, not %s", strings.Join(bad, ", "))
					}
					return benchPeak(e, *threads, *isa, *format)
				}
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				if *gpuTarget != "" {
					gb, ok := gpuBuild(*gpuTarget)
					if !ok {
						return usagef("--target %q: kiln bench takes a GPU target (cuda-sm80, cuda-sm90); CPU benchmarks run for this machine", *gpuTarget)
					}
					g, err := nf.load(file)
					if err != nil {
						return err
					}
					return benchGPU(e, gb, g, gf.precision, *weights, *stripPrefix, *layers, *warmup, *minTime, *format)
				}
				b := &benchRun{weights: *weights, stripPrefix: *stripPrefix, isa: *isa, threads: *threads,
					layers: *layers, minTime: *minTime, warmup: *warmup}
				g, err := nf.load(file)
				if err != nil {
					return err
				}
				res, err := b.run(e, g)
				if err != nil {
					return err
				}
				switch *format {
				case "json":
					return writeBenchJSON(e.stdout, res)
				case "csv":
					return res.writeCSV(e.stdout)
				}
				return res.writeTable(e.stdout)
			}
		}})
}

// ---- network benchmark ----

// benchRun is kiln bench FILE's settings.
type benchRun struct {
	weights, isa string
	stripPrefix  string // --strip-prefix
	threads      int
	layers       bool
	minTime      time.Duration
	warmup       int
}

// benchResult is what kiln bench FILE reports; its JSON field names are
// part of the CLI's interface.
type benchResult struct {
	Network       string        `json:"network"`
	Batch         int           `json:"batch"`
	InputShape    []int         `json:"input_shape"`
	ISA           string        `json:"isa"`
	Threads       int           `json:"threads"`
	WarmupRuns    int           `json:"warmup_runs"`
	Runs          int           `json:"runs"`
	TotalS        float64       `json:"total_s"`
	Latency       latencyStats  `json:"latency_ms"`
	MACs          int64         `json:"macs"`
	GFLOP         float64       `json:"gflop"`
	GFLOPs        float64       `json:"gflops"`
	ImagesPerS    float64       `json:"images_per_s"`
	PercentOfPeak float64       `json:"percent_of_peak"`
	Peak          peakResult    `json:"peak"`
	Kernels       int           `json:"kernels"`
	Layers        []layerResult `json:"layers,omitempty"`
	// BelowPeak names (by kernel) the 10 kernels with MACs furthest below
	// the peak, furthest first.
	BelowPeak []string `json:"below_peak,omitempty"`
}

type latencyStats struct {
	Median float64 `json:"median"`
	P10    float64 `json:"p10"`
	P90    float64 `json:"p90"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	Mean   float64 `json:"mean"`
}

// layerResult is one kernel's timing. GFLOPs and PercentOfPeak are null for
// kernels without MACs (pools, reorders, copies, softmax).
type layerResult struct {
	Kernel        string   `json:"kernel"`
	Label         string   `json:"label"`
	Op            string   `json:"op"`
	Shape         string   `json:"shape"`
	MACs          int64    `json:"macs"`
	MedianMS      float64  `json:"median_ms"`
	P10MS         float64  `json:"p10_ms"`
	P90MS         float64  `json:"p90_ms"`
	Share         float64  `json:"share"` // of the sum of kernel medians, in [0, 1]
	GFLOPs        *float64 `json:"gflops"`
	PercentOfPeak *float64 `json:"percent_of_peak"`
}

func (b *benchRun) run(e *env, g *ir.Graph) (*benchResult, error) {
	bt, err := lookupBuildTarget(hostTarget())
	if err != nil {
		return nil, err
	}
	params, err := loadWeightsStrip(g, b.weights, b.stripPrefix)
	if err != nil {
		return nil, err
	}
	var pf pipeFlags
	c, err := compileNet(g, params, bt, &pf, e.stderr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(e.stderr, c.stats)
	// Build the peak artifact before timing anything (usually a cache hit).
	pk, err := buildPeak(bt)
	if err != nil {
		return nil, fmt.Errorf("FMA peak kernel: %w", err)
	}
	m, err := c.open(rt.Options{ISA: b.isa, Threads: b.threads, MaxSessions: 1})
	if err != nil {
		return nil, err
	}
	man := m.Manifest()
	res := &benchResult{Network: man.Network, Batch: man.Batch, InputShape: slices.Clone(man.Input.Shape),
		ISA: m.ISA(), Threads: m.Threads(), WarmupRuns: b.warmup, Kernels: len(man.Kernels)}
	for _, k := range man.Kernels {
		res.MACs += k.MACs
	}
	x, err := tensor.Generate("input", man.Input.Shape)
	if err != nil {
		m.Close()
		return nil, err
	}
	nOut, err := tensor.NumelOf(man.Output.Shape)
	if err != nil {
		m.Close()
		return nil, err
	}
	y := make([]float32, nOut)
	once := func() ([]time.Duration, error) {
		if b.layers {
			return m.Profile(x.Data, y)
		}
		return nil, m.Run(x.Data, y)
	}
	for i := 0; i < b.warmup; i++ {
		if _, err := once(); err != nil {
			m.Close()
			return nil, err
		}
	}
	var lat []float64         // ms per run
	var perKernel [][]float64 // [kernel][run] ms
	if b.layers {
		perKernel = make([][]float64, len(man.Kernels))
	}
	start := time.Now()
	for len(lat) < benchMinRuns || time.Since(start) < b.minTime && len(lat) < benchMaxRuns {
		t0 := time.Now()
		d, err := once()
		el := time.Since(t0)
		if err != nil {
			m.Close()
			return nil, err
		}
		lat = append(lat, durMS(el))
		for k, dk := range d {
			perKernel[k] = append(perKernel[k], durMS(dk))
		}
	}
	res.TotalS = time.Since(start).Seconds()
	if err := m.Close(); err != nil {
		return nil, err
	}
	for _, v := range y {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("%s produced a non-finite output", man.Network)
		}
	}
	res.Runs = len(lat)
	res.Latency = benchStats(lat)
	res.GFLOP = 2 * float64(res.MACs) / 1e9
	res.GFLOPs = res.GFLOP / (res.Latency.Median / 1e3)
	res.ImagesPerS = float64(res.Batch) / (res.Latency.Median / 1e3)
	// The peak, measured now for the same ISA and thread count.
	p, err := pk.measure(res.ISA, res.Threads)
	if err != nil {
		return nil, fmt.Errorf("FMA peak: %w", err)
	}
	res.Peak = p
	res.PercentOfPeak = 100 * res.GFLOPs / p.GFLOPs
	if b.layers {
		res.layers(man, perKernel, b.optimizedGraph(g, &pf))
	}
	res.round()
	return res, nil
}

// optimizedGraph reruns the pass pipeline compileNet ran (milliseconds) to
// get the graph the kernels were lowered from, for their shapes; nil if that
// fails (shapes are then left out).
func (b *benchRun) optimizedGraph(g *ir.Graph, pf *pipeFlags) *ir.Graph {
	st, err := pf.run(g, io.Discard)
	if err != nil {
		return nil
	}
	return st.Graph
}

// layers fills in the per-kernel results, sorted by median time, and the
// kernels furthest below peak.
func (res *benchResult) layers(man *rt.Manifest, perKernel [][]float64, og *ir.Graph) {
	var sum float64
	for k, ki := range man.Kernels {
		s := benchStats(perKernel[k])
		l := layerResult{Kernel: ki.Name, Label: ki.Label, Op: ki.Op, Shape: kernelShape(og, ki), MACs: ki.MACs,
			MedianMS: s.Median, P10MS: s.P10, P90MS: s.P90}
		if ki.MACs > 0 && s.Median > 0 {
			gf := 2 * float64(ki.MACs) / 1e9 / (s.Median / 1e3)
			pct := 100 * gf / res.Peak.GFLOPs
			l.GFLOPs, l.PercentOfPeak = &gf, &pct
		}
		sum += s.Median
		res.Layers = append(res.Layers, l)
	}
	for i := range res.Layers {
		if sum > 0 {
			res.Layers[i].Share = res.Layers[i].MedianMS / sum
		}
	}
	sort.SliceStable(res.Layers, func(i, j int) bool { return res.Layers[i].MedianMS > res.Layers[j].MedianMS })
	var with []layerResult
	for _, l := range res.Layers {
		if l.PercentOfPeak != nil {
			with = append(with, l)
		}
	}
	sort.SliceStable(with, func(i, j int) bool { return *with[i].PercentOfPeak < *with[j].PercentOfPeak })
	for _, l := range with[:min(10, len(with))] {
		res.BelowPeak = append(res.BelowPeak, l.Kernel)
	}
}

// kernelShape summarizes what kernel ki computes, from the node of the
// optimized graph it was lowered from (kernel k<N> computes node N; the
// label, the node's name, confirms it): "3x3/2 3->32 299x299->149x149" for a
// conv (kernel/stride, channels, spatial size), "1536->1000" for a dense
// layer, and the output shape otherwise.
func kernelShape(g *ir.Graph, ki rt.KernelInfo) string {
	if g == nil {
		return ""
	}
	var n *ir.Node
	digits := strings.TrimPrefix(ki.Name, "k")
	if i := strings.IndexByte(digits, '_'); i >= 0 {
		digits = digits[:i]
	}
	if id, err := strconv.Atoi(digits); err == nil && id >= 0 && id < len(g.Nodes) && g.Nodes[id].Name == ki.Label {
		n = g.Nodes[id]
	}
	if n == nil {
		return ""
	}
	arg := func(k int) *ir.Node {
		if k < len(n.Args) {
			return g.Nodes[n.Args[k]]
		}
		return nil
	}
	hw := func(t ir.Type) string {
		if t.Rank() != 4 {
			return ir.ShapeString(t.Shape)
		}
		return fmt.Sprintf("%dx%d", t.Shape[2], t.Shape[3])
	}
	spatial := func(in, out ir.Type) string {
		if hw(in) == hw(out) {
			return hw(out)
		}
		return hw(in) + "->" + hw(out)
	}
	window := func(k, s []int) string {
		w := fmt.Sprintf("%dx%d", k[0], k[1])
		if s[0] != 1 || s[1] != 1 {
			if s[0] == s[1] {
				w += fmt.Sprintf("/%d", s[0])
			} else {
				w += fmt.Sprintf("/%dx%d", s[0], s[1])
			}
		}
		return w
	}
	x := arg(0)
	switch n.Op {
	case ir.OpFusedConv:
		w := arg(1)
		if x == nil || w == nil || w.Type.Rank() != 4 || x.Type.Rank() != 4 {
			break
		}
		ws := w.Type.Shape
		return fmt.Sprintf("%s %d->%d %s", window(ws[2:], n.Attrs.Ints("stride")), x.Type.Shape[1], ws[0], spatial(x.Type, n.Type))
	case ir.OpMaxPool, ir.OpAvgPool:
		if x == nil || x.Type.Rank() != 4 {
			break
		}
		return fmt.Sprintf("%s %dch %s", window(n.Attrs.Ints("kernel"), n.Attrs.Ints("stride")), x.Type.Shape[1], spatial(x.Type, n.Type))
	case ir.OpGlobalAvgPool:
		if x == nil || x.Type.Rank() != 4 {
			break
		}
		return fmt.Sprintf("%dch %s->1x1", x.Type.Shape[1], hw(x.Type))
	case ir.OpDense:
		if w := arg(1); w != nil && w.Type.Rank() == 2 {
			return fmt.Sprintf("%d->%d", w.Type.Shape[1], w.Type.Shape[0])
		}
	case ir.OpReorder:
		if x != nil {
			return fmt.Sprintf("%s %s->%s", ir.ShapeString(n.Type.Shape), layoutName(x.Type), layoutName(n.Type))
		}
	}
	return ir.ShapeString(n.Type.Shape)
}

func layoutName(t ir.Type) string {
	if t.Layout.IsPlain() {
		return "NCHW"
	}
	return t.Layout.String()
}

func durMS(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// benchStats returns the order statistics of v (not modified) as
// rt.SummarizeLatency computes them (percentiles interpolate linearly between
// the closest ranks, the one definition Kiln uses), in this command's JSON
// form.
func benchStats(v []float64) latencyStats {
	l := rt.SummarizeLatency(v)
	return latencyStats{Median: l.Median, P10: l.P10, P90: l.P90, Min: l.Min, Max: l.Max, Mean: l.Mean}
}

func roundTo(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}

// round trims the figures to meaningful precision (nanoseconds, MFLOP/s,
// thousandths of a percent) for the JSON and CSV outputs.
func (res *benchResult) round() {
	for _, p := range []*float64{&res.Latency.Median, &res.Latency.P10, &res.Latency.P90, &res.Latency.Min, &res.Latency.Max, &res.Latency.Mean} {
		*p = roundTo(*p, 6)
	}
	res.TotalS = roundTo(res.TotalS, 3)
	res.GFLOP = roundTo(res.GFLOP, 6)
	res.GFLOPs = roundTo(res.GFLOPs, 3)
	res.ImagesPerS = roundTo(res.ImagesPerS, 3)
	res.PercentOfPeak = roundTo(res.PercentOfPeak, 3)
	res.Peak.round()
	for i := range res.Layers {
		l := &res.Layers[i]
		l.MedianMS, l.P10MS, l.P90MS = roundTo(l.MedianMS, 6), roundTo(l.P10MS, 6), roundTo(l.P90MS, 6)
		l.Share = roundTo(l.Share, 6)
		if l.GFLOPs != nil {
			*l.GFLOPs = roundTo(*l.GFLOPs, 3)
			*l.PercentOfPeak = roundTo(*l.PercentOfPeak, 3)
		}
	}
}

func writeBenchJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (res *benchResult) writeTable(w io.Writer) error {
	fmt.Fprintf(w, "network     %s, batch %d, input %s, %s MACs (%.4g GFLOP), %d kernels\n",
		res.Network, res.Batch, tensor.ShapeString(res.InputShape), commas(res.MACs), res.GFLOP, res.Kernels)
	fmt.Fprintf(w, "runtime     %s, %s; %d warm-up runs, then %d timed runs in %.2f s\n",
		res.ISA, plural(res.Threads, "thread"), res.WarmupRuns, res.Runs, res.TotalS)
	fmt.Fprintf(w, "latency     median %s   p10 %s   p90 %s\n", fmtMS(res.Latency.Median), fmtMS(res.Latency.P10), fmtMS(res.Latency.P90))
	fmt.Fprintf(w, "throughput  %.1f GFLOP/s = %.1f%% of peak, %.2f images/s\n", res.GFLOPs, res.PercentOfPeak, res.ImagesPerS)
	fmt.Fprintf(w, "FMA peak    %.1f GFLOP/s (%s, %s, %d FMA chains x %d lanes per thread; measured now: fastest of %d runs)\n",
		res.Peak.GFLOPs, res.Peak.ISA, plural(res.Peak.Threads, "thread"), res.Peak.Chains, res.Peak.Lanes, res.Peak.Runs)
	if res.Layers == nil {
		return nil
	}
	fmt.Fprintf(w, "\nkernels by median time over %d profiled runs (share: of the summed kernel times; time includes thread 0's barrier wait)\n", res.Runs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(l layerResult) {
		label := l.Label
		if label == "" {
			label = "-"
		}
		gf, pct := "-", "-"
		if l.GFLOPs != nil {
			gf, pct = fmt.Sprintf("%.1f", *l.GFLOPs), fmt.Sprintf("%.1f%%", *l.PercentOfPeak)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1f%%\t%s\t%s\n", l.Kernel, label, l.Op, l.Shape, fmtMS(l.MedianMS), 100*l.Share, gf, pct)
	}
	header := "kernel\tlabel\top\tshape\ttime\tshare\tGFLOP/s\t% peak\n"
	fmt.Fprint(tw, header)
	var sum float64
	for _, l := range res.Layers {
		row(l)
		sum += l.MedianMS
	}
	fmt.Fprintf(tw, "total\t\t\t\t%s\t100.0%%\t\t\n", fmtMS(sum))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(res.BelowPeak) == 0 {
		return nil
	}
	nWith := 0
	byName := map[string]layerResult{}
	for _, l := range res.Layers {
		byName[l.Kernel] = l
		if l.GFLOPs != nil {
			nWith++
		}
	}
	fmt.Fprintf(w, "\n%d kernels furthest below peak (of %d with MACs)\n", len(res.BelowPeak), nWith)
	fmt.Fprint(tw, header)
	for _, k := range res.BelowPeak {
		row(byName[k])
	}
	return tw.Flush()
}

// fmtMS prints a duration given in milliseconds with about 4 significant
// digits.
func fmtMS(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.1f ms", v)
	case v >= 1:
		return fmt.Sprintf("%.3f ms", v)
	}
	if v >= 1e-3 {
		return fmt.Sprintf("%.2f us", v*1e3)
	}
	return fmt.Sprintf("%.0f ns", v*1e6)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// benchCSVHeader is the column list of kiln bench --format csv.
var benchCSVHeader = []string{"scope", "network", "batch", "isa", "threads", "kernel", "label", "op", "shape", "macs",
	"runs", "median_ms", "p10_ms", "p90_ms", "share", "gflops", "percent_of_peak", "peak_gflops"}

func (res *benchResult) writeCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	f := func(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }
	common := func(scope string) []string {
		return []string{scope, res.Network, strconv.Itoa(res.Batch), res.ISA, strconv.Itoa(res.Threads)}
	}
	cw.Write(benchCSVHeader)
	cw.Write(append(common("network"), "", "", "", tensor.ShapeString(res.InputShape), strconv.FormatInt(res.MACs, 10),
		strconv.Itoa(res.Runs), f(res.Latency.Median), f(res.Latency.P10), f(res.Latency.P90), "1",
		f(res.GFLOPs), f(res.PercentOfPeak), f(res.Peak.GFLOPs)))
	for _, l := range res.Layers {
		gf, pct := "", ""
		if l.GFLOPs != nil {
			gf, pct = f(*l.GFLOPs), f(*l.PercentOfPeak)
		}
		cw.Write(append(common("kernel"), l.Kernel, l.Label, l.Op, l.Shape, strconv.FormatInt(l.MACs, 10),
			strconv.Itoa(res.Runs), f(l.MedianMS), f(l.P10MS), f(l.P90MS), f(l.Share), gf, pct, f(res.Peak.GFLOPs)))
	}
	cw.Flush()
	return cw.Error()
}

// ---- FMA peak ----

// peakSpec is the peak kernel every measurement uses: one tile per thread
// (room for as many threads as the runtime allows), 2^18 iterations per
// tile, as in codegen's BenchmarkConv: about 1 ms of 24 zmm FMA chains on a
// 3.4 GHz core with two 512-bit FMA pipes, 0.5 ms of 12 ymm chains. Short
// runs let the best-of find windows when no other process shares the cores
// (on a loaded 2-vCPU VM, 4 ms runs measured 5% lower and 16 ms runs 10%
// lower); the runtime's cost per run (one cgo call per thread, workers
// still spinning from the previous run) is a few microseconds.
var peakSpec = codegen.PeakSpec{Tiles: 4096, Iters: 1 << 18}

// peakBudget is how long one peak measurement times runs (after one
// warm-up run, and at least peakMinRuns runs); the peak is the fastest run.
// The best of many short runs rather than the mean of long ones filters out
// the other processes of a shared machine: it is the CPU's throughput when
// nothing else runs, the figure a kernel's time is compared with.
// (A variable so that tests can shorten it.)
var peakBudget = 500 * time.Millisecond

const peakMinRuns = 10

// peakArtifact is a compiled FMA-peak kernel loadable with rt.Open.
type peakArtifact struct {
	art     rt.Artifact
	targets []codegen.Target
}

// peakResult is one FMA-peak measurement; its JSON field names are part of
// the CLI's interface.
type peakResult struct {
	ISA             string  `json:"isa"`
	Threads         int     `json:"threads"`
	GFLOPs          float64 `json:"gflops"`
	GFLOPsPerThread float64 `json:"gflops_per_thread"`
	Chains          int     `json:"chains"`
	Lanes           int     `json:"lanes"`
	Runs            int     `json:"runs"`    // timed runs; the figure is of the fastest
	BestMS          float64 `json:"best_ms"` // the fastest run
}

func (p *peakResult) round() {
	p.GFLOPs, p.GFLOPsPerThread, p.BestMS = roundTo(p.GFLOPs, 3), roundTo(p.GFLOPsPerThread, 3), roundTo(p.BestMS, 6)
}

// peakDriverIR is the driver of the peak artifact in LLVM IR: the runtime's
// kernel ABI (kiln_abi_version returning rt.ABIVersion, kiln_arena_bytes,
// kiln_weights_bytes, and kiln_run_<isa> called once per thread), where
// thread tid runs tile tid of the peak kernel. No barrier is needed: the
// runtime waits for every thread to return. The artifact has no weights.
func peakDriverIR(targets []codegen.Target, kernel string, arenaBytes int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "; kiln bench: driver of the FMA-peak artifact\ntarget triple = %q\n\n", targets[0].Triple)
	fmt.Fprintf(&b, "define i32 @kiln_abi_version() nounwind {\n  ret i32 %d\n}\n", rt.ABIVersion)
	fmt.Fprintf(&b, "define i64 @kiln_arena_bytes() nounwind {\n  ret i64 %d\n}\n", arenaBytes)
	b.WriteString("define i64 @kiln_weights_bytes() nounwind {\n  ret i64 0\n}\n")
	for _, t := range targets {
		fmt.Fprintf(&b, `
declare void @%[1]s(ptr, ptr, i64, i64)

define void @kiln_run_%[2]s(ptr %%arena, ptr %%weights, i32 %%tid, i32 %%nthreads, ptr %%barrier, ptr %%timings) nounwind {
  %%lo = sext i32 %%tid to i64
  %%hi = add i64 %%lo, 1
  call void @%[1]s(ptr %%arena, ptr %%weights, i64 %%lo, i64 %%hi)
  ret void
}
`, t.Symbol(kernel), t.Name)
	}
	return b.String()
}

// peakArenaBytes is the arena of the FMA-peak artifact.
var peakArenaBytes = 4 * peakSpec.ArenaFloats()

// buildPeak compiles the FMA-peak kernel and its driver for bt's targets
// through the object cache, and links (or reuses from the cache) the shared
// object.
func buildPeak(bt buildTarget) (*peakArtifact, error) {
	tc, err := codegen.FindLLVM()
	if err != nil {
		return nil, err
	}
	targets := bt.cg
	m := codegen.NewModule(targets...)
	if _, _, err := m.Peak("fma_peak", peakSpec); err != nil {
		return nil, err
	}
	jobs := []codegen.CompileJob{
		{Name: "fma_peak", IR: m.String(), Target: targets[0]},
		{Name: "fma_peak_driver", IR: peakDriverIR(targets, "fma_peak", peakArenaBytes), Target: targets[0]},
	}
	objs, err := tc.CompileAll(context.Background(), jobs, nil)
	if err != nil {
		return nil, err
	}
	// The objects are named by content hash, so their names key the link.
	h := sha256.New()
	fmt.Fprintf(h, "kiln-peak-so-v1\x00%s\x00%s\x00", tc.Version, targets[0].Triple)
	for _, o := range objs {
		fmt.Fprintf(h, "%s\x00", filepath.Base(o))
	}
	key := hex.EncodeToString(h.Sum(nil))
	so := filepath.Join(tc.CacheDir, "peak", key+".so")
	b, err := os.ReadFile(so)
	if err != nil {
		if err := os.MkdirAll(filepath.Dir(so), 0o755); err != nil {
			return nil, err
		}
		tmp, err := os.MkdirTemp(filepath.Dir(so), "tmp-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		out := filepath.Join(tmp, "peak.so")
		if err := tc.SharedLibrary(objs, targets[0], out); err != nil {
			return nil, err
		}
		if b, err = os.ReadFile(out); err != nil {
			return nil, err
		}
		os.Rename(out, so) // best effort: only the next run's link time is at stake
	}
	var isas []string
	for _, t := range targets {
		isas = append(isas, t.Name)
	}
	arch := "amd64"
	if targets[0].Arch() == "aarch64" {
		arch = "arm64"
	}
	man := rt.Manifest{Version: rt.ManifestVersion, Network: "fma_peak", Batch: 1, Arch: arch, ISAs: isas,
		Features:   codegen.ISAFeatures(targets),
		ArenaBytes: peakArenaBytes,
		// The operands a and b (set to 1), and tile 0's first accumulators.
		Input:   rt.TensorInfo{Name: "operands", Shape: []int{1, 32}, Offset: 0},
		Output:  rt.TensorInfo{Name: "accumulators", Shape: []int{1, 16}, Offset: 32},
		Kernels: []rt.KernelInfo{{Name: "fma_peak", Label: "fma_peak", Op: "peak", Tiles: int64(peakSpec.Tiles)}},
	}
	return &peakArtifact{art: rt.Artifact{Manifest: man, SharedObject: b}, targets: targets}, nil
}

// measure returns the FMA peak of isa on threads threads: the fastest of
// the runs made in peakBudget (at least peakMinRuns).
func (p *peakArtifact) measure(isa string, threads int) (peakResult, error) {
	if threads > peakSpec.Tiles {
		return peakResult{}, fmt.Errorf("at most %d threads", peakSpec.Tiles)
	}
	var t codegen.Target
	for _, c := range p.targets {
		if c.Name == isa {
			t = c
		}
	}
	if t.Name == "" {
		return peakResult{}, fmt.Errorf("no peak kernel for ISA %q", isa)
	}
	m, err := rt.Open(p.art, rt.Options{ISA: isa, Threads: threads, MaxSessions: 1})
	if err != nil {
		return peakResult{}, err
	}
	defer m.Close()
	in := make([]float32, 32)
	for i := range in {
		in[i] = 1
	}
	out := make([]float32, 16)
	// The first run warms up: page faults, thread start, clock ramp-up.
	if err := m.Run(in, out); err != nil {
		return peakResult{}, err
	}
	best := time.Duration(math.MaxInt64)
	runs := 0
	for start := time.Now(); runs < peakMinRuns || time.Since(start) < peakBudget; runs++ {
		t0 := time.Now()
		if err := m.Run(in, out); err != nil {
			return peakResult{}, err
		}
		best = min(best, time.Since(t0))
	}
	if !(out[0] > 0) {
		return peakResult{}, fmt.Errorf("the peak kernel did not run (accumulator %v)", out[0])
	}
	gf := float64(peakSpec.TileFlops(t)) * float64(threads) / best.Seconds() / 1e9
	return peakResult{ISA: isa, Threads: threads, GFLOPs: gf, GFLOPsPerThread: gf / float64(threads),
		Chains: codegen.PeakChains(t), Lanes: t.VectorLanes, Runs: runs, BestMS: durMS(best)}, nil
}

// benchPeak is kiln bench --peak.
func benchPeak(e *env, threads int, isa, format string) error {
	if threads == 0 {
		threads = goruntime.GOMAXPROCS(0)
	}
	if threads > peakSpec.Tiles {
		return usagef("--threads: at most %d with --peak", peakSpec.Tiles)
	}
	bt, err := lookupBuildTarget(hostTarget())
	if err != nil {
		return err
	}
	isas := rt.HostISAs()
	if isa != "" {
		isa = strings.ToLower(isa)
		var names []string
		for _, t := range bt.cg {
			names = append(names, t.Name)
		}
		if !slices.Contains(names, isa) {
			return usagef("--isa %q: not an ISA of this machine's target (%s)", isa, strings.Join(names, ", "))
		}
		if !slices.Contains(isas, isa) {
			return fmt.Errorf("--isa %s: this CPU cannot run it (it runs: %s)", isa, strings.Join(isas, ", "))
		}
		isas = []string{isa}
	}
	if len(isas) == 0 {
		return fmt.Errorf("this CPU runs none of Kiln's ISAs")
	}
	pk, err := buildPeak(bt)
	if err != nil {
		return fmt.Errorf("FMA peak kernel: %w", err)
	}
	var res []peakResult
	for _, is := range isas {
		if !slices.ContainsFunc(bt.cg, func(t codegen.Target) bool { return t.Name == is }) {
			continue
		}
		for n := 1; n <= threads; n++ {
			p, err := pk.measure(is, n)
			if err != nil {
				return err
			}
			p.round()
			res = append(res, p)
		}
	}
	switch format {
	case "json":
		return writeBenchJSON(e.stdout, struct {
			Peak []peakResult `json:"peak"`
		}{res})
	case "csv":
		cw := csv.NewWriter(e.stdout)
		cw.Write([]string{"isa", "threads", "gflops", "gflops_per_thread", "chains", "lanes", "runs", "best_ms"})
		for _, p := range res {
			cw.Write([]string{p.ISA, strconv.Itoa(p.Threads), strconv.FormatFloat(p.GFLOPs, 'f', -1, 64),
				strconv.FormatFloat(p.GFLOPsPerThread, 'f', -1, 64), strconv.Itoa(p.Chains), strconv.Itoa(p.Lanes), strconv.Itoa(p.Runs),
				strconv.FormatFloat(p.BestMS, 'f', -1, 64)})
		}
		cw.Flush()
		return cw.Error()
	}
	fmt.Fprintf(e.stdout, "FMA peak of this CPU (%d logical CPUs), measured now: fastest of the runs in %v per row\n", goruntime.NumCPU(), peakBudget)
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "isa\tthreads\tGFLOP/s\tper thread\tFMA chains per thread\truns\tfastest\t")
	for _, p := range res {
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%d x %d lanes\t%d\t%s\t\n", p.ISA, p.Threads, p.GFLOPs, p.GFLOPsPerThread, p.Chains, p.Lanes, p.Runs, fmtMS(p.BestMS))
	}
	return tw.Flush()
}
