package codegen

import (
	"fmt"

	kir "github.com/kiln-dev/kiln/ir"

	"github.com/llir/llvm/ir/value"
)

// DepthwiseSpec is a depthwise convolution (groups = C = O: every channel
// convolved with its own KH×KW filter, MobileNet's 3×3 layers) with its
// fused epilogue, on NCHW{B}c activations:
//
//	out[n][OutCOffset+c][oh][ow] = relu?( sum_{kh,kw} in[n][c][oh*SH-PH+kh*DH][ow*SW-PW+kw*DW] * w[c][kh][kw]
//	                                      + bias[c] + residual[n][c][oh][ow] )
//
// Input: NCHW{B}c with C channels at arena+InOff. Weights: prepacked
// [ceil(C/B)][KH][KW][B] at weights+WeightOff (the OIHW weight [C][1][KH][KW]
// with each channel block's taps as vectors, zero padded; PackDepthwise).
// Bias: ceil(C/B)*B floats at weights+BiasOff. Residual: NCHW{B}c with C
// channels at arena+ResidualOff (it may be the output itself, as for
// ConvSpec). Output: channels [OutCOffset, OutCOffset+ceil(C/B)*B) of an
// NCHW{B}c buffer with OutC channels at arena+OutOff. DH, DW: the dilation
// (0 means 1).
type DepthwiseSpec struct {
	N, C, H, W     int
	KH, KW         int
	SH, SW, PH, PW int
	DH, DW         int
	OH, OW         int
	InOff          int
	WeightOff      int
	BiasOff        int
	HasBias        bool
	ResidualOff    int
	HasResidual    bool
	Relu           bool
	Clip           bool    // then clamp to [Lo, Hi], as ConvSpec
	Lo, Hi         float32 // Lo <= 0 <= Hi
	OutOff         int
	OutC           int
	OutCOffset     int
}

func (s DepthwiseSpec) dil() (int, int) { return max(s.DH, 1), max(s.DW, 1) }

// Validate checks the spec against the block size b of a target.
func (s DepthwiseSpec) Validate(b int) error {
	const w = "depthwise"
	if err := positive(w, "N", s.N, "C", s.C, "H", s.H, "W", s.W, "KH", s.KH, "KW", s.KW,
		"SH", s.SH, "SW", s.SW, "OH", s.OH, "OW", s.OW, "OutC", s.OutC); err != nil {
		return err
	}
	if err := nonNeg(w, "PH", s.PH, "PW", s.PW, "DH", s.DH, "DW", s.DW, "InOff", s.InOff, "WeightOff", s.WeightOff,
		"BiasOff", s.BiasOff, "ResidualOff", s.ResidualOff, "OutOff", s.OutOff, "OutCOffset", s.OutCOffset); err != nil {
		return err
	}
	if err := checkClip(w, s.Clip, s.Lo, s.Hi); err != nil {
		return err
	}
	if s.KH > maxKernel || s.KW > maxKernel {
		return fmt.Errorf("%s: kernel %dx%d larger than %d", w, s.KH, s.KW, maxKernel)
	}
	dh, dw := s.dil()
	if oh, ow := kir.ConvOut(s.H, kir.DilatedKernel(s.KH, dh), s.SH, s.PH), kir.ConvOut(s.W, kir.DilatedKernel(s.KW, dw), s.SW, s.PW); oh != s.OH || ow != s.OW {
		return fmt.Errorf("%s: output %dx%d, but input %dx%d, kernel %dx%d, stride %dx%d, pad %dx%d, dilation %dx%d give %dx%d",
			w, s.OH, s.OW, s.H, s.W, s.KH, s.KW, s.SH, s.SW, s.PH, s.PW, dh, dw, oh, ow)
	}
	if s.OutCOffset%b != 0 {
		return fmt.Errorf("%s: OutCOffset %d is not a multiple of the block %d", w, s.OutCOffset, b)
	}
	if s.OutCOffset+s.C > s.OutC {
		return fmt.Errorf("%s: channels [%d, %d) outside the destination's %d", w, s.OutCOffset, s.OutCOffset+s.C, s.OutC)
	}
	cb := ceilDiv(s.C, b)
	in := prod(s.N, cb, b, s.H, s.W)
	out := prod(s.N, ceilDiv(s.OutC, b), b, s.OH, s.OW)
	if err := checkInOut(w, s.InOff, in, s.OutOff, out); err != nil {
		return err
	}
	if err := checkExtent(w, "weight", s.WeightOff, prod(cb, s.KH, s.KW, b)); err != nil {
		return err
	}
	if s.HasBias {
		if err := checkExtent(w, "bias", s.BiasOff, prod(cb, b)); err != nil {
			return err
		}
	}
	if s.HasResidual {
		res := prod(s.N, cb, b, s.OH, s.OW)
		if err := checkExtent(w, "residual", s.ResidualOff, res); err != nil {
			return err
		}
		inPlace := s.ResidualOff == s.OutOff && s.OutC == s.C && s.OutCOffset == 0
		if !inPlace && Overlap(s.ResidualOff, res, s.OutOff, out) {
			return fmt.Errorf("%s: residual overlaps the output without being it", w)
		}
	}
	return nil
}

// PackDepthwise packs a depthwise weight, OIHW [C][1][KH][KW], into the
// kernel's [ceil(C/B)][KH][KW][B] (padding channels zero).
func PackDepthwise(w []float32, c, kh, kw, b int) []float32 {
	out := make([]float32, ceilDiv(c, b)*kh*kw*b)
	for ch := 0; ch < c; ch++ {
		for y := 0; y < kh; y++ {
			for x := 0; x < kw; x++ {
				out[(((ch/b)*kh+y)*kw+x)*b+ch%b] = w[(ch*kh+y)*kw+x]
			}
		}
	}
	return out
}

// depthwiseRW is the widest strip of output pixels whose accumulators
// (vpb vectors each), one weight vector set and a spare stay in registers.
func depthwiseRW(t Target, vpb int) int {
	return max(1, min(16, (t.Registers-2*vpb-2)/vpb))
}

// Depthwise adds a depthwise convolution kernel (see DepthwiseSpec) and
// returns its name and tile count.
//
// The kernel is the direct convolution of conv.go reduced to one channel
// per group, vectorized across the B channels of a block (the nChw16c
// depthwise kernels of oneDNN, jit_uni_dwlconv_kernel_f32, do the same):
//
//	tile = (n, channel block cb, output row oh)
//	for each strip of RW output pixels of the row:
//	  acc[RW][VPB] = 0                            // registers
//	  for kh in valid kernel rows:                // loop, bounds from oh
//	    for kw in 0..KW-1:                        // unrolled
//	      wv = weight vector (cb, kh, kw)         // B channels' taps
//	      for r in 0..RW-1:                       // unrolled
//	        acc[r] = fma(in vector (cb, ih, (ow0+r)*SW-PW+kw*DW), wv, acc[r])
//	  epilogue in registers: + bias, + residual, relu; store
//
// Each output vector of B channels is a sum over the KH×KW taps of input
// vectors times per-channel weight vectors: no broadcasts, no reduction
// across lanes. As in the dense kernel, strips of a row are balanced,
// interior strips run in a loop, and the strips touching the left or right
// padding are emitted at their constant positions with the out-of-bounds
// taps removed at generation time, so no load is conditional.
func (m *Module) Depthwise(name string, s DepthwiseSpec) (string, int, error) {
	b, err := m.validated(name, s)
	if err != nil {
		return "", 0, err
	}
	cb := ceilDiv(s.C, b)
	k := Kernel{Name: name, Kind: "depthwise", Tiles: s.N * cb * s.OH,
		Flops: 2 * int64(s.N*s.C) * int64(s.OH*s.OW) * int64(s.KH*s.KW)}
	return m.define(k, func(g *builder) error {
		d := &dwGen{builder: g, s: s, b: b, cb: cb, vpb: b / g.t.VectorLanes}
		d.emit()
		return nil
	})
}

type dwGen struct {
	*builder
	s       DepthwiseSpec
	b, cb   int
	vpb     int
	n, blk  value.Value
	oh      value.Value
	khLo    value.Value
	khHi    value.Value
	ist     kir.ChannelBlockStrides
	ost     kir.ChannelBlockStrides
	rst     kir.ChannelBlockStrides
	dh, dwl int
}

func (d *dwGen) emit() {
	s, b := d.s, d.b
	d.dh, d.dwl = s.dil()
	d.ist = kir.NCHWc(b).ActivationStrides([]int{s.N, s.C, s.H, s.W}, b)
	d.ost = kir.NCHWc(b).ActivationStrides([]int{s.N, s.OutC, s.OH, s.OW}, b)
	d.rst = kir.NCHWc(b).ActivationStrides([]int{s.N, s.C, s.OH, s.OW}, b)
	d.tiles(func(t value.Value) {
		d.oh = d.urem(t, s.OH)
		t = d.udiv(t, s.OH)
		d.blk = d.urem(t, d.cb)
		d.n = d.udiv(t, d.cb)
		// Valid kernel rows: 0 <= top + kh*DH < H, with H - top >= 1.
		top := d.sub(d.mul(d.oh, ci(s.SH)), ci(s.PH))
		d.khLo, d.khHi = ci(0), ci(s.KH)
		if s.PH > 0 {
			d.khLo = d.udiv(d.add(d.smax(d.sub(ci(0), top), ci(0)), ci(d.dh-1)), d.dh)
		}
		if (s.OH-1)*s.SH-s.PH+(s.KH-1)*d.dh+1 > s.H {
			d.khHi = d.smin(d.udiv(d.add(d.sub(ci(s.H), top), ci(d.dh-1)), d.dh), ci(s.KH))
		}
		d.row()
	})
}

// interior reports whether every tap of strip [pos, pos+w) is in the row.
func (d *dwGen) interior(pos, w int) bool {
	s := d.s
	return pos*s.SW-s.PW >= 0 && (pos+w-1)*s.SW-s.PW+(s.KW-1)*d.dwl < s.W
}

// row cuts the output row into balanced strips (see convGen.segment).
func (d *dwGen) row() {
	l := d.s.OW
	ns := ceilDiv(l, min(depthwiseRW(d.t, d.vpb), l))
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
		prune := !d.interior(pos, w)
		if k := len(runs) - 1; k >= 0 && !prune && !runs[k].prune && runs[k].w == w {
			runs[k].n++
		} else {
			runs = append(runs, run{pos: pos, w: w, n: 1, prune: prune})
		}
		pos += w
	}
	for _, r := range runs {
		if r.n == 1 {
			d.strip(ci(r.pos), r.w, r.prune)
			continue
		}
		d.loop(ci(0), ci(r.n), nil, func(i value.Value, _ []value.Value) []value.Value {
			d.strip(d.add(ci(r.pos), d.mul(i, ci(r.w))), r.w, false)
			return nil
		})
	}
}

// strip emits output pixels [pos, pos+w) of the current row; with prune,
// pos is a constant and taps outside the input row are left out.
func (d *dwGen) strip(pos value.Value, w int, prune bool) {
	s, b, V, vpb := d.s, d.b, d.t.VectorLanes, d.vpb
	cpos, _ := constOf(pos)
	acc := make([]value.Value, w*vpb)
	for i := range acc {
		acc[i] = d.vzero()
	}
	inBlk := d.gep(d.arena, d.add(d.add(d.mul(d.n, ci(d.ist.N)), d.mul(d.blk, ci(d.ist.Block))), ci(s.InOff)))
	wBlk := d.gep(d.weights, d.add(d.mul(d.blk, ci(s.KH*s.KW*b)), ci(s.WeightOff)))
	iw0 := d.sub(d.mul(pos, ci(s.SW)), ci(s.PW))
	acc = d.loopNoUnroll(d.khLo, d.khHi, acc, func(kh value.Value, acc []value.Value) []value.Value {
		ih := d.add(d.sub(d.mul(d.oh, ci(s.SH)), ci(s.PH)), d.mul(kh, ci(d.dh)))
		inRow := d.gep(inBlk, d.add(d.mul(ih, ci(d.ist.Row)), d.mul(iw0, ci(d.ist.Pixel))))
		wRow := d.gep(wBlk, d.mul(kh, ci(s.KW*b)))
		out := append([]value.Value(nil), acc...)
		for kw := 0; kw < s.KW; kw++ {
			var wv []value.Value
			for r := 0; r < w; r++ {
				if prune {
					if iw := (int(cpos)+r)*s.SW - s.PW + kw*d.dwl; iw < 0 || iw >= s.W {
						continue
					}
				}
				if wv == nil {
					wv = make([]value.Value, vpb)
					for j := range wv {
						wv[j] = d.vload(wRow, ci(kw*b+j*V))
					}
				}
				px := (r*s.SW + kw*d.dwl) * d.ist.Pixel
				for j := 0; j < vpb; j++ {
					x := d.vload(inRow, ci(px+j*V))
					out[r*vpb+j] = d.fma(x, wv[j], out[r*vpb+j])
				}
			}
		}
		return out
	})
	// Epilogue.
	for j := 0; j < vpb; j++ {
		var bias value.Value
		if s.HasBias {
			bias = d.vload(d.weights, d.add(d.mul(d.blk, ci(b)), ci(s.BiasOff+j*V)))
		}
		pixOff := func(st kir.ChannelBlockStrides, blk value.Value) value.Value {
			return d.add(d.add(d.mul(d.n, ci(st.N)), d.mul(blk, ci(st.Block))),
				d.add(d.mul(d.oh, ci(st.Row)), d.mul(pos, ci(st.Pixel))))
		}
		outBase := d.gep(d.arena, d.add(pixOff(d.ost, d.add(d.blk, ci(s.OutCOffset/b))), ci(s.OutOff+j*V)))
		var resBase value.Value
		if s.HasResidual {
			resBase = d.gep(d.arena, d.add(pixOff(d.rst, d.blk), ci(s.ResidualOff+j*V)))
		}
		for r := 0; r < w; r++ {
			x := acc[r*vpb+j]
			if bias != nil {
				x = d.fadd(x, bias)
			}
			if resBase != nil {
				x = d.fadd(x, d.vload(resBase, ci(r*b)))
			}
			if s.Relu {
				x = d.relu(x)
			}
			if s.Clip {
				x = d.clamp(x, s.Lo, s.Hi)
			}
			d.vstore(x, outBase, ci(r*b))
		}
	}
}
