package dist

import (
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

func TestScalingPredict(t *testing.T) {
	var m ScalingModel
	m.Net.Params = 250e6 // 1 GB of fp32 gradients
	m.Backward = 0.5
	m.Bucket = 100e6
	mc := Machine{Image: 100 * time.Millisecond, Batch: 10} // T_c = 1 s
	l := Link{Bandwidth: 1e9, Latency: time.Millisecond}
	for _, tc := range []struct {
		n             int
		bf16, overlap bool
		ar, exposed   float64 // seconds
	}{
		// 2(N-1)/N·S/B + k·2(N-1)·α, k = 10 buckets (fp32 and bf16)
		{2, false, false, 1 + 10*0.002, 1.02},
		{4, false, false, 1.5 + 10*0.006, 1.56},
		{4, true, false, 0.75 + 10*0.006, 0.81},
		// overlap: max(T_ar − β·T_c, T_last), T_last = 2(N-1)/N·s_b/B + 2(N-1)·α
		{4, false, true, 1.56, 1.06},
		{4, true, true, 0.81, 0.31},
		{2, true, true, 0.52, 0.5*0.1 + 0.002}, // the last bucket
	} {
		p := m.Predict(mc, l, tc.n, tc.bf16, tc.overlap)
		if math.Abs(p.Allreduce.Seconds()-tc.ar) > 1e-9 || math.Abs(p.Exposed.Seconds()-tc.exposed) > 1e-9 {
			t.Errorf("N=%d bf16=%v overlap=%v: T_ar %v exposed %v, want %vs %vs", tc.n, tc.bf16, tc.overlap, p.Allreduce, p.Exposed, tc.ar, tc.exposed)
		}
		if want := 1 / (1 + tc.exposed); math.Abs(p.Efficiency-want) > 1e-9 {
			t.Errorf("N=%d: efficiency %v, want %v", tc.n, p.Efficiency, want)
		}
	}
}

// TestScalingPredictBuckets checks the bucket count: ⌈S/s_b⌉, one bucket
// when s_b is zero or exceeds S.
func TestScalingPredictBuckets(t *testing.T) {
	var m ScalingModel
	m.Net.Params = 250e6 // 1 GB of fp32 gradients
	mc := Machine{Image: 100 * time.Millisecond, Batch: 10}
	l := Link{Bandwidth: 1e9, Latency: time.Millisecond}
	for _, tc := range []struct {
		bucket, ar float64
	}{
		{0, 1 + 0.002},
		{2e9, 1 + 0.002},
		{1e9, 1 + 0.002},
		{300e6, 1 + 4*0.002}, // ⌈1000/300⌉ = 4
	} {
		m.Bucket = tc.bucket
		if p := m.Predict(mc, l, 2, false, false); math.Abs(p.Allreduce.Seconds()-tc.ar) > 1e-9 {
			t.Errorf("bucket %g: T_ar %v, want %vs", tc.bucket, p.Allreduce, tc.ar)
		}
	}
}

// TestScalingTableInDocs keeps docs/DISTRIBUTED.md's table equal to the
// model's output (regenerate with go run ./bench/dist -model).
func TestScalingTableInDocs(t *testing.T) {
	const path = "../docs/DISTRIBUTED.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- scaling-table:begin -->\n", "<!-- scaling-table:end -->"
	s := string(b)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("%s: no %q … %q section", path, strings.TrimSpace(begin), end)
	}
	if got, want := s[i+len(begin):j], ScalingTable(DefaultScalingModel()); got != want {
		t.Errorf("%s: the scaling table differs from go run ./bench/dist -model; replace it with:\n%s", path, want)
	}
}
