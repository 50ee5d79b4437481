package codegen

import (
	"fmt"
	kir "github.com/kiln-dev/kiln/ir"

	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/value"
)

// Direct convolution on NCHW{B}c with register blocking.
//
// The kernel follows oneDNN's nChw16c forward JIT kernels
// (jit_avx512_common_conv_kernel) and Georganas et al., "Anatomy of
// High-Performance Deep Learning Convolutions on SIMD Architectures" (SC'18):
//
//	tile = (n, output-channel block group, output row oh[, pixel chunk])
//	for each output-channel sub-group of G blocks (OCV = G*B/VectorLanes vectors)
//	  for each strip of RW output pixels of the row:
//	    acc[RW][OCV] = 0                          // registers
//	    for icb in input-channel blocks:          // loop
//	      for kh in valid kernel rows:            // loop, bounds from oh
//	        for kw in 0..KW-1:                    // loop
//	          for ic in the block's channels:     // loop
//	            w[0..OCV) = weight vectors (icb, kh, kw, ic)
//	            for r in 0..RW-1:                 // unrolled
//	              x = broadcast in[icb][ih][(ow0+r)*SW-PW+kw][ic]
//	              acc[r][v] = fma(x, w[v], acc[r][v])   for v < OCV
//	    epilogue in registers: + bias, + residual, relu; store
//
// The RW×OCV accumulators stay in vector registers for the whole reduction:
// RW*OCV + OCV weight vectors + broadcast registers (none with AVX-512's
// embedded {1toN} broadcast) stay below the register count, e.g. 14×2 on
// AVX-512, 6×2 (one 16-channel block = two ymm) on AVX2. The tile's group
// of output-channel blocks is chosen for the module's first target; a
// target with a smaller register tile loops over sub-groups of it, so all
// variants of a kernel share one tile decomposition. RW and G are chosen per target by a small cost
// model (planConv); the strips of a row are balanced (widths differ by at
// most one) rather than leaving a short tail.
//
// Borders: the valid kh range of a row is computed at run time (one per
// tile). Along the row, strips whose pixels all see the whole kernel width
// run in a real loop; the few strips touching the left or right padding are
// emitted separately at their constant positions with the FMAs of
// out-of-bounds taps removed at generation time, so no load is ever
// conditional.
//
// A 1×1, stride-1, unpadded convolution is a GEMM over the H*W pixels of an
// image: it is planned as one row of H*W pixels cut into chunks of about
// 48 pixels (one tile each), so strips are full even when W is small (17, 8).
// This is the packed-GEMM micro-kernel of the 1×1 case: NCHW{B}c already
// stores each input-channel block as a [pixels][B] panel, so no packing
// step is needed.
//
// Dilation (DH, DW) only moves the taps: tap (kh, kw) reads input pixel
// (oh*SH-PH+kh*DH, ow*SW-PW+kw*DW); the valid kh range becomes
// [ceil(max(0,-top)/DH), min(KH, ceil((H-top)/DH))) and border pruning uses
// the dilated positions.
//
// Groups whose per-group input and output channel counts are multiples of
// the block run the same kernel "per group with offsets": the tile's group
// of output blocks never straddles a group (the group size G divides the
// group's output blocks), the reduction runs over the group's C/Groups/B
// input blocks starting at block grp*C/Groups/B, and the packed weight of
// [O][C/Groups][KH][KW] is each group's packed weight in turn. No loop of
// small convolutions and no extra kernel. (Depthwise convolutions, where a
// group has one channel, have their own kernel: depthwise.go.)

// convPlan is the target-independent part of a convolution's schedule: the
// tile decomposition, which must be the same for every target of a module.
type convPlan struct {
	s        ConvSpec
	b        int
	icb, ocb int // input channel blocks (per group), output channel blocks (all)
	ocbg     int // output channel blocks per group (ocb when groups = 1)
	gt       int // output-channel blocks per tile
	ng       int // tile groups: ocb/gt
	flat     bool
	rh, rw   int // rows and row length seen by the schedule (1, H*W when flat)
	ohs, ows int // output rows, row length (1, OH*OW when flat)
	nch      int // chunks per row
	chunk    int // pixels per chunk (last chunk: ows - (nch-1)*chunk)
	tiles    int
}

// targetPlan is the per-target register blocking.
type targetPlan struct {
	g   int // output-channel blocks per accumulator tile
	ocv int // output vectors per pixel: g*B/VectorLanes
	rw  int // maximum strip width
}

// convTuning overrides the cost model for experiments (tests, benchmarks):
// when non-nil it returns the group size in blocks and the maximum strip
// width for a target, or 0, 0 to use the model.
var convTuning func(t Target, s ConvSpec) (g, rw int)

// maxStrip bounds the strip width (code size grows with it).
const maxStrip = 28

// maxRW is the widest strip that keeps ocv accumulator vectors per pixel,
// the ocv weight vectors and one register to spare in the target's vector
// registers. Without AVX-512's embedded broadcast the broadcast inputs need
// registers too: one per 16 architectural registers (LLVM's AArch64
// scheduler keeps two broadcasts in flight).
func maxRW(t Target, ocv int) int {
	free := t.Registers - ocv - 1
	if !t.embeddedBroadcast() {
		free -= t.Registers / 16
	}
	return min(maxStrip, free/ocv)
}

// chooseG picks the group size (a divisor of limit) and strip width for
// target t and a row of length l, by a throughput model: per input channel
// a strip issues acc = w*ocv FMAs and ocv + w loads; it takes
// max(acc/2, loads/2, 4) cycles (two FMA pipes, two load pipes, FMA
// latency 4 per accumulator chain). Among the best (within 2%), wider strips
// win (fewer weight loads per FMA from L2), then more accumulators.
func chooseG(t Target, limit, l int) targetPlan {
	vpb := t.Block / t.VectorLanes
	best, bestEff, bestW, bestAcc := targetPlan{}, -1.0, 0.0, 0.0
	for g := 1; g <= limit; g++ {
		if limit%g != 0 {
			continue
		}
		ocv := g * vpb
		rw := maxRW(t, ocv)
		if rw < 1 {
			continue
		}
		s := ceilDiv(l, rw)
		avg := float64(l) / float64(s)
		acc := avg * float64(ocv)
		loads := avg + float64(ocv)
		cyc := max(acc/2, loads/2, 4)
		eff := acc / 2 / cyc
		better := eff > bestEff*1.02 ||
			(eff >= bestEff*0.98 && (avg > bestW || (avg == bestW && acc > bestAcc)))
		if better {
			best, bestEff, bestW, bestAcc = targetPlan{g: g, ocv: ocv, rw: rw}, eff, avg, acc
		}
	}
	return best
}

func planConv(s ConvSpec, b int, primary Target) convPlan {
	p := convPlan{s: s, b: b, icb: ceilDiv(s.C/s.groups(), b), ocb: ceilDiv(s.O, b)}
	p.ocbg = p.ocb / s.groups()
	p.flat = s.KH == 1 && s.KW == 1 && s.SH == 1 && s.SW == 1 && s.PH == 0 && s.PW == 0
	p.rh, p.rw, p.ohs, p.ows = s.H, s.W, s.OH, s.OW
	if p.flat {
		p.rh, p.rw, p.ohs, p.ows = 1, s.H*s.W, 1, s.OH*s.OW
	}
	p.nch, p.chunk = 1, p.ows
	if p.flat {
		// Chunks of about 48 pixels (a few full strips); at least two
		// when there are 64 pixels (8×8), so that small layers still
		// spread over threads.
		p.nch = max(1, p.ows/48, min(2, p.ows/32))
		p.chunk = ceilDiv(p.ows, p.nch)
		p.nch = ceilDiv(p.ows, p.chunk)
	}
	tp := primary.planFor(s, p.ocbg, p.chunk)
	p.gt = tp.g
	p.ng = p.ocb / p.gt
	p.tiles = s.N * p.ng * p.ohs * p.nch
	return p
}

func (t Target) planFor(s ConvSpec, limit, l int) targetPlan {
	if convTuning != nil {
		if g, rw := convTuning(t, s); g > 0 && limit%g == 0 {
			ocv := g * t.Block / t.VectorLanes
			if rw = min(rw, maxRW(t, ocv)); rw > 0 {
				return targetPlan{g: g, ocv: ocv, rw: rw}
			}
		}
	}
	return chooseG(t, limit, l)
}

// Conv adds a convolution kernel (see ConvSpec) and returns its name and tile
// count. A tile is one output row of one image for a group of output-channel
// blocks (for 1×1 stride-1 unpadded convolutions: a chunk of about 48
// pixels of the flattened image).
func (m *Module) Conv(name string, s ConvSpec) (string, int, error) {
	b, err := m.validated(name, s)
	if err != nil {
		return "", 0, err
	}
	p := planConv(s, b, m.targets[0])
	flops := 2 * int64(s.N) * int64(s.O) * int64(s.OH*s.OW) * int64(s.C/s.groups()*s.KH*s.KW)
	return m.define(Kernel{Name: name, Kind: "conv", Tiles: p.tiles, Flops: flops}, func(g *builder) error {
		tp := g.t.planFor(s, p.gt, p.chunk)
		if tp.g == 0 || p.gt%tp.g != 0 {
			return fmt.Errorf("codegen: kernel %s: no register blocking for target %s", name, g.t.Name)
		}
		c := &convGen{builder: g, p: p, tp: tp, vpb: b / g.t.VectorLanes}
		c.emit()
		return nil
	})
}

type convGen struct {
	*builder
	p   convPlan
	tp  targetPlan
	vpb int
	// per tile
	n, oh, ocb0 value.Value
	icbBase     value.Value // first input channel block of the tile's group
	khLo, khHi  value.Value
	masked      bool // emit lane-masked FMAs (conv_groups.go)
}

func (c *convGen) emit() {
	p, s := c.p, c.p.s
	c.tiles(func(t value.Value) {
		ch := c.urem(t, p.nch)
		t = c.udiv(t, p.nch)
		c.oh = c.urem(t, p.ohs)
		t = c.udiv(t, p.ohs)
		grp := c.urem(t, p.ng)
		c.n = c.udiv(t, p.ng)
		// Valid kernel rows: 0 <= oh*SH - PH + kh*DH < H.
		dh, _ := s.dil()
		if p.flat {
			c.khLo, c.khHi = ci(0), ci(1)
		} else {
			top := c.sub(c.mul(c.oh, ci(s.SH)), ci(s.PH)) // ih of kh = 0
			c.khLo, c.khHi = ci(0), ci(s.KH)
			if s.PH > 0 {
				c.khLo = c.udiv(c.add(c.smax(c.sub(ci(0), top), ci(0)), ci(dh-1)), dh)
			}
			if (s.OH-1)*s.SH-s.PH+(s.KH-1)*dh+1 > s.H {
				// H - top >= 1 for every output row.
				c.khHi = c.smin(c.udiv(c.add(c.sub(ci(s.H), top), ci(dh-1)), dh), ci(s.KH))
			}
		}
		sub := p.gt / c.tp.g
		c.loopN(sub, nil, func(sg value.Value, _ []value.Value) []value.Value {
			c.ocb0 = c.add(c.mul(grp, ci(p.gt)), c.mul(sg, ci(c.tp.g)))
			c.icbBase = ci(0)
			if s.groups() > 1 {
				c.icbBase = c.mul(c.udiv(c.ocb0, p.ocbg), ci(p.icb))
			}
			if p.nch == 1 {
				c.segment(ci(0), p.ows, !p.flat)
				return nil
			}
			last := p.ows - (p.nch-1)*p.chunk
			if last == p.chunk {
				c.segment(c.mul(ch, ci(p.chunk)), p.chunk, false)
				return nil
			}
			c.ifElse(c.icmp(enum.IPredULT, ch, ci(p.nch-1)),
				func() { c.segment(c.mul(ch, ci(p.chunk)), p.chunk, false) },
				func() { c.segment(ci((p.nch-1)*p.chunk), last, false) })
			return nil
		})
	})
}

// interior reports whether every tap of the strip [pos, pos+w) is inside the
// input row.
func (c *convGen) interior(pos, w int) bool {
	s := c.p.s
	_, dw := s.dil()
	return pos*s.SW-s.PW >= 0 && (pos+w-1)*s.SW-s.PW+(s.KW-1)*dw < c.p.rw
}

// segment computes output pixels [start, start+l) of the current row. The
// segment is cut into ns = ceil(l/RW) strips of widths differing by at most
// one (l = extra*(base+1) + (ns-extra)*base), so no strip is a short tail.
// Runs of interior strips of equal width become loops; with borders, start
// is the constant 0 and strips touching the padding are emitted at their
// constant positions with the out-of-bounds taps left out.
func (c *convGen) segment(start value.Value, l int, borders bool) {
	c.guardMasked(start, l, func() { c.segmentBody(start, l, borders) }) // conv_groups.go
}

// segmentBody is segment's strips.
func (c *convGen) segmentBody(start value.Value, l int, borders bool) {
	ns := ceilDiv(l, min(c.tp.rw, l))
	base, extra := l/ns, l%ns
	type run struct {
		pos, w, n int
		prune     bool
	}
	var runs []run
	pos := 0
	for i := 0; i < ns; i++ {
		w := base
		if i < extra {
			w++
		}
		prune := borders && !c.interior(pos, w)
		if k := len(runs) - 1; k >= 0 && !prune && !runs[k].prune && runs[k].w == w {
			runs[k].n++
		} else {
			runs = append(runs, run{pos: pos, w: w, n: 1, prune: prune})
		}
		pos += w
	}
	for _, r := range runs {
		if r.n == 1 {
			c.strip(c.add(start, ci(r.pos)), r.w, r.prune)
			continue
		}
		c.loop(ci(0), ci(r.n), nil, func(i value.Value, _ []value.Value) []value.Value {
			c.strip(c.add(start, c.add(ci(r.pos), c.mul(i, ci(r.w)))), r.w, false)
			return nil
		})
	}
}

// strip emits the register tile for output pixels [pos, pos+w) of the row.
// When prune is set, pos is a constant and taps outside the input are left
// out.
func (c *convGen) strip(pos value.Value, w int, prune bool) {
	p, s, b := c.p, c.p.s, c.p.b
	V := c.t.VectorLanes
	ocv := c.tp.ocv
	cpos, _ := constOf(pos)
	acc := make([]value.Value, w*ocv)
	for i := range acc {
		acc[i] = c.vzero()
	}
	// Element strides of the input (channel blocks of b, channels of a
	// block, rows, pixels) and of the packed weight, from the layouts' own
	// arithmetic (ir.Layout). The schedule's rows (p.rh x p.rw: 1 x H*W when
	// flat) address the same elements as H x W.
	inL := kir.NCHWc(b)
	if s.InPlain {
		inL = kir.Plain
	}
	ist := inL.ActivationStrides([]int{s.N, s.C, p.rh, p.rw}, b)
	wst := kir.OIhwIiOo(b).WeightStrides([]int{s.O, s.C / s.groups(), s.KH, s.KW})
	dh, dw := s.dil()
	icStride, pixStride := ist.Channel, ist.Pixel
	wGroup := wst.OBlock // between output-channel blocks
	// Lane groups of a masked grouped convolution (conv_groups.go; nil without).
	var laneGroups []value.Value
	if c.masked {
		laneGroups = c.laneGroups(ocv)
	}
	acc = c.loopN(p.icb, acc, func(icb value.Value, acc []value.Value) []value.Value {
		icn := value.Value(ci(b))
		if rem := s.C % b; rem != 0 {
			if p.icb == 1 {
				icn = ci(rem)
			} else {
				icn = c.b.NewSelect(c.icmp(enum.IPredEQ, icb, ci(p.icb-1)), ci(rem), ci(b))
			}
		}
		return c.loop(c.khLo, c.khHi, acc, func(kh value.Value, acc []value.Value) []value.Value {
			ih := c.add(c.sub(c.mul(c.oh, ci(s.SH)), ci(s.PH)), c.mul(kh, ci(dh)))
			// Input offset of (n, icb, ih, iw = pos*SW - PW, ic = 0).
			iw0 := c.sub(c.mul(pos, ci(s.SW)), ci(s.PW))
			row := c.add(c.add(c.mul(c.n, ci(ist.N)), c.mul(c.add(c.icbBase, icb), ci(ist.Block))),
				c.add(c.mul(ih, ci(ist.Row)), c.mul(iw0, ci(ist.Pixel))))
			inRow := c.gep(c.arena, c.add(row, ci(s.InOff)))
			// Weight offset of (ocb0, icb, kh, kw = 0, ic = 0, 0).
			wo := c.add(c.add(c.mul(c.ocb0, ci(wst.OBlock)), c.mul(icb, ci(wst.IBlock))), c.mul(kh, ci(wst.Row)))
			wRow := c.gep(c.weights, c.add(wo, ci(s.WeightOff)))
			// One ic loop per kernel column: a real kw loop for interior
			// strips, unrolled with the out-of-bounds taps removed for border
			// strips. (With kw unrolled inside the ic loop, LLVM shares the
			// broadcasts of overlapping taps and runs out of registers.)
			icLoop := func(kw value.Value, rs []int, acc []value.Value) []value.Value {
				// Short ic loops (plain input, NEON's 4-channel blocks) would
				// be unrolled completely; keep them loops (see loopNoUnroll).
				return c.loopNoUnroll(ci(0), icn, acc, func(ic value.Value, acc []value.Value) []value.Value {
					ip := c.gep(inRow, c.add(c.mul(ic, ci(icStride)), c.mul(kw, ci(dw*pixStride))))
					wp := c.gep(wRow, c.add(c.mul(ic, ci(wst.I)), c.mul(kw, ci(wst.Col))))
					out := append([]value.Value(nil), acc...)
					wv := make([]value.Value, ocv)
					for v := range wv {
						g, j := v/c.vpb, v%c.vpb
						wv[v] = c.vload(wp, ci(g*wGroup+j*V))
					}
					masks := c.groupMasks(laneGroups, icb, ic)
					for _, r := range rs {
						x := c.splat(c.load(ip, ci(r*s.SW*pixStride)))
						for v := range wv {
							out[r*ocv+v] = c.maskedFMA(masks, v, x, wv[v], out[r*ocv+v])
						}
					}
					return out
				})
			}
			if !prune {
				rs := make([]int, w)
				for r := range rs {
					rs[r] = r
				}
				return c.loopNoUnroll(ci(0), ci(s.KW), acc, func(kw value.Value, acc []value.Value) []value.Value {
					return icLoop(kw, rs, acc)
				})
			}
			for kw := 0; kw < s.KW; kw++ {
				var rs []int
				for r := 0; r < w; r++ {
					if iw := (int(cpos)+r)*s.SW - s.PW + kw*dw; iw >= 0 && iw < p.rw {
						rs = append(rs, r)
					}
				}
				if len(rs) > 0 {
					acc = icLoop(ci(kw), rs, acc)
				}
			}
			return acc
		})
	})
	c.epilogue(pos, w, acc)
}

// epilogue adds bias and residual, applies relu and clip and stores the strip.
func (c *convGen) epilogue(pos value.Value, w int, acc []value.Value) {
	p, s, b := c.p, c.p.s, c.p.b
	V := c.t.VectorLanes
	ocv := c.tp.ocv
	// Output (OutC channels) and residual (O channels) strides, NCHW{b}c.
	ost := kir.NCHWc(b).ActivationStrides([]int{s.N, s.OutC, p.ohs, p.ows}, b)
	rst := kir.NCHWc(b).ActivationStrides([]int{s.N, s.O, p.ohs, p.ows}, b)
	for v := 0; v < ocv; v++ {
		g, j := v/c.vpb, v%c.vpb
		blk := c.add(c.ocb0, ci(g))
		var bias value.Value
		if s.HasBias {
			bias = c.vload(c.weights, c.add(c.mul(blk, ci(b)), ci(s.BiasOff+j*V)))
		}
		// Offsets of pixel pos of this row in the output and residual.
		pixOff := func(st kir.ChannelBlockStrides, blk value.Value) value.Value {
			return c.add(c.add(c.mul(c.n, ci(st.N)), c.mul(blk, ci(st.Block))),
				c.add(c.mul(c.oh, ci(st.Row)), c.mul(pos, ci(st.Pixel))))
		}
		outBase := c.gep(c.arena, c.add(pixOff(ost, c.add(blk, ci(s.OutCOffset/b))), ci(s.OutOff+j*V)))
		var resBase value.Value
		if s.HasResidual {
			resBase = c.gep(c.arena, c.add(pixOff(rst, blk), ci(s.ResidualOff+j*V)))
		}
		for r := 0; r < w; r++ {
			x := acc[r*ocv+v]
			if bias != nil {
				x = c.fadd(x, bias)
			}
			if resBase != nil {
				x = c.fadd(x, c.vload(resBase, ci(r*b)))
			}
			if s.Relu {
				x = c.relu(x)
			}
			if s.Clip {
				x = c.clamp(x, s.Lo, s.Hi)
			}
			c.vstore(x, outBase, ci(r*b))
		}
	}
}
