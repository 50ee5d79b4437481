package codegen

import (
	"fmt"
	"math"
	"math/rand"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen/internal/ktest"
)

// Tests of the standalone kernels (elementwise, BatchNorm as a channel
// affine map, strided copies): random inputs with NaN and ±Inf among them,
// an arena of sentinels, every variant the CPU runs, tiles all at once and
// split; compared with a float64 reference, nothing outside the output
// written.

func TestElementwise(t *testing.T) {
	for _, set := range targetSets(t) {
		t.Run(fmt.Sprintf("B%d", set.b), func(t *testing.T) { testElementwise(t, set) })
	}
}

func testElementwise(t *testing.T, set targetSet) {
	const inOff, in2Off, outOff = 8, 20000, 40000
	cases := []ElementwiseSpec{
		{Op: EltReLU, Elems: 1},
		{Op: EltReLU, Elems: 4096 + 17},
		{Op: EltAdd, Elems: 4096},
		{Op: EltAdd, Elems: 1000, Relu: true},
		{Op: EltScale, Elems: 9000, C: 0.17},
		{Op: EltScale, Elems: 33, C: -2, Relu: true},
	}
	lib := buildLibFor(t, set.targets, func(m *Module) error {
		for i, s := range cases {
			s.InOff, s.In2Off, s.OutOff = inOff, in2Off, outOff
			if _, _, err := m.Elementwise(fmt.Sprintf("elt%d", i), s); err != nil {
				return err
			}
			// In place: the output is the first input.
			s.OutOff = inOff
			if _, _, err := m.Elementwise(fmt.Sprintf("eltip%d", i), s); err != nil {
				return err
			}
		}
		return nil
	})
	r := rand.New(rand.NewSource(7))
	arena := make([]float32, 2*outOff)
	for _, tgt := range set.run {
		for i, s := range cases {
			for _, inPlace := range []bool{false, true} {
				t.Run(fmt.Sprintf("%+v/in-place=%v/%s", s, inPlace, tgt.Name), func(t *testing.T) {
					fill(arena, sentinel)
					x, y := withSpecials(r, randn(r, s.Elems)), withSpecials(r, randn(r, s.Elems))
					copy(arena[inOff:], x)
					copy(arena[in2Off:], y)
					ref := make([]float64, s.Elems)
					for k := range ref {
						v := float64(x[k])
						switch s.Op {
						case EltAdd:
							v += float64(y[k])
						case EltScale:
							v *= float64(s.C)
						}
						if (s.Op == EltReLU || s.Relu) && v < 0 {
							v = 0
						}
						ref[k] = float64(float32(v))
					}
					name, out := fmt.Sprintf("elt%d", i), outOff
					if inPlace {
						name, out = fmt.Sprintf("eltip%d", i), inOff
					}
					got := runChecked(t, kernel(t, lib, name, tgt), arena, nil, ceilDiv(s.Elems, eltChunk))
					checkUnchanged(t, s.Op.String(), got, arena, inRange(out, s.Elems))
					compare(t, s.Op.String(), got[out:out+s.Elems], ref)
				})
			}
		}
	}
}

func TestChannelAffine(t *testing.T) {
	for _, set := range targetSets(t) {
		t.Run(fmt.Sprintf("B%d", set.b), func(t *testing.T) { testChannelAffine(t, set) })
	}
}

func testChannelAffine(t *testing.T, set targetSet) {
	b := set.b
	const inOff, outOff = 8, 40000
	cases := []ChannelAffineSpec{
		{N: 2, C: 20, HW: 15, Blocked: true},             // partial last block
		{N: 1, C: 32, HW: 49, Blocked: true, Relu: true}, // whole blocks, ReLU
		{N: 1, C: 3, HW: 1, Blocked: true},               // C < B
		{N: 3, C: 10, HW: 1},                             // plain [N, C] (BatchNorm1d)
		{N: 2, C: 5, HW: 37, Relu: true},                 // plain NCHW, vector + tail
	}
	lib := buildLibFor(t, set.targets, func(m *Module) error {
		for i, s := range cases {
			_, vec := s.extent(b)
			s.InOff, s.OutOff, s.ScaleOff, s.ShiftOff = inOff, outOff, 0, vec
			if _, _, err := m.ChannelAffine(fmt.Sprintf("bn%d", i), s); err != nil {
				return err
			}
		}
		return nil
	})
	r := rand.New(rand.NewSource(8))
	arena := make([]float32, 2*outOff)
	for _, tgt := range set.run {
		for i, s := range cases {
			t.Run(fmt.Sprintf("%+v/%s", s, tgt.Name), func(t *testing.T) {
				fill(arena, sentinel)
				act, vec := s.extent(b)
				x := withSpecials(r, randn(r, s.N*s.C*s.HW))
				gamma, beta, mean := randn(r, s.C), randn(r, s.C), randn(r, s.C)
				vr := make([]float32, s.C)
				for c := range vr {
					vr[c] = float32(r.Float64() + 0.1)
				}
				scale, shift := BatchNormScaleShift(gamma, beta, mean, vr, 1e-3, vec)
				weights := ktest.Aligned(2 * vec)
				copy(weights, scale)
				copy(weights[vec:], shift)
				if s.Blocked {
					ktest.PackBlocked(arena[inOff:], x, s.N, s.C, s.HW, 1, b)
				} else {
					copy(arena[inOff:], x)
				}
				ref := make([]float64, len(x))
				for k, v := range x {
					c := k / s.HW % s.C
					y := (float64(v)-float64(mean[c]))*float64(gamma[c])/math.Sqrt(float64(vr[c])+1e-3) + float64(beta[c])
					if s.Relu && y < 0 {
						y = 0
					}
					ref[k] = y
				}
				tiles := s.N
				if s.Blocked {
					tiles = s.N * ceilDiv(s.C, b)
				}
				got := runChecked(t, kernel(t, lib, fmt.Sprintf("bn%d", i), tgt), arena, weights, tiles)
				checkUnchanged(t, "batchnorm", got, arena, inRange(outOff, act))
				if s.Blocked {
					checkBlockedOut(t, "batchnorm", got[outOff:], ref, s.N, s.C, s.HW, 1, s.C, 0, b)
				} else {
					compare(t, "batchnorm", got[outOff:outOff+act], ref)
				}
			})
		}
	}
}

// TestStridedCopy checks CopySpec with Rows: a concat operand's slice of
// every image.
func TestStridedCopy(t *testing.T) {
	set := targetSets(t)[0]
	const inOff, outOff = 8, 40000
	cases := []CopySpec{
		{Elems: 5, Rows: 3, InStride: 5, OutStride: 12},
		{Elems: 4096 + 3, Rows: 2, InStride: 5000, OutStride: 9000},
		{Elems: 64, Rows: 1},
	}
	lib := buildLibFor(t, set.targets, func(m *Module) error {
		for i, s := range cases {
			s.InOff, s.OutOff = inOff, outOff
			if _, _, err := m.Copy(fmt.Sprintf("scopy%d", i), s); err != nil {
				return err
			}
		}
		return nil
	})
	r := rand.New(rand.NewSource(9))
	arena := make([]float32, 2*outOff)
	for _, tgt := range set.run {
		for i, s := range cases {
			t.Run(fmt.Sprintf("%+v/%s", s, tgt.Name), func(t *testing.T) {
				fill(arena, sentinel)
				x := randn(r, outOff-inOff)
				copy(arena[inOff:], x)
				written := map[int]bool{}
				for row := 0; row < s.rows(); row++ {
					for e := 0; e < s.Elems; e++ {
						written[outOff+row*s.OutStride+e] = true
					}
				}
				got := runChecked(t, kernel(t, lib, fmt.Sprintf("scopy%d", i), tgt), arena, nil, s.rows()*ceilDiv(s.Elems, 4096))
				checkUnchanged(t, "copy", got, arena, func(k int) bool { return written[k] })
				for row := 0; row < s.rows(); row++ {
					for e := 0; e < s.Elems; e++ {
						if g, w := got[outOff+row*s.OutStride+e], x[row*s.InStride+e]; g != w {
							t.Fatalf("row %d element %d: got %v, want %v", row, e, g, w)
						}
					}
				}
			})
		}
	}
}

func TestStandaloneSpecErrors(t *testing.T) {
	m := NewModule(AVX512, AVX2)
	for _, c := range []struct {
		name string
		add  func() error
		want string
	}{
		{"partial overlap", func() error {
			_, _, err := m.Elementwise("e", ElementwiseSpec{Op: EltAdd, Elems: 100, InOff: 0, In2Off: 200, OutOff: 50})
			return err
		}, "partially overlaps"},
		{"zero elems", func() error { _, _, err := m.Elementwise("e", ElementwiseSpec{Op: EltReLU}); return err }, "must be positive"},
		{"unknown op", func() error { _, _, err := m.Elementwise("e", ElementwiseSpec{Op: 9, Elems: 1}); return err }, "unknown op"},
		{"bn overlap", func() error {
			_, _, err := m.ChannelAffine("b", ChannelAffineSpec{N: 1, C: 16, HW: 4, Blocked: true, OutOff: 10})
			return err
		}, "overlaps"},
		{"copy stride", func() error {
			_, _, err := m.Copy("c", CopySpec{Elems: 10, Rows: 2, InStride: 5, OutStride: 10, OutOff: 100})
			return err
		}, "shorter than a row"},
	} {
		err := c.add()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.name, err, c.want)
		}
	}
}
