package dist

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// ScalingModel is an analytic model of data-parallel training's scaling
// efficiency across machines, one replica per machine. It is the model of
// docs/DISTRIBUTED.md; ScalingTable prints it, so the table there is
// reproducible (go run ./bench/dist -model) and checked by a test.
//
// One step on N machines takes
//
//	T_step = T_c + exposed
//	T_c    = b · t_img                         (compute, measured per image)
//	T_ar   = 2(N−1)/N · S/B + k·2(N−1)·α       (ring all-reduce of each of the k = ⌈S/s_b⌉
//	                                            buckets: reduce-scatter then all-gather,
//	                                            2(N−1) messages each; Patarasuk & Yuan
//	                                            2009; Thakur, Rabenseifner & Gropp 2005)
//	T_last = 2(N−1)/N · s_b/B + 2(N−1)·α       (the last bucket alone)
//	exposed = T_ar                              without overlap
//	        = max(T_ar − β·T_c, T_last)         with overlap: buckets all-reduce during
//	                                            backward (fraction β of T_c); the last
//	                                            bucket can only start after it
//
// where S is the gradient bytes (4 bytes per parameter, 2 with bf16
// compression), s_b the bucket bytes (halved with bf16: a bucket holds
// the same gradients), B the link's usable bandwidth and α its
// per-message latency. Each bucket is its own all-reduce and pays the
// ring's 2(N−1) latencies: with 4 MB buckets Inception-v4 has 41 of them,
// so on 25 GbE at N = 64 their latency (155 ms) exceeds the bandwidth
// term (120 ms). The efficiency is T_c / T_step (1 = linear scaling). Not
// modelled: the bf16 conversion (fused into the copies into and out of
// the buckets that exist anyway), the CPU time the network stack takes
// from compute, stragglers, and the optimizer update (the same on every
// machine, counted in t_img).
type ScalingModel struct {
	Net struct {
		Name   string
		Params float64 // parameters (all-reduced as gradients)
	}
	Machines []Machine
	Links    []Link
	Ranks    []int   // machine counts (table columns)
	Backward float64 // β: fraction of a step's compute that is backward
	Bucket   float64 // s_b: bucket bytes (fp32)
}

// Machine is one kind of machine and its share of the global batch.
type Machine struct {
	Name  string
	Image time.Duration // t_img: forward+backward+update per image
	Batch int           // b: images per machine per step
}

// Link is one interconnect.
type Link struct {
	Name      string
	Bandwidth float64       // B: usable bytes/s per direction
	Latency   time.Duration // α: per message
}

// DefaultScalingModel is the model of docs/DISTRIBUTED.md: Inception-v4
// (42.7 M parameters). Its assumptions:
//
//   - t_img on this 2-core VM: 3× the measured batch-1 forward of 74 ms on
//     2 threads (BENCHMARKS.md, "Kiln vs ONNX Runtime"): backward costs
//     about twice the forward (the usual rule for convolutions: a
//     gradient for the input and one for the weights). A 32-core server is
//     assumed 16× faster (linear in cores), so communication weighs 16×
//     more there.
//   - β = 2/3 (backward is two of the three forward-sized passes).
//   - Usable bandwidth 90 % of the line rate (TCP/IP or RDMA headers);
//     latency 30 µs for 25 GbE (kernel TCP), 10 µs for 100 GbE, 2 µs for
//     InfiniBand HDR (RDMA).
//   - 32 images per machine per step, and 8 on the server (a global
//     batch of 512 at N=64, where large-batch training starts to need
//     learning-rate warm-up).
//   - Buckets of 4 MB (trainer.DefaultBucketBytes).
func DefaultScalingModel() ScalingModel {
	m := ScalingModel{
		Machines: []Machine{
			{"2-core VM (this machine)", 222 * time.Millisecond, 32},
			{"32-core server (16x)", 222 * time.Millisecond / 16, 32},
			{"32-core server (16x)", 222 * time.Millisecond / 16, 8},
		},
		Links: []Link{
			{"25 GbE", 0.9 * 25e9 / 8, 30 * time.Microsecond},
			{"100 GbE", 0.9 * 100e9 / 8, 10 * time.Microsecond},
			{"InfiniBand HDR (200 Gb/s)", 0.9 * 200e9 / 8, 2 * time.Microsecond},
		},
		Ranks:    []int{8, 16, 32, 64},
		Backward: 2.0 / 3,
		Bucket:   4 << 20,
	}
	m.Net.Name = "Inception-v4"
	m.Net.Params = 42.7e6
	return m
}

// ScalingPoint is the model's prediction for one configuration.
type ScalingPoint struct {
	Compute, Allreduce, Exposed time.Duration
	Efficiency                  float64
}

// Predict returns the step of n machines of kind mc over link l.
func (m ScalingModel) Predict(mc Machine, l Link, n int, bf16, overlap bool) ScalingPoint {
	sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	tc := float64(mc.Batch) * mc.Image.Seconds()
	s := 4 * m.Net.Params
	bucket := m.Bucket
	if bf16 {
		s /= 2
		bucket /= 2
	}
	bucket = min(bucket, s)
	if bucket <= 0 {
		bucket = s
	}
	k := math.Ceil(s / bucket)
	ring := 2 * float64(n-1) / float64(n)
	lat := 2 * float64(n-1) * l.Latency.Seconds()
	ar := ring*s/l.Bandwidth + k*lat
	exposed := ar
	if overlap {
		exposed = max(ar-m.Backward*tc, ring*bucket/l.Bandwidth+lat)
	}
	return ScalingPoint{
		Compute: sec(tc), Allreduce: sec(ar), Exposed: sec(exposed),
		Efficiency: tc / (tc + exposed),
	}
}

// ScalingTable prints the model as Markdown: per machine kind, link and
// gradient format, the efficiency at each machine count with overlap and,
// in parentheses, without.
func ScalingTable(m ScalingModel) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s, %.1f M parameters (%.0f MB of fp32 gradients).\n",
		m.Net.Name, m.Net.Params/1e6, 4*m.Net.Params/1e6)
	fmt.Fprintf(&b, "Scaling efficiency with overlap (without overlap); all-reduce time T_ar at the largest count.\n\n")
	fmt.Fprintf(&b, "| machine | images per machine (compute per step) | link | gradients |")
	for _, n := range m.Ranks {
		fmt.Fprintf(&b, " N=%d |", n)
	}
	fmt.Fprintf(&b, " T_ar at N=%d |\n|---|---|---|---|", m.Ranks[len(m.Ranks)-1])
	for range m.Ranks {
		b.WriteString("---|")
	}
	b.WriteString("---|\n")
	for _, mc := range m.Machines {
		for _, l := range m.Links {
			for _, bf16 := range []bool{false, true} {
				format := "fp32"
				if bf16 {
					format = "bf16"
				}
				tc := m.Predict(mc, l, 1, false, false).Compute
				fmt.Fprintf(&b, "| %s | %d (%s) | %s | %s |", mc.Name, mc.Batch, fmtDur(tc), l.Name, format)
				var last ScalingPoint
				for _, n := range m.Ranks {
					p := m.Predict(mc, l, n, bf16, true)
					q := m.Predict(mc, l, n, bf16, false)
					fmt.Fprintf(&b, " %.0f%% (%.0f%%) |", 100*p.Efficiency, 100*q.Efficiency)
					last = p
				}
				fmt.Fprintf(&b, " %s |\n", fmtDur(last.Allreduce))
			}
		}
	}
	return b.String()
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	default:
		return fmt.Sprintf("%.0f ms", d.Seconds()*1000)
	}
}
