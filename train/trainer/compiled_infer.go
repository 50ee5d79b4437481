package trainer

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash/maphash"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/codegen/lower"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
)

// inferModel is an inference graph compiled once (kiln build's pipeline:
// passes.Run for the targets' channel block, lower.Lower, LLVM) and loaded
// with the weights of the params last seen (fp).
type inferModel struct {
	key     [32]byte
	st      *passes.State // planned graph; Lower runs on it again for new weights
	so      string        // the shared object, compiled once
	input   string
	keep    []int           // kept nodes of the caller's graph, in Manifest.Taps order
	kernels []rt.KernelInfo // the library's kernel list (Compile's)
	m       *rt.Model
	fp      uint64 // fingerprint of the params m was loaded with
	out     []float32
	taps    [][]float32
}

// inferSeed keys the params fingerprints for the process's lifetime.
var inferSeed = maphash.MakeSeed()

// paramsFingerprint hashes (maphash) the name, shape and bytes of every
// param of g in graph order, so that Infer notices new weights whether the
// caller passes new tensors or changed old ones in place. Hashing reads
// the weights once (GB/s), far less than one batch of inference.
func paramsFingerprint(g *ir.Graph, params map[string]*tensor.Tensor) (uint64, error) {
	var h maphash.Hash
	h.SetSeed(inferSeed)
	for _, p := range g.Params() {
		t, ok := params[p.Name]
		if !ok || t == nil {
			return 0, ir.Errorf(p.Pos, "trainer: no value for param %s", p.Name)
		}
		if !ir.ShapeEqual(t.Shape, p.Type.Shape) {
			return 0, ir.Errorf(p.Pos, "trainer: param %s: value of shape %s, want %s", p.Name, tensor.ShapeString(t.Shape), ir.ShapeString(p.Type.Shape))
		}
		h.WriteString(p.Name)
		h.WriteByte(0)
		for _, d := range t.Shape {
			h.WriteString(fmt.Sprint(d, ","))
		}
		if len(t.Data) > 0 {
			h.Write(unsafe.Slice((*byte)(unsafe.Pointer(&t.Data[0])), 4*len(t.Data)))
		}
	}
	return h.Sum64(), nil
}

// inferKey identifies a compiled inference graph: its printed IR (params,
// shapes, ops, outputs) and the kept nodes.
func inferKey(g *ir.Graph, keep []int) [32]byte {
	return sha256.Sum256([]byte(fmt.Sprintf("%s\nkeep %v\n", g.String(), keep)))
}

// Infer implements Executor: it runs the inference graph g as native code.
// The graph is compiled once per graph (and set of kept nodes), as kiln
// build compiles it; when the params differ from the last call (by
// content), only the weights blob is evaluated again (lower.Lower on the
// planned graph: BatchNorm folding, packing) and the model reopened from
// the same shared object. An evaluation pass over a test set therefore
// compiles at most once and loads its weights once.
func (e *Compiled) Infer(g *ir.Graph, params, inputs map[string]*tensor.Tensor) (*tensor.Tensor, error) {
	y, _, err := e.InferKeep(g, params, inputs, nil)
	return y, err
}

// InferKeep is Infer that also returns the values of the nodes keep of g
// (by node index, as interp.Options.Keep), compiled as extra outputs (taps)
// of the artifact, so that experiment's dead-unit measure runs on the
// compiled evaluation too.
func (e *Compiled) InferKeep(g *ir.Graph, params, inputs map[string]*tensor.Tensor, keep []int) (*tensor.Tensor, map[int]*tensor.Tensor, error) {
	e.inferMu.Lock()
	defer e.inferMu.Unlock()
	in := g.Inputs()
	if len(in) != 1 || len(g.Outputs) == 0 {
		return nil, nil, fmt.Errorf("trainer: compiled inference of %s needs one input and an output (has %d inputs, %d outputs)", g.Name, len(in), len(g.Outputs))
	}
	x, ok := inputs[in[0].Name]
	if !ok || x == nil {
		return nil, nil, fmt.Errorf("trainer: no value for input %q", in[0].Name)
	}
	if !ir.ShapeEqual(x.Shape, in[0].Type.Shape) {
		return nil, nil, fmt.Errorf("trainer: input %q of shape %s, the graph takes %s", in[0].Name, tensor.ShapeString(x.Shape), ir.ShapeString(in[0].Type.Shape))
	}
	for _, k := range keep {
		if k < 0 || k >= len(g.Nodes) || g.Nodes[k].IsMulti() {
			return nil, nil, fmt.Errorf("trainer: cannot keep node %%%d of %s", k, g.Name)
		}
	}
	key := inferKey(g, keep)
	im := e.infer[key]
	if im == nil {
		var err error
		if im, err = e.compileInfer(g, keep, key); err != nil {
			return nil, nil, err
		}
		if e.infer == nil {
			e.infer = map[[32]byte]*inferModel{}
		}
		e.infer[key] = im
	}
	fp, err := paramsFingerprint(g, params)
	if err != nil {
		return nil, nil, err
	}
	if im.m == nil || fp != im.fp {
		if err := e.loadInfer(im, params); err != nil {
			return nil, nil, err
		}
		im.fp = fp
	}
	if len(im.taps) > 0 {
		err = im.m.RunTaps(x.Data, im.out, im.taps)
	} else {
		err = im.m.Run(x.Data, im.out)
	}
	if err != nil {
		return nil, nil, err
	}
	on := g.Nodes[g.Outputs[0]]
	y := &tensor.Tensor{Shape: append([]int(nil), on.Type.Shape...), Data: append([]float32(nil), im.out...)}
	var vals map[int]*tensor.Tensor
	if len(keep) > 0 {
		vals = map[int]*tensor.Tensor{}
		for i, k := range im.keep {
			vals[k] = &tensor.Tensor{Shape: append([]int(nil), g.Nodes[k].Type.Shape...), Data: append([]float32(nil), im.taps[i]...)}
		}
	}
	return y, vals, nil
}

// compileInfer runs the inference pipeline on a copy of g whose outputs
// are g's first followed by keep (outputs are observable, so no fusion
// hides them, and the pipeline keeps their order: Manifest.Taps), lowers
// it with placeholder weights and compiles it.
func (e *Compiled) compileInfer(g *ir.Graph, keep []int, key [32]byte) (*inferModel, error) {
	if err := e.tools(); err != nil {
		return nil, err
	}
	ts := e.Targets
	if len(ts) == 0 {
		ts = defaultTargets()
	}
	gc := passes.Clone(g)
	gc.Outputs = append([]int{g.Outputs[0]}, keep...)
	st, err := passes.Run(gc, passes.Options{Target: passes.Target{Name: ts[0].Name, Block: ts[0].Block}, Consumer: passes.Codegen})
	if err != nil {
		return nil, fmt.Errorf("trainer: compiling %s for evaluation: %w", g.Name, err)
	}
	if st.Plan == nil {
		return nil, fmt.Errorf("trainer: compiling %s for evaluation: the pipeline made no plan", g.Name)
	}
	// Placeholder weights: the kernels do not depend on the weights'
	// values, only on the graph (the object cache keys them so).
	zeros := map[string]*tensor.Tensor{}
	for _, p := range g.Params() {
		zeros[p.Name] = tensor.New(p.Type.Shape...)
	}
	p, err := lower.Lower(st, zeros, ts)
	if err != nil {
		return nil, fmt.Errorf("trainer: compiling %s for evaluation: %w", g.Name, err)
	}
	so := filepath.Join(e.dir, fmt.Sprintf("infer%x.so", key[:6]))
	if err := p.Compile(context.Background(), e.tc, so, nil); err != nil {
		return nil, fmt.Errorf("trainer: compiling %s for evaluation: %w", g.Name, err)
	}
	im := &inferModel{key: key, st: st, so: so, input: g.Inputs()[0].Name, keep: append([]int(nil), keep...), kernels: p.Manifest.Kernels}
	n, err := tensor.NumelOf(g.Nodes[g.Outputs[0]].Type.Shape)
	if err != nil {
		return nil, err
	}
	im.out = make([]float32, n)
	for _, k := range keep {
		n, err := tensor.NumelOf(g.Nodes[k].Type.Shape)
		if err != nil {
			return nil, err
		}
		im.taps = append(im.taps, make([]float32, n))
	}
	return im, nil
}

// loadInfer evaluates im's weights blob from params (lower.Lower again on
// the planned graph; its kernels, already compiled, are not regenerated)
// and opens the shared object with it, replacing the model loaded before.
func (e *Compiled) loadInfer(im *inferModel, params map[string]*tensor.Tensor) error {
	ts := e.Targets
	if len(ts) == 0 {
		ts = defaultTargets()
	}
	p, err := lower.Lower(im.st, params, ts)
	if err != nil {
		return fmt.Errorf("trainer: loading the evaluation weights: %w", err)
	}
	if len(im.taps) > 0 {
		names := make([]string, len(im.taps))
		for i := range names {
			names[i] = fmt.Sprintf("kiln.keep.%d", im.keep[i])
		}
		if err := p.NameTaps(names); err != nil {
			return err
		}
	}
	// The kernels are the compiled library's: the weights' values change
	// offsets nowhere, so this Program has the same specs.
	p.Manifest.Kernels = im.kernels
	if im.m != nil {
		im.m.Close()
		im.m = nil
	}
	m, err := rt.Open(rt.Artifact{Manifest: p.Manifest, SharedObjectPath: im.so, Weights: p.Weights},
		rt.Options{Threads: e.Threads, ISA: e.ISA, MaxSessions: 1})
	if err != nil {
		return fmt.Errorf("trainer: loading the evaluation model: %w", err)
	}
	im.m = m
	return nil
}

// tools finds LLVM and makes the temporary directory, once.
func (e *Compiled) tools() error {
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
	return nil
}

// closeInfer releases the evaluation models.
func (e *Compiled) closeInfer() error {
	var err error
	for _, im := range e.infer {
		if im.m != nil {
			if cerr := im.m.Close(); err == nil {
				err = cerr
			}
			im.m = nil
		}
	}
	e.infer = nil
	return err
}
