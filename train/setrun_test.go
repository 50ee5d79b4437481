package train_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/train"
)

// TestSetRunEqualsRebuild checks that changing a built step graph's
// learning rate and dropout seed with SetRun gives the graph Step builds
// with those options (the printed form, which holds every attribute), for
// each optimizer kind, and that the graph it was built from is untouched.
func TestSetRunEqualsRebuild(t *testing.T) {
	g, err := dsl.LoadFile("mini_inception.kiln", dsl.Options{FS: archs.FS, Batch: 2, Params: map[string]float64{"drop": 0.2}})
	if err != nil {
		t.Fatal(err)
	}
	before := g.String()
	sgd := train.Optimizer{Kind: "sgd", LR: 0.1, Momentum: 0.9, WeightDecay: 1e-4}
	tf := train.PaperRMSProp
	tf.Kind = "rmsprop-tf"
	for _, tc := range []struct {
		name  string
		opt   train.Optimizer
		seed  int
		lr2   float64
		seed2 int
	}{
		{"rmsprop", train.PaperRMSProp, 0, 0.0423, 7},
		{"rmsprop same seed", train.PaperRMSProp, 3, 0.01, 3},
		{"rmsprop lower seed", train.PaperRMSProp, 1 << 30, 0.09, 12},
		{"rmsprop-tf", tf, 5, 0.2, 99},
		{"sgd", sgd, 2, 0.05, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			build := func(lr float64, seed int) *train.StepGraph {
				o := tc.opt
				o.LR = lr
				sg, err := train.Step(g, train.StepOptions{Forward: train.Options{Momentum: 0.1, Seed: seed}, Smoothing: 0.1, Optimizer: o})
				if err != nil {
					t.Fatal(err)
				}
				return sg
			}
			sg := build(tc.opt.LR, tc.seed)
			sg.SetRun(tc.lr2, tc.seed2)
			if diff := cmp.Diff(build(tc.lr2, tc.seed2).Graph.String(), sg.Graph.String()); diff != "" {
				t.Errorf("SetRun(%v, %d) differs from a rebuilt step (-rebuilt +SetRun):\n%s", tc.lr2, tc.seed2, diff)
			}
		})
	}
	if g.String() != before {
		t.Error("SetRun changed the network graph the step was built from")
	}
}
