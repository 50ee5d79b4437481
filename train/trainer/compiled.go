package trainer

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sync"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/codegen/lower"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
	"github.com/kiln-dev/kiln/train"
)

// Compiled runs training steps as native code: the step graph is planned
// (passes.RunTraining), lowered (lower.LowerTraining), compiled through
// LLVM and loaded with the runtime once; every param, BatchNorm buffer and
// optimizer state tensor then lives in the Model's state between steps.
// The learning rate is a run-time value (lower.LRState), so the paper's
// schedule does not rebuild anything, and so are the dropout seeds
// (lower.SeedState), so a network with dropout does not rebuild per step; a
// graph that differs otherwise is compiled again (the object cache makes
// that cheap when it was seen before). Evaluation (Infer, InferKeep in
// compiled_infer.go) runs the inference graph as native code too, compiled
// once per graph and reloaded with new weights only when they change.
//
// A Compiled holds a loaded model and a temporary directory: Close it.
type Compiled struct {
	// Threads is the runtime's thread count (0: GOMAXPROCS).
	Threads int
	// Targets are the ISAs compiled (default: AVX-512 and AVX2 on amd64,
	// NEON on arm64); the runtime picks the best the CPU supports.
	Targets []codegen.Target
	// ISA forces one of them (rt.Options.ISA).
	ISA string
	// Interp is unused: Infer runs compiled code (kept for callers that
	// set it).
	Interp Interpreter

	tc   *codegen.Toolchain
	dir  string
	key  [32]byte
	m    *rt.Model
	sg   *train.StepGraph
	out  []float32
	mine map[string]*tensor.Tensor // the tensors the last Step returned, by name
	// ready is the loaded step's lower.Program.OutputReady; progress, when
	// set, is called as its kernels complete (rt.Model.RunProgress), by
	// Replicas to start gradient all-reduces during backward
	// (replicas_compiled.go).
	ready    []int
	progress func(done int, arena []float32)
	// skipRead names updated state Step does not read back (the params
	// of Replicas' gradient step, which it leaves unchanged).
	skipRead map[string]bool
	// update runs Replicas' optimizer update graph (replicas_update.go).
	update *Compiled

	inferMu sync.Mutex               // guards infer
	infer   map[[32]byte]*inferModel // compiled inference graphs, by inferKey
}

// lrAttr matches the learning-rate attribute in a printed graph.
var lrAttr = regexp.MustCompile(`\b(lr|seed)=[^,}\s]+`)

// stepKey identifies a step graph up to its learning rate and dropout
// seeds (run-time values of the compiled step). A dropout seed attribute
// also appears as seed= in the printed graph; the seeds' differences are
// constants of the code, and train.Forward makes them 0, 1, 2, … in graph
// order whatever the step's seed.
func stepKey(g *ir.Graph) [32]byte {
	return sha256.Sum256([]byte(lrAttr.ReplaceAllString(g.String(), "${1}=_")))
}

// stepLR returns the learning rate of the graph's update ops; they must
// agree.
func stepLR(g *ir.Graph) (float64, error) {
	lr, found := 0.0, false
	for _, n := range g.Nodes {
		switch n.Op {
		case ir.OpRMSPropUpdate, ir.OpRMSPropTFUpdate, ir.OpSGDUpdate:
			v := n.Attrs.Float("lr")
			if found && v != lr {
				return 0, fmt.Errorf("trainer: the step graph's update ops use several learning rates (%v, %v); the compiled step has one", lr, v)
			}
			lr, found = v, true
		}
	}
	return lr, nil
}

func defaultTargets() []codegen.Target {
	if runtime.GOARCH == "arm64" {
		return []codegen.Target{codegen.NEON}
	}
	return []codegen.Target{codegen.AVX512, codegen.AVX2}
}

// build compiles and loads sg's graph, starting from params.
func (e *Compiled) build(sg *train.StepGraph, params map[string]*tensor.Tensor, input string, lr float64) error {
	if e.tc == nil {
		tc, err := codegen.FindLLVM()
		if err != nil {
			return fmt.Errorf("trainer: the compiled backend needs LLVM: %w", err)
		}
		e.tc = tc
	}
	if e.dir == "" {
		d, err := os.MkdirTemp("", "kiln-train-*")
		if err != nil {
			return err
		}
		e.dir = d
	}
	st, err := passes.RunTraining(sg.Graph, passes.Options{})
	if err != nil {
		return err
	}
	ts := e.Targets
	if len(ts) == 0 {
		ts = defaultTargets()
	}
	p, err := lower.LowerTraining(st, params, ts, lower.TrainOptions{Input: input, LR: float32(lr)})
	if err != nil {
		return err
	}
	so := filepath.Join(e.dir, fmt.Sprintf("step%x.so", e.key[:4]))
	if err := p.Compile(context.Background(), e.tc, so, nil); err != nil {
		return err
	}
	m, err := rt.Open(rt.Artifact{Manifest: p.Manifest, SharedObjectPath: so, Weights: p.Weights}, rt.Options{Threads: e.Threads, ISA: e.ISA, MaxSessions: 1})
	if err != nil {
		return err
	}
	if e.m != nil {
		e.m.Close()
	}
	e.m, e.sg = m, sg
	e.ready = p.OutputReady
	n := 1
	for _, d := range p.Manifest.Output.Shape {
		n *= d
	}
	e.out = make([]float32, n)
	e.mine = map[string]*tensor.Tensor{}
	return nil
}

// Step implements Executor. The tensors it returns share memory with the
// model's state (rt.Model.StateView): no parameter or optimizer state is
// copied out after a step, and passing them back as params copies nothing
// in. They are valid until the next Step, which updates them in place; a
// caller that keeps a step's values longer copies them.
func (e *Compiled) Step(sg *train.StepGraph, params, inputs map[string]*tensor.Tensor) (float32, map[string]*tensor.Tensor, error) {
	g := sg.Graph
	lr, err := stepLR(g)
	if err != nil {
		return 0, nil, err
	}
	var input string
	for _, n := range g.Inputs() {
		if n.Name != sg.Target {
			input = n.Name
		}
	}
	x, ok := inputs[input]
	if !ok {
		return 0, nil, fmt.Errorf("trainer: no value for input %q", input)
	}
	if e.m == nil || e.sg != sg {
		key := stepKey(g)
		if e.m == nil || key != e.key {
			e.key = key
			if err := e.build(sg, params, input, lr); err != nil {
				return 0, nil, err
			}
		}
		e.sg = sg
	}
	if err := e.m.SetState(lower.LRState, []float32{float32(lr)}); err != nil {
		return 0, nil, err
	}
	if seed, ok := lower.DropoutSeed(g); ok {
		if err := e.m.SetState(lower.SeedState, lower.SeedValue(seed)); err != nil {
			return 0, nil, err
		}
	}
	// State: skip the tensors this executor returned last time and the
	// caller passed back unchanged (the model holds them already).
	for _, u := range g.Updates {
		name := g.Nodes[u.Param].Name
		v, ok := params[name]
		if !ok {
			return 0, nil, fmt.Errorf("trainer: no value for param %s", name)
		}
		if e.mine[name] == v {
			continue
		}
		if err := e.m.SetState(name, v.Data); err != nil {
			return 0, nil, err
		}
	}
	for name, v := range inputs {
		if name == input {
			continue
		}
		if err := e.m.SetState(name, v.Data); err != nil {
			return 0, nil, err
		}
	}
	if err := e.m.RunProgress(x.Data, e.out, 0, e.progress); err != nil {
		return 0, nil, err
	}
	ups := map[string]*tensor.Tensor{}
	for _, u := range g.Updates {
		pn := g.Nodes[u.Param]
		if e.skipRead[pn.Name] {
			continue
		}
		t := e.mine[pn.Name]
		if t == nil {
			v, ok := e.m.StateView(pn.Name)
			if !ok {
				return 0, nil, fmt.Errorf("trainer: the compiled step has no state %s", pn.Name)
			}
			t = &tensor.Tensor{Shape: append([]int(nil), pn.Type.Shape...), Data: v}
			e.mine[pn.Name] = t
		}
		ups[pn.Name] = t
	}
	loss, _ := e.m.State(lower.LossState)
	return loss[0], ups, nil
}

// Close releases the model and the temporary directory.
func (e *Compiled) Close() error {
	var err error
	if e.m != nil {
		err = e.m.Close()
		e.m = nil
	}
	if e.update != nil {
		if cerr := e.update.Close(); err == nil {
			err = cerr
		}
		e.update = nil
	}
	if cerr := e.closeInfer(); err == nil {
		err = cerr
	}
	if e.dir != "" {
		os.RemoveAll(e.dir)
		e.dir = ""
	}
	return err
}
