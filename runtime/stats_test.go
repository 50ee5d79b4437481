package rt

import "testing"

func TestPercentile(t *testing.T) {
	s := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
	for _, c := range []struct{ p, want float64 }{{0, 1}, {10, 2}, {50, 6}, {90, 10}, {100, 11}, {25, 3.5}} {
		if got := Percentile(s, c.p); got != c.want {
			t.Errorf("Percentile(%v) = %v, want %v", c.p, got, c.want)
		}
	}
	// Interpolation between ranks: NumPy's np.percentile([1,2,3,4], 10) is 1.3.
	if got := Percentile([]float64{1, 2, 3, 4}, 10); got < 1.2999999 || got > 1.3000001 {
		t.Errorf("Percentile([1 2 3 4], 10) = %v, want 1.3", got)
	}
	l := SummarizeLatency([]float64{5, 1, 3})
	if l.N != 3 || l.Median != 3 || l.Min != 1 || l.Max != 5 || l.Mean != 3 {
		t.Errorf("SummarizeLatency = %+v", l)
	}
	if (SummarizeLatency(nil) != Latency{}) {
		t.Error("SummarizeLatency(nil) is not zero")
	}
}
