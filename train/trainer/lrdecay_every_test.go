package trainer

import (
	"bytes"
	"context"
	"errors"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/train"
)

// TestStepLR checks the per-step schedule of Settings.LRDecayEvery against
// hand-computed rates, and that it is LR(e) when unset.
func TestStepLR(t *testing.T) {
	every := Settings{Optimizer: train.Optimizer{LR: 0.09}, LRDecay: 0.94, LRDecayEpochs: 1, LRDecayEvery: 0.2}
	perEpoch := Settings{Optimizer: train.Optimizer{LR: 0.09}, LRDecay: 0.94, LRDecayEpochs: 2}
	for _, c := range []struct {
		name    string
		s       Settings
		e, k, n int
		want    float64
	}{
		{"start", every, 0, 0, 100, 0.09},
		{"before the first boundary", every, 0, 19, 100, 0.09},
		{"first boundary (0.2·100 steps)", every, 0, 20, 100, 0.09 * 0.94},
		{"mid epoch", every, 0, 59, 100, 0.09 * 0.94 * 0.94},
		{"next epoch", every, 1, 0, 100, 0.09 * math.Pow(0.94, 5)},
		{"odd steps per epoch", every, 2, 7, 7, 0.09 * math.Pow(0.94, 15)},
		{"unset: per epoch", perEpoch, 3, 50, 100, 0.09 * 0.94},
	} {
		if got := c.s.StepLR(c.e, c.k, c.n); math.Abs(got-c.want) > 1e-15 {
			t.Errorf("%s: StepLR(%d, %d, %d) = %v, want %v", c.name, c.e, c.k, c.n, got, c.want)
		}
	}
	for _, v := range []float64{-0.2, math.Inf(1), math.NaN()} {
		s := settings()
		s.LRDecayEvery = v
		if s.Check() == nil {
			t.Errorf("LRDecayEvery %v: Check accepted it", v)
		}
	}
}

// TestLRDecayEveryRun trains one epoch of 4 steps with the rate halved
// every half epoch: the weights must differ from the same run with a
// per-epoch decay (the decay reaches the steps within the epoch), and an
// interrupted and resumed run must end bit for bit where the straight one
// does.
func TestLRDecayEveryRun(t *testing.T) {
	ctx := context.Background()
	s := settings()
	s.LRDecay, s.LRDecayEvery = 0.5, 0.5
	straight := t.TempDir()
	if err := newRun(t, straight, s, 2, nil).Do(ctx); err != nil {
		t.Fatal(err)
	}
	// The metrics give each epoch's first rate: epoch 2 starts after two
	// halvings.
	m := strings.Split(strings.TrimSpace(string(readFile(t, filepath.Join(straight, MetricsFile)))), "\n")
	if len(m) != 3 || strings.Split(m[2], ",")[4] != strconv.FormatFloat(train.PaperRMSProp.LR/4, 'g', 7, 64) {
		t.Errorf("metrics %q: want epoch 2's lr %v", m, train.PaperRMSProp.LR/4)
	}
	plain := settings()
	plain.LRDecay = 0.5
	pd := t.TempDir()
	if err := newRun(t, pd, plain, 2, nil).Do(ctx); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(readFile(t, filepath.Join(pd, WeightsFile)), readFile(t, filepath.Join(straight, WeightsFile))) {
		t.Errorf("decay every 0.5 epoch trained the same weights as a per-epoch decay")
	}
	interrupted := t.TempDir()
	cctx, cancel := context.WithCancel(ctx)
	r := newRun(t, interrupted, s, 2, nil)
	r.AfterStep = func(step int) {
		if step == 3 { // after the first decay within epoch 1
			cancel()
		}
	}
	if err := r.Do(cctx); !errors.Is(err, ErrInterrupted) {
		t.Fatalf("interrupted run: %v", err)
	}
	c, err := ReadCheckpoint(interrupted)
	if err != nil || c.Settings.LRDecayEvery != 0.5 {
		t.Fatalf("checkpoint settings: %+v, %v", c, err)
	}
	if err := resume(t, interrupted, 2).Do(ctx); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{CheckpointFile, WeightsFile} {
		if !bytes.Equal(readFile(t, filepath.Join(interrupted, f)), readFile(t, filepath.Join(straight, f))) {
			t.Errorf("%s of the resumed run differs from the uninterrupted run's", f)
		}
	}
}
