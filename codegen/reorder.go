package codegen

import (
	kir "github.com/kiln-dev/kiln/ir"

	"github.com/llir/llvm/ir/value"
)

// reorderRow converts one row of a tile of Reorder: pixels [0, W) of the
// first lanes channels of a channel block, between the blocked row at bBase
// ([W][B]) and the plain rows at pBase (channel l's row at l*Channel,
// pixels contiguous).
//
// The loop runs channel by channel (lane l outer, pixels inner), V pixels
// at a time: the plain side moves as one full vector (a whole row segment
// of one channel) and the blocked side as V scalar accesses at stride B,
// all inside the tile's W*B floats, which stay in L1. Pixel by pixel (a
// vector of B lanes on the blocked side, B scalar accesses on the plain
// side) each pixel touched B plain rows H*W floats apart: with H*W a
// multiple of 1024 (32x32 images) those addresses map to one L1 set, more
// of them than the cache has ways, and the blocked-to-plain reorder ran at
// about 10 cycles per element (DenseNet's unaligned concats, which go
// through plain NCHW, spent a quarter of the network's time in reorders at
// batch 8). This is the strided-copy form of the NCHW16c reorders of
// oneDNN's simple_reorder (src/cpu/reorder/simple_reorder.hpp), without its
// in-register transposes.
//
// When blocking, lanes [lanes, B) of the last block are written as zero.
func reorderRow(g *builder, s ReorderSpec, bst, pst kir.ChannelBlockStrides, bBase, pBase value.Value, lanes int) {
	V := g.t.VectorLanes
	nv := s.W / V // full vectors per channel row
	g.loopN(lanes, nil, func(l value.Value, _ []value.Value) []value.Value {
		bl := g.gep(bBase, l)                         // pixel w of lane l at w*Pixel
		pl := g.gep(pBase, g.mul(l, ci(pst.Channel))) // pixel w of channel l at w*Pixel (1)
		if nv > 0 {
			g.loopN(nv, nil, func(i value.Value, _ []value.Value) []value.Value {
				w0 := g.mul(i, ci(V))
				bp := g.gep(bl, g.mul(w0, ci(bst.Pixel)))
				pp := g.gep(pl, w0)
				if s.ToBlocked {
					v := g.vload(pp, ci(0))
					for k := 0; k < V; k++ {
						g.store(g.b.NewExtractElement(v, ci(k)), bp, ci(k*bst.Pixel))
					}
				} else {
					v := g.vzero()
					for k := 0; k < V; k++ {
						v = g.b.NewInsertElement(v, g.load(bp, ci(k*bst.Pixel)), ci(k))
					}
					g.vstore(v, pp, ci(0))
				}
				return nil
			})
		}
		for w := nv * V; w < s.W; w++ {
			if s.ToBlocked {
				g.store(g.load(pl, ci(w)), bl, ci(w*bst.Pixel))
			} else {
				g.store(g.load(bl, ci(w*bst.Pixel)), pl, ci(w))
			}
		}
		return nil
	})
	b := bst.Pixel
	if !s.ToBlocked || lanes == b {
		return
	}
	g.loopN(s.W, nil, func(w value.Value, _ []value.Value) []value.Value {
		bp := g.gep(bBase, g.mul(w, ci(b)))
		for l := lanes; l < b; l++ {
			g.store(cf(0), bp, ci(l))
		}
		return nil
	})
}
