package train_test

import (
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/train"
)

const bnNet = `network bn(x: f32[N, 2, 3, 3]) -> f32[N, 4] {
    c = conv2d(x, 4, kernel=3, pad=1)
    b = batchnorm(c, eps=0.001)
    fc = dense(flatten(global_avgpool(relu(b))), 4)
    return fc
}
`

// TestForwardGhostSync checks the attributes and the running-variance
// correction Forward emits for ghost batches and synchronized BatchNorm,
// and its refusals at the batchnorm's position.
func TestForwardGhostSync(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opt   train.Options
		ghost int
		sync  bool
		n     int // values per channel in the Bessel correction
		err   string
	}{
		{"plain", train.Options{}, 0, false, 8 * 9, ""},
		{"ghost", train.Options{GhostBatch: 2}, 2, false, 2 * 9, ""},
		{"ghost = batch", train.Options{GhostBatch: 8}, 0, false, 8 * 9, ""},
		{"sync", train.Options{SyncBN: true, Replicas: 3}, 0, true, 3 * 8 * 9, ""},
		{"sync, one replica", train.Options{SyncBN: true, Replicas: 1}, 0, false, 8 * 9, ""},
		{"ghost not dividing", train.Options{GhostBatch: 3}, 0, false, 0, "ghost batch 3 does not divide the batch 8"},
		{"ghost and sync", train.Options{GhostBatch: 2, SyncBN: true, Replicas: 2}, 0, false, 0, "do not combine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := loadSrc(t, bnNet, 8)
			fw, err := train.Forward(g, tc.opt)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "t.kiln:") {
					t.Fatalf("error %v, want %q at the batchnorm's position", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range fw.Nodes {
				if n.Op == ir.OpBatchNormTrain && (n.Attrs.Int("ghost") != tc.ghost || n.Attrs.Bool("sync") != tc.sync) {
					t.Errorf("batchnorm_train attrs %v, want ghost %d, sync %v", n.Attrs, tc.ghost, tc.sync)
				}
			}
			// The running variance's update: (1−m)·rv + m·n/(n−1)·var.
			want := train.DefaultMomentum * float64(tc.n) / float64(tc.n-1)
			found := false
			for _, n := range fw.Nodes {
				if n.Op == ir.OpMul && n.Attrs.Float("c") == want {
					found = true
				}
			}
			if !found {
				t.Errorf("no running-variance update with factor m·%d/%d", tc.n, tc.n-1)
			}
		})
	}
}
