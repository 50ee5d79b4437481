package codegen

import (
	"fmt"

	"github.com/llir/llvm/ir"
	"github.com/llir/llvm/ir/constant"
	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/metadata"
	"github.com/llir/llvm/ir/types"
	"github.com/llir/llvm/ir/value"
)

// builder emits the body of one kernel function for one target. It wraps the
// llir/llvm instruction constructors with constant folding of i64 index
// arithmetic (so offsets known at generation time stay constants), vector
// helpers and structured loops whose loop-carried values become phi nodes.
type builder struct {
	m       *Module
	t       Target
	f       *ir.Func
	b       *ir.Block // current insertion block
	arena   value.Value
	weights value.Value
	begin   value.Value
	end     value.Value
	vec     *types.VectorType // <VectorLanes x float>
}

var (
	f32  = types.Float
	pf32 = types.NewPointer(types.Float)
	i64  = types.I64
)

func ci(v int) *constant.Int { return constant.NewInt(i64, int64(v)) }

// cf is a float constant, rounded to float32 first so that LLVM accepts it.
func cf(v float64) *constant.Float {
	return constant.NewFloat(f32, float64(float32(v)))
}

func constOf(v value.Value) (int64, bool) {
	if c, ok := v.(*constant.Int); ok {
		return c.X.Int64(), true
	}
	return 0, false
}

// Integer arithmetic on i64 with folding.

func (g *builder) add(x, y value.Value) value.Value {
	a, ok1 := constOf(x)
	b, ok2 := constOf(y)
	switch {
	case ok1 && ok2:
		return constant.NewInt(i64, a+b)
	case ok1 && a == 0:
		return y
	case ok2 && b == 0:
		return x
	}
	return g.b.NewAdd(x, y)
}

func (g *builder) sub(x, y value.Value) value.Value {
	a, ok1 := constOf(x)
	b, ok2 := constOf(y)
	switch {
	case ok1 && ok2:
		return constant.NewInt(i64, a-b)
	case ok2 && b == 0:
		return x
	}
	return g.b.NewSub(x, y)
}

func (g *builder) mul(x, y value.Value) value.Value {
	a, ok1 := constOf(x)
	b, ok2 := constOf(y)
	switch {
	case ok1 && ok2:
		return constant.NewInt(i64, a*b)
	case ok1 && a == 1:
		return y
	case ok2 && b == 1:
		return x
	case ok1 && a == 0, ok2 && b == 0:
		return ci(0)
	}
	return g.b.NewMul(x, y)
}

// addMul returns x + y*k for a constant k.
func (g *builder) addMul(x, y value.Value, k int) value.Value {
	return g.add(x, g.mul(y, ci(k)))
}

func (g *builder) udiv(x value.Value, k int) value.Value {
	if a, ok := constOf(x); ok {
		return ci(int(a) / k)
	}
	if k == 1 {
		return x
	}
	return g.b.NewUDiv(x, ci(k))
}

func (g *builder) urem(x value.Value, k int) value.Value {
	if a, ok := constOf(x); ok {
		return ci(int(a) % k)
	}
	if k == 1 {
		return ci(0)
	}
	return g.b.NewURem(x, ci(k))
}

func (g *builder) icmp(p enum.IPred, x, y value.Value) value.Value {
	return g.b.NewICmp(p, x, y)
}

func (g *builder) smax(x, y value.Value) value.Value {
	a, ok1 := constOf(x)
	b, ok2 := constOf(y)
	if ok1 && ok2 {
		return constant.NewInt(i64, max(a, b))
	}
	return g.b.NewSelect(g.icmp(enum.IPredSGT, x, y), x, y)
}

func (g *builder) smin(x, y value.Value) value.Value {
	a, ok1 := constOf(x)
	b, ok2 := constOf(y)
	if ok1 && ok2 {
		return constant.NewInt(i64, min(a, b))
	}
	return g.b.NewSelect(g.icmp(enum.IPredSLT, x, y), x, y)
}

// Memory.

// gep returns base + off floats.
func (g *builder) gep(base, off value.Value) value.Value {
	if c, ok := constOf(off); ok && c == 0 {
		return base
	}
	return g.b.NewGetElementPtr(f32, base, off)
}

func (g *builder) load(base, off value.Value) value.Value {
	l := g.b.NewLoad(f32, g.gep(base, off))
	l.Align = 4
	return l
}

func (g *builder) store(v, base, off value.Value) {
	g.b.NewStore(v, g.gep(base, off)).Align = 4
}

// vload loads one <VectorLanes x float> vector at base+off floats.
func (g *builder) vload(base, off value.Value) value.Value {
	p := g.b.NewBitCast(g.gep(base, off), types.NewPointer(g.vec))
	l := g.b.NewLoad(g.vec, p)
	l.Align = 4
	return l
}

func (g *builder) vstore(v, base, off value.Value) {
	p := g.b.NewBitCast(g.gep(base, off), types.NewPointer(g.vec))
	g.b.NewStore(v, p).Align = 4
}

// Vectors.

func (g *builder) vzero() value.Value { return constant.NewZeroInitializer(g.vec) }

func (g *builder) vconst(x float64) value.Value {
	elems := make([]constant.Constant, g.t.VectorLanes)
	for i := range elems {
		elems[i] = cf(x)
	}
	return constant.NewVector(g.vec, elems...)
}

// splat broadcasts scalar x into every lane (LLVM folds a splat of a load
// into vbroadcastss or an embedded {1toN} operand, ld1r on NEON).
func (g *builder) splat(x value.Value) value.Value { return g.broadcast(x) }

// broadcast returns the vector of the target's lanes whose every lane is
// the scalar x (of any element type).
func (g *builder) broadcast(x value.Value) value.Value {
	vt := types.NewVector(uint64(g.t.VectorLanes), x.Type())
	ins := g.b.NewInsertElement(constant.NewUndef(vt), x, ci(0))
	mask := constant.NewZeroInitializer(types.NewVector(uint64(g.t.VectorLanes), types.I32))
	return g.b.NewShuffleVector(ins, constant.NewUndef(vt), mask)
}

// fma returns a*b+c with llvm.fma on the argument type (vector or float).
func (g *builder) fma(a, b, c value.Value) value.Value {
	return g.b.NewCall(g.m.intrinsic("llvm.fma", a.Type(), 3), a, b, c)
}

func (g *builder) floor(x value.Value) value.Value {
	return g.b.NewCall(g.m.intrinsic("llvm.floor", x.Type(), 1), x)
}

func (g *builder) fadd(x, y value.Value) value.Value { return g.b.NewFAdd(x, y) }
func (g *builder) fsub(x, y value.Value) value.Value { return g.b.NewFSub(x, y) }
func (g *builder) fmul(x, y value.Value) value.Value { return g.b.NewFMul(x, y) }

// fmax returns x > y ? x : y (a NaN in x propagates, as in PyTorch's relu).
func (g *builder) fmax(x, y value.Value) value.Value {
	return g.b.NewSelect(g.b.NewFCmp(enum.FPredOLT, x, y), y, x)
}

// fmaxNaN is the NaN-propagating maximum of an accumulator acc and a new
// value x, for max pooling and max reductions: x if x > acc or x is NaN,
// else acc. A NaN accumulator stays NaN (x > NaN is false), so the result is
// NaN when any operand seen was NaN, as in the interpreter (evalMaxPool) and
// PyTorch's max_pool2d kernel (`if ((val > maxval) || std::isnan(val))`,
// aten/src/ATen/native/cpu/MaxPoolKernel.cpp).
//
// A single compare and select cannot do this: select(x > acc, x, acc) (LLVM
// lowers it to x86 maxps/vmaxps, which returns the second operand when either
// is NaN) drops a NaN x, and llvm.maxnum drops NaN by definition. The cost is
// one more compare and an or of the masks per element, on the accumulator's
// dependency chain; hot loops use fmaxKeep and isNaN instead (see Pool).
func (g *builder) fmaxNaN(acc, x value.Value) value.Value {
	c := g.b.NewOr(g.b.NewFCmp(enum.FPredOGT, x, acc), g.isNaN(x))
	return g.b.NewSelect(c, x, acc)
}

// fmaxKeep returns x > acc ? x : acc: a NaN accumulator stays NaN, a NaN x
// is dropped (LLVM lowers it to one maxps/vmaxps with acc second). Callers
// that must propagate a NaN x or-accumulate isNaN(x) beside it.
func (g *builder) fmaxKeep(acc, x value.Value) value.Value {
	return g.b.NewSelect(g.b.NewFCmp(enum.FPredOGT, x, acc), x, acc)
}

// isNaN returns the lanes of x that are NaN (fcmp uno x, x).
func (g *builder) isNaN(x value.Value) value.Value {
	return g.b.NewFCmp(enum.FPredUNO, x, x)
}

func (g *builder) relu(x value.Value) value.Value {
	z := value.Value(cf(0))
	if _, ok := x.Type().(*types.VectorType); ok {
		z = g.vzero()
	}
	return g.fmax(x, z)
}

// hreduce folds the lanes of vector v with op.
func (g *builder) hreduce(v value.Value, op func(a, b value.Value) value.Value) value.Value {
	acc := value.Value(g.b.NewExtractElement(v, ci(0)))
	for i := 1; i < g.t.VectorLanes; i++ {
		acc = op(acc, g.b.NewExtractElement(v, ci(i)))
	}
	return acc
}

// Control flow.

func (g *builder) newBlock() *ir.Block { return g.f.NewBlock("") }

// loop emits for i := lo; i < hi; i++ { carried = body(i, carried) } and
// returns the carried values after the loop. The loop is bottom-tested, with
// a guard unless lo < hi is known; the induction variable and every carried
// value are phi nodes of the loop block.
func (g *builder) loop(lo, hi value.Value, carried []value.Value, body func(i value.Value, c []value.Value) []value.Value) []value.Value {
	return g.loopOpt(lo, hi, false, carried, body)
}

// loopNoUnroll is loop with llvm.loop.unroll.disable on the back-edge. The
// conv kernels use it for reduction loops whose full unrolling would let
// LLVM merge the broadcasts of overlapping taps across iterations and keep
// them live, pushing the register tile into spills.
func (g *builder) loopNoUnroll(lo, hi value.Value, carried []value.Value, body func(i value.Value, c []value.Value) []value.Value) []value.Value {
	return g.loopOpt(lo, hi, true, carried, body)
}

func (g *builder) loopOpt(lo, hi value.Value, noUnroll bool, carried []value.Value, body func(i value.Value, c []value.Value) []value.Value) []value.Value {
	l, okl := constOf(lo)
	h, okh := constOf(hi)
	known := okl && okh
	if known && l >= h {
		return carried
	}
	pre := g.b
	head := g.newBlock()
	var exit *ir.Block
	if known {
		pre.NewBr(head)
	} else {
		exit = g.newBlock()
		pre.NewCondBr(g.icmp(enum.IPredSLT, lo, hi), head, exit)
	}
	g.b = head
	iv := head.NewPhi(ir.NewIncoming(lo, pre))
	phis := make([]*ir.InstPhi, len(carried))
	cur := make([]value.Value, len(carried))
	for k, c := range carried {
		phis[k] = head.NewPhi(ir.NewIncoming(c, pre))
		cur[k] = phis[k]
	}
	res := body(iv, cur)
	if len(res) != len(carried) {
		panic(fmt.Sprintf("codegen: loop body returned %d values for %d carried", len(res), len(carried)))
	}
	latch := g.b
	next := latch.NewAdd(iv, ci(1))
	iv.Incs = append(iv.Incs, ir.NewIncoming(next, latch))
	for k := range phis {
		phis[k].Incs = append(phis[k].Incs, ir.NewIncoming(res[k], latch))
	}
	guarded := exit != nil
	if !guarded {
		exit = g.newBlock()
	}
	br := latch.NewCondBr(latch.NewICmp(enum.IPredSLT, next, hi), head, exit)
	if noUnroll {
		br.Metadata = append(br.Metadata, &metadata.Attachment{Name: "llvm.loop", Node: g.m.loopID()})
	}
	g.b = exit
	if !guarded {
		return res
	}
	out := make([]value.Value, len(carried))
	for k := range carried {
		out[k] = exit.NewPhi(ir.NewIncoming(carried[k], pre), ir.NewIncoming(res[k], latch))
	}
	return out
}

// loopN is loop over the constant range [0, n).
func (g *builder) loopN(n int, carried []value.Value, body func(i value.Value, c []value.Value) []value.Value) []value.Value {
	return g.loop(ci(0), ci(n), carried, body)
}

// ifThen emits if cond { then() }; then must not produce values used after.
func (g *builder) ifThen(cond value.Value, then func()) {
	if c, ok := cond.(*constant.Int); ok {
		if c.X.Sign() != 0 {
			then()
		}
		return
	}
	tb, done := g.newBlock(), g.newBlock()
	g.b.NewCondBr(cond, tb, done)
	g.b = tb
	then()
	g.b.NewBr(done)
	g.b = done
}

// ifElse emits if cond { a() } else { b() }.
func (g *builder) ifElse(cond value.Value, a, b func()) {
	tb, eb, done := g.newBlock(), g.newBlock(), g.newBlock()
	g.b.NewCondBr(cond, tb, eb)
	g.b = tb
	a()
	g.b.NewBr(done)
	g.b = eb
	b()
	g.b.NewBr(done)
	g.b = done
}

// tiles emits the outer loop over [tile_begin, tile_end).
func (g *builder) tiles(body func(t value.Value)) {
	g.loop(g.begin, g.end, nil, func(t value.Value, _ []value.Value) []value.Value {
		body(t)
		return nil
	})
}

// i32Type is i32, or a vector of i32 as wide as x.
func (g *builder) i32Type(x value.Value) types.Type {
	if v, ok := x.Type().(*types.VectorType); ok {
		return types.NewVector(v.Len, types.I32)
	}
	return types.I32
}

// i32Const is the i32 constant c, splatted when x is a vector.
func (g *builder) i32Const(x value.Value, c int) value.Value {
	if v, ok := x.Type().(*types.VectorType); ok {
		elems := make([]constant.Constant, v.Len)
		for i := range elems {
			elems[i] = constant.NewInt(types.I32, int64(c))
		}
		return constant.NewVector(types.NewVector(v.Len, types.I32), elems...)
	}
	return constant.NewInt(types.I32, int64(c))
}
