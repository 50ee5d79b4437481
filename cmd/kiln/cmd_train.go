package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kiln-dev/kiln/dist"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
	"github.com/kiln-dev/kiln/train/data"
	"github.com/kiln-dev/kiln/train/trainer"
)

func init() {
	register(&command{name: "train", args: "FILE (--data fashion-mnist|DIR | --resume RUN | --batches-x X.npy --batches-y Y.npy) --out DIR",
		summary: "train a network on a dataset, or replay given batches, in the reference interpreter",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			initW := fs.String("init", "", "initial parameters and BatchNorm buffers `W.safetensors` (default: procedural weights)")
			bx := fs.String("batches-x", "", "float32 `X.npy` of shape (K, B, C, H, W): the images of K batches")
			by := fs.String("batches-y", "", "int64 `Y.npy` of shape (K, B): their class labels")
			steps := fs.Int("steps", 0, "run `K` steps, one per batch (default: every batch)")
			out := fs.String("out", "", "write grads<k>.safetensors, step<k>.safetensors and losses.json to `DIR`")
			opt := fs.String("optimizer", "rmsprop", "`rule`: rmsprop (PyTorch's), rmsprop-tf (TensorFlow's) or sgd (with momentum)")
			lr := fs.Float64("lr", train.PaperRMSProp.LR, "learning `rate`")
			alpha := fs.Float64("alpha", train.PaperRMSProp.Alpha, "RMSProp decay of the squared-gradient average")
			eps := fs.Float64("eps", train.PaperRMSProp.Eps, "RMSProp epsilon")
			momentum := fs.Float64("momentum", train.PaperRMSProp.Momentum, "optimizer momentum")
			wd := fs.Float64("weight-decay", 0, "L2 weight decay added to each gradient")
			clipNorm := fs.Float64("clip-grad-norm", 0, "scale the gradients so that their global L2 norm is at most `X` (PyTorch's clip_grad_norm_; 0: off)")
			clipValue := fs.Float64("clip-grad-value", 0, "clamp every gradient element to [-`C`, C] (PyTorch's clip_grad_value_; 0: off)")
			smoothing := fs.Float64("label-smoothing", 0.1, "label smoothing of the cross-entropy loss")
			bnm := fs.Float64("bn-momentum", train.DefaultMomentum, "BatchNorm running-statistics momentum (PyTorch's convention)")
			tf := registerTrainFlags(fs)
			df := registerDistFlags(fs) // train_dist.go
			return func(args []string) error {
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				if err := (train.Optimizer{ClipGradNorm: *clipNorm, ClipGradValue: *clipValue}).CheckClip(); err != nil {
					return usagef("%v", strings.TrimPrefix(err.Error(), "train: "))
				}
				if err := df.check(0); err != nil {
					return err
				}
				comm, err := openComm()
				if err != nil {
					return err
				}
				defer comm.Close()
				tf.comm, tf.dist = comm, df
				if tf.data != "" || tf.resume != "" {
					if *bx != "" || *by != "" || *steps != 0 {
						return usagef("--batches-x, --batches-y and --steps replay fixture batches; they do not combine with --data or --resume")
					}
					s := trainer.Settings{
						Network: file, Batch: tf.batch, LimitTrain: tf.limitTrain, LimitTest: tf.limitTest,
						Optimizer: train.Optimizer{Kind: *opt, LR: *lr, Alpha: *alpha, Eps: *eps, Momentum: *momentum, WeightDecay: *wd, ClipGradNorm: *clipNorm, ClipGradValue: *clipValue},
						LRDecay:   tf.lrDecay, LRDecayEpochs: tf.lrDecayEpochs, LRDecayEvery: tf.lrDecayEvery, Smoothing: *smoothing, BNMomentum: *bnm,
						Augment: data.Augment{Pad: tf.cropPad, Flip: tf.flip}, Seed: tf.seed, EMA: tf.ema,
					}
					s.GhostBatch, s.SyncBN = df.ghost, df.syncBN
					return trainRun(e, fs, file, *initW, *out, s, tf)
				}
				if *bx == "" || *by == "" || *out == "" {
					return usagef("--batches-x, --batches-y and --out are required")
				}
				if *steps < 0 {
					return usagef("--steps must not be negative")
				}
				xs, err := tensor.ReadNPYFile(*bx)
				if err != nil {
					return err
				}
				ys, err := tensor.ReadNPYInt64File(*by)
				if err != nil {
					return err
				}
				if len(xs.Shape) != 5 {
					return fmt.Errorf("%s: shape %s, want (K, B, C, H, W)", *bx, tensor.ShapeString(xs.Shape))
				}
				k, b := xs.Shape[0], xs.Shape[1]
				if len(ys.Shape) != 2 || ys.Shape[0] != k || ys.Shape[1] != b {
					return fmt.Errorf("%s: shape %s, want (%d, %d) to match %s", *by, tensor.ShapeString(ys.Shape), k, b, *bx)
				}
				if *steps == 0 {
					*steps = k
				}
				if *steps > k {
					return fmt.Errorf("--steps %d: %s holds only %d batches", *steps, *bx, k)
				}
				if comm.Size() > 1 {
					if err := os.MkdirAll(*out, 0o755); err != nil {
						return err
					}
					return runStepsDist(e, comm, file, *initW, train.StepOptions{Forward: train.Options{Momentum: *bnm, KeepPoolConv: true}, Smoothing: *smoothing,
						Optimizer: train.Optimizer{Kind: *opt, LR: *lr, Alpha: *alpha, Eps: *eps, Momentum: *momentum, WeightDecay: *wd, ClipGradNorm: *clipNorm, ClipGradValue: *clipValue}},
						xs, ys.Data, *steps, *out, df)
				}
				g, err := loadNet(file, dsl.Options{Batch: b, InputShape: xs.Shape[2:]})
				if err != nil {
					return err
				}
				// A replay keeps the network's op order (no pool/convolution
				// swap, train.Options.KeepPoolConv) so that its rounding follows
				// the run it replays: the non-residual mini net amplifies the
				// swap's rounding change to 9e-4 of its gradients' global norm.
				sg, err := train.Step(g, train.StepOptions{
					Forward:   train.Options{Momentum: *bnm, GhostBatch: df.ghost, KeepPoolConv: true},
					Smoothing: *smoothing,
					Optimizer: train.Optimizer{Kind: *opt, LR: *lr, Alpha: *alpha, Eps: *eps, Momentum: *momentum, WeightDecay: *wd, ClipGradNorm: *clipNorm, ClipGradValue: *clipValue},
				})
				if err != nil {
					return err
				}
				params, err := loadWeights(g, *initW)
				if err != nil {
					return err
				}
				for _, s := range sg.State {
					params[s.Name] = s.Initial()
				}
				if err := os.MkdirAll(*out, 0o755); err != nil {
					return err
				}
				return runSteps(e, g, sg, params, xs, ys.Data, *steps, *out)
			}
		}})
}

// runSteps runs the step graph once per batch in the interpreter, writing
// each step's gradients and resulting parameters and buffers under out, and
// the losses at the end. A non-finite loss stops with the step named.
func runSteps(e *env, g *ir.Graph, sg *train.StepGraph, params map[string]*tensor.Tensor, xs *tensor.Tensor, ys []int64, steps int, out string) error {
	k, b := xs.Shape[0], xs.Shape[1]
	per := xs.Numel() / k
	classes := sg.Graph.Nodes[sg.Graph.Outputs[1]].Type.Shape[1]
	input := g.Inputs()[0].Name
	var names []string // learnable params, checkpoint order
	var keep []int
	for _, p := range g.Params() {
		if d, ok := sg.Grads[p.Name]; ok {
			names = append(names, p.Name)
			keep = append(keep, d)
		}
	}
	var losses []float64
	for s := range steps {
		x, err := tensor.FromData(xs.Shape[1:], xs.Data[s*per:(s+1)*per])
		if err != nil {
			return err
		}
		target := tensor.New(b, classes)
		for i, l := range ys[s*b : (s+1)*b] {
			if l < 0 || int(l) >= classes {
				return fmt.Errorf("batch %d item %d: label %d outside [0, %d)", s, i, l, classes)
			}
			target.Data[i*classes+int(l)] = 1
		}
		t0 := time.Now()
		res, err := interp.Run(sg.Graph, params, map[string]*tensor.Tensor{input: x, sg.Target: target}, interp.Options{Keep: keep})
		if err != nil {
			return err
		}
		loss := float64(res.Outputs[0].Data[0])
		if math.IsNaN(loss) || math.IsInf(loss, 0) {
			return fmt.Errorf("step %d: loss is %v; stopping (the files of step %d are the last good ones)", s+1, loss, s)
		}
		losses = append(losses, loss)
		grads := map[string]*tensor.Tensor{}
		for i, n := range names {
			grads[n] = res.Values[keep[i]]
		}
		for n, v := range res.Updates {
			params[n] = v
		}
		state := map[string]*tensor.Tensor{}
		for _, p := range g.Params() {
			state[p.Name] = params[p.Name]
		}
		if err := tensor.WriteSafetensorsFile(filepath.Join(out, fmt.Sprintf("grads%d.safetensors", s+1)), grads, nil); err != nil {
			return err
		}
		if err := tensor.WriteSafetensorsFile(filepath.Join(out, fmt.Sprintf("step%d.safetensors", s+1)), state, nil); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "step %d/%d: loss %.6f (%.2f s)\n", s+1, steps, loss, time.Since(t0).Seconds())
	}
	j, err := json.MarshalIndent(map[string]any{"network": g.Name, "steps": steps, "batch": b, "losses": losses}, "", "  ")
	if err != nil {
		return err
	}
	return tensor.WriteFileAtomic(filepath.Join(out, "losses.json"), func(w io.Writer) error {
		_, err := w.Write(append(j, '\n'))
		return err
	})
}

// trainFlags are the flags of the training mode (--data, --resume).
type trainFlags struct {
	data, resume          string
	epochs, batch         int
	lrDecay               float64
	lrDecayEpochs         int
	lrDecayEvery          float64
	seed                  uint64
	limitTrain, limitTest int
	cropPad               int
	flip                  bool
	ema                   float64
	threads               int
	progress              string
	backend               string // interp or compiled (trainer.Compiled)
	comm                  dist.Comm
	dist                  *distFlags
}

func registerTrainFlags(fs *flag.FlagSet) *trainFlags {
	f := &trainFlags{}
	fs.StringVar(&f.data, "data", "", "train on `DATA`: fashion-mnist (Debian's dataset-fashion-mnist), a directory of IDX files, or an image folder DIR with train/ and val/ (or test/) holding one subdirectory per class")
	fs.StringVar(&f.resume, "resume", "", "continue the run in `RUN` from its checkpoint, with its settings (only --epochs, --threads and --progress may be given)")
	fs.IntVar(&f.epochs, "epochs", 10, "train until `E` epochs are complete")
	fs.IntVar(&f.batch, "batch", 32, "batch size `B`, per rank under mpirun -np N (global batch N·B; a partial last global batch of an epoch is dropped)")
	fs.Float64Var(&f.lrDecay, "lr-decay", 0.94, "multiply the learning rate by `F` every --lr-decay-epochs epochs (the paper's schedule)")
	fs.IntVar(&f.lrDecayEpochs, "lr-decay-epochs", 2, "decay the learning rate every `K` epochs")
	fs.Float64Var(&f.lrDecayEvery, "lr-decay-every", 0, "decay the learning rate every `F` epochs, a fraction allowed, per step (e.g. 0.2; replaces --lr-decay-epochs; 0: off)")
	fs.Uint64Var(&f.seed, "seed", 1, "`seed` of the shuffles, augmentations and dropout masks: the same seed gives the same run")
	fs.IntVar(&f.limitTrain, "limit-train", 0, "use the first `N` training images only (0: all)")
	fs.IntVar(&f.limitTest, "limit-test", 0, "evaluate on the first `M` test images only (0: all)")
	fs.IntVar(&f.cropPad, "crop-pad", 4, "random crop augmentation: pad by `P` pixels, crop back (0: off)")
	fs.BoolVar(&f.flip, "flip", true, "random horizontal flip augmentation")
	fs.Float64Var(&f.ema, "ema", 0, "evaluate and deploy an exponential moving average of the parameters with decay `D` (e.g. 0.9999; 0: off)")
	fs.IntVar(&f.threads, "threads", 0, "interpreter threads (0: all CPUs; results do not depend on it)")
	fs.StringVar(&f.progress, "progress", "auto", "progress `style`: auto (a redrawn line on a terminal), line (plain lines) or none")
	fs.StringVar(&f.backend, "backend", "interp", "training steps on `B`: interp (the reference interpreter) or compiled (native kernels through LLVM, rebuilt when a dropout seed changes the step; evaluation compiled too)")
	return f
}

// resumeFlags are the flags a resumed run may be given: the others are the
// run's settings, read from its checkpoint.
var resumeFlags = map[string]bool{"bucket-mb": true, "profile-dist": true, "resume": true, "epochs": true, "threads": true, "progress": true, "out": true, "backend": true}

// trainRun is the training mode of kiln train: load the data and the
// network, then train.Run (see train/trainer). Ctrl-C writes a checkpoint
// and exits with status 130.
func trainRun(e *env, fs *flag.FlagSet, file, initW, out string, s trainer.Settings, tf *trainFlags) error {
	var resume *trainer.Checkpoint
	if tf.resume != "" {
		var bad []string
		fs.Visit(func(f *flag.Flag) {
			if !resumeFlags[f.Name] {
				bad = append(bad, "--"+f.Name)
			}
		})
		if len(bad) > 0 {
			return usagef("%s: a resumed run keeps the settings of its checkpoint; only --epochs, --threads and --progress may be given", strings.Join(bad, ", "))
		}
		if out != "" && filepath.Clean(out) != filepath.Clean(tf.resume) {
			return usagef("--out %s and --resume %s differ: a run resumes in its own directory", out, tf.resume)
		}
		out = tf.resume
		c, err := trainer.ReadCheckpoint(out)
		if err != nil {
			return err
		}
		if c.Settings.Network != file {
			return fmt.Errorf("%s: the checkpoint is of network %s, not %s", filepath.Join(out, trainer.CheckpointFile), c.Settings.Network, file)
		}
		resume, s = c, c.Settings
	} else {
		if out == "" {
			return usagef("--out RUN is required")
		}
		if _, err := os.Stat(filepath.Join(out, trainer.CheckpointFile)); err == nil {
			return fmt.Errorf("%s already holds a run (%s): continue it with --resume %s, or choose another --out", out, trainer.CheckpointFile, out)
		}
		s.Data = tf.data
		if s.Data != "fashion-mnist" {
			abs, err := filepath.Abs(s.Data)
			if err != nil {
				return err
			}
			s.Data = abs
		}
	}
	if s.Batch <= 0 || tf.epochs <= 0 || s.LimitTrain < 0 || s.LimitTest < 0 {
		return usagef("--batch and --epochs must be positive, --limit-train and --limit-test not negative")
	}
	if err := s.Check(); err != nil {
		return usagef("%v", err)
	}
	g, err := loadNet(file, dsl.Options{Batch: s.Batch})
	if err != nil {
		return err
	}
	in := g.Inputs()
	outs := g.Outputs
	if len(in) != 1 || in[0].Type.Rank() != 4 || len(outs) != 1 || g.Nodes[outs[0]].Type.Rank() != 2 {
		return fmt.Errorf("%s: training needs one image input (N, C, H, W) and one output (N, classes)", file)
	}
	shape := [3]int{in[0].Type.Shape[1], in[0].Type.Shape[2], in[0].Type.Shape[3]}
	classes := g.Nodes[outs[0]].Type.Shape[1]
	trainSet, testSet, err := loadData(s, shape)
	if err != nil {
		return err
	}
	if trainSet.Shape() != shape {
		d := trainSet.Shape()
		return fmt.Errorf("%s takes %dx%dx%d images, the data has %dx%dx%d", file, shape[0], shape[1], shape[2], d[0], d[1], d[2])
	}
	if trainSet.Classes() != classes {
		return fmt.Errorf("%s has %d outputs, the data %d classes", file, classes, trainSet.Classes())
	}
	var init map[string]*tensor.Tensor
	if resume == nil {
		if init, err = loadWeights(g, initW); err != nil {
			return err
		}
	} else if initW != "" {
		return usagef("--init: a resumed run starts from its checkpoint")
	}
	tty := false
	switch tf.progress {
	case "auto":
		if f, ok := e.stdout.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				tty = true
			}
		}
	case "line":
	case "none":
	default:
		return usagef("--progress %q: auto, line or none", tf.progress)
	}
	log := e.stdout
	if tf.progress == "none" {
		log = io.Discard
	}
	lead := tf.comm == nil || tf.comm.Rank() == 0
	if !lead {
		log = io.Discard
	}
	if lead {
		fmt.Fprintf(e.stdout, "training %s on %s: %d training images, %d test images, batch %d, %s, epochs %d\n",
			g.Name, s.Data, trainSet.Len(), testSet.Len(), s.Batch, s.Optimizer.Kind, tf.epochs)
	}
	if tf.comm != nil && tf.comm.Size() > 1 && lead {
		fmt.Fprintf(e.stdout, "data-parallel: %d ranks × batch %d = global batch %d; evaluation on rank 0\n", tf.comm.Size(), s.Batch, tf.comm.Size()*s.Batch)
	}
	if err := tf.dist.check(s.Batch); err != nil {
		return err
	}
	ranks := 1
	if tf.comm != nil {
		ranks = tf.comm.Size()
	}
	if b, note := bnBackend(tf.backend, g, s, ranks); note != "" { // train_bn_backend.go
		if lead {
			fmt.Fprintln(e.stderr, note)
		}
		tf.backend = b
	}
	var exec trainer.Executor = trainer.Interpreter{Threads: tf.threads}
	switch tf.backend {
	case "interp":
	case "compiled":
		ce := &trainer.Compiled{Threads: tf.threads, Interp: trainer.Interpreter{Threads: tf.threads}}
		defer ce.Close()
		exec = ce
	default:
		return usagef("--backend %q: interp or compiled", tf.backend)
	}
	r := &trainer.Run{Settings: s, Net: g, Train: trainSet, Test: testSet, Epochs: tf.epochs, Dir: out,
		Init: init, Resume: resume, Exec: exec, Log: log, TTY: tty,
		Comm: tf.comm, BucketBytes: tf.dist.bucketBytes(), ProfileDist: tf.dist.profileDist}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = r.Do(ctx)
	if errors.Is(err, trainer.ErrInterrupted) {
		fmt.Fprintf(e.stderr, "kiln train: %v\n", err)
		return exitCode(130)
	}
	if err != nil {
		return err
	}
	if !lead {
		return nil
	}
	fmt.Fprintf(e.stdout, "weights: %s (kiln build %s --batch N --weights %s)\n", filepath.Join(out, trainer.WeightsFile), file, filepath.Join(out, trainer.WeightsFile))
	return nil
}

// loadData loads the training and test sets of s.Data for a network taking
// images of the given shape.
func loadData(s trainer.Settings, shape [3]int) (train, test data.Dataset, err error) {
	dir := s.Data
	if dir == "fashion-mnist" {
		dir = data.FashionMNISTDir
	}
	if dir == data.FashionMNISTDir || data.IsIDXDir(dir) {
		tr, te, err := data.LoadFashionMNIST(dir, s.LimitTrain, s.LimitTest)
		if err != nil {
			return nil, nil, err
		}
		return tr, te, nil
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("--data %s: %w", dir, err)
	}
	if !st.IsDir() {
		return nil, nil, fmt.Errorf("--data %s: not a directory (want fashion-mnist, a directory of IDX files, or an image folder)", dir)
	}
	trDir := filepath.Join(dir, "train")
	if _, err := os.Stat(trDir); err != nil {
		return nil, nil, fmt.Errorf("--data %s: an image folder needs train/ and val/ (or test/), each with one subdirectory per class", dir)
	}
	var teDir string
	for _, d := range []string{"val", "test"} {
		if _, err := os.Stat(filepath.Join(dir, d)); err == nil {
			teDir = filepath.Join(dir, d)
			break
		}
	}
	if teDir == "" {
		return nil, nil, fmt.Errorf("--data %s: no val/ or test/ next to train/", dir)
	}
	tr, err := data.LoadFolder(trDir, shape, nil)
	if err != nil {
		return nil, nil, err
	}
	te, err := data.LoadFolder(teDir, shape, tr.ClassNames)
	if err != nil {
		return nil, nil, err
	}
	return limited(tr, s.LimitTrain), limited(te, s.LimitTest), nil
}

// limited keeps n items of an image folder (all with n = 0), taking the
// classes in turn (the first image of each class, then the second, ...) so
// that a small subset has every class.
func limited(f *data.Folder, n int) *data.Folder {
	if n <= 0 || n >= len(f.Paths) {
		return f
	}
	byClass := make([][]int, f.Classes())
	for i, l := range f.Labels {
		byClass[l] = append(byClass[l], i)
	}
	var paths []string
	var labels []int
	for k := 0; len(paths) < n; k++ {
		for c := range byClass {
			if k < len(byClass[c]) && len(paths) < n {
				paths = append(paths, f.Paths[byClass[c][k]])
				labels = append(labels, c)
			}
		}
	}
	f.Paths, f.Labels = paths, labels
	return f
}

// exitCode is an error that exits with its own status and no message (the
// command has printed what it had to say).
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit status %d", int(c)) }
