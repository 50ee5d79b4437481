package cuda

import (
	"fmt"
	"math"
)

// flopsPerClockPerSM is the dense arithmetic peak of one multiprocessor per
// clock, 2 FLOPs per multiply-add, from NVIDIA's architecture whitepapers:
// A100 (sm_80: 64 FP32 FMA, 512 TF32 and 1024 BF16 tensor FMA per clock
// per SM; "NVIDIA A100 Tensor Core GPU Architecture", 2020, table 3) and
// H100 SXM5 (sm_90: 128 FP32 FMA, 1024 TF32 and 2048 BF16 tensor FMA;
// "NVIDIA H100 Tensor Core GPU Architecture", 2022, table 2). The sm_90
// tensor figures are reached only by wgmma; mma.sync, which Kiln's kernels
// use, issues at most about half of them on Hopper.
func flopsPerClockPerSM(sm int, p Precision) float64 {
	var fma float64
	switch {
	case sm >= 90:
		fma = map[Precision]float64{FP32: 128, TF32: 1024, BF16: 2048}[p]
	case sm == 80:
		fma = map[Precision]float64{FP32: 64, TF32: 512, BF16: 1024}[p]
	}
	return 2 * fma
}

// PeakFLOPs is the device's dense peak in FLOP/s for precision p (fp32:
// FFMA without tensor cores), or 0 where the SM or the clock is unknown.
func PeakFLOPs(d DeviceInfo, p Precision) float64 {
	return flopsPerClockPerSM(d.SM, p) * float64(d.SMs) * float64(d.ClockKHz) * 1e3
}

// Agreement compares y with ref, each rows × (len/rows) values: the largest
// absolute difference, max|ref|, and how many rows have the same index of
// their largest value (top-1). A NaN in y counts as an infinite difference.
type Agreement struct {
	MaxDiff, MaxRef float64
	Rows, Top1Same  int
}

// Compare computes the agreement of y with ref over rows rows.
func Compare(y, ref []float32, rows int) (Agreement, error) {
	if len(y) != len(ref) || rows <= 0 || len(y)%rows != 0 {
		return Agreement{}, fmt.Errorf("compare: %d values against %d reference values in %d rows", len(y), len(ref), rows)
	}
	a := Agreement{Rows: rows}
	for i := range y {
		d := math.Abs(float64(y[i]) - float64(ref[i]))
		if math.IsNaN(d) {
			d = math.Inf(1)
		}
		a.MaxDiff = math.Max(a.MaxDiff, d)
		a.MaxRef = math.Max(a.MaxRef, math.Abs(float64(ref[i])))
	}
	per := len(y) / rows
	for r := 0; r < rows; r++ {
		if argmax(y[r*per:(r+1)*per]) == argmax(ref[r*per:(r+1)*per]) {
			a.Top1Same++
		}
	}
	return a, nil
}

// Within reports whether the difference is at most tol × max|ref| and, if
// top1, every row's top-1 agrees.
func (a Agreement) Within(tol float64, top1 bool) bool {
	return a.MaxDiff <= tol*a.MaxRef && (!top1 || a.Top1Same == a.Rows)
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}
