// Package interp is Kiln's reference interpreter: it evaluates an ir.Graph on
// the CPU in float32 and serves as the numerical oracle that every pass and
// every compiled target is checked against.
//
// It is written for clarity first. Each op is a plain Go function over
// row-major (logical layout) tensors; convolutions and dense layers run on a
// cache-blocked, register-tiled GEMM (gemm.go) parallelised over goroutines,
// fast enough to run Inception-v4 at 299×299 in seconds.
//
// # Numerics
//
// All arithmetic is float32 unless stated here:
//   - conv2d and dense accumulate each output in float32 in blocks of 256
//     along the reduction axis (sequential within a block, blocks added left to
//     right), then add the bias; see gemm.go.
//   - batchnorm computes scale = weight/sqrt(running_var+eps) and
//     shift = bias - running_mean*scale per channel in float64 from the float32
//     parameters, rounds both to float32, and applies y = x*scale + shift in
//     float32.
//   - mul computes float32(c) * x.
//   - avgpool sums a window in float32 in row-major order and divides by
//     kh*kw (count_include_pad) or by the number of in-bounds pixels.
//   - global_avgpool sums each channel in float32 over 8 interleaved partial
//     sums combined pairwise, then divides by H*W.
//   - softmax subtracts the maximum and computes exp and the normalising sum in
//     float64, rounding each result to float32 once.
//
// Results are bitwise identical for every Options.Threads: no summation order
// depends on how work is split. (Building with GOAMD64=v3 lets the Go compiler
// fuse x*y+z into FMA instructions, which changes results by float32 rounding
// but keeps them deterministic.)
//
// # Scope
//
// The interpreter evaluates the ops of the IR's op table on logical layouts
// (Type.Layout == "") and dtype f32. Any other op (for example fused ops added
// by later passes) or physical layout is reported as an error naming the node,
// so that extending the interpreter is a matter of adding an entry to the
// evaluator table (see evaluators).
package interp

import (
	"fmt"
	"runtime"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// Options controls a run.
type Options struct {
	// Threads is the number of goroutines used inside ops; 0 means
	// runtime.GOMAXPROCS(0). Results do not depend on it.
	Threads int
	// Keep lists node indices whose values must be returned in
	// Result.Values (for example the nodes of graph marks, to compare stage
	// outputs). Other intermediate values are freed as soon as their last user
	// has run.
	Keep []int
}

// Result holds the values computed by Run.
type Result struct {
	// Outputs holds the value of each of the graph's outputs, in the order of
	// Graph.Outputs.
	Outputs []*tensor.Tensor
	// Values maps each node index of Options.Keep to its value.
	Values map[int]*tensor.Tensor
}

// Run evaluates g with the given parameters (keyed by param node Name, the
// full checkpoint key) and inputs (keyed by input node Name) and returns the
// graph's outputs and the values of the nodes listed in opt.Keep.
//
// Run first checks that every op and layout is supported, then verifies the
// graph (g.Verify) and checks that every input and param is present with
// exactly its node's shape; any problem is returned as an error, never a
// panic. Entries of params and inputs that the graph does not use are
// ignored. Only nodes that an output or a kept node depends on are
// evaluated.
//
// Run never modifies params or inputs. Returned tensors may share storage with
// them or with each other (input, param, flatten and dropout nodes are views
// of their operand), so callers that modify a result should copy it first.
func Run(g *ir.Graph, params map[string]*tensor.Tensor, inputs map[string]*tensor.Tensor, opt Options) (*Result, error) {
	if g == nil {
		return nil, fmt.Errorf("interp: nil graph")
	}
	if err := checkSupported(g); err != nil {
		return nil, err
	}
	if err := g.Verify(); err != nil {
		return nil, err
	}
	threads := opt.Threads
	if threads < 0 {
		return nil, fmt.Errorf("interp: Options.Threads %d is negative", threads)
	}
	if threads == 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	keep := make([]bool, len(g.Nodes))
	for _, o := range g.Outputs {
		keep[o] = true
	}
	for _, k := range opt.Keep {
		if k < 0 || k >= len(g.Nodes) {
			return nil, fmt.Errorf("interp: Options.Keep: node %%%d out of range (graph has %d nodes)", k, len(g.Nodes))
		}
		keep[k] = true
	}

	vals := make([]*tensor.Tensor, len(g.Nodes))
	if err := feed(g, params, inputs, vals); err != nil {
		return nil, err
	}

	// needed[i]: node i contributes to an output or a kept value. remaining[i]
	// counts the uses of node i (with repeats, from g.Users) by needed nodes
	// that have not run yet; when it drops to zero the value is released.
	needed := make([]bool, len(g.Nodes))
	copy(needed, keep)
	for i := len(g.Nodes) - 1; i >= 0; i-- {
		if needed[i] {
			for _, a := range g.Nodes[i].Args {
				needed[a] = true
			}
		}
	}
	remaining := make([]int, len(g.Nodes))
	for i, users := range g.Users() {
		for _, u := range users {
			if needed[u] {
				remaining[i]++
			}
		}
	}

	e := &evaluator{threads: threads}
	for i, n := range g.Nodes {
		if !needed[i] {
			vals[i] = nil
			continue
		}
		if n.Op != ir.OpInput && n.Op != ir.OpParam {
			args := make([]*tensor.Tensor, len(n.Args))
			for j, a := range n.Args {
				args[j] = vals[a]
			}
			out, err := evaluators[n.Op](e, n, args)
			if err != nil {
				return nil, ir.Errorf(n.Pos, "%%%d %s: %v", i, n.Op, err)
			}
			if !ir.ShapeEqual(out.Shape, n.Type.Shape) || len(out.Data) != n.Type.Numel() {
				// An interpreter bug, not a user error; report it rather than
				// computing garbage downstream.
				return nil, ir.Errorf(n.Pos, "%%%d %s: interpreter produced shape %s, want %s",
					i, n.Op, ir.ShapeString(out.Shape), ir.ShapeString(n.Type.Shape))
			}
			vals[i] = out
		}
		// Free operands whose last user this was.
		for _, a := range n.Args {
			remaining[a]--
			if remaining[a] == 0 && !keep[a] {
				vals[a] = nil
				if releaseHook != nil {
					releaseHook(a)
				}
			}
		}
	}

	res := &Result{Values: map[int]*tensor.Tensor{}}
	for _, o := range g.Outputs {
		res.Outputs = append(res.Outputs, vals[o])
	}
	for _, k := range opt.Keep {
		res.Values[k] = vals[k]
	}
	return res, nil
}

// releaseHook, if set (by tests), is called with the index of every value
// Run releases, right after its last user has run.
var releaseHook func(node int)

// Supports reports whether the interpreter can evaluate op.
func Supports(op string) bool {
	_, ok := evaluators[op]
	return ok || op == ir.OpInput || op == ir.OpParam
}

// checkSupported rejects nil nodes, ops without an evaluator, physical
// layouts and dtypes other than f32, before anything else looks at the graph.
func checkSupported(g *ir.Graph) error {
	var errs ir.ErrorList
	for i, n := range g.Nodes {
		switch {
		case n == nil:
			errs.Add(fmt.Errorf("node %%%d is nil", i))
		case !Supports(n.Op):
			errs.Add(ir.Errorf(n.Pos, "%%%d: op %s not supported by the interpreter", i, n.Op))
		case n.Type.Layout != "":
			errs.Add(ir.Errorf(n.Pos, "%%%d %s: layout %s not supported by the interpreter (it evaluates logical layouts only)", i, n.Op, n.Type.Layout))
		case n.Type.DType != ir.F32 && n.Type.DType != 0:
			errs.Add(ir.Errorf(n.Pos, "%%%d %s: dtype %s not supported by the interpreter (f32 only)", i, n.Op, n.Type.DType))
		}
	}
	return errs.Err()
}

// feed places the inputs and params in vals after checking that each one is
// present, has its node's shape and holds as many values as that shape.
func feed(g *ir.Graph, params, inputs map[string]*tensor.Tensor, vals []*tensor.Tensor) error {
	var errs ir.ErrorList
	for i, n := range g.Nodes {
		var src map[string]*tensor.Tensor
		switch n.Op {
		case ir.OpInput:
			src = inputs
		case ir.OpParam:
			src = params
		default:
			continue
		}
		want := n.Type.Shape
		t := src[n.Name]
		switch {
		case t == nil:
			errs.Add(fmt.Errorf("missing %s %q (shape %s)", n.Op, n.Name, ir.ShapeString(want)))
		case !ir.ShapeEqual(t.Shape, want):
			errs.Add(fmt.Errorf("%s %q: shape %s, want %s", n.Op, n.Name, ir.ShapeString(t.Shape), ir.ShapeString(want)))
		case len(t.Data) != n.Type.Numel():
			errs.Add(fmt.Errorf("%s %q: shape %s needs %d values, tensor holds %d", n.Op, n.Name, ir.ShapeString(want), n.Type.Numel(), len(t.Data)))
		default:
			vals[i] = t
		}
	}
	return errs.Err()
}
