package trainer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
	"github.com/kiln-dev/kiln/train/data"
)

// smallNet has BatchNorm and a dropout with p > 0, so that running
// statistics and per-step dropout seeds are part of what must resume
// exactly; it trains at thousands of images per second in the interpreter.
const smallNet = `network small(x: f32[N, 1, 12, 12]) -> f32[N, 10] {
    conv = conv2d(x, 4, kernel=3, stride=2, pad=1, bias=false)
    bn = batchnorm(conv, eps=0.001)
    pool = maxpool(relu(bn), 3, stride=2)
    fc = dense(dropout(flatten(global_avgpool(pool)), p=0.25), 10)
    return fc
}
`

func loadSmall(t *testing.T, batch int) *ir.Graph {
	t.Helper()
	p := filepath.Join(t.TempDir(), "small.kiln")
	if err := os.WriteFile(p, []byte(smallNet), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := dsl.LoadFile(p, dsl.Options{Batch: batch})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// synthetic is an IDX set of n pseudo-random 12x12 images.
func synthetic(n int, seed uint64) *data.IDXSet {
	img := &data.IDX{Dims: []int{n, 12, 12}, Data: make([]uint8, n*144), Total: n}
	for i := range img.Data {
		img.Data[i] = uint8(data.Hash(seed, uint64(i)))
	}
	labels := make([]uint8, n)
	for i := range labels {
		labels[i] = uint8(data.Hash(seed, 1<<40, uint64(i)) % 10)
	}
	return &data.IDXSet{Images: img, Labels: labels, NClasses: 10, Mean: data.FashionMean, Std: data.FashionStd}
}

func settings() Settings {
	return Settings{Network: "small", Data: "synthetic", Batch: 4, Optimizer: train.PaperRMSProp,
		LRDecay: 0.94, LRDecayEpochs: 1, Smoothing: 0.1, BNMomentum: 0.1,
		Augment: data.Augment{Pad: 2, Flip: true}, Seed: 5, EMA: 0.9}
}

// newRun is a run of the small net on 16 training and 6 test images.
func newRun(t *testing.T, dir string, s Settings, epochs int, exec Executor) *Run {
	g := loadSmall(t, s.Batch)
	init, err := g.GeneratedParams()
	if err != nil {
		t.Fatal(err)
	}
	if exec == nil {
		exec = Interpreter{}
	}
	return &Run{Settings: s, Net: g, Train: synthetic(16, 1), Test: synthetic(6, 2), Epochs: epochs, Dir: dir,
		Init: init, Exec: exec, Log: io.Discard}
}

func resume(t *testing.T, dir string, epochs int) *Run {
	c, err := ReadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := newRun(t, dir, c.Settings, epochs, nil)
	r.Init, r.Resume = nil, c
	return r
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestResumeBitForBit trains 3 epochs straight, then the same run stopped
// after epoch 1 and resumed, and the same run interrupted in the middle of
// epoch 2 (context cancelled, as Ctrl-C does) and resumed: the final
// checkpoints and weights must be identical byte for byte, and a different
// seed must give a different run.
func TestResumeBitForBit(t *testing.T) {
	ctx := context.Background()
	straight := t.TempDir()
	if err := newRun(t, straight, settings(), 3, nil).Do(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := t.TempDir()
	if err := newRun(t, stopped, settings(), 1, nil).Do(ctx); err != nil {
		t.Fatal(err)
	}
	if err := resume(t, stopped, 3).Do(ctx); err != nil {
		t.Fatal(err)
	}
	interrupted := t.TempDir()
	cctx, cancel := context.WithCancel(ctx)
	r := newRun(t, interrupted, settings(), 3, nil)
	r.AfterStep = func(step int) {
		if step == 6 { // epoch 2, step 2 of 4
			cancel()
		}
	}
	err := r.Do(cctx)
	if !errors.Is(err, ErrInterrupted) || !strings.Contains(err.Error(), "epoch 2, step 2") {
		t.Fatalf("interrupted run: %v", err)
	}
	c, err := ReadCheckpoint(interrupted)
	if err != nil || c.Pos.Epoch != 1 || c.Pos.Step != 2 || c.Pos.GlobalStep != 6 || !(c.Pos.LossSum > 0) {
		t.Fatalf("interrupt checkpoint: %+v, %v", c.Pos, err)
	}
	if err := resume(t, interrupted, 3).Do(ctx); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{CheckpointFile, WeightsFile} {
		want := readFile(t, filepath.Join(straight, f))
		for _, dir := range []string{stopped, interrupted} {
			if !bytes.Equal(readFile(t, filepath.Join(dir, f)), want) {
				t.Errorf("%s of a resumed run differs from the uninterrupted run's", f)
			}
		}
	}
	for _, dir := range []string{straight, stopped, interrupted} {
		m := strings.Split(strings.TrimSpace(string(readFile(t, filepath.Join(dir, MetricsFile)))), "\n")
		if len(m) != 4 || m[0] != MetricsHeader || !strings.HasPrefix(m[3], "3,") {
			t.Errorf("%s: metrics %q", dir, m)
		}
	}
	other := settings()
	other.Seed = 6
	od := t.TempDir()
	if err := newRun(t, od, other, 3, nil).Do(ctx); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(readFile(t, filepath.Join(od, WeightsFile)), readFile(t, filepath.Join(straight, WeightsFile))) {
		t.Errorf("seeds 5 and 6 trained the same weights")
	}
	// The deployable weights are the network's own tensors (the EMA's
	// values), nothing else.
	w, err := tensor.ReadSafetensorsFile(filepath.Join(straight, WeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	ck, err := ReadCheckpoint(straight)
	if err != nil {
		t.Fatal(err)
	}
	g := loadSmall(t, 4)
	var specs []tensor.Spec
	for _, p := range g.Params() {
		specs = append(specs, tensor.Spec{Name: p.Name, Shape: p.Type.Shape})
		if d, _ := tensor.MaxAbsDiff(w.Tensors[p.Name], ck.Tensors[EMAPrefix+p.Name]); d != 0 {
			t.Errorf("%s: final weights are not the EMA's", p.Name)
		}
	}
	if err := tensor.CheckWeights(WeightsFile, specs, w.Tensors); err != nil {
		t.Error(err)
	}
}

// nanAt returns a NaN loss at one global step.
type nanAt struct {
	Interpreter
	step, n int
}

func (e *nanAt) Step(sg *train.StepGraph, params, inputs map[string]*tensor.Tensor) (float32, map[string]*tensor.Tensor, error) {
	e.n++
	l, u, err := e.Interpreter.Step(sg, params, inputs)
	if e.n == e.step {
		l = float32(math.NaN())
	}
	return l, u, err
}

// TestNonFiniteLoss stops at a NaN loss with the step named and leaves the
// last good checkpoint (epoch 1's) as it was.
func TestNonFiniteLoss(t *testing.T) {
	ref := t.TempDir()
	if err := newRun(t, ref, settings(), 1, nil).Do(context.Background()); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	err := newRun(t, dir, settings(), 2, &nanAt{step: 7}).Do(context.Background())
	var nf *NonFiniteError
	if !errors.As(err, &nf) || !strings.Contains(err.Error(), "step 7 (epoch 2, step 3 of the epoch): loss is NaN") ||
		!strings.Contains(err.Error(), filepath.Join(dir, CheckpointFile)) {
		t.Fatalf("error %v", err)
	}
	if !bytes.Equal(readFile(t, filepath.Join(dir, CheckpointFile)), readFile(t, filepath.Join(ref, CheckpointFile))) {
		t.Errorf("the last good checkpoint changed")
	}
	err = newRun(t, t.TempDir(), settings(), 2, &nanAt{step: 1}).Do(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no checkpoint has been written yet") {
		t.Errorf("NaN at step 1: %v", err)
	}
}

func TestLRSchedule(t *testing.T) {
	s := Settings{Optimizer: train.Optimizer{LR: 0.045}, LRDecay: 0.94, LRDecayEpochs: 2}
	for _, c := range []struct {
		epoch int
		want  float64
	}{{0, 0.045}, {1, 0.045}, {2, 0.045 * 0.94}, {5, 0.045 * 0.94 * 0.94}} {
		if got := s.LR(c.epoch); math.Abs(got-c.want) > 1e-15 {
			t.Errorf("epoch %d: lr %v, want %v", c.epoch, got, c.want)
		}
	}
}

// fixedScores is an executor whose inference returns given scores.
type fixedScores struct {
	Interpreter
	scores []float32
}

func (e fixedScores) Infer(g *ir.Graph, params, inputs map[string]*tensor.Tensor) (*tensor.Tensor, error) {
	return tensor.FromData([]int{4, 10}, e.scores)
}

// TestTopK checks top-1/top-5 counting and NaN scores: item 0 ranks its
// label first, item 1 fifth, item 2 sixth, item 3 scores NaN.
func TestTopK(t *testing.T) {
	scores := make([]float32, 40)
	test := synthetic(4, 3)
	// Item b's label scores 0, `rank` other classes 1, the rest −1 (item 0:
	// rank 0; 1: rank 4, top-5; 2: rank 5, not top-5).
	for b, rank := range []int{0, 4, 5, 0} {
		l := test.Label(b)
		for c := range 10 {
			scores[b*10+c] = -1
		}
		scores[b*10+l] = 0
		for k, c := 0, 0; k < rank; c++ {
			if c != l {
				scores[b*10+c] = 1
				k++
			}
		}
	}
	scores[30+test.Label(3)] = float32(math.NaN())
	r := newRun(t, t.TempDir(), settings(), 1, fixedScores{scores: scores})
	r.Test = test
	top1, top5, err := r.evaluate(context.Background(), nil)
	if err != nil || top1 != 0.25 || top5 != 0.5 {
		t.Errorf("top-1 %v, top-5 %v (%v); want 0.25 and 0.5", top1, top5, err)
	}
}
