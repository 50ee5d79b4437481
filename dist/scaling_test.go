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
		// 2(N-1)/N·S/B + 2(N-1)·α
		{2, false, false, 1 + 0.002, 1.002},
		{4, false, false, 1.5 + 0.006, 1.506},
		{4, true, false, 0.75 + 0.006, 0.756},
		// overlap: max(T_ar − β·T_c, T_ar·bucket/S)
		{4, false, true, 1.506, 1.006},
		{4, true, true, 0.756, 0.256},
		{2, true, true, 0.502, 0.0502}, // the last bucket: 0.502·50/500
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
