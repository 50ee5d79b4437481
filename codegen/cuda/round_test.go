package cuda

import (
	"encoding/binary"
	"math"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/llir/llvm/ir/value"
)

// roundKernel emits a kernel out[i] = round(in[i], prec) through the
// generator's own rounding code and runs it on the emulator.
func roundKernel(t *testing.T, prec Precision, xs []uint32) []uint32 {
	t.Helper()
	g := newGen("nvptx64-nvidia-cuda")
	g.elementwise("round", len(xs), []string{"in", "out"}, func(k *kb, ps []value.Value, i value.Value) {
		k.store(k.round(k.load(k.gep(ps[0], i)), prec), k.gep(ps[1], i))
	})
	em, err := NewEmulator(g.m)
	if err != nil {
		t.Fatal(err)
	}
	mem := make([]byte, 8*len(xs))
	for i, x := range xs {
		binary.LittleEndian.PutUint32(mem[4*i:], x)
	}
	grid, block := grid1(len(xs), elemThreads)
	l := Launch{Kernel: "round", Grid: grid, Block: block, Args: []Arg{{Kind: ArgArena}, {Kind: ArgArena, Offset: int64(4 * len(xs))}}}
	if err := em.Launch(l, mem, nil); err != nil {
		t.Fatal(err)
	}
	out := make([]uint32, len(xs))
	for i := range out {
		out[i] = binary.LittleEndian.Uint32(mem[4*(len(xs)+i):])
	}
	return out
}

// tf32Ref rounds x to the nearest value with a 10-bit mantissa, ties away
// from zero (cvt.rna.tf32.f32), by comparing distances in float64.
func tf32Ref(u uint32) uint32 {
	lo := u &^ 0x1fff
	hi := lo + 0x2000
	x := math.Abs(float64(math.Float32frombits(u)))
	hv := math.Abs(float64(math.Float32frombits(hi)))
	if math.IsInf(hv, 0) {
		hv = math.Ldexp(1, 128) // IEEE: beyond the largest finite value + half an ulp rounds to inf
	}
	dl := x - math.Abs(float64(math.Float32frombits(lo)))
	dh := hv - x
	if dh <= dl {
		return hi
	}
	return lo
}

// TestRounding checks the generated bf16 (round to nearest even) and tf32
// (round to nearest, ties away) conversions, executed by the emulator,
// against tensor.F32ToBF16 and an independent tf32 reference, on ties,
// near-ties, both signs, subnormals, zeros and the overflow to infinity.
func TestRounding(t *testing.T) {
	xs := []uint32{
		0x3f800000, 0x3f808000, 0x3f818000, 0x3f808001, 0x3f807fff, // 1, ties to even (down, up), above, below
		0xbf808000, 0xbf818000, 0xc0490fdb, 0x40490fdb, // negative ties, ±pi
		0x00000000, 0x80000000, 0x00000001, 0x00008000, 0x00018000, // zeros, subnormals and their ties
		0x7f7fffff, 0xff7fffff, 0x7f800000, // max finite (rounds to inf), -max, inf
		0x3f801000, 0x3f803000, 0x3f800fff, 0xbf801000, // tf32 ties and near-ties
	}
	for i := uint32(0); i < 1000; i++ {
		xs = append(xs, 0x3e000000+i*0x12345) // a spread of ordinary values
	}
	bf := roundKernel(t, BF16, xs)
	tf := roundKernel(t, TF32, xs)
	for i, x := range xs {
		if want := uint32(tensor.F32ToBF16(math.Float32frombits(x))) << 16; bf[i] != want {
			t.Errorf("bf16(%#08x) = %#08x, want %#08x", x, bf[i], want)
		}
		if x&0x7f800000 == 0x7f800000 {
			continue // tf32 of inf: the reference's distance is undefined
		}
		if want := tf32Ref(x); tf[i] != want {
			t.Errorf("tf32(%#08x) = %#08x, want %#08x", x, tf[i], want)
		}
	}
}

// TestEmulatorRejects checks that the emulator refuses what it does not
// implement and faults on out-of-bounds accesses instead of corrupting
// memory.
func TestEmulatorRejects(t *testing.T) {
	g := newGen("nvptx64-nvidia-cuda")
	g.elementwise("oob", 4, []string{"in", "out"}, func(k *kb, ps []value.Value, i value.Value) {
		k.store(k.load(k.gep(ps[0], k.add(i, ci(100)))), k.gep(ps[1], i))
	})
	em, err := NewEmulator(g.m)
	if err != nil {
		t.Fatal(err)
	}
	l := Launch{Kernel: "oob", Grid: [3]int{1, 1, 1}, Block: [3]int{4, 1, 1}, Args: []Arg{{Kind: ArgArena}, {Kind: ArgArena, Offset: 16}}}
	if err := em.Launch(l, make([]byte, 32), nil); err == nil || !strings.Contains(err.Error(), "outside arena") {
		t.Errorf("out-of-bounds load: err = %v", err)
	}
	g2 := newGen("nvptx64-nvidia-cuda")
	g2.elementwise("sqrt", 4, []string{"in"}, func(k *kb, ps []value.Value, i value.Value) {
		f := k.g.intrinsic("llvm.sqrt.f32", f32, f32)
		k.store(k.b.NewCall(f, k.load(k.gep(ps[0], i))), k.gep(ps[0], i))
	})
	if _, err := NewEmulator(g2.m); err == nil || !strings.Contains(err.Error(), "llvm.sqrt.f32 not emulated") {
		t.Errorf("unknown intrinsic: err = %v", err)
	}
}

// TestRaceCheck checks the emulator's shared-memory race check on a kernel
// where each thread writes its shared word and reads its neighbour's: with
// a barrier between the two it runs; without one, or when each thread then
// overwrites its own word (which its other neighbour reads in the same
// phase), it is a race (read-after-write or write-after-read, whichever
// order the goroutines took).
func TestRaceCheck(t *testing.T) {
	const n = 64
	for _, c := range []struct {
		name      string
		barrier   bool
		overwrite bool
		wantRace  bool
	}{
		{"barrier", true, false, false},
		{"no_barrier", false, false, true},
		{"overwrite_after_barrier", true, true, true},
	} {
		g := newGen("nvptx64-nvidia-cuda")
		k, ps := g.kernel("race", "out")
		sh := k.shared(n, f32)
		tid := k.sreg("tid.x")
		k.store(cf(1), k.sgep(sh, tid))
		if c.barrier {
			k.barrier()
		}
		v := k.load(k.sgep(sh, k.rem(k.add(tid, ci(1)), n)))
		if c.overwrite {
			k.store(v, k.sgep(sh, tid))
		}
		k.store(v, k.gep(ps[0], tid))
		k.ret()
		em, err := NewEmulator(g.m)
		if err != nil {
			t.Fatal(err)
		}
		l := Launch{Kernel: "race", Grid: [3]int{1, 1, 1}, Block: [3]int{n, 1, 1}, Args: []Arg{{Kind: ArgArena}}}
		err = em.Launch(l, make([]byte, 4*n), nil)
		switch {
		case !c.wantRace && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.wantRace && (err == nil || !strings.Contains(err.Error(), "shared-memory race")):
			t.Errorf("%s: err = %v, want a shared-memory race", c.name, err)
		}
	}
}
