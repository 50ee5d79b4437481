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
//   - mul and fold_scale compute float32(c) * x.
//   - fused_conv computes the conv2d GEMM sum, then adds the bias, then the
//     residual, then applies ReLU, each step a float32 operation in that order,
//     so it is bitwise identical to conv2d → add → relu (→ concat).
//   - fold_bn_weight computes w[o,...]*s[o] and fold_bn_bias
//     (bias-running_mean)*s + bn_bias, with s = bn_weight/sqrt(running_var+eps)
//     computed in float64 from the float32 parameters exactly as batchnorm
//     does, each result evaluated in float64 and rounded to float32 once. A
//     folded conv therefore differs from conv → batchnorm only by float32
//     rounding; without a conv bias the folded bias equals batchnorm's shift.
//   - avgpool sums a window in float32 in row-major order and divides by
//     kh*kw (count_include_pad) or by the number of in-bounds pixels.
//   - global_avgpool sums each channel in float32 over 8 interleaved partial
//     sums combined pairwise, then divides by H*W.
//   - softmax subtracts the maximum and computes exp and the normalising sum in
//     float64, rounding each result to float32 once.
//   - the training ops (gradients, loss, optimizer updates; train.go)
//     accumulate every reduction in float64 and round each result once.
//
// Results are bitwise identical for every Options.Threads: no summation order
// depends on how work is split. (Building with GOAMD64=v3 lets the Go compiler
// fuse x*y+z into FMA instructions, which changes results by float32 rounding
// but keeps them deterministic.)
//
// # Scope
//
// The interpreter evaluates every op of the IR's op table in dtype f32: the
// forward ops of ir/ops.go and the ops of the optimization passes
// (ir/ops_fused.go):
//
//   - fused_conv: relu?(conv(x, weight) + bias? + residual?);
//   - destination writes: fused_conv, maxpool and avgpool with an "into"
//     operand return the destination with channels [offset, offset+C)
//     replaced by the op's value (value semantics; Run writes in place when it
//     holds the only reference to the destination's storage, with identical
//     results);
//   - empty: a zero tensor of the declared type;
//   - the build-time transforms fold_bn_weight, fold_bn_bias, fold_scale and
//     pack_weight, evaluated like any other node, once per Run;
//   - reorder, which converts between the plain layout and NCHW{c}c;
//   - the training ops of ir/ops_train.go (train.go): backward ops,
//     dropout_train, softmax_xent and its gradient, optimizer updates.
//
// # Layouts
//
// A value whose node has a physical layout (Type.Layout not plain: NCHW{c}c
// or OIhw{c}i{c}o, see ir/layout.go) is held as its physical data: the
// tensor's Shape is the physical shape, for example [N, ceil(C/c), H, W, c]
// for NCHW{c}c and [ceil(O/c), ceil(I/c), kh, kw, c, c] for OIhw{c}i{c}o, and
// it holds ir.PhysicalNumel elements (see layout.go). Inputs and params with a
// layout are fed physical, and outputs and kept values are returned as stored;
// ToLogical and ToPhysical convert. Every op is computed on logical tensors:
// blocked operands are converted to the plain layout, the op's evaluator
// runs, and the result is converted to the node's layout with zero padding
// lanes. Layouts that do not apply to a value's type, and ops outside the op
// table, are reported as errors naming the node; extending the interpreter to
// a new op is a matter of adding an entry to the evaluator table (see
// evaluators).
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
	// Reducer, when set, all-reduces the statistics of batchnorm_train and
	// batchnorm_train_grad nodes with the sync attribute across
	// data-parallel replicas (synchronized BatchNorm; dist.Comm is one);
	// nil means a single replica. See dist.go.
	Reducer Reducer
	// OnValue, when set, is called with each node's index and value right
	// after the node has run, on Run's goroutine, in node order (a
	// data-parallel trainer starts the all-reduce of a bucket of gradients
	// from it while the rest of backward runs). The value must not be
	// modified; copy it to keep it.
	OnValue func(node int, v *tensor.Tensor) error
}

// Result holds the values computed by Run.
type Result struct {
	// Outputs holds the value of each of the graph's outputs, in the order of
	// Graph.Outputs, as stored: physical for nodes with a layout (see
	// ToLogical).
	Outputs []*tensor.Tensor
	// Values maps each node index of Options.Keep to its value, as stored.
	Values map[int]*tensor.Tensor
	// Updates maps the name of every param the graph updates (Graph.Updates)
	// to its new value; the params passed to Run are not modified.
	Updates map[string]*tensor.Tensor
}

// Run evaluates g with the given parameters (keyed by param node Name, the
// full checkpoint key) and inputs (keyed by input node Name) and returns the
// graph's outputs and the values of the nodes listed in opt.Keep.
//
// Run first checks that every op and layout is supported, then verifies the
// graph (g.Verify) and checks that every input and param is present with
// exactly its node's (physical) shape; any problem is returned as an error,
// never a panic. Entries of params and inputs that the graph does not use are
// ignored. Only nodes that an output or a kept node depends on are
// evaluated.
//
// Values with a physical layout are fed and returned as physical tensors
// (see the package doc's Layouts and ToLogical).
//
// Run never modifies params or inputs. Returned tensors may share storage with
// them or with each other (input, param, flatten and dropout nodes, and
// reorder nodes whose operand and result are both plain, are views of their
// operand), so callers that modify a result should copy it first.
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
	for _, u := range g.Updates {
		keep[u.Value] = true
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

	// refs counts, per storage array, the live values that use it (views such
	// as flatten share their operand's). Fed tensors count twice, once as a
	// pin that is never released, because Run must never modify them. A
	// value that is not kept, whose storage has one reference and whose node
	// has exactly one remaining use may be overwritten by that use (an into
	// destination written in place).
	refs := map[*float32]int{}
	for _, v := range vals {
		if s := storage(v); s != nil {
			refs[s] += 2
		}
	}

	e := &evaluator{threads: threads, reducer: opt.Reducer}
	// multi holds the results of multi-result nodes until their last result
	// node has run; vals of such a node stays nil.
	multi := map[int][]*tensor.Tensor{}
	for i, n := range g.Nodes {
		if !needed[i] {
			vals[i] = nil
			continue
		}
		switch {
		case n.IsMulti():
			args := make([]*tensor.Tensor, len(n.Args))
			for j, a := range n.Args {
				args[j] = vals[a]
			}
			outs, err := multiEvaluators[n.Op](e, n, args)
			if err != nil {
				return nil, ir.Errorf(n.Pos, "%%%d %s: %v", i, n.Op, err)
			}
			for k, out := range outs {
				if err := checkPhysical(out, n.Results[k]); err != nil {
					return nil, ir.Errorf(n.Pos, "%%%d %s: result %d: interpreter produced %v", i, n.Op, k, err)
				}
			}
			multi[i] = outs
		case n.Op == ir.OpResult:
			out := multi[n.Args[0]][n.Attrs.Int("index")]
			vals[i] = out
			refs[storage(out)]++
		case n.Op != ir.OpInput && n.Op != ir.OpParam:
			args := make([]*tensor.Tensor, len(n.Args))
			types := make([]ir.Type, len(n.Args))
			e.reuse = make([]bool, len(n.Args))
			for j, a := range n.Args {
				args[j] = vals[a]
				types[j] = g.Nodes[a].Type
				e.reuse[j] = !keep[a] && remaining[a] == 1 && refs[storage(vals[a])] == 1
			}
			out, err := e.evalNode(n, args, types)
			if err != nil {
				return nil, ir.Errorf(n.Pos, "%%%d %s: %v", i, n.Op, err)
			}
			if err := checkPhysical(out, n.Type); err != nil {
				// An interpreter bug, not a user error; report it rather than
				// computing garbage downstream.
				return nil, ir.Errorf(n.Pos, "%%%d %s: interpreter produced %v", i, n.Op, err)
			}
			if k := ir.IntoOperand(n); k >= 0 && inPlaceHook != nil && storage(out) == storage(args[k]) {
				inPlaceHook(i)
			}
			vals[i] = out
			refs[storage(out)]++
		}
		if opt.OnValue != nil && vals[i] != nil {
			if err := opt.OnValue(i, vals[i]); err != nil {
				return nil, ir.Errorf(n.Pos, "%%%d %s: %v", i, n.Op, err)
			}
		}
		// Free operands whose last user this was.
		for _, a := range n.Args {
			remaining[a]--
			if remaining[a] == 0 {
				delete(multi, a)
			}
			if remaining[a] == 0 && !keep[a] {
				if s := storage(vals[a]); refs[s] <= 1 {
					delete(refs, s)
				} else {
					refs[s]--
				}
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
	if len(g.Updates) > 0 {
		res.Updates = map[string]*tensor.Tensor{}
		for _, u := range g.Updates {
			res.Updates[g.Nodes[u.Param].Name] = vals[u.Value]
		}
	}
	return res, nil
}

// releaseHook, if set (by tests), is called with the index of every value
// Run releases, right after its last user has run.
var releaseHook func(node int)

// inPlaceHook, if set (by tests), is called with the index of every node whose
// destination write Run performed in place.
var inPlaceHook func(node int)

// storage identifies the array behind t's data (nil for nil or empty t).
func storage(t *tensor.Tensor) *float32 {
	if t == nil || len(t.Data) == 0 {
		return nil
	}
	return &t.Data[0]
}

// evalNode evaluates n. Ops run on plain (logical) tensors: when n or any
// operand has a physical layout, blocked operands are converted to logical
// tensors first (fresh copies, which the op may reuse as destinations) and the
// result is converted to n's layout, with zero padding lanes. This is slow but
// obviously correct, which is what the oracle needs.
func (e *evaluator) evalNode(n *ir.Node, args []*tensor.Tensor, types []ir.Type) (*tensor.Tensor, error) {
	f := evaluators[n.Op]
	blocked := !n.Type.Layout.IsPlain()
	for _, t := range types {
		blocked = blocked || !t.Layout.IsPlain()
	}
	if !blocked {
		return f(e, n, args)
	}
	logical := make([]*tensor.Tensor, len(args))
	for j, a := range args {
		if types[j].Layout.IsPlain() {
			logical[j] = a
			continue
		}
		l, err := ToLogical(a, types[j])
		if err != nil {
			return nil, err
		}
		logical[j] = l
		e.reuse[j] = true
	}
	out, err := f(e, n, logical)
	if err != nil {
		return nil, err
	}
	return ToPhysical(out, n.Type)
}

// Supports reports whether the interpreter can evaluate op.
func Supports(op string) bool {
	_, ok := evaluators[op]
	_, okMulti := multiEvaluators[op]
	return ok || okMulti || op == ir.OpInput || op == ir.OpParam || op == ir.OpResult
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
		case n.Type.DType != ir.F32 && n.Type.DType != 0:
			errs.Add(ir.Errorf(n.Pos, "%%%d %s: dtype %s not supported by the interpreter (f32 only)", i, n.Op, n.Type.DType))
		case n.IsMulti():
			for k, t := range n.Results {
				if t.DType != ir.F32 || !t.Layout.IsPlain() {
					errs.Add(ir.Errorf(n.Pos, "%%%d %s: result %d is %s; multi-result ops run on plain f32 only", i, n.Op, k, t))
				}
			}
		default:
			if err := checkLayout(n); err != nil {
				errs.Add(ir.Errorf(n.Pos, "%%%d %s: %v", i, n.Op, err))
			}
		}
	}
	return errs.Err()
}

// checkLayout checks that n's layout applies to its type. (That the layout
// attribute of reorder and pack_weight names a layout of the right kind and
// is the result's is an operand rule of the op table, checked by Verify.)
func checkLayout(n *ir.Node) error {
	_, err := ir.PhysicalNumel(n.Type)
	return err
}

// feed places the inputs and params in vals after checking that each one is
// present, has its node's physical shape (see PhysicalShape) and holds as many
// values as that shape.
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
		// Verified graph: the layout applies.
		want, _ := PhysicalShape(n.Type)
		numel, _ := ir.PhysicalNumel(n.Type)
		var phys string
		if !n.Type.Layout.IsPlain() {
			phys = fmt.Sprintf(" (physical layout of %s)", n.Type)
		}
		t := src[n.Name]
		switch {
		case t == nil:
			errs.Add(fmt.Errorf("missing %s %q (shape %s%s)", n.Op, n.Name, ir.ShapeString(want), phys))
		case !ir.ShapeEqual(t.Shape, want):
			errs.Add(fmt.Errorf("%s %q: shape %s, want %s%s", n.Op, n.Name, ir.ShapeString(t.Shape), ir.ShapeString(want), phys))
		case len(t.Data) != numel:
			errs.Add(fmt.Errorf("%s %q: shape %s needs %d values, tensor holds %d", n.Op, n.Name, ir.ShapeString(want), numel, len(t.Data)))
		default:
			vals[i] = t
		}
	}
	return errs.Err()
}
