package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
)

func init() {
	register(&command{name: "train", args: "FILE --batches-x X.npy --batches-y Y.npy --out DIR",
		summary: "run training steps on given batches (reference interpreter) and write gradients, parameters and losses",
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
			smoothing := fs.Float64("label-smoothing", 0.1, "label smoothing of the cross-entropy loss")
			bnm := fs.Float64("bn-momentum", train.DefaultMomentum, "BatchNorm running-statistics momentum (PyTorch's convention)")
			return func(args []string) error {
				file, err := oneFile(args)
				if err != nil {
					return err
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
				g, err := loadNet(file, dsl.Options{Batch: b, InputShape: xs.Shape[2:]})
				if err != nil {
					return err
				}
				sg, err := train.Step(g, train.StepOptions{
					Forward:   train.Options{Momentum: *bnm},
					Smoothing: *smoothing,
					Optimizer: train.Optimizer{Kind: *opt, LR: *lr, Alpha: *alpha, Eps: *eps, Momentum: *momentum, WeightDecay: *wd},
				})
				if err != nil {
					return err
				}
				params, err := loadWeights(g, *initW)
				if err != nil {
					return err
				}
				for _, s := range sg.State {
					v := tensor.New(s.Shape...)
					for i := range v.Data {
						v.Data[i] = s.Init
					}
					params[s.Name] = v
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
