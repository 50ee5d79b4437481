package cuda

import (
	"fmt"

	"github.com/llir/llvm/ir"
	"github.com/llir/llvm/ir/constant"
	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/types"
	"github.com/llir/llvm/ir/value"
)

// Address spaces of NVPTX (LLVM NVPTX usage guide, "Address Spaces").
const (
	spaceGlobal = 1
	spaceShared = 3
)

var (
	f32     = types.Float
	i16     = types.I16
	i32     = types.I32
	i64     = types.I64
	gf32    = &types.PointerType{ElemType: types.Float, AddrSpace: spaceGlobal}
	mmaType = types.NewStruct(f32, f32, f32, f32)
)

// ci is an i64 constant.
func ci(v int) *constant.Int { return constant.NewInt(i64, int64(v)) }

// ci32 is an i32 constant.
func ci32(v int64) *constant.Int { return constant.NewInt(i32, v) }

// cf is an f32 constant.
func cf(v float64) *constant.Float { return constant.NewFloat(f32, float64(float32(v))) }

func constOf(v value.Value) (int64, bool) {
	if c, ok := v.(*constant.Int); ok && c.Typ == i64 {
		return c.X.Int64(), true
	}
	return 0, false
}

// gen is the module under construction: the LLVM module, the declared
// intrinsics and the kernels emitted so far (deduplicated by signature).
type gen struct {
	m       *ir.Module
	intr    map[string]*ir.Func
	kernels map[string]string // dedup key -> kernel name
	nshared int
	// forceWarps, when set, overrides tileFor (tests cover both tiles).
	forceWarps int
}

func newGen(triple string) *gen {
	m := ir.NewModule()
	m.TargetTriple = triple
	return &gen{m: m, intr: map[string]*ir.Func{}, kernels: map[string]string{}}
}

// intrinsic declares (once) and returns the intrinsic name.
func (g *gen) intrinsic(name string, ret types.Type, params ...types.Type) *ir.Func {
	if f, ok := g.intr[name]; ok {
		return f
	}
	var ps []*ir.Param
	for _, p := range params {
		ps = append(ps, ir.NewParam("", p))
	}
	f := g.m.NewFunc(name, ret, ps...)
	g.intr[name] = f
	return f
}

// kb emits one kernel: a ptx_kernel function whose parameters are global
// f32 pointers, with i64 index arithmetic folded at generation time where
// operands are constants, and structured loops whose carried values are
// phi nodes (no allocas: everything stays in registers).
type kb struct {
	g *gen
	f *ir.Func
	b *ir.Block
	n int // block counter
}

// kernel starts a kernel called name with the given pointer parameters.
func (g *gen) kernel(name string, params ...string) (*kb, []value.Value) {
	var ps []*ir.Param
	for _, p := range params {
		ps = append(ps, ir.NewParam(p, gf32))
	}
	f := g.m.NewFunc(name, types.Void, ps...)
	f.CallingConv = enum.CallingConvPTXKernel
	k := &kb{g: g, f: f}
	k.b = f.NewBlock("entry")
	var vs []value.Value
	for _, p := range ps {
		vs = append(vs, p)
	}
	return k, vs
}

// shared declares a per-kernel shared-memory array of n elements of t.
func (k *kb) shared(n int, t types.Type) value.Value {
	k.g.nshared++
	at := types.NewArray(uint64(n), t)
	gv := k.g.m.NewGlobal(fmt.Sprintf("%s.smem%d", k.f.Name(), k.g.nshared), at)
	gv.Init = constant.NewUndef(at)
	gv.Linkage = enum.LinkageInternal
	gv.Typ = &types.PointerType{ElemType: at, AddrSpace: spaceShared}
	gv.AddrSpace = spaceShared
	gv.Align = 16
	return gv
}

func (k *kb) block(what string) *ir.Block {
	k.n++
	return k.f.NewBlock(fmt.Sprintf("%s%d", what, k.n))
}

// sreg reads a PTX special register (tid.x, ctaid.x, ...) as i64.
func (k *kb) sreg(name string) value.Value {
	f := k.g.intrinsic("llvm.nvvm.read.ptx.sreg."+name, i32)
	return k.b.NewZExt(k.b.NewCall(f), i64)
}

func (k *kb) barrier() { k.b.NewCall(k.g.intrinsic("llvm.nvvm.barrier0", types.Void)) }

// Integer arithmetic on i64 with folding.

func (k *kb) add(x, y value.Value) value.Value {
	a, ok1 := constOf(x)
	b, ok2 := constOf(y)
	switch {
	case ok1 && ok2:
		return ci(int(a + b))
	case ok1 && a == 0:
		return y
	case ok2 && b == 0:
		return x
	}
	return k.b.NewAdd(x, y)
}

func (k *kb) sub(x, y value.Value) value.Value {
	a, ok1 := constOf(x)
	b, ok2 := constOf(y)
	switch {
	case ok1 && ok2:
		return ci(int(a - b))
	case ok2 && b == 0:
		return x
	}
	return k.b.NewSub(x, y)
}

func (k *kb) mul(x value.Value, c int) value.Value {
	if a, ok := constOf(x); ok {
		return ci(int(a) * c)
	}
	switch c {
	case 0:
		return ci(0)
	case 1:
		return x
	}
	return k.b.NewMul(x, ci(c))
}

func (k *kb) div(x value.Value, c int) value.Value {
	if a, ok := constOf(x); ok {
		return ci(int(a) / c)
	}
	if c == 1 {
		return x
	}
	return k.b.NewUDiv(x, ci(c))
}

func (k *kb) rem(x value.Value, c int) value.Value {
	if a, ok := constOf(x); ok {
		return ci(int(a) % c)
	}
	if c == 1 {
		return ci(0)
	}
	return k.b.NewURem(x, ci(c))
}

// lt, le are signed comparisons of i64 values.
func (k *kb) lt(x, y value.Value) value.Value { return k.b.NewICmp(enum.IPredSLT, x, y) }
func (k *kb) ge(x, y value.Value) value.Value { return k.b.NewICmp(enum.IPredSGE, x, y) }

// and is the conjunction of i1 values (nil entries are true).
func (k *kb) and(cs ...value.Value) value.Value {
	var r value.Value
	for _, c := range cs {
		if c == nil {
			continue
		}
		if r == nil {
			r = c
		} else {
			r = k.b.NewAnd(r, c)
		}
	}
	if r == nil {
		return constant.True
	}
	return r
}

// inRange is 0 <= x < n (x a signed i64).
func (k *kb) inRange(x value.Value, n int) value.Value {
	if a, ok := constOf(x); ok {
		return constant.NewBool(a >= 0 && a < int64(n))
	}
	return k.b.NewICmp(enum.IPredULT, x, ci(n))
}

// gep is &p[i] on a global f32 pointer.
func (k *kb) gep(p, i value.Value) value.Value {
	return k.b.NewGetElementPtr(f32, p, i)
}

// sgep is &s[i] on a shared array.
func (k *kb) sgep(s, i value.Value) value.Value {
	at := s.Type().(*types.PointerType).ElemType
	return k.b.NewGetElementPtr(at, s, ci(0), i)
}

func (k *kb) load(p value.Value) value.Value {
	return k.b.NewLoad(p.Type().(*types.PointerType).ElemType, p)
}

func (k *kb) store(v, p value.Value) { k.b.NewStore(v, p) }

// loadIf loads p[i] when ok, else yields 0: the address is clamped to p[0]
// so that it is always valid, and the value selected (branch-free).
func (k *kb) loadIf(ok value.Value, p, i value.Value) value.Value {
	if c, isC := ok.(*constant.Int); isC && c.Typ == types.I1 {
		if c.X.Sign() != 0 {
			return k.load(k.gep(p, i))
		}
		return cf(0)
	}
	idx := k.b.NewSelect(ok, i, ci(0))
	v := k.load(k.gep(p, idx))
	return k.b.NewSelect(ok, v, cf(0))
}

func (k *kb) fma(a, b, c value.Value) value.Value {
	return k.b.NewCall(k.g.intrinsic("llvm.fma.f32", f32, f32, f32, f32), a, b, c)
}

func (k *kb) fmax(a, b value.Value) value.Value {
	return k.b.NewCall(k.g.intrinsic("llvm.maxnum.f32", f32, f32, f32), a, b)
}

func (k *kb) relu(x value.Value) value.Value {
	return k.b.NewSelect(k.b.NewFCmp(enum.FPredOGT, x, cf(0)), x, cf(0))
}

// clamp is min(max(x, lo), hi) (lo <= hi; a NaN stays NaN).
func (k *kb) clamp(x value.Value, lo, hi float32) value.Value {
	x = k.b.NewSelect(k.b.NewFCmp(enum.FPredOLT, x, cf(float64(lo))), cf(float64(lo)), x)
	return k.b.NewSelect(k.b.NewFCmp(enum.FPredOGT, x, cf(float64(hi))), cf(float64(hi)), x)
}

// loop emits for i := 0; i < n; i++ with loop-carried values carried
// (phis); body returns the next values. It returns the values after the
// loop. A trip count of 1 is emitted straight.
func (k *kb) loop(n int, carried []value.Value, body func(i value.Value, c []value.Value) []value.Value) []value.Value {
	if n == 1 {
		return body(ci(0), carried)
	}
	pre := k.b
	head := k.block("loop")
	exit := k.block("exit")
	pre.NewBr(head)
	k.b = head
	iv := head.NewPhi(ir.NewIncoming(ci(0), pre))
	phis := make([]*ir.InstPhi, len(carried))
	cur := make([]value.Value, len(carried))
	for j, c := range carried {
		phis[j] = head.NewPhi(ir.NewIncoming(c, pre))
		cur[j] = phis[j]
	}
	next := body(iv, cur)
	inc := k.b.NewAdd(iv, ci(1))
	latch := k.b
	latch.NewCondBr(k.b.NewICmp(enum.IPredSLT, inc, ci(n)), head, exit)
	iv.Incs = append(iv.Incs, ir.NewIncoming(inc, latch))
	for j := range phis {
		phis[j].Incs = append(phis[j].Incs, ir.NewIncoming(next[j], latch))
	}
	k.b = exit
	return next
}

// ifThen emits if cond { body }.
func (k *kb) ifThen(cond value.Value, body func()) {
	then := k.block("then")
	done := k.block("done")
	k.b.NewCondBr(cond, then, done)
	k.b = then
	body()
	k.b.NewBr(done)
	k.b = done
}

func (k *kb) ret() { k.b.NewRet(nil) }

// globalIndex is blockIdx.x*threads + threadIdx.x.
func (k *kb) globalIndex(threads int) value.Value {
	return k.add(k.mul(k.sreg("ctaid.x"), threads), k.sreg("tid.x"))
}
