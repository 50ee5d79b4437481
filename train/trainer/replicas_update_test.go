package trainer

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/dist"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
)

// updateMode is how runUpdateReplicas runs the data-parallel steps.
type updateMode int

const (
	interpBoth       updateMode = iota // gradients and update in the interpreter
	compiledGradOnly                   // compiled gradients, interpreted update (Replicas.InterpUpdate)
	compiledBoth                       // both compiled
)

// runUpdateReplicas runs steps data-parallel steps of the small net (no
// dropout) with optimizer opt on ranks loopback ranks × batch b and
// returns each rank's final params and state, the last step's averaged
// (clipped) gradients of rank 0 and rank 0's Replicas (its Compiled
// closed).
func runUpdateReplicas(t *testing.T, opt train.Optimizer, mode updateMode, ranks, b, steps int) ([]map[string]*tensor.Tensor, map[string]*tensor.Tensor, *Replicas) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "small.kiln")
	if err := os.WriteFile(p, []byte(strings.Replace(smallNet, "p=0.25", "p=0.0", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := dsl.LoadFile(p, dsl.Options{Batch: b})
	if err != nil {
		t.Fatal(err)
	}
	ss, err := train.Split(g, train.StepOptions{Smoothing: 0.1, Optimizer: opt})
	if err != nil {
		t.Fatal(err)
	}
	xs, ys := batches(t, g, steps, ranks*b)
	comms := dist.Loopback(ranks)
	out := make([]map[string]*tensor.Tensor, ranks)
	reps := make([]*Replicas, ranks)
	var grads map[string]*tensor.Tensor
	errs := make([]error, ranks)
	var wg sync.WaitGroup
	for r := range ranks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			params := initParams(t, g, ss.State)
			rep := &Replicas{Comm: comms[r], BucketBytes: 256, Threads: 1, InterpUpdate: mode == compiledGradOnly}
			reps[r] = rep
			if mode != interpBoth {
				rep.Compiled = &Compiled{Threads: 1}
				defer rep.Compiled.Close()
			}
			for s := range steps {
				res, err := rep.Step(ss, params, map[string]*tensor.Tensor{"x": shard(xs[s], r, b), ss.Target: shard(ys[s], r, b)}, false)
				if err != nil {
					errs[r] = err
					return
				}
				for n, v := range res.Updates {
					params[n] = v
				}
				if r == 0 {
					grads = res.Grads
				}
			}
			out[r] = params
			if mode == compiledBoth && rep.Compiled.update == nil {
				errs[r] = errUpdateNotCompiled
			}
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return out, grads, reps[0]
}

var errUpdateNotCompiled = errors.New("the update graph did not run compiled (Compiled.update is nil)")

// TestCompiledUpdateMatchesInterpreter: with Replicas.Compiled, the
// optimizer update graph runs compiled too (Compiled.update is built).
// For each optimizer (the paper's RMSProp; RMSProp with weight decay and
// clipping by value and by global norm; SGD with momentum, weight decay
// and norm clipping), 3 steps on 2 loopback ranks
// land within 1e-4 relative per tensor of the interpreter (params,
// BatchNorm buffers, optimizer state, and the last step's clipped
// gradients), the ranks agree bit for bit, and against the compiled
// gradients with the interpreted update (Replicas.InterpUpdate) the
// difference is within 1e-5: the update kernels' rounding only.
func TestCompiledUpdateMatchesInterpreter(t *testing.T) {
	if _, err := codegen.FindLLVM(); err != nil {
		testenv.Check(t, err)
	}
	for _, tc := range []struct {
		name string
		opt  train.Optimizer
	}{
		{"rmsprop", train.Optimizer{}},
		{"rmsprop-wd-clip", train.Optimizer{Kind: "rmsprop", LR: 0.01, Alpha: 0.9, Eps: 1.0, Momentum: 0.9, WeightDecay: 4e-5, ClipGradNorm: 0.5, ClipGradValue: 0.05}},
		{"sgd-wd-clip", train.Optimizer{Kind: "sgd", LR: 0.05, Momentum: 0.9, WeightDecay: 1e-4, ClipGradNorm: 0.5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, wantG, _ := runUpdateReplicas(t, tc.opt, interpBoth, 2, 4, 3)
			mixed, _, _ := runUpdateReplicas(t, tc.opt, compiledGradOnly, 2, 4, 3)
			got, gotG, _ := runUpdateReplicas(t, tc.opt, compiledBoth, 2, 4, 3)
			w := compareParams(t, "compiled", want[0], got[0], nil, 1e-4)
			wg := compareParams(t, "compiled clipped gradients", wantG, gotG, nil, 1e-4)
			wm := compareParams(t, "compiled vs interpreted update", mixed[0], got[0], nil, 1e-5)
			t.Logf("worst relative difference vs the interpreter: %.2e (gradients %.2e); vs the interpreted update: %.2e", w, wg, wm)
			compareParams(t, "compiled ranks", got[0], got[1], nil, 0)
		})
	}
}

// TestCompiledGradAddsNoCopies: the compiled gradient graph keeps the
// params settable by updating each to itself, not to a copy: it has
// exactly ss.Grad's nodes (no scale-by-1 per param), and every learnable
// param's update value is the param.
func TestCompiledGradAddsNoCopies(t *testing.T) {
	g := loadSmall(t, 2)
	ss, err := train.Split(g, train.StepOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sg, err := compiledGrad(ss)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(sg.Graph.Nodes), len(ss.Grad.Nodes); got != want {
		t.Errorf("the compiled gradient graph has %d nodes, ss.Grad %d", got, want)
	}
	for _, u := range sg.Graph.Updates {
		if n := sg.Graph.Nodes[u.Param]; !n.Attrs.Bool("buffer") && u.Value != u.Param {
			t.Errorf("param %s is updated to %%%d %s, not to itself", n.Name, u.Value, sg.Graph.Nodes[u.Value].Op)
		}
	}
}
