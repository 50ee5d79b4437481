package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
	gpurt "github.com/kiln-dev/kiln/runtime/cuda"
	"github.com/kiln-dev/kiln/target"
)

// loadGPUDriver returns the CUDA driver; tests replace it with gpurt.Fake.
var loadGPUDriver = gpurt.LoadDriver

// gpuBenchResult is kiln bench --target cuda-*'s report; its JSON field
// names are part of the CLI's interface.
type gpuBenchResult struct {
	Network       string           `json:"network"`
	Batch         int              `json:"batch"`
	Target        string           `json:"target"`
	Precision     string           `json:"precision"`
	Device        string           `json:"device"`
	SM            int              `json:"sm"`
	SMs           int              `json:"sms"`
	ClockMHz      float64          `json:"clock_mhz"`
	Runs          int              `json:"runs"`
	Latency       latencyStats     `json:"latency_ms"` // CUDA-event time of the replayed graph
	GFLOP         float64          `json:"gflop"`
	TFLOPs        float64          `json:"tflops"`
	ImagesPerS    float64          `json:"images_per_s"`
	PeakTFLOPs    float64          `json:"peak_tflops"`     // dense peak of the precision, 0 if unknown
	PercentOfPeak float64          `json:"percent_of_peak"` // 0 if the peak is unknown
	Launches      int              `json:"launches"`
	Layers        []gpuLayerResult `json:"layers,omitempty"`
}

// gpuLayerResult is one launch's time from --layers, launch by launch.
type gpuLayerResult struct {
	Kernel        string  `json:"kernel"`
	Label         string  `json:"label"`
	Op            string  `json:"op"`
	FLOPs         int64   `json:"flops"`
	MedianMS      float64 `json:"median_ms"`
	Share         float64 `json:"share"`
	PercentOfPeak float64 `json:"percent_of_peak"`
}

// benchGPU is kiln bench --target cuda-*: the network compiled for the GPU
// build b in precision prec, timed on GPU 0 as the median of CUDA-event
// times of the replayed graph (warmup replays first, then runs for at
// least minTime and 10 replays), FLOP rate as % of the device's dense peak
// for the precision (gpurt.PeakFLOPs), and with layers every launch's
// median time over 5 launch-by-launch runs. The driver is looked for
// before anything is compiled.
func benchGPU(e *env, b target.Build, g *ir.Graph, prec, weights, stripPrefix string, layers bool, warmup int, minTime time.Duration, format string) error {
	if format == "csv" {
		return usagef("--format csv: GPU benchmarks print table or json")
	}
	if err := checkPrecision(prec); err != nil {
		return err
	}
	drv, err := loadGPUDriver()
	if err != nil {
		return err
	}
	params, err := loadWeightsStrip(g, weights, stripPrefix)
	if err != nil {
		return err
	}
	p, err := compileGPU(g, params, b, prec, true)
	if err != nil {
		return err
	}
	m, err := gpurt.Open(drv, p, p.Weights, gpurt.Options{})
	if err != nil {
		return err
	}
	defer m.Close()
	x, err := tensor.Generate("input", p.Input.Shape)
	if err != nil {
		return err
	}
	out := make([]float32, gpurt.Numel(p.Output.Shape))
	if err := m.Run(x.Data, out); err != nil {
		return err
	}
	var ms []float64
	t0 := time.Now()
	for len(ms) < benchMinRuns || time.Since(t0) < minTime && len(ms) < benchMaxRuns {
		w := 0
		if len(ms) == 0 {
			w = warmup
		}
		s, err := m.Time(w, 10)
		if err != nil {
			return err
		}
		ms = append(ms, s...)
	}
	lat := rt.SummarizeLatency(ms)
	d := m.Device()
	peak := gpurt.PeakFLOPs(d, p.Precision)
	flops := float64(p.FLOPs())
	res := &gpuBenchResult{Network: g.Name, Batch: p.Batch, Target: b.Name, Precision: string(p.Precision),
		Device: d.Name, SM: d.SM, SMs: d.SMs, ClockMHz: float64(d.ClockKHz) / 1e3, Runs: lat.N,
		Latency: latencyStats{Median: lat.Median, P10: lat.P10, P90: lat.P90, Min: lat.Min, Max: lat.Max, Mean: lat.Mean},
		GFLOP:   flops / 1e9, Launches: len(p.Launches), PeakTFLOPs: peak / 1e12}
	if lat.Median > 0 {
		res.TFLOPs = flops / (lat.Median / 1e3) / 1e12
		res.ImagesPerS = float64(p.Batch) / (lat.Median / 1e3)
		if peak > 0 {
			res.PercentOfPeak = 100 * res.TFLOPs / res.PeakTFLOPs
		}
	}
	if layers {
		const runs = 5
		per := make([][]float64, len(p.Launches))
		for range runs {
			kt, err := m.Profile(x.Data, out)
			if err != nil {
				return err
			}
			for i, k := range kt {
				per[i] = append(per[i], k.MS)
			}
		}
		var sum float64
		for i, v := range per {
			l := p.Launches[i]
			lr := gpuLayerResult{Kernel: l.Kernel, Label: l.Label, Op: l.Op, FLOPs: l.FLOPs, MedianMS: rt.SummarizeLatency(v).Median}
			if peak > 0 && lr.MedianMS > 0 {
				lr.PercentOfPeak = 100 * float64(l.FLOPs) / (lr.MedianMS / 1e3) / peak
			}
			sum += lr.MedianMS
			res.Layers = append(res.Layers, lr)
		}
		for i := range res.Layers {
			if sum > 0 {
				res.Layers[i].Share = res.Layers[i].MedianMS / sum
			}
		}
		sort.SliceStable(res.Layers, func(a, b int) bool { return res.Layers[a].MedianMS > res.Layers[b].MedianMS })
	}
	if format == "json" {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	res.writeTable(e.stdout)
	return nil
}

func (r *gpuBenchResult) writeTable(w io.Writer) {
	fmt.Fprintf(w, "%s batch %d, %s %s on %s (sm_%d, %d SMs, %.0f MHz)\n", r.Network, r.Batch, r.Target, r.Precision, r.Device, r.SM, r.SMs, r.ClockMHz)
	fmt.Fprintf(w, "latency (CUDA graph replay, CUDA events): median %.3f ms, p10 %.3f, p90 %.3f over %d runs\n", r.Latency.Median, r.Latency.P10, r.Latency.P90, r.Runs)
	fmt.Fprintf(w, "throughput: %.0f img/s, %.2f TFLOP/s (%.2f GFLOP per run, %d launches)", r.ImagesPerS, r.TFLOPs, r.GFLOP, r.Launches)
	if r.PeakTFLOPs > 0 {
		fmt.Fprintf(w, " = %.1f%% of the %s dense peak %.0f TFLOP/s", r.PercentOfPeak, r.Precision, r.PeakTFLOPs)
	}
	fmt.Fprintln(w)
	if len(r.Layers) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%9s %6s %6s  %-14s %-16s %s\n", "median ms", "share", "%peak", "op", "kernel", "label")
	for _, l := range r.Layers {
		pk := "-"
		if l.FLOPs > 0 && r.PeakTFLOPs > 0 {
			pk = fmt.Sprintf("%.1f", l.PercentOfPeak)
		}
		fmt.Fprintf(w, "%9.4f %5.1f%% %6s  %-14s %-16s %s\n", l.MedianMS, 100*l.Share, pk, l.Op, l.Kernel, l.Label)
	}
}
