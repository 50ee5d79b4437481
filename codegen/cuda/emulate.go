package cuda

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"sync/atomic"

	llir "github.com/llir/llvm/ir"
	"github.com/llir/llvm/ir/constant"
	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/types"
	"github.com/llir/llvm/ir/value"
)

// The host emulator runs the generated LLVM IR on the CPU, as Triton's
// interpreter mode runs Triton kernels (triton/interpreter.py): it executes
// the very functions of the module that llc compiles to PTX, not a separate
// model of the math. It interprets the IR subset the generators emit:
// integer and f32 arithmetic, icmp/fcmp/select, casts, getelementptr,
// load/store to global (the arena and weights) and shared memory, phi and
// branches, and the intrinsics llvm.fma.f32, llvm.maxnum.f32,
// llvm.nvvm.ex2.approx.f, llvm.nvvm.read.ptx.sreg.{tid,ctaid}.{x,y,z},
// llvm.nvvm.barrier0 and the mma intrinsics. Anything else is an error
// naming the instruction.
//
// Execution model: thread blocks run one after another; the threads of a
// block run as goroutines with private registers, sharing the block's
// shared-memory arrays (fresh per block). barrier0 is a rendezvous of the
// block's live threads; an mma is a rendezvous of the 32 lanes of a warp,
// the last lane to arrive computing the whole warp's D = A·B + C from the
// lanes' fragments as the PTX ISA lays them out ("Matrix Fragments for
// mma.m16n8k16 with floating point type" and "... mma.m16n8k8" for .tf32:
// groupID = lane>>2, threadID_in_group = lane%4), with products summed
// exactly in float64 and rounded once to f32 (hardware accumulation order
// is unspecified; tests allow for it). Floating-point arithmetic is IEEE
// f32 as in PTX's .rn instructions; fma is computed in float64 and
// rounded (exact except for double rounding, at most 1 ulp, rarely);
// ex2.approx is computed exactly (the hardware is within 2 ulp). Every
// access is bounds- and alignment-checked, and shared memory is race-checked
// per barrier phase (checkShared), so a missing barrier is an error rather
// than a schedule-dependent result.

// memory is one addressable segment: the arena, the weights or one shared
// array of a block. Shared arrays carry shadow words for the race check:
// per 4-byte word, the last writer and the last reader(s) with the barrier
// phase of the access (phase<<32 | thread+1; reader manyReaders when
// threads other than one read it in that phase).
type memory struct {
	name    string
	b       []byte
	written []uint64
	read    []uint64
}

const manyReaders = 0xffffffff

// checkShared is the shared-memory race check (a data-race detector in
// the spirit of CUDA's compute-sanitizer racecheck): within one barrier
// phase, a word written by one thread must not be read or written by
// another (read-after-write, write-after-write), and a word read by one
// thread must not be written by another (write-after-read). Such an access
// depends on the warps' schedule and is an error, so a missing or
// misplaced barrier fails the tests even when the interleaving the
// goroutines happened to take gave the right numbers.
func (t *thread) checkShared(m *memory, off int64, n int, write bool) error {
	me := uint64(t.phase)<<32 | uint64(t.id+1)
	for w := off / 4; w < (off+int64(n)+3)/4; w++ {
		last := atomic.LoadUint64(&m.written[w])
		if last != 0 && last>>32 == uint64(t.phase) && last != me {
			kind := "read"
			if write {
				kind = "write"
			}
			return fmt.Errorf("shared-memory race on %s byte %d: %s by thread %d after a write by thread %d in the same barrier phase", m.name, 4*w, kind, t.id, uint32(last)-1)
		}
		if write {
			r := atomic.LoadUint64(&m.read[w])
			if r != 0 && r>>32 == uint64(t.phase) && r != me {
				return fmt.Errorf("shared-memory race on %s byte %d: write by thread %d after a read by another thread in the same barrier phase", m.name, 4*w, t.id)
			}
			atomic.StoreUint64(&m.written[w], me)
			continue
		}
		for {
			r := atomic.LoadUint64(&m.read[w])
			nv := me
			if r>>32 == uint64(t.phase) && r != me {
				nv = uint64(t.phase)<<32 | manyReaders
			}
			if r == nv || atomic.CompareAndSwapUint64(&m.read[w], r, nv) {
				break
			}
		}
	}
	return nil
}

// val is one IR value: integers (masked to their width) and f32 bit
// patterns in u; pointers as (segment, byte offset u), segment indexing
// the thread's segs (0: null). Values hold no Go pointers, so a block's
// registers cost the garbage collector nothing. Aggregates (mma results)
// live in the thread's aggs, indexed by the producing call.
type val struct {
	u   uint64
	seg int32
}

type operand struct {
	slot   int // >= 0: a register; -1: constant c; -2: shared global glob
	c      val
	glob   int
	bits   int // integer width (1..64) or 32 for f32
	isFlt  bool
	isPtr  bool
	ptrElt types.Type
}

type opcode int

const (
	opAdd opcode = iota
	opSub
	opMul
	opUDiv
	opURem
	opSDiv
	opSRem
	opAnd
	opOr
	opXor
	opShl
	opLShr
	opAShr
	opICmp
	opFAdd
	opFSub
	opFMul
	opFDiv
	opFCmp
	opSelect
	opZExt
	opSExt
	opTrunc
	opBitCast
	opGEP
	opLoad
	opStore
	opExtract
	opCall
)

type einst struct {
	op     opcode
	dst    int
	a      []operand
	bits   int // result integer width
	ipred  enum.IPred
	fpred  enum.FPred
	size   int     // load/store bytes
	scale  []int64 // GEP: byte stride per index
	callee string
	intr   intrinsicID
	index  int // extractvalue: element; mma call: aggregate index
	agg    int // extractvalue: aggregate index of the operand
	src    llir.Instruction
}

type ephi struct {
	dst int
	in  map[*llir.Block]operand
}

type eblock struct {
	blk   *llir.Block
	phis  []ephi
	insts []einst
	// terminator
	ret           bool
	cond          *operand
	next, nextF   *eblock
	nextB, nextFB *llir.Block
}

type efunc struct {
	name   string
	nslots int
	params []int
	naggs  int
	entry  *eblock
	shared []*llir.Global // shared arrays, in glob order
}

// compiler turns a function into eblocks with resolved register slots.
type compiler struct {
	slot   map[value.Value]int
	blocks map[*llir.Block]*eblock
	globs  map[*llir.Global]int
	aggs   map[int]int // slot of an mma call -> aggregate index
	fn     *efunc
}

func compileFunc(f *llir.Func) (*efunc, error) {
	c := &compiler{slot: map[value.Value]int{}, blocks: map[*llir.Block]*eblock{}, globs: map[*llir.Global]int{}, aggs: map[int]int{}, fn: &efunc{name: f.Name()}}
	for _, p := range f.Params {
		c.fn.params = append(c.fn.params, c.newSlot(p))
	}
	for _, b := range f.Blocks {
		c.blocks[b] = &eblock{blk: b}
		for _, in := range b.Insts {
			if v, ok := in.(value.Value); ok {
				if _, void := v.Type().(*types.VoidType); !void {
					c.newSlot(v)
				}
			}
		}
	}
	for _, b := range f.Blocks {
		if err := c.block(b); err != nil {
			return nil, fmt.Errorf("emulate %s: %w", f.Name(), err)
		}
	}
	c.fn.entry = c.blocks[f.Blocks[0]]
	c.fn.nslots = len(c.slot)
	return c.fn, nil
}

func (c *compiler) newSlot(v value.Value) int {
	n := len(c.slot)
	c.slot[v] = n
	return n
}

func intBits(t types.Type) int {
	if it, ok := t.(*types.IntType); ok {
		return int(it.BitSize)
	}
	return 0
}

func (c *compiler) operand(v value.Value) (operand, error) {
	o := operand{slot: -1, bits: intBits(v.Type())}
	switch t := v.Type().(type) {
	case *types.FloatType:
		if t.Kind != types.FloatKindFloat {
			return o, fmt.Errorf("type %s not emulated", t)
		}
		o.isFlt, o.bits = true, 32
	case *types.PointerType:
		o.isPtr, o.ptrElt = true, t.ElemType
	}
	if s, ok := c.slot[v]; ok {
		o.slot = s
		return o, nil
	}
	switch x := v.(type) {
	case *constant.Int:
		o.c.u = mask(x.X.Uint64(), o.bits)
		if x.X.Sign() < 0 {
			o.c.u = mask(uint64(x.X.Int64()), o.bits)
		}
	case *constant.Float:
		f, _ := x.X.Float32()
		if x.NaN {
			f = float32(math.NaN())
		}
		o.c.u = uint64(math.Float32bits(f))
	case *llir.Global:
		if x.AddrSpace != spaceShared {
			return o, fmt.Errorf("global %s is not in shared memory", x.Name())
		}
		g, ok := c.globs[x]
		if !ok {
			g = len(c.fn.shared)
			c.globs[x] = g
			c.fn.shared = append(c.fn.shared, x)
		}
		o.slot, o.glob = -2, g
	default:
		return o, fmt.Errorf("operand %s (%T) not emulated", v.Ident(), v)
	}
	return o, nil
}

func (c *compiler) ops(vs ...value.Value) ([]operand, error) {
	out := make([]operand, len(vs))
	for i, v := range vs {
		o, err := c.operand(v)
		if err != nil {
			return nil, err
		}
		out[i] = o
	}
	return out, nil
}

// typeSize is the store size of t in bytes.
func typeSize(t types.Type) (int64, error) {
	switch t := t.(type) {
	case *types.IntType:
		return int64((t.BitSize + 7) / 8), nil
	case *types.FloatType:
		if t.Kind == types.FloatKindFloat {
			return 4, nil
		}
	case *types.PointerType:
		return 8, nil
	case *types.ArrayType:
		e, err := typeSize(t.ElemType)
		return e * int64(t.Len), err
	}
	return 0, fmt.Errorf("type %s not emulated", t)
}

func (c *compiler) block(b *llir.Block) error {
	eb := c.blocks[b]
	for _, in := range b.Insts {
		var e einst
		var err error
		e.src = in
		if v, ok := in.(value.Value); ok {
			if s, ok := c.slot[v]; ok {
				e.dst = s
				e.bits = intBits(v.Type())
			}
		}
		bin := func(op opcode, x, y value.Value) {
			e.op = op
			e.a, err = c.ops(x, y)
		}
		switch x := in.(type) {
		case *llir.InstPhi:
			p := ephi{dst: c.slot[x], in: map[*llir.Block]operand{}}
			for _, inc := range x.Incs {
				o, err := c.operand(inc.X)
				if err != nil {
					return err
				}
				p.in[inc.Pred.(*llir.Block)] = o
			}
			eb.phis = append(eb.phis, p)
			continue
		case *llir.InstAdd:
			bin(opAdd, x.X, x.Y)
		case *llir.InstSub:
			bin(opSub, x.X, x.Y)
		case *llir.InstMul:
			bin(opMul, x.X, x.Y)
		case *llir.InstUDiv:
			bin(opUDiv, x.X, x.Y)
		case *llir.InstURem:
			bin(opURem, x.X, x.Y)
		case *llir.InstSDiv:
			bin(opSDiv, x.X, x.Y)
		case *llir.InstSRem:
			bin(opSRem, x.X, x.Y)
		case *llir.InstAnd:
			bin(opAnd, x.X, x.Y)
		case *llir.InstOr:
			bin(opOr, x.X, x.Y)
		case *llir.InstXor:
			bin(opXor, x.X, x.Y)
		case *llir.InstShl:
			bin(opShl, x.X, x.Y)
		case *llir.InstLShr:
			bin(opLShr, x.X, x.Y)
		case *llir.InstAShr:
			bin(opAShr, x.X, x.Y)
		case *llir.InstICmp:
			bin(opICmp, x.X, x.Y)
			e.ipred = x.Pred
		case *llir.InstFAdd:
			bin(opFAdd, x.X, x.Y)
		case *llir.InstFSub:
			bin(opFSub, x.X, x.Y)
		case *llir.InstFMul:
			bin(opFMul, x.X, x.Y)
		case *llir.InstFDiv:
			bin(opFDiv, x.X, x.Y)
		case *llir.InstFCmp:
			bin(opFCmp, x.X, x.Y)
			e.fpred = x.Pred
		case *llir.InstSelect:
			e.op = opSelect
			e.a, err = c.ops(x.Cond, x.ValueTrue, x.ValueFalse)
		case *llir.InstZExt:
			e.op = opZExt
			e.a, err = c.ops(x.From)
		case *llir.InstSExt:
			e.op = opSExt
			e.a, err = c.ops(x.From)
		case *llir.InstTrunc:
			e.op = opTrunc
			e.a, err = c.ops(x.From)
		case *llir.InstBitCast:
			e.op = opBitCast
			e.a, err = c.ops(x.From)
		case *llir.InstGetElementPtr:
			e.op = opGEP
			e.a, err = c.ops(append([]value.Value{x.Src}, x.Indices...)...)
			t := x.ElemType
			for i := range x.Indices {
				if i > 0 {
					at, ok := t.(*types.ArrayType)
					if !ok {
						return fmt.Errorf("%s: GEP into %s not emulated", x.LLString(), t)
					}
					t = at.ElemType
				}
				sz, err := typeSize(t)
				if err != nil {
					return err
				}
				e.scale = append(e.scale, sz)
			}
		case *llir.InstLoad:
			e.op = opLoad
			e.a, err = c.ops(x.Src)
			sz, err2 := typeSize(x.ElemType)
			if err2 != nil {
				return err2
			}
			e.size = int(sz)
		case *llir.InstStore:
			e.op = opStore
			e.a, err = c.ops(x.Src, x.Dst)
			sz, err2 := typeSize(x.Src.Type())
			if err2 != nil {
				return err2
			}
			e.size = int(sz)
		case *llir.InstExtractValue:
			e.op = opExtract
			e.a, err = c.ops(x.X)
			if len(x.Indices) != 1 {
				return fmt.Errorf("%s: nested extractvalue not emulated", x.LLString())
			}
			e.index = int(x.Indices[0])
			ai, ok := c.aggs[e.a[0].slot]
			if e.a[0].slot < 0 || !ok {
				return fmt.Errorf("%s: extractvalue of a value that is not an mma result", x.LLString())
			}
			e.agg = ai
		case *llir.InstCall:
			e.op = opCall
			f, ok := x.Callee.(*llir.Func)
			if !ok {
				return fmt.Errorf("%s: indirect call not emulated", x.LLString())
			}
			e.callee = f.Name()
			id, ok := intrinsics[e.callee]
			if !ok {
				return fmt.Errorf("%s: call of %s not emulated", x.LLString(), e.callee)
			}
			e.intr = id
			if id == inMMABF16 || id == inMMATF32 {
				e.index = c.fn.naggs
				c.aggs[e.dst] = e.index
				c.fn.naggs++
			}
			e.a, err = c.ops(x.Args...)
		default:
			return fmt.Errorf("instruction %s not emulated", in.LLString())
		}
		if err != nil {
			return fmt.Errorf("%s: %w", in.LLString(), err)
		}
		eb.insts = append(eb.insts, e)
	}
	switch t := b.Term.(type) {
	case *llir.TermRet:
		eb.ret = true
	case *llir.TermBr:
		eb.nextB = t.Target.(*llir.Block)
		eb.next = c.blocks[eb.nextB]
	case *llir.TermCondBr:
		o, err := c.operand(t.Cond)
		if err != nil {
			return err
		}
		eb.cond = &o
		eb.nextB, eb.nextFB = t.TargetTrue.(*llir.Block), t.TargetFalse.(*llir.Block)
		eb.next, eb.nextF = c.blocks[eb.nextB], c.blocks[eb.nextFB]
	default:
		return fmt.Errorf("terminator %s not emulated", b.Term.LLString())
	}
	return nil
}

// intrinsicID names the intrinsics the emulator implements.
type intrinsicID int

const (
	inFMA intrinsicID = iota
	inMaxNum
	inEx2
	inBarrier
	inMMABF16
	inMMATF32
	inTidX
	inTidY
	inTidZ
	inCtaidX
	inCtaidY
	inCtaidZ
)

var intrinsics = map[string]intrinsicID{
	"llvm.fma.f32":                        inFMA,
	"llvm.maxnum.f32":                     inMaxNum,
	"llvm.nvvm.ex2.approx.f":              inEx2,
	"llvm.nvvm.barrier0":                  inBarrier,
	"llvm.nvvm.mma.m16n8k16.row.col.bf16": inMMABF16,
	"llvm.nvvm.mma.m16n8k8.row.col.tf32":  inMMATF32,
	"llvm.nvvm.read.ptx.sreg.tid.x":       inTidX,
	"llvm.nvvm.read.ptx.sreg.tid.y":       inTidY,
	"llvm.nvvm.read.ptx.sreg.tid.z":       inTidZ,
	"llvm.nvvm.read.ptx.sreg.ctaid.x":     inCtaidX,
	"llvm.nvvm.read.ptx.sreg.ctaid.y":     inCtaidY,
	"llvm.nvvm.read.ptx.sreg.ctaid.z":     inCtaidZ,
}

func mask(u uint64, bits int) uint64 {
	if bits <= 0 || bits >= 64 {
		return u
	}
	return u & (1<<uint(bits) - 1)
}

func sext(u uint64, bits int) int64 {
	if bits <= 0 || bits >= 64 {
		return int64(u)
	}
	s := uint(64 - bits)
	return int64(u<<s) >> s
}

func f32of(v val) float32 { return math.Float32frombits(uint32(v.u)) }
func fval(f float32) val  { return val{u: uint64(math.Float32bits(f))} }
func boolv(b bool) val {
	if b {
		return val{u: 1}
	}
	return val{}
}

// block-level synchronization.
type rendezvous struct {
	mu      sync.Mutex
	cond    *sync.Cond
	live    int // threads that have not exited
	arrived int
	gen     int
	// warp collectives: per-lane operand bits and results
	args [32][10]uint32
	in   [32]bool
	res  [32][4]uint32
	call intrinsicID
	err  error
}

func newRendezvous(n int) *rendezvous {
	r := &rendezvous{live: n}
	r.cond = sync.NewCond(&r.mu)
	return r
}

// wait blocks until every live participant has arrived; the last one runs
// last (under the lock) before releasing the others.
func (r *rendezvous) wait(last func()) {
	r.mu.Lock()
	r.arrived++
	gen := r.gen
	if r.arrived == r.live {
		if last != nil {
			last()
		}
		r.arrived = 0
		r.gen++
		r.cond.Broadcast()
	} else {
		for gen == r.gen {
			r.cond.Wait()
		}
	}
	r.mu.Unlock()
}

// exit removes a participant, releasing the others if all the remaining
// ones are waiting.
func (r *rendezvous) exit() {
	r.mu.Lock()
	r.live--
	if r.live > 0 && r.arrived == r.live {
		r.arrived = 0
		r.gen++
		r.cond.Broadcast()
	}
	r.mu.Unlock()
}

type thread struct {
	fn    *efunc
	regs  []val
	aggs  [][4]uint32
	segs  []*memory // 1: arena, 2: weights, 3+: shared arrays
	tid   [3]int
	ctaid [3]int
	id    int    // linear thread index in the block
	phase uint32 // barriers passed + 1 (the race check's phase)
	block *rendezvous
	warp  *rendezvous
	lane  int
	steps int64
}

// maxSteps bounds the instructions one thread may execute (a generator bug
// that loops forever fails instead of hanging).
const maxSteps = 1 << 30

func (t *thread) get(o *operand) val {
	switch o.slot {
	case -1:
		return o.c
	case -2:
		return val{seg: int32(3 + o.glob)}
	}
	return t.regs[o.slot]
}

func (t *thread) run() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("emulate %s: %v", t.fn.name, r)
		}
	}()
	var prev *llir.Block
	b := t.fn.entry
	phiTmp := []val{}
	for {
		if len(b.phis) > 0 {
			phiTmp = phiTmp[:0]
			for i := range b.phis {
				o, ok := b.phis[i].in[prev]
				if !ok {
					return fmt.Errorf("emulate %s: phi in %s has no value for predecessor", t.fn.name, b.blk.Ident())
				}
				phiTmp = append(phiTmp, t.get(&o))
			}
			for i := range b.phis {
				t.regs[b.phis[i].dst] = phiTmp[i]
			}
		}
		for i := range b.insts {
			if err := t.exec(&b.insts[i]); err != nil {
				return fmt.Errorf("emulate %s: %s: %w", t.fn.name, b.insts[i].src.LLString(), err)
			}
		}
		t.steps += int64(len(b.insts))
		if t.steps > maxSteps {
			return fmt.Errorf("emulate %s: more than %d instructions in one thread", t.fn.name, maxSteps)
		}
		prev = b.blk
		switch {
		case b.ret:
			return nil
		case b.cond != nil:
			if t.get(b.cond).u&1 != 0 {
				b = b.next
			} else {
				b = b.nextF
			}
		default:
			b = b.next
		}
	}
}

func (t *thread) exec(e *einst) error {
	a := e.a
	switch e.op {
	case opAdd, opSub, opMul, opUDiv, opURem, opSDiv, opSRem, opAnd, opOr, opXor, opShl, opLShr, opAShr:
		x, y := t.get(&a[0]).u, t.get(&a[1]).u
		w := a[0].bits
		var r uint64
		switch e.op {
		case opAdd:
			r = x + y
		case opSub:
			r = x - y
		case opMul:
			r = x * y
		case opUDiv, opURem, opSDiv, opSRem:
			if y == 0 {
				return fmt.Errorf("division by zero")
			}
			switch e.op {
			case opUDiv:
				r = x / y
			case opURem:
				r = x % y
			case opSDiv:
				r = uint64(sext(x, w) / sext(y, w))
			case opSRem:
				r = uint64(sext(x, w) % sext(y, w))
			}
		case opAnd:
			r = x & y
		case opOr:
			r = x | y
		case opXor:
			r = x ^ y
		case opShl:
			r = x << y
		case opLShr:
			r = x >> y
		case opAShr:
			r = uint64(sext(x, w) >> y)
		}
		t.regs[e.dst] = val{u: mask(r, w)}
	case opICmp:
		x, y := t.get(&a[0]), t.get(&a[1])
		w := a[0].bits
		if a[0].isPtr {
			if x.seg != y.seg {
				return fmt.Errorf("comparison of pointers into different memories")
			}
			w = 64
		}
		ux, uy := x.u, y.u
		sx, sy := sext(ux, w), sext(uy, w)
		var r bool
		switch e.ipred {
		case enum.IPredEQ:
			r = ux == uy
		case enum.IPredNE:
			r = ux != uy
		case enum.IPredULT:
			r = ux < uy
		case enum.IPredULE:
			r = ux <= uy
		case enum.IPredUGT:
			r = ux > uy
		case enum.IPredUGE:
			r = ux >= uy
		case enum.IPredSLT:
			r = sx < sy
		case enum.IPredSLE:
			r = sx <= sy
		case enum.IPredSGT:
			r = sx > sy
		case enum.IPredSGE:
			r = sx >= sy
		default:
			return fmt.Errorf("icmp %s not emulated", e.ipred)
		}
		t.regs[e.dst] = boolv(r)
	case opFAdd, opFSub, opFMul, opFDiv:
		x, y := f32of(t.get(&a[0])), f32of(t.get(&a[1]))
		var r float32
		switch e.op {
		case opFAdd:
			r = x + y
		case opFSub:
			r = x - y
		case opFMul:
			r = x * y
		case opFDiv:
			r = x / y
		}
		t.regs[e.dst] = fval(r)
	case opFCmp:
		x, y := f32of(t.get(&a[0])), f32of(t.get(&a[1]))
		ord := !math.IsNaN(float64(x)) && !math.IsNaN(float64(y))
		var r bool
		switch e.fpred {
		case enum.FPredOEQ:
			r = ord && x == y
		case enum.FPredOGT:
			r = ord && x > y
		case enum.FPredOGE:
			r = ord && x >= y
		case enum.FPredOLT:
			r = ord && x < y
		case enum.FPredOLE:
			r = ord && x <= y
		case enum.FPredONE:
			r = ord && x != y
		case enum.FPredUNE:
			r = !ord || x != y
		case enum.FPredUNO:
			r = !ord
		case enum.FPredORD:
			r = ord
		default:
			return fmt.Errorf("fcmp %s not emulated", e.fpred)
		}
		t.regs[e.dst] = boolv(r)
	case opSelect:
		if t.get(&a[0]).u&1 != 0 {
			t.regs[e.dst] = t.get(&a[1])
		} else {
			t.regs[e.dst] = t.get(&a[2])
		}
	case opZExt:
		t.regs[e.dst] = val{u: t.get(&a[0]).u}
	case opSExt:
		t.regs[e.dst] = val{u: mask(uint64(sext(t.get(&a[0]).u, a[0].bits)), e.bits)}
	case opTrunc:
		t.regs[e.dst] = val{u: mask(t.get(&a[0]).u, e.bits)}
	case opBitCast:
		t.regs[e.dst] = t.get(&a[0])
	case opGEP:
		p := t.get(&a[0])
		off := int64(p.u)
		for i, s := range e.scale {
			off += sext(t.get(&a[i+1]).u, a[i+1].bits) * s
		}
		t.regs[e.dst] = val{seg: p.seg, u: uint64(off)}
	case opLoad:
		p := t.get(&a[0])
		b, err := t.bytes(p, e.size, false)
		if err != nil {
			return err
		}
		var u uint64
		switch e.size {
		case 1:
			u = uint64(b[0])
		case 2:
			u = uint64(binary.LittleEndian.Uint16(b))
		case 4:
			u = uint64(binary.LittleEndian.Uint32(b))
		case 8:
			u = binary.LittleEndian.Uint64(b)
		default:
			return fmt.Errorf("load of %d bytes", e.size)
		}
		t.regs[e.dst] = val{u: u}
	case opStore:
		v, p := t.get(&a[0]), t.get(&a[1])
		b, err := t.bytes(p, e.size, true)
		if err != nil {
			return err
		}
		switch e.size {
		case 1:
			b[0] = byte(v.u)
		case 2:
			binary.LittleEndian.PutUint16(b, uint16(v.u))
		case 4:
			binary.LittleEndian.PutUint32(b, uint32(v.u))
		case 8:
			binary.LittleEndian.PutUint64(b, v.u)
		default:
			return fmt.Errorf("store of %d bytes", e.size)
		}
	case opExtract:
		t.regs[e.dst] = val{u: uint64(t.aggs[e.agg][e.index])}
	case opCall:
		return t.call(e)
	}
	return nil
}

// bytes returns the n bytes at pointer p, checking bounds and alignment.
func (t *thread) bytes(p val, n int, write bool) ([]byte, error) {
	if p.seg <= 0 || int(p.seg) >= len(t.segs) {
		return nil, fmt.Errorf("access through a null pointer")
	}
	m := t.segs[p.seg]
	off := int64(p.u)
	if off < 0 || off+int64(n) > int64(len(m.b)) {
		return nil, fmt.Errorf("access of %d bytes at offset %d outside %s (%d bytes)", n, off, m.name, len(m.b))
	}
	if off%int64(n) != 0 {
		return nil, fmt.Errorf("misaligned access of %d bytes at offset %d of %s", n, off, m.name)
	}
	if m.written != nil {
		if err := t.checkShared(m, off, n, write); err != nil {
			return nil, err
		}
	}
	return m.b[off : off+int64(n)], nil
}

func (t *thread) call(e *einst) (err error) {
	a := e.a
	switch e.intr {
	case inFMA:
		x, y, z := f32of(t.get(&a[0])), f32of(t.get(&a[1])), f32of(t.get(&a[2]))
		t.regs[e.dst] = fval(float32(math.FMA(float64(x), float64(y), float64(z))))
	case inMaxNum:
		x, y := f32of(t.get(&a[0])), f32of(t.get(&a[1]))
		switch {
		case math.IsNaN(float64(x)):
			t.regs[e.dst] = fval(y)
		case math.IsNaN(float64(y)) || x > y:
			t.regs[e.dst] = fval(x)
		default:
			t.regs[e.dst] = fval(y)
		}
	case inEx2:
		t.regs[e.dst] = fval(float32(math.Exp2(float64(f32of(t.get(&a[0]))))))
	case inTidX:
		t.regs[e.dst] = val{u: uint64(t.tid[0])}
	case inTidY:
		t.regs[e.dst] = val{u: uint64(t.tid[1])}
	case inTidZ:
		t.regs[e.dst] = val{u: uint64(t.tid[2])}
	case inCtaidX:
		t.regs[e.dst] = val{u: uint64(t.ctaid[0])}
	case inCtaidY:
		t.regs[e.dst] = val{u: uint64(t.ctaid[1])}
	case inCtaidZ:
		t.regs[e.dst] = val{u: uint64(t.ctaid[2])}
	case inBarrier:
		t.block.wait(nil)
		t.phase++
	case inMMABF16, inMMATF32:
		w := t.warp
		if len(a) != 10 {
			return fmt.Errorf("mma with %d operands", len(a))
		}
		w.mu.Lock()
		for i := range a {
			w.args[t.lane][i] = uint32(t.get(&a[i]).u)
		}
		w.in[t.lane] = true
		w.call = e.intr
		w.mu.Unlock()
		w.wait(func() { w.err = mmaWarp(w) })
		w.mu.Lock()
		t.aggs[e.index], err = w.res[t.lane], w.err
		w.mu.Unlock()
		return err
	default:
		return fmt.Errorf("call of %s not emulated", e.callee)
	}
	return nil
}

// mmaWarp computes one warp-wide mma from the lanes' fragments (see the
// package comment for the layouts).
func mmaWarp(w *rendezvous) error {
	var A [16][16]float64
	var B [16][8]float64
	var C [16][8]float64
	bf16 := w.call == inMMABF16
	K := 8
	if bf16 {
		K = 16
	}
	for lane := 0; lane < 32; lane++ {
		args := &w.args[lane]
		if !w.in[lane] {
			return fmt.Errorf("mma: lane %d did not take part (divergent warp)", lane)
		}
		g, tq := lane>>2, lane&3
		if bf16 {
			for r := 0; r < 4; r++ {
				for h := 0; h < 2; h++ {
					e := 2*r + h
					row := g + 8*((e/2)%2)
					col := tq*2 + (e & 1) + 8*(e/4)
					A[row][col] = bf16val(args[r], h)
				}
			}
			for r := 0; r < 2; r++ {
				for h := 0; h < 2; h++ {
					e := 2*r + h
					B[tq*2+(e&1)+8*(e/2)][g] = bf16val(args[4+r], h)
				}
			}
		} else {
			for r := 0; r < 4; r++ {
				A[g+8*(r&1)][tq+4*(r/2)] = tf32val(args[r])
			}
			for r := 0; r < 2; r++ {
				B[tq+4*r][g] = tf32val(args[4+r])
			}
		}
		for i := 0; i < 4; i++ {
			C[g+8*(i/2)][tq*2+(i&1)] = float64(math.Float32frombits(args[6+i]))
		}
	}
	for lane := 0; lane < 32; lane++ {
		g, tq := lane>>2, lane&3
		for i := 0; i < 4; i++ {
			row, col := g+8*(i/2), tq*2+(i&1)
			s := C[row][col]
			for kk := 0; kk < K; kk++ {
				s += A[row][kk] * B[kk][col]
			}
			w.res[lane][i] = math.Float32bits(float32(s))
		}
		w.in[lane] = false
	}
	return nil
}

// bf16val is the h-th (0: bits 0-15, 1: bits 16-31) bf16 of a .b32.
func bf16val(u uint32, h int) float64 {
	b := (u >> (16 * uint(h))) & 0xffff
	return float64(math.Float32frombits(b << 16))
}

// tf32val is a .tf32 operand: the f32 bits with the low 13 ignored.
func tf32val(u uint32) float64 {
	return float64(math.Float32frombits(u &^ 0x1fff))
}

// Emulator runs launches of a module's kernels on host memory.
type Emulator struct {
	mod   *llir.Module
	funcs map[string]*efunc
}

// NewEmulator prepares the kernels of m for emulation.
func NewEmulator(m *llir.Module) (*Emulator, error) {
	e := &Emulator{mod: m, funcs: map[string]*efunc{}}
	for _, f := range m.Funcs {
		if len(f.Blocks) == 0 {
			continue // intrinsic declarations
		}
		ef, err := compileFunc(f)
		if err != nil {
			return nil, err
		}
		e.funcs[f.Name()] = ef
	}
	return e, nil
}

// Launch runs one launch of the program over the given device memories,
// block after block.
func (e *Emulator) Launch(l Launch, arena, weights []byte) error {
	f, ok := e.funcs[l.Kernel]
	if !ok {
		return fmt.Errorf("emulate: no kernel %s", l.Kernel)
	}
	if len(l.Args) != len(f.params) {
		return fmt.Errorf("emulate %s: %d arguments for %d parameters", l.Kernel, len(l.Args), len(f.params))
	}
	args := make([]val, len(l.Args))
	for i, a := range l.Args {
		switch a.Kind {
		case ArgArena:
			args[i] = val{seg: 1, u: uint64(a.Offset)}
		case ArgWeights:
			args[i] = val{seg: 2, u: uint64(a.Offset)}
		case ArgI32:
			args[i] = val{u: mask(uint64(a.Value), 32)}
		default:
			return fmt.Errorf("emulate %s: argument kind %q", l.Kernel, a.Kind)
		}
	}
	nthr := l.Block[0] * l.Block[1] * l.Block[2]
	if nthr <= 0 || nthr > 1024 {
		return fmt.Errorf("emulate %s: block of %d threads", l.Kernel, nthr)
	}
	for bz := 0; bz < l.Grid[2]; bz++ {
		for by := 0; by < l.Grid[1]; by++ {
			for bx := 0; bx < l.Grid[0]; bx++ {
				if err := e.runBlock(f, args, arena, weights, [3]int{bx, by, bz}, l.Block); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (e *Emulator) runBlock(f *efunc, args []val, arena, weights []byte, ctaid, dim [3]int) error {
	segs := []*memory{nil, {name: "arena", b: arena}, {name: "weights", b: weights}}
	for _, g := range f.shared {
		sz, err := typeSize(g.ContentType)
		if err != nil {
			return err
		}
		segs = append(segs, &memory{name: "shared " + g.Name(), b: make([]byte, sz), written: make([]uint64, (sz+3)/4), read: make([]uint64, (sz+3)/4)})
	}
	n := dim[0] * dim[1] * dim[2]
	block := newRendezvous(n)
	warps := make([]*rendezvous, (n+31)/32)
	for i := range warps {
		warps[i] = newRendezvous(min(32, n-32*i))
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		t := &thread{fn: f, regs: make([]val, f.nslots), aggs: make([][4]uint32, f.naggs), segs: segs, block: block, warp: warps[i/32], lane: i % 32, ctaid: ctaid, id: i, phase: 1,
			tid: [3]int{i % dim[0], (i / dim[0]) % dim[1], i / (dim[0] * dim[1])}}
		for j, p := range f.params {
			t.regs[p] = args[j]
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = t.run()
			t.block.exit()
			t.warp.exit()
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Run runs every launch of p in order on arena (p.ArenaBytes) and the
// weights blob.
func (e *Emulator) Run(p *Program, arena []byte) error {
	if int64(len(arena)) < p.ArenaBytes {
		return fmt.Errorf("emulate: arena of %d bytes, program needs %d", len(arena), p.ArenaBytes)
	}
	w := p.Weights
	if w == nil {
		w = []byte{}
	}
	for _, l := range p.Launches {
		if err := e.Launch(l, arena, w); err != nil {
			return fmt.Errorf("%s (%s): %w", l.Kernel, l.Label, err)
		}
	}
	return nil
}
