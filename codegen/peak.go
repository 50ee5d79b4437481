package codegen

import (
	"fmt"

	"github.com/llir/llvm/ir/value"
)

// The FMA-peak kernel measures how many floating-point operations per second
// a core can retire: it is the denominator of every "% of peak" Kiln reports
// (kiln bench). It is an ordinary kernel with the standard ABI, so it runs
// through the same driver, runtime and threads as a network.
//
// Arena layout, in floats, the same for every target so that one artifact
// holding AVX-512 and AVX2 variants has one arena size:
//
//	[0, V)                    operand a (V = the target's vector lanes <= 16)
//	[16, 16+V)                operand b
//	[32 + t*PeakSlotFloats, +PeakChains*V)  accumulators of tile t: read at
//	                          the start of the tile, written at its end
//
// Every slot starts on a 64-byte boundary of a 64-byte aligned arena, so
// threads running different tiles never share a cache line.
const (
	// peakOperands is the float offset of the first tile slot.
	peakOperands = 32
	// PeakSlotFloats is the arena space of one tile's accumulators, in
	// floats: room for 24 chains of 16 lanes.
	PeakSlotFloats = 24 * 16
)

// PeakSpec describes an FMA-peak kernel (Module.Peak).
type PeakSpec struct {
	// Tiles is the number of independent tiles; a measurement gives each
	// thread one tile.
	Tiles int
	// Iters is the number of loop iterations of one tile; each iteration
	// issues one FMA on each of PeakChains(t) independent vector chains.
	Iters int
}

// Validate checks the spec.
func (s PeakSpec) Validate() error {
	if s.Tiles < 1 || s.Iters < 1 {
		return fmt.Errorf("peak: tiles (%d) and iterations (%d) must be positive", s.Tiles, s.Iters)
	}
	if int64(s.Tiles)*PeakSlotFloats+peakOperands > 1<<40 {
		return fmt.Errorf("peak: %d tiles is too many", s.Tiles)
	}
	return nil
}

// ArenaFloats is the arena size the kernel needs, in floats.
func (s PeakSpec) ArenaFloats() int64 { return peakOperands + int64(s.Tiles)*PeakSlotFloats }

// TileFlops is the exact number of floating-point operations one tile
// performs on target t: Iters × PeakChains(t) FMAs of VectorLanes lanes,
// 2 operations each.
func (s PeakSpec) TileFlops(t Target) int64 {
	return int64(s.Iters) * int64(PeakChains(t)) * 2 * int64(t.VectorLanes)
}

// PeakChains is the number of independent FMA chains of the peak kernel on
// t: at least FMA latency × FMA pipes on current cores (4 × 2 on x86, 4 × 4
// on the widest Arm cores), and within the register file next to the two
// operands: 24 zmm on AVX-512, 12 ymm on AVX2, 24 q on NEON.
func PeakChains(t Target) int { return min(24, t.Registers-4) }

// Peak adds an FMA-peak kernel (see PeakSpec and the arena layout above).
// Each tile loads the operands a and b and its accumulators, runs Iters
// iterations of acc[i] += a*b on PeakChains independent vector chains
// (llvm.fma with the accumulator as addend, the form of vfmadd231ps and
// fmla, so no register copies; nothing is reassociated away) and stores
// the accumulators back to its slot, so the work is observable. Kernel.Flops
// is that of the module's first target; use PeakSpec.TileFlops per target.
func (m *Module) Peak(name string, s PeakSpec) (string, int, error) {
	if m.err != nil {
		return "", 0, m.err
	}
	if err := s.Validate(); err != nil {
		return "", 0, fmt.Errorf("codegen: kernel %s: %w", name, err)
	}
	for _, t := range m.targets {
		if t.VectorLanes > 16 || PeakChains(t)*t.VectorLanes > PeakSlotFloats {
			return "", 0, fmt.Errorf("codegen: kernel %s: target %s: %d chains of %d lanes exceed the peak kernel's arena slot", name, t.Name, PeakChains(t), t.VectorLanes)
		}
	}
	k := Kernel{Name: name, Kind: "peak", Tiles: s.Tiles, Flops: int64(s.Tiles) * s.TileFlops(m.targets[0])}
	return m.define(k, func(g *builder) error {
		V := g.t.VectorLanes
		a, b := g.vload(g.arena, ci(0)), g.vload(g.arena, ci(16))
		g.tiles(func(t value.Value) {
			slot := g.gep(g.arena, g.add(g.mul(t, ci(PeakSlotFloats)), ci(peakOperands)))
			acc := make([]value.Value, PeakChains(g.t))
			for i := range acc {
				acc[i] = g.vload(slot, ci(i*V))
			}
			acc = g.loopN(s.Iters, acc, func(_ value.Value, acc []value.Value) []value.Value {
				out := make([]value.Value, len(acc))
				for i := range acc {
					out[i] = g.fma(a, b, acc[i])
				}
				return out
			})
			for i := range acc {
				g.vstore(acc[i], slot, ci(i*V))
			}
		})
		return nil
	})
}
