package trainer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/dist"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
	"github.com/kiln-dev/kiln/train/data"
)

// Settings are everything that determines a run's trajectory. They are
// stored in every checkpoint, and a resumed run takes them from there.
type Settings struct {
	Network    string `json:"network"`
	Data       string `json:"data"` // "fashion-mnist" or a directory
	LimitTrain int    `json:"limit_train,omitempty"`
	LimitTest  int    `json:"limit_test,omitempty"`
	Batch      int    `json:"batch"`
	// Optimizer is the update rule and its hyperparameters; Optimizer.LR
	// is the learning rate of epoch 0.
	Optimizer train.Optimizer `json:"optimizer"`
	// LRDecay and LRDecayEpochs: the learning rate of epoch e (from 0) is
	// LR·LRDecay^⌊e/LRDecayEpochs⌋ (the paper's 0.94 every 2 epochs).
	LRDecay       float64      `json:"lr_decay"`
	LRDecayEpochs int          `json:"lr_decay_epochs"`
	Smoothing     float64      `json:"label_smoothing"`
	BNMomentum    float64      `json:"bn_momentum"`
	Augment       data.Augment `json:"augment"`
	Seed          uint64       `json:"seed"`
	// EMA is the decay of the parameters' exponential moving average
	// (0: none).
	EMA float64 `json:"ema,omitempty"`
	// LRDecayEvery, when positive, replaces LRDecayEpochs by a decay
	// every LRDecayEvery epochs, possibly a fraction, applied per step:
	// step k of n of epoch e runs at LR·LRDecay^⌊(e+k/n)/LRDecayEvery⌋
	// (the PyTorch reference of issue 13: 0.94 every 0.2 epoch).
	LRDecayEvery float64 `json:"lr_decay_every,omitempty"`
	// GhostBatch K > 0 computes BatchNorm statistics over each group of K
	// images of the (per-replica) batch (train.Options.GhostBatch); SyncBN
	// all-reduces them across the data-parallel replicas instead
	// (train.Options.SyncBN). Batch is per replica: the global batch of N
	// replicas is N·Batch (see Run.Comm).
	GhostBatch int  `json:"ghost_batch,omitempty"`
	SyncBN     bool `json:"sync_bn,omitempty"`
}

// LR returns the learning rate of epoch e (from 0).
func (s *Settings) LR(e int) float64 {
	if s.LRDecayEpochs <= 0 || s.LRDecay == 1 {
		return s.Optimizer.LR
	}
	return s.Optimizer.LR * math.Pow(s.LRDecay, float64(e/s.LRDecayEpochs))
}

// StepLR returns the learning rate of step k (from 0) of epoch e (from 0)
// of n steps: LR(e) unless LRDecayEvery is set.
func (s *Settings) StepLR(e, k, n int) float64 {
	if !(s.LRDecayEvery > 0) || n <= 0 {
		return s.LR(e)
	}
	// The small slack keeps a boundary such as 0.2·100 = 20 steps exact
	// under rounding.
	periods := math.Floor(float64(e*n+k)/(s.LRDecayEvery*float64(n)) + 1e-9)
	return s.Optimizer.LR * math.Pow(s.LRDecay, periods)
}

// Check reports settings that cannot train.
func (s *Settings) Check() error {
	switch {
	case s.Batch <= 0:
		return fmt.Errorf("batch %d: must be positive", s.Batch)
	case !(s.Optimizer.LR > 0) || math.IsInf(s.Optimizer.LR, 0):
		return fmt.Errorf("learning rate %v: must be positive and finite", s.Optimizer.LR)
	case !(s.LRDecay > 0 && s.LRDecay <= 1):
		return fmt.Errorf("lr decay %v: must be in (0, 1]", s.LRDecay)
	case s.LRDecayEpochs <= 0:
		return fmt.Errorf("lr decay epochs %d: must be positive", s.LRDecayEpochs)
	case !(s.LRDecayEvery >= 0) || math.IsInf(s.LRDecayEvery, 0):
		return fmt.Errorf("lr decay every %v epochs: must be positive and finite, or 0 for per-epoch decay", s.LRDecayEvery)
	case !(s.EMA >= 0 && s.EMA < 1):
		return fmt.Errorf("EMA decay %v: must be in [0, 1)", s.EMA)
	case s.Augment.Pad < 0:
		return fmt.Errorf("crop padding %d: must not be negative", s.Augment.Pad)
	}
	return nil
}

// Run is one training run.
type Run struct {
	Settings Settings
	// Net is the network as elaborated at batch Settings.Batch, for the
	// data's image shape.
	Net         *ir.Graph
	Train, Test data.Dataset // Test may be nil: no evaluation
	// Epochs is the number of epochs the run ends after (counted from the
	// start of the run, resumed or not).
	Epochs int
	// Dir is the run directory: CheckpointFile, WeightsFile, MetricsFile.
	Dir string
	// Init holds the initial network params and buffers; Resume, when
	// set, the checkpoint to continue from instead.
	Init   map[string]*tensor.Tensor
	Resume *Checkpoint
	Exec   Executor
	// Log receives progress; on a terminal (TTY) one line redrawn in
	// place, otherwise plain lines.
	Log io.Writer
	TTY bool
	// AfterStep, if set, is called after each step (tests use it to
	// interrupt a run at a given step).
	AfterStep func(globalStep int)
	// Comm, when it has more than one rank, makes the run data-parallel
	// (distrun.go): each rank trains on its shard of every global batch,
	// the gradients are averaged, and rank 0 alone writes the run
	// directory. BucketBytes is Replicas.BucketBytes; after each epoch
	// rank 0 logs the step time split when ProfileDist is set.
	Comm        dist.Comm
	BucketBytes int
	ProfileDist bool
	// Profile is the data-parallel step time split of the last Do.
	Profile DistProfile
}

// ErrInterrupted is returned (wrapped) when the context is cancelled: a
// checkpoint has been written and the run can be resumed.
var ErrInterrupted = errors.New("interrupted")

// NonFiniteError is returned when a step's loss is NaN or ±Inf.
type NonFiniteError struct {
	Epoch, Step, GlobalStep int
	Loss                    float32
	Checkpoint              string // the last good checkpoint, "" if none
}

func (e *NonFiniteError) Error() string {
	keep := "no checkpoint has been written yet"
	if e.Checkpoint != "" {
		keep = "the last good checkpoint is " + e.Checkpoint + " (resume with --resume)"
	}
	return fmt.Sprintf("step %d (epoch %d, step %d of the epoch): loss is %v; stopping: %s", e.GlobalStep, e.Epoch+1, e.Step+1, e.Loss, keep)
}

// state is a run's mutable state.
type state struct {
	params map[string]*tensor.Tensor // network params, buffers, optimizer state
	ema    map[string]*tensor.Tensor // by network name
	pos    Position
	lastCk string // the last checkpoint written or resumed from
}

// Do runs the training: epochs of Train in the order data.Order gives,
// augmented with Settings.Augment, one step graph run per batch (drop-last:
// a partial last batch is not used, as the graph's batch is fixed), then
// an evaluation of Test, a metrics row and a checkpoint per epoch. The
// learning rate is an attribute of the update ops, so the step graph is
// rebuilt when it changes (a few milliseconds against seconds per epoch);
// for a network with dropout it is rebuilt every step, as dropout_train's
// mask is a function of its seed attribute (seeded from Settings.Seed and
// the global step).
//
// When ctx is cancelled (Ctrl-C) between steps, Do writes a checkpoint of
// the position reached and returns ErrInterrupted. A non-finite loss stops
// with a *NonFiniteError; the last checkpoint is kept untouched.
func (r *Run) Do(ctx context.Context) error {
	s := &r.Settings
	if err := s.Check(); err != nil {
		return err
	}
	if (r.Comm != nil && r.Comm.Size() > 1) || s.GhostBatch > 0 || s.SyncBN || r.ProfileDist {
		return r.doDist(ctx) // distrun.go
	}
	n := r.Train.Len() / s.Batch
	if n == 0 {
		return fmt.Errorf("the training set has %d images, fewer than one batch of %d", r.Train.Len(), s.Batch)
	}
	if r.Test != nil && r.Test.Len() == 0 {
		r.Test = nil
	}
	st, err := r.initState()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return err
	}
	if err := trimMetrics(r.Dir, st.pos.Epoch); err != nil {
		return err
	}
	dropout := hasDropout(r.Net)
	input := r.Net.Inputs()[0].Name
	classes := r.Train.Classes()
	shape := r.Train.Shape()
	per := shape[0] * shape[1] * shape[2]
	x := tensor.New(s.Batch, shape[0], shape[1], shape[2])
	target := tensor.New(s.Batch, classes)
	img := make([]float32, per)
	prog := &progress{w: r.Log, tty: r.TTY, epochs: r.Epochs, steps: n, batch: s.Batch, start: time.Now(), done0: st.pos.GlobalStep}
	var sg *train.StepGraph
	sgLR, sgSeed := math.NaN(), -1
	for e := st.pos.Epoch; e < r.Epochs; e++ {
		wall := time.Now()
		lr := s.StepLR(e, 0, n) // the epoch's first rate, for the metrics
		order := data.Order(s.Seed, e, r.Train.Len())
		lossSum, trainSec := 0.0, 0.0
		first := 0
		if e == st.pos.Epoch {
			first, lossSum, trainSec = st.pos.Step, st.pos.LossSum, st.pos.TrainSeconds
		}
		for k := first; k < n; k++ {
			if ctx.Err() != nil {
				st.pos = Position{Epoch: e, Step: k, GlobalStep: st.pos.GlobalStep, LossSum: lossSum, TrainSeconds: trainSec}
				return r.interrupted(st)
			}
			t0 := time.Now()
			seed := 0
			if dropout {
				seed = int(data.Hash(s.Seed, 3, uint64(st.pos.GlobalStep)) >> 33)
			}
			stepLR := s.StepLR(e, k, n)
			// The graph is built once; the schedule's rate and the
			// dropout seed change in place (StepGraph.SetRun), so an
			// executor that compiled it keeps its code.
			if sg == nil {
				o := s.Optimizer
				o.LR = stepLR
				if sg, err = train.Step(r.Net, train.StepOptions{Forward: train.Options{Momentum: s.BNMomentum, Seed: seed}, Smoothing: s.Smoothing, Optimizer: o}); err != nil {
					return err
				}
				sgLR, sgSeed = stepLR, seed
			} else if stepLR != sgLR || seed != sgSeed {
				sg.SetRun(stepLR, seed)
				sgLR, sgSeed = stepLR, seed
			}
			for i := range target.Data {
				target.Data[i] = 0
			}
			for b := range s.Batch {
				pos := k*s.Batch + b
				item := order[pos]
				if err := r.Train.Image(item, img); err != nil {
					return err
				}
				s.Augment.Apply(s.Seed, e, pos, shape[0], shape[1], shape[2], r.Train.Fill, img, x.Data[b*per:(b+1)*per])
				target.Data[b*classes+r.Train.Label(item)] = 1
			}
			loss, ups, err := r.Exec.Step(sg, st.params, map[string]*tensor.Tensor{input: x, sg.Target: target})
			if err != nil {
				return err
			}
			if math.IsNaN(float64(loss)) || math.IsInf(float64(loss), 0) {
				prog.end()
				return &NonFiniteError{Epoch: e, Step: k, GlobalStep: st.pos.GlobalStep + 1, Loss: loss, Checkpoint: st.lastCk}
			}
			for name, v := range ups {
				st.params[name] = v
			}
			if st.ema != nil {
				updateEMA(st.ema, st.params, float32(s.EMA))
			}
			lossSum += float64(loss)
			trainSec += time.Since(t0).Seconds()
			st.pos.GlobalStep++
			prog.step(e, k, float64(loss))
			if r.AfterStep != nil {
				r.AfterStep(st.pos.GlobalStep)
			}
		}
		prog.end()
		row := metricsRow{Epoch: e + 1, Test: r.Test != nil, TrainLoss: lossSum / float64(n), LR: lr, ImgPerSec: float64((n-first)*s.Batch) / trainSec}
		if first == n {
			row.ImgPerSec = math.NaN() // interrupted after the last step: nothing trained here
		}
		if r.Test != nil {
			eval := r.networkParams(st)
			row.Top1, row.Top5, err = r.evaluate(ctx, eval)
			if errors.Is(err, ErrInterrupted) {
				st.pos = Position{Epoch: e, Step: n, GlobalStep: st.pos.GlobalStep, LossSum: lossSum, TrainSeconds: trainSec}
				return r.interrupted(st)
			}
			if err != nil {
				return err
			}
		}
		row.WallSeconds = time.Since(wall).Seconds()
		st.pos = Position{Epoch: e + 1, GlobalStep: st.pos.GlobalStep}
		if err := r.checkpoint(st); err != nil {
			return err
		}
		if err := appendMetrics(r.Dir, row); err != nil {
			return err
		}
		fmt.Fprintf(r.Log, "epoch %d/%d: %s\n", e+1, r.Epochs, row.summary())
	}
	return nil
}

// initState builds the starting state from Init or from the checkpoint.
func (r *Run) initState() (*state, error) {
	s := &r.Settings
	sg, err := train.Step(r.Net, train.StepOptions{Forward: train.Options{Momentum: s.BNMomentum}, Smoothing: s.Smoothing, Optimizer: s.Optimizer})
	if err != nil {
		return nil, err
	}
	var specs []tensor.Spec
	for _, p := range r.Net.Params() {
		specs = append(specs, tensor.Spec{Name: p.Name, Shape: p.Type.Shape})
	}
	for _, o := range sg.State {
		specs = append(specs, tensor.Spec{Name: o.Name, Shape: o.Shape})
	}
	if s.EMA > 0 {
		for _, p := range r.Net.Params() {
			specs = append(specs, tensor.Spec{Name: EMAPrefix + p.Name, Shape: p.Type.Shape})
		}
	}
	st := &state{params: map[string]*tensor.Tensor{}}
	if c := r.Resume; c != nil {
		path := filepath.Join(r.Dir, CheckpointFile)
		if err := tensor.CheckWeights(path, specs, c.Tensors); err != nil {
			return nil, err
		}
		st.pos, st.lastCk = c.Pos, path
		for name, t := range c.Tensors {
			if strings.HasPrefix(name, EMAPrefix) {
				continue
			}
			st.params[name] = t
		}
		if s.EMA > 0 {
			st.ema = map[string]*tensor.Tensor{}
			for _, p := range r.Net.Params() {
				st.ema[p.Name] = c.Tensors[EMAPrefix+p.Name]
			}
		}
		return st, nil
	}
	for _, p := range r.Net.Params() {
		t, ok := r.Init[p.Name]
		if !ok {
			return nil, fmt.Errorf("initial weights: missing %s", p.Name)
		}
		st.params[p.Name] = t
	}
	for _, o := range sg.State {
		v := tensor.New(o.Shape...)
		for i := range v.Data {
			v.Data[i] = o.Init
		}
		st.params[o.Name] = v
	}
	if s.EMA > 0 {
		st.ema = map[string]*tensor.Tensor{}
		for _, p := range r.Net.Params() {
			t := st.params[p.Name]
			st.ema[p.Name] = &tensor.Tensor{Shape: append([]int(nil), t.Shape...), Data: append([]float32(nil), t.Data...)}
		}
	}
	return st, nil
}

// updateEMA sets ema ← d·ema + (1−d)·p for every network param and
// BatchNorm buffer (timm's ModelEmaV2 averages the whole state dict; the
// paper evaluated with a running average of the parameters), in float32.
func updateEMA(ema, params map[string]*tensor.Tensor, d float32) {
	for name, e := range ema {
		p := params[name].Data
		out := make([]float32, len(e.Data)) // a new tensor: the old may be shared with a checkpoint being written
		for i, v := range e.Data {
			out[i] = d*v + (1-d)*p[i]
		}
		ema[name] = &tensor.Tensor{Shape: e.Shape, Data: out}
	}
}

// networkParams returns the params and buffers the network is evaluated
// and deployed with: the EMA's when there is one.
func (r *Run) networkParams(st *state) map[string]*tensor.Tensor {
	out := map[string]*tensor.Tensor{}
	for _, p := range r.Net.Params() {
		if st.ema != nil {
			out[p.Name] = st.ema[p.Name]
		} else {
			out[p.Name] = st.params[p.Name]
		}
	}
	return out
}

// checkpoint writes CheckpointFile and, at epoch ends, WeightsFile.
func (r *Run) checkpoint(st *state) error {
	c := &Checkpoint{Settings: r.Settings, Pos: st.pos, Tensors: map[string]*tensor.Tensor{}}
	for name, t := range st.params {
		c.Tensors[name] = t
	}
	for name, t := range st.ema {
		c.Tensors[EMAPrefix+name] = t
	}
	if err := c.Write(r.Dir); err != nil {
		return err
	}
	st.lastCk = filepath.Join(r.Dir, CheckpointFile)
	if st.pos.Step != 0 {
		return nil
	}
	meta := map[string]string{"network": r.Settings.Network, "epoch": fmt.Sprint(st.pos.Epoch), "source": "kiln train"}
	return tensor.WriteSafetensorsFile(filepath.Join(r.Dir, WeightsFile), r.networkParams(st), meta)
}

func (r *Run) interrupted(st *state) error {
	if err := r.checkpoint(st); err != nil {
		return fmt.Errorf("interrupted, and the checkpoint could not be written: %w", err)
	}
	return fmt.Errorf("%w at epoch %d, step %d: checkpoint written to %s; continue with --resume %s",
		ErrInterrupted, st.pos.Epoch+1, st.pos.Step, st.lastCk, r.Dir)
}

// evaluate runs the inference graph over Test in batches of the graph's
// batch size (a partial last batch is padded with zeros, whose outputs are
// ignored: inference ops do not mix the items of a batch) and returns the
// top-1 and top-5 accuracy (top-k with k = min(5, classes)). An item
// counts as top-k when fewer than k classes score above its label's score
// (ties broken towards the lower class index, as a stable sort does); a NaN
// score never counts.
func (r *Run) evaluate(ctx context.Context, params map[string]*tensor.Tensor) (top1, top5 float64, err error) {
	s := &r.Settings
	shape := r.Test.Shape()
	per := shape[0] * shape[1] * shape[2]
	input := r.Net.Inputs()[0].Name
	x := tensor.New(s.Batch, shape[0], shape[1], shape[2])
	k5 := min(5, r.Test.Classes())
	var c1, c5 int
	for b0 := 0; b0 < r.Test.Len(); b0 += s.Batch {
		if ctx.Err() != nil {
			return 0, 0, ErrInterrupted
		}
		if r.Comm != nil {
			// Rank 0 evaluates alone while the other ranks wait in a
			// collective: tell the hang detector this rank is busy.
			dist.KeepAlive(r.Comm)
		}
		m := min(s.Batch, r.Test.Len()-b0)
		for i := range x.Data {
			x.Data[i] = 0
		}
		for b := range m {
			if err := r.Test.Image(b0+b, x.Data[b*per:(b+1)*per]); err != nil {
				return 0, 0, err
			}
		}
		y, err := r.Exec.Infer(r.Net, params, map[string]*tensor.Tensor{input: x})
		if err != nil {
			return 0, 0, err
		}
		if len(y.Shape) != 2 || y.Shape[0] != s.Batch {
			return 0, 0, fmt.Errorf("the network's output %s is not (%d, classes)", tensor.ShapeString(y.Shape), s.Batch)
		}
		classes := y.Shape[1]
		for b := range m {
			row := y.Data[b*classes : (b+1)*classes]
			l := r.Test.Label(b0 + b)
			ref := row[l]
			if math.IsNaN(float64(ref)) {
				continue
			}
			rank := 0
			for c, v := range row {
				if v > ref || (v == ref && c < l) || math.IsNaN(float64(v)) {
					rank++
				}
			}
			if rank < 1 {
				c1++
			}
			if rank < k5 {
				c5++
			}
		}
	}
	n := float64(r.Test.Len())
	return float64(c1) / n, float64(c5) / n, nil
}

func hasDropout(g *ir.Graph) bool {
	for _, n := range g.Nodes {
		if n.Op == ir.OpDropout && n.Attrs.Float("p") != 0 {
			return true
		}
	}
	return false
}
