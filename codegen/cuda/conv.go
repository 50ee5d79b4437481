package cuda

import (
	"github.com/kiln-dev/kiln/codegen"
	"github.com/llir/llvm/ir/types"
	"github.com/llir/llvm/ir/value"
)

// Implicit-GEMM convolution tile (NVIDIA cuDNN's implicit GEMM; Chetlur et
// al., "cuDNN: Efficient Primitives for Deep Learning", 2014). The GEMM is
// M = N·OH·OW output pixels by 32 output channels (one NCHW32c block) per
// thread block, reducing over K = ceil(C/32)·KH·KW·32: one K step is one
// (input channel block, kh, kw), i.e. 32 input channels of one filter tap.
const (
	convBK     = 32 // K per step (= the channel block)
	smemStride = 33 // row stride of the shared tiles (+1: no bank conflicts on transposed access)
	blk        = 32 // the GPU targets' channel block
)

// convTile is a conv kernel's pixel tile: BM = 16·warps pixels per thread
// block of 32·warps threads. Large grids use 4 warps (64 pixels: the
// weight slab staged once serves 64 pixels); a conv whose 64-pixel grid
// would not give every SM a block (batch 1's 17x17 and 8x8 layers: 138 of
// Inception-v4's 149 convolutions, 81% of its conv FLOPs) uses 1 warp (16
// pixels), four times the blocks.
type convTile struct{ warps int }

func (t convTile) bm() int      { return 16 * t.warps }
func (t convTile) threads() int { return 32 * t.warps }

// minBlocks is the grid size below which a conv takes the small tile: the
// SM count of the largest GPU of the targets (H100/H200: 132).
const minBlocks = 132

// tileFor chooses the tile of s (see convTile).
func tileFor(s codegen.ConvSpec) convTile {
	if ceilDiv(s.N*s.OH*s.OW, 64)*ceilDiv(s.O, blk) < minBlocks {
		return convTile{1}
	}
	return convTile{4}
}

// conv emits the kernel of s (offsets ignored: the kernel takes pointers)
// in precision prec. Parameters: in, w, bias, res, out.
//
// Staging: the warps load whole 32-channel rows, i.e. 128 contiguous bytes
// of NCHW32c (coalesced), of the tile's BM pixels into As[pixel][k] (zero
// outside the image, beyond M or beyond C for a plain input), and the 32
// rows of the OIhw32i32o weight slab into Bs[co][k] (transposed, so that
// both tiles are K-contiguous, as the mma "row.col" fragments want). For
// bf16 and tf32 the staged values are rounded once (bf16: round to nearest
// even; tf32: cvt.rna, round to nearest, ties away) and kept as f32 bit
// patterns.
//
// Compute: fp32: thread (ty, tx) = (tid/8, tid%8) accumulates pixels
// 4ty..4ty+3 × channels 4tx..4tx+3 with fma.rn.f32. bf16/tf32: warp w
// computes pixels 16w..16w+15 × 32 channels as 4 mma tiles m16n8 per k16
// (bf16) or k8 (tf32) step, with the fragments of the PTX ISA's "Matrix
// Fragments for mma.m16n8k16 / mma.m16n8k8" sections (groupID = lane/4,
// threadID_in_group = lane%4).
//
// Epilogue: + bias, + residual (already scaled: fold-residual-scale folds
// the scale into the branch's weights), ReLU, clamp to [Lo, Hi] (a fused
// clip or relu6), stored into channel block
// OutCOffset/32 + blockIdx.y of the OutC-channel destination (a concat
// slice).
func (g *gen) conv(name string, s codegen.ConvSpec, prec Precision, tile convTile) {
	k, ps := g.kernel(name, "in", "w", "bias", "res", "out")
	in, w, bias, res, out := ps[0], ps[1], ps[2], ps[3], ps[4]
	M := s.N * s.OH * s.OW
	OHW := s.OH * s.OW
	CB := ceilDiv(s.C, blk)
	OB := ceilDiv(s.O, blk)
	OCB := ceilDiv(s.OutC, blk)
	KK := s.KH * s.KW
	dh, dw := max(s.DH, 1), max(s.DW, 1)

	tid := k.sreg("tid.x")
	mt := k.sreg("ctaid.x")
	ob := k.sreg("ctaid.y")
	As := k.shared(tile.bm()*smemStride, f32)
	Bs := k.shared(blk*smemStride, f32)
	lane := k.rem(tid, 32)
	warp := k.div(tid, 32)
	m0 := k.mul(mt, tile.bm())

	// Per staged pixel (loop invariant): validity, window origin, base.
	type pix struct {
		row, valid, ih0, iw0, base value.Value
	}
	var pxs []pix
	for j := 0; j < tile.bm()/tile.warps; j++ {
		row := k.add(warp, ci(tile.warps*j))
		m := k.add(m0, row)
		n := k.div(m, OHW)
		r := k.rem(m, OHW)
		p := pix{row: row, valid: k.lt(m, ci(M))}
		p.ih0 = k.sub(k.mul(k.div(r, s.OW), s.SH), ci(s.PH))
		p.iw0 = k.sub(k.mul(k.rem(r, s.OW), s.SW), ci(s.PW))
		if s.InPlain {
			p.base = k.mul(n, s.C*s.H*s.W)
		} else {
			p.base = k.add(k.mul(n, CB*s.H*s.W*blk), lane)
		}
		pxs = append(pxs, p)
	}

	nacc := 16
	acc0 := make([]value.Value, nacc)
	for i := range acc0 {
		acc0[i] = cf(0)
	}
	acc := k.loop(CB*KK, acc0, func(kk value.Value, acc []value.Value) []value.Value {
		cb := k.div(kk, KK)
		r := k.rem(kk, KK)
		kh := k.div(r, s.KW)
		kw := k.rem(r, s.KW)
		var chanOK value.Value
		if s.InPlain {
			chanOK = k.lt(k.add(k.mul(cb, blk), lane), ci(s.C))
		}
		for _, p := range pxs {
			ih := k.add(p.ih0, k.mul(kh, dh))
			iw := k.add(p.iw0, k.mul(kw, dw))
			ok := k.and(p.valid, k.inRange(ih, s.H), k.inRange(iw, s.W), chanOK)
			var idx value.Value
			if s.InPlain {
				c := k.add(k.mul(cb, blk), lane)
				idx = k.add(p.base, k.add(k.mul(c, s.H*s.W), k.add(k.mul(ih, s.W), iw)))
			} else {
				idx = k.add(p.base, k.mul(k.add(k.mul(k.add(k.mul(cb, s.H), ih), s.W), iw), blk))
			}
			v := k.round(k.loadIf(ok, in, idx), prec)
			k.store(v, k.sgep(As, k.add(k.mul(p.row, smemStride), lane)))
		}
		slab := k.mul(k.add(k.mul(k.add(k.mul(ob, CB), cb), KK), r), blk*blk)
		for j := 0; j < blk*blk/tile.threads(); j++ {
			kr := k.add(warp, ci(tile.warps*j))
			v := k.round(k.load(k.gep(w, k.add(slab, k.add(k.mul(kr, blk), lane)))), prec)
			k.store(v, k.sgep(Bs, k.add(k.mul(lane, smemStride), kr)))
		}
		k.barrier()
		var next []value.Value
		switch prec {
		case FP32:
			next = k.convFMA(As, Bs, tid, acc)
		default:
			next = k.convMMA(As, Bs, warp, lane, acc, prec)
		}
		k.barrier()
		return next
	})

	// Epilogue, one bounds check and pixel decomposition per output row
	// the thread holds (fp32: 4 rows of 4 channels; mma: rows g and g+8 of
	// 16 channels each).
	type elem struct {
		acc value.Value
		co  value.Value
	}
	var rowIDs []int
	rows := map[int]value.Value{}
	elems := map[int][]elem{}
	for i, a := range acc {
		var rid int
		var row, co value.Value
		if prec == FP32 {
			rid = i / 4
			row = k.add(k.mul(k.div(tid, 8), 4), ci(rid))
			co = k.add(k.mul(k.rem(tid, 8), 4), ci(i%4))
		} else {
			nt, rr := i/4, i%4
			rid = rr / 2
			row = k.add(k.add(k.mul(warp, 16), k.div(lane, 4)), ci(8*rid))
			co = k.add(k.add(ci(nt*8), k.mul(k.rem(lane, 4), 2)), ci(rr%2))
		}
		if _, ok := rows[rid]; !ok {
			rowIDs = append(rowIDs, rid)
			rows[rid] = row
		}
		elems[rid] = append(elems[rid], elem{a, co})
	}
	for _, rid := range rowIDs {
		m := k.add(m0, rows[rid])
		k.ifThen(k.lt(m, ci(M)), func() {
			n := k.div(m, OHW)
			px := k.rem(m, OHW)
			rbase := k.mul(k.add(k.mul(k.add(k.mul(n, OB), ob), OHW), px), blk)
			obase := k.mul(k.add(k.mul(k.add(k.add(k.mul(n, OCB), ci(s.OutCOffset/blk)), ob), OHW), px), blk)
			for _, e := range elems[rid] {
				v := e.acc
				if s.HasBias {
					v = k.b.NewFAdd(v, k.load(k.gep(bias, k.add(k.mul(ob, blk), e.co))))
				}
				if s.HasResidual {
					v = k.b.NewFAdd(v, k.load(k.gep(res, k.add(rbase, e.co))))
				}
				if s.Relu {
					v = k.relu(v)
				}
				if s.Clip {
					v = k.clamp(v, s.Lo, s.Hi)
				}
				k.store(v, k.gep(out, k.add(obase, e.co)))
			}
		})
	}
	k.ret()
}

// convFMA is one K step of the exact fp32 path: 32 rank-1 updates of the
// thread's 4×4 register tile, as a loop of 4 iterations of 8 unrolled
// updates (full unrolling quadruples the code for little gain: the
// shared-memory loads, not the loop counter, bound the step).
func (k *kb) convFMA(As, Bs, tid value.Value, acc []value.Value) []value.Value {
	const unroll = 8
	arow := k.mul(k.mul(k.div(tid, 8), 4), smemStride)
	bcol := k.mul(k.mul(k.rem(tid, 8), 4), smemStride)
	return k.loop(convBK/unroll, acc, func(it value.Value, acc []value.Value) []value.Value {
		next := append([]value.Value(nil), acc...)
		k0 := k.mul(it, unroll)
		ab, bb := k.add(arow, k0), k.add(bcol, k0)
		for kk := 0; kk < unroll; kk++ {
			var a, b [4]value.Value
			for i := 0; i < 4; i++ {
				a[i] = k.load(k.sgep(As, k.add(ab, ci(i*smemStride+kk))))
				b[i] = k.load(k.sgep(Bs, k.add(bb, ci(i*smemStride+kk))))
			}
			for i := 0; i < 4; i++ {
				for j := 0; j < 4; j++ {
					next[i*4+j] = k.fma(a[i], b[j], next[i*4+j])
				}
			}
		}
		return next
	})
}

// convMMA is one K step on tensor cores: per k16 (bf16) or k8 (tf32) step,
// the warp's A fragment (16 pixels) once and one B fragment and mma per 8
// output channels.
func (k *kb) convMMA(As, Bs, warp, lane value.Value, acc []value.Value, prec Precision) []value.Value {
	gq := k.div(lane, 4)
	tq := k.rem(lane, 4)
	row0 := k.mul(k.add(k.mul(warp, 16), gq), smemStride)
	row1 := k.add(row0, ci(8*smemStride))
	next := append([]value.Value(nil), acc...)
	a := func(row value.Value, col int, off value.Value) value.Value {
		return k.bits(k.load(k.sgep(As, k.add(k.add(row, off), ci(col)))))
	}
	b := func(nt int, col int, off value.Value) value.Value {
		base := k.mul(k.add(ci(nt*8), gq), smemStride)
		return k.bits(k.load(k.sgep(Bs, k.add(k.add(base, off), ci(col)))))
	}
	if prec == BF16 {
		t2 := k.mul(tq, 2)
		for k0 := 0; k0 < convBK; k0 += 16 {
			pa := func(row value.Value, c int) value.Value { return k.pack(a(row, c, t2), a(row, c+1, t2)) }
			fa := []value.Value{pa(row0, k0), pa(row1, k0), pa(row0, k0+8), pa(row1, k0+8)}
			for nt := 0; nt < 4; nt++ {
				fb := []value.Value{k.pack(b(nt, k0, t2), b(nt, k0+1, t2)), k.pack(b(nt, k0+8, t2), b(nt, k0+9, t2))}
				copy(next[nt*4:], k.mma("llvm.nvvm.mma.m16n8k16.row.col.bf16", fa, fb, next[nt*4:nt*4+4]))
			}
		}
		return next
	}
	for k0 := 0; k0 < convBK; k0 += 8 {
		fa := []value.Value{a(row0, k0, tq), a(row1, k0, tq), a(row0, k0+4, tq), a(row1, k0+4, tq)}
		for nt := 0; nt < 4; nt++ {
			fb := []value.Value{b(nt, k0, tq), b(nt, k0+4, tq)}
			copy(next[nt*4:], k.mma("llvm.nvvm.mma.m16n8k8.row.col.tf32", fa, fb, next[nt*4:nt*4+4]))
		}
	}
	return next
}

// mma calls an m16n8 mma intrinsic: 4 A registers, 2 B registers, 4 f32
// accumulators in and out.
func (k *kb) mma(name string, a, b, c []value.Value) []value.Value {
	params := []types.Type{i32, i32, i32, i32, i32, i32, f32, f32, f32, f32}
	f := k.g.intrinsic(name, mmaType, params...)
	args := append(append(append([]value.Value(nil), a...), b...), c...)
	r := k.b.NewCall(f, args...)
	out := make([]value.Value, 4)
	for i := range out {
		out[i] = k.b.NewExtractValue(r, uint64(i))
	}
	return out
}

// bits is the i32 bit pattern of an f32.
func (k *kb) bits(v value.Value) value.Value { return k.b.NewBitCast(v, i32) }

// pack puts two bf16 values (f32 bit patterns whose low 16 bits are zero)
// into one .b32 register, lo in bits 0-15 (the lower-indexed fragment
// element) and hi in bits 16-31.
func (k *kb) pack(lo, hi value.Value) value.Value {
	return k.b.NewOr(k.b.NewLShr(lo, ci32(16)), k.b.NewAnd(hi, ci32(-65536)))
}

// round rounds an f32 to the precision's input format, keeping it as an
// f32 bit pattern: bf16 round to nearest even ((u + 0x7fff + bit16) with
// the low 16 bits cleared), tf32 round to nearest, ties away (cvt.rna.tf32:
// (u + 0x1000) with the low 13 bits cleared). NaN payloads are not
// preserved (no NaN reaches a convolution of a finite network).
func (k *kb) round(v value.Value, prec Precision) value.Value {
	switch prec {
	case BF16:
		u := k.bits(v)
		odd := k.b.NewAnd(k.b.NewLShr(u, ci32(16)), ci32(1))
		r := k.b.NewAnd(k.b.NewAdd(k.b.NewAdd(u, ci32(0x7fff)), odd), ci32(-65536))
		return k.b.NewBitCast(r, f32)
	case TF32:
		u := k.bits(v)
		r := k.b.NewAnd(k.b.NewAdd(u, ci32(0x1000)), ci32(-8192))
		return k.b.NewBitCast(r, f32)
	}
	return v
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
