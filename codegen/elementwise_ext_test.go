package codegen

import (
	"fmt"
	"math"
	"math/rand"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen/internal/ktest"
)

// refElt is the float64 reference of an elementwise kind, as the
// interpreter computes it (ir/interp/ext.go), rounded to float32.
func refElt(s ElementwiseSpec, x, y float32) float64 {
	v := float64(x)
	switch s.Op {
	case EltSub:
		v -= float64(y)
	case EltSigmoid:
		if v >= 0 {
			v = 1 / (1 + math.Exp(-v))
		} else {
			e := math.Exp(v)
			v = e / (1 + e)
		}
	case EltTanh:
		v = math.Tanh(v)
	case EltSiLU:
		v = v / (1 + math.Exp(-v))
	case EltHardSwish:
		r := math.Min(math.Max(v+3, 0), 6)
		if v+3 != v+3 {
			r = v
		}
		v = v * r / 6
	case EltClip:
		if v < float64(s.C) {
			v = float64(s.C)
		}
		if v > float64(s.Hi) {
			v = float64(s.Hi)
		}
	}
	return float64(float32(v))
}

// activationInput is randn·4 with NaN and ±Inf scattered, a sweep of
// [-20, 20] and the extremes ±100, ±88.5, ±1e-30, ±0.
func activationInput(r *rand.Rand, n int) []float32 {
	x := randn(r, n)
	for i := range x {
		x[i] *= 4
		if i%3 == 1 {
			x[i] = float32(-20 + 40*float64(i)/float64(n))
		}
	}
	x = withSpecials(r, x)
	for i, v := range []float32{100, -100, 88.5, -88.5, 1e-30, -1e-30, 0, float32(math.Copysign(0, -1)), 0.624, -0.626} {
		if 7*i+3 < n {
			x[7*i+3] = v
		}
	}
	return x
}

// TestActivationKernels runs the activation and subtraction kinds of
// ElementwiseSpec against the float64 reference on inputs holding NaN,
// ±Inf and the range-reduction edges, in place and not, on every variant
// the CPU runs (AVX-512, AVX2, and the 4-lane Block 4 path of NEON on x86),
// and logs the largest error per kind relative to max|ref| (required:
// at most 1e-5; measured on this sweep: see the log).
func TestActivationKernels(t *testing.T) {
	for _, set := range targetSets(t) {
		t.Run(fmt.Sprintf("B%d", set.b), func(t *testing.T) { testActivationKernels(t, set) })
	}
}

func testActivationKernels(t *testing.T, set targetSet) {
	const inOff, in2Off, outOff = 8, 70000, 140000
	cases := []ElementwiseSpec{
		{Op: EltSub, Elems: 4096 + 17},
		{Op: EltSub, Elems: 33, Relu: true},
		{Op: EltSigmoid, Elems: 65536},
		{Op: EltSigmoid, Elems: 13},
		{Op: EltTanh, Elems: 65536},
		{Op: EltSiLU, Elems: 65536},
		{Op: EltHardSwish, Elems: 9000},
		{Op: EltClip, Elems: 9000, C: 0, Hi: 6},
		{Op: EltClip, Elems: 4097, C: -1.5, Hi: 0.25},
	}
	lib := buildLibFor(t, set.targets, func(m *Module) error {
		for i, s := range cases {
			s.InOff, s.In2Off, s.OutOff = inOff, in2Off, outOff
			if _, _, err := m.Elementwise(fmt.Sprintf("act%d", i), s); err != nil {
				return err
			}
			s.OutOff = inOff
			if _, _, err := m.Elementwise(fmt.Sprintf("actip%d", i), s); err != nil {
				return err
			}
		}
		return nil
	})
	r := rand.New(rand.NewSource(11))
	arena := make([]float32, 2*outOff)
	for _, tgt := range set.run {
		for i, s := range cases {
			for _, inPlace := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%d/in-place=%v/%s", s.Op, s.Elems, inPlace, tgt.Name), func(t *testing.T) {
					fill(arena, sentinel)
					x, y := activationInput(r, s.Elems), withSpecials(r, randn(r, s.Elems))
					copy(arena[inOff:], x)
					copy(arena[in2Off:], y)
					ref := make([]float64, s.Elems)
					for k := range ref {
						ref[k] = refElt(s, x[k], y[k])
						if s.Relu && ref[k] < 0 {
							ref[k] = 0
						}
					}
					name, out := fmt.Sprintf("act%d", i), outOff
					if inPlace {
						name, out = fmt.Sprintf("actip%d", i), inOff
					}
					got := runChecked(t, kernel(t, lib, name, tgt), arena, nil, ceilDiv(s.Elems, eltChunk))
					checkUnchanged(t, s.Op.String(), got, arena, inRange(out, s.Elems))
					compare(t, s.Op.String(), got[out:out+s.Elems], ref)
					m, e := 0.0, 0.0
					for k, v := range ref {
						if !math.IsNaN(v) && !math.IsInf(v, 0) {
							m = max(m, math.Abs(v))
							e = max(e, math.Abs(float64(got[out+k])-v))
						}
					}
					t.Logf("%s: max|err| = %.3g, max|err|/max|ref| = %.3g", s.Op, e, e/m)
				})
			}
		}
	}
}

// TestActivationPadding checks that sigmoid and a clip excluding 0 write
// zero to the padding lanes of a blocked value whose channel count is not
// a multiple of the block (they would hold sigmoid(0) = 0.5 and lo), and
// that the logical lanes are right.
func TestActivationPadding(t *testing.T) {
	for _, set := range targetSets(t) {
		t.Run(fmt.Sprintf("B%d", set.b), func(t *testing.T) {
			b := set.b
			const inOff, outOff = 0, 20000
			const n, c, hw = 2, 21, 5
			cases := []ElementwiseSpec{
				{Op: EltSigmoid, Channels: c, Pixels: hw},
				{Op: EltClip, C: 1, Hi: 2, Channels: c, Pixels: hw},
				{Op: EltSiLU, Channels: c, Pixels: hw}, // zero preserving: no mask needed
			}
			elems := n * ceilDiv(c, b) * b * hw
			lib := buildLibFor(t, set.targets, func(m *Module) error {
				for i, s := range cases {
					s.Elems, s.InOff, s.OutOff = elems, inOff, outOff
					if _, _, err := m.Elementwise(fmt.Sprintf("pad%d", i), s); err != nil {
						return err
					}
				}
				return nil
			})
			r := rand.New(rand.NewSource(12))
			arena := make([]float32, 2*outOff)
			for _, tgt := range set.run {
				for i, s := range cases {
					fill(arena, sentinel)
					x := randn(r, n*c*hw)
					ktest.PackBlocked(arena[inOff:], x, n, c, hw, 1, b)
					got := runChecked(t, kernel(t, lib, fmt.Sprintf("pad%d", i), tgt), arena, nil, ceilDiv(elems, eltChunk))
					for k := 0; k < elems; k++ {
						blk, lane := k/(hw*b)%ceilDiv(c, b), k%b
						v := got[outOff+k]
						if ch := blk*b + lane; ch >= c {
							if v != 0 {
								t.Fatalf("%s %s: padding element %d (channel %d) = %v, want 0", s.Op, tgt.Name, k, ch, v)
							}
							continue
						}
						s.Elems = 1
						if want := refElt(s, arena[inOff+k], 0); math.Abs(float64(v)-want) > 1e-6 {
							t.Fatalf("%s %s: element %d = %v, want %v", s.Op, tgt.Name, k, v, want)
						}
					}
				}
			}
		})
	}
}

// TestChannelMulGlobalMaxPool checks the squeeze-and-excitation kernels:
// channel_mul blocked and plain (with non-finite values) and global max
// pooling with NaN propagation, against float64 references.
func TestChannelMulGlobalMaxPool(t *testing.T) {
	for _, set := range targetSets(t) {
		t.Run(fmt.Sprintf("B%d", set.b), func(t *testing.T) {
			b := set.b
			const inOff, sOff, outOff = 8, 30000, 40000
			muls := []ChannelMulSpec{
				{N: 2, C: 20, HW: 15, Blocked: true},
				{N: 1, C: 3, HW: 1, Blocked: true},
				{N: 2, C: 5, HW: 37},
			}
			gmps := []GlobalMaxPoolSpec{{N: 2, C: 20, H: 5, W: 5}, {N: 1, C: 16, H: 1, W: 1}, {N: 1, C: 7, H: 3, W: 2}}
			lib := buildLibFor(t, set.targets, func(m *Module) error {
				for i, s := range muls {
					s.InOff, s.ScaleOff, s.OutOff = inOff, sOff, outOff
					if _, _, err := m.ChannelMul(fmt.Sprintf("cm%d", i), s); err != nil {
						return err
					}
				}
				for i, s := range gmps {
					s.InOff, s.OutOff = inOff, outOff
					if _, _, err := m.GlobalMaxPool(fmt.Sprintf("gmp%d", i), s); err != nil {
						return err
					}
				}
				return nil
			})
			r := rand.New(rand.NewSource(13))
			arena := make([]float32, 2*outOff)
			for _, tgt := range set.run {
				for i, s := range muls {
					fill(arena, sentinel)
					x, sc := withSpecials(r, randn(r, s.N*s.C*s.HW)), randn(r, s.N*s.C)
					ref := make([]float64, len(x))
					for k, v := range x {
						ref[k] = float64(v * sc[k/s.HW])
					}
					size := len(x)
					if s.Blocked {
						ktest.PackBlocked(arena[inOff:], x, s.N, s.C, s.HW, 1, b)
						ktest.PackBlocked(arena[sOff:], sc, s.N, s.C, 1, 1, b)
						size = s.N * ceilDiv(s.C, b) * b * s.HW
					} else {
						copy(arena[inOff:], x)
						copy(arena[sOff:], sc)
					}
					tiles := s.N
					if s.Blocked {
						tiles *= ceilDiv(s.C, b)
					}
					got := runChecked(t, kernel(t, lib, fmt.Sprintf("cm%d", i), tgt), arena, nil, tiles)
					checkUnchanged(t, "channel_mul", got, arena, inRange(outOff, size))
					res := got[outOff : outOff+size]
					if s.Blocked {
						res = unpack(res, s.N, s.C, s.HW, b)
					}
					compare(t, fmt.Sprintf("channel_mul %+v %s", s, tgt.Name), res, ref)
				}
				for i, s := range gmps {
					fill(arena, sentinel)
					hw := s.H * s.W
					x := randn(r, s.N*s.C*hw)
					x[3] = float32(math.NaN()) // plane 0 (hw > 3) or plane 3
					x[len(x)-1] = float32(math.Inf(1))
					ref := make([]float64, s.N*s.C)
					for p := range ref {
						m := math.Inf(-1)
						for _, v := range x[p*hw : (p+1)*hw] {
							if float64(v) > m || v != v {
								m = float64(v)
							}
							if m != m {
								break
							}
						}
						ref[p] = m
					}
					ktest.PackBlocked(arena[inOff:], x, s.N, s.C, s.H, s.W, b)
					size := s.N * ceilDiv(s.C, b) * b
					got := runChecked(t, kernel(t, lib, fmt.Sprintf("gmp%d", i), tgt), arena, nil, s.N*ceilDiv(s.C, b))
					checkUnchanged(t, "global_maxpool", got, arena, inRange(outOff, size))
					compare(t, fmt.Sprintf("global_maxpool %+v %s", s, tgt.Name), unpack(got[outOff:outOff+size], s.N, s.C, 1, b), ref)
				}
			}
		})
	}
}

// unpack converts [N][ceil(C/b)][HW][b] to plain [N][C][HW].
func unpack(src []float32, n, c, hw, b int) []float32 {
	out := make([]float32, n*c*hw)
	for in := 0; in < n; in++ {
		for ic := 0; ic < c; ic++ {
			for p := 0; p < hw; p++ {
				out[(in*c+ic)*hw+p] = src[((in*ceilDiv(c, b)+ic/b)*hw+p)*b+ic%b]
			}
		}
	}
	return out
}

// TestActivationAssembly checks that the transcendental kinds compile to
// vector code without calls on every target (llvm.exp would become a libm
// call per lane on x86): the kernels' assembly holds no call instruction.
func TestActivationAssembly(t *testing.T) {
	tc := toolchain(t)
	for _, tgt := range []Target{AVX512, AVX2, NEON} {
		m := NewModule(tgt)
		ops := []EltOp{EltSigmoid, EltTanh, EltSiLU, EltHardSwish}
		for _, op := range ops {
			if _, _, err := m.Elementwise("a_"+op.String(), ElementwiseSpec{Op: op, Elems: 4096}); err != nil {
				t.Fatal(err)
			}
		}
		asm, err := tc.Assembly(m.String(), tgt)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range ops {
			fn := asmFunction(t, asm, tgt.Symbol("a_"+op.String()))
			for _, l := range strings.Split(fn, "\n") {
				if f := strings.Fields(l); len(f) > 0 && (f[0] == "call" || f[0] == "callq" || f[0] == "bl") {
					t.Errorf("%s %s: call in the kernel: %s", tgt.Name, op, l)
				}
			}
		}
	}
}
