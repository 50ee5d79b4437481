package codegen

import (
	"strings"
	"testing"
)

func TestPeakSpec(t *testing.T) {
	s := PeakSpec{Tiles: 3, Iters: 10}
	for _, tc := range []struct {
		t      Target
		chains int
		flops  int64
	}{
		{AVX512, 24, 10 * 24 * 2 * 16},
		{AVX2, 12, 10 * 12 * 2 * 8},
		{NEON, 24, 10 * 24 * 2 * 4},
	} {
		if got := PeakChains(tc.t); got != tc.chains {
			t.Errorf("PeakChains(%s) = %d, want %d", tc.t.Name, got, tc.chains)
		}
		if got := s.TileFlops(tc.t); got != tc.flops {
			t.Errorf("TileFlops(%s) = %d, want %d", tc.t.Name, got, tc.flops)
		}
	}
	if got, want := s.ArenaFloats(), int64(32+3*PeakSlotFloats); got != want {
		t.Errorf("ArenaFloats = %d, want %d", got, want)
	}
	for _, bad := range []PeakSpec{{0, 1}, {1, 0}, {-1, 5}} {
		if _, _, err := NewModule(AVX512).Peak("p", bad); err == nil {
			t.Errorf("Peak(%+v): no error", bad)
		}
	}
	m := NewModule(AVX512, AVX2)
	if _, tiles, err := m.Peak("p", s); err != nil || tiles != 3 {
		t.Fatalf("Peak: tiles %d, err %v", tiles, err)
	}
	if k := m.Kernels()[0]; k.Kind != "peak" || k.Flops != 3*s.TileFlops(AVX512) {
		t.Errorf("kernel %+v", k)
	}
	if _, _, err := m.Peak("p", s); err == nil {
		t.Error("second kernel named p: no error")
	}
}

// TestPeakKernel runs the peak kernel with a = b = 1, so that every
// accumulator gains exactly Iters, and checks that each tile writes its own
// slot and nothing else.
func TestPeakKernel(t *testing.T) {
	s := PeakSpec{Tiles: 3, Iters: 1000}
	for _, set := range targetSets(t) {
		lib := buildLibFor(t, set.targets, func(m *Module) error {
			_, _, err := m.Peak("peak", s)
			return err
		})
		for _, tgt := range set.run {
			t.Run(tgt.Name, func(t *testing.T) {
				V := tgt.VectorLanes
				arena := make([]float32, s.ArenaFloats()+64)
				fill(arena, sentinel)
				for l := 0; l < V; l++ {
					arena[l], arena[16+l] = 1, 1
				}
				acc := func(tile, i int) int { return 32 + tile*PeakSlotFloats + i }
				n := PeakChains(tgt) * V
				for tile := 0; tile < s.Tiles; tile++ {
					for i := 0; i < n; i++ {
						arena[acc(tile, i)] = float32(100*tile + i)
					}
				}
				got := runChecked(t, kernel(t, lib, "peak", tgt), arena, nil, s.Tiles)
				for tile := 0; tile < s.Tiles; tile++ {
					for i := 0; i < n; i++ {
						if g, want := got[acc(tile, i)], float32(100*tile+i+s.Iters); g != want {
							t.Fatalf("tile %d accumulator float %d: got %v, want %v", tile, i, g, want)
						}
					}
				}
				checkUnchanged(t, "peak", got, arena, func(i int) bool {
					return i >= 32 && (i-32)/PeakSlotFloats < s.Tiles && (i-32)%PeakSlotFloats < n
				})
			})
		}
	}
}

// TestPeakAssembly checks that the peak kernel's inner loop is nothing but
// register-resident FMAs: at least PeakChains vector FMAs per iteration and
// no stack access.
func TestPeakAssembly(t *testing.T) {
	tc := toolchain(t)
	s := PeakSpec{Tiles: 4, Iters: 1 << 20}
	for _, tg := range []struct {
		targets []Target
		stack   string
	}{
		{[]Target{AVX512, AVX2}, "rsp"},
		{[]Target{NEON}, "[sp"},
	} {
		m := NewModule(tg.targets...)
		if _, _, err := m.Peak("peak", s); err != nil {
			t.Fatal(err)
		}
		asm, err := tc.Assembly(m.String(), tg.targets[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, tgt := range tg.targets {
			// The vector FMA of each target, with its register class.
			fmas := map[string][2]string{
				"avx512": {"vfmadd231ps", "%zmm"},
				"avx2":   {"vfmadd231ps", "%ymm"},
				"neon":   {"fmla", ".4s"},
			}
			op, reg := fmas[tgt.Name][0], fmas[tgt.Name][1]
			body := asmFunction(t, asm, tgt.Symbol("peak"))
			loops := innerLoops(body)
			if len(loops) != 1 {
				t.Fatalf("%s: %d innermost loops, want 1:\n%s", tgt.Name, len(loops), body)
			}
			l := loops[0]
			n, other := 0, 0
			for _, line := range strings.Split(l, "\n") {
				f := strings.Fields(line)
				if len(f) == 0 || strings.HasPrefix(f[0], ".") || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], "//") {
					continue
				}
				if f[0] == op && strings.Contains(line, reg) {
					n++
				} else {
					other++
				}
			}
			// Besides the FMAs only the loop counter and the branch.
			if other > 2 {
				t.Errorf("%s: inner loop has %d instructions besides the FMAs:\n%s", tgt.Name, other, l)
			}
			if n < PeakChains(tgt) || n%PeakChains(tgt) != 0 || strings.Contains(l, tg.stack) {
				t.Fatalf("%s: inner loop has %d %s on %s (want a multiple of %d) or touches the stack:\n%s", tgt.Name, n, op, reg, PeakChains(tgt), l)
			}
		}
	}
}
