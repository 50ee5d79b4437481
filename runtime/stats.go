package rt

import (
	"slices"
	"sort"
)

// Latency holds order statistics of repeated timings, in the unit of the
// samples (Kiln reports milliseconds).
type Latency struct {
	N                          int
	Median, P10, P90, Min, Max float64
	Mean                       float64
}

// Percentile returns the p-th percentile (0 ≤ p ≤ 100) of sorted s by linear
// interpolation between the closest ranks: rank p/100 × (n−1), the method
// NumPy calls "linear" (Hyndman and Fan 1996, definition 7). It is the one
// percentile definition Kiln uses: kiln bench, the standalone --bench and
// bench/peers all report through SummarizeLatency. s must be non-empty and
// sorted ascending.
func Percentile(s []float64, p float64) float64 {
	pos := p / 100 * float64(len(s)-1)
	i := int(pos)
	if i+1 >= len(s) {
		return s[len(s)-1]
	}
	f := pos - float64(i)
	return s[i]*(1-f) + s[i+1]*f
}

// SummarizeLatency returns the order statistics of v (not modified); the zero
// Latency for no samples.
func SummarizeLatency(v []float64) Latency {
	if len(v) == 0 {
		return Latency{}
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	var sum float64
	for _, x := range s {
		sum += x
	}
	return Latency{N: len(s), Median: Percentile(s, 50), P10: Percentile(s, 10), P90: Percentile(s, 90),
		Min: s[0], Max: s[len(s)-1], Mean: sum / float64(len(s))}
}
