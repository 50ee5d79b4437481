package codegen

import (
	"fmt"

	kir "github.com/kiln-dev/kiln/ir"
)

// ConvSpec is a 2-D convolution (cross-correlation, groups=1) with its fused
// epilogue, on blocked activations. All sizes and offsets are in elements.
//
//	out[n][OutCOffset+oc][oh][ow] = relu?( sum_{c,kh,kw} in[n][c][oh*SH-PH+kh*DH][ow*SW-PW+kw*DW] * w[oc][c][kh][kw]
//	                                       + bias[oc] + residual[n][oc][oh][ow] )
//
// then, with Clip, min(max(out, Lo), Hi) (relu6: Lo 0, Hi 6; Lo <= 0 <= Hi
// keeps the padding lanes zero).
//
// DH, DW are the dilation (0 means 1). With Groups > 1 (0 means 1) output
// channel oc reads input channels [g*C/Groups, (g+1)*C/Groups) of its group
// g = oc/(O/Groups); both per-group counts must then be multiples of the
// block, and the weight is the OIhw{B}i{B}o packing of the [O][C/Groups][KH][KW]
// weight, i.e. each group's own packed weight one after the other.
//
// Input: NCHW{B}c at arena+InOff ([N][ceil(C/B)][H][W][B]), or plain NCHW when
// InPlain. Weights: OIhw{B}i{B}o at weights+WeightOff
// ([ceil(O/B)][ceil(C/B)][KH][KW][B in][B out], zero padded; for a plain input
// the same layout, input channel c is row c%B of input block c/B). Bias:
// ceil(O/B)*B floats at weights+BiasOff (zero padded). Residual: NCHW{B}c with
// O channels at arena+ResidualOff ([N][ceil(O/B)][OH][OW][B], zero padding
// lanes). Output: NCHW{B}c with OutC channels at arena+OutOff; the kernel
// writes channels [OutCOffset, OutCOffset+ceil(O/B)*B) and nothing else, its
// padding lanes as zero.
//
// The input must not overlap the output. The residual may be the output
// itself (ResidualOff == OutOff, OutC == O, OutCOffset == 0): each element is
// read just before it is overwritten.
type ConvSpec struct {
	N, C, H, W     int
	O, KH, KW      int
	SH, SW, PH, PW int
	DH, DW         int // dilation; 0 means 1
	Groups         int // 0 means 1
	OH, OW         int
	InOff          int
	InPlain        bool
	WeightOff      int
	BiasOff        int
	HasBias        bool
	ResidualOff    int
	HasResidual    bool
	Relu           bool
	Clip           bool    // then clamp to [Lo, Hi]
	Lo, Hi         float32 // Lo <= 0 <= Hi
	OutOff         int
	OutC           int // channels of the destination buffer (>= OutCOffset+O; a concat slice)
	OutCOffset     int // first channel written, a multiple of B

	// MaskIn, MaskOut (0: none) are the channel counts per group of a
	// grouped convolution run over a block-diagonal weight (conv_groups.go):
	// within each of the Groups (block-aligned) super-groups, output channel
	// o adds input channel i only where o/MaskOut == i/MaskIn.
	MaskIn, MaskOut int
}

// PoolSpec is max or average pooling on NCHW{B}c (PyTorch semantics,
// ceil_mode=False, 2*pad <= kernel): padding never wins for max; average
// divides by KH*KW when CountIncludePad, else by the number of in-bounds
// pixels. The input has C channels at arena+InOff; the output is written into
// channels [OutCOffset, OutCOffset+ceil(C/B)*B) of a blocked buffer with OutC
// channels at arena+OutOff.
type PoolSpec struct {
	Max             bool
	CountIncludePad bool
	N, C, H, W      int
	KH, KW          int
	SH, SW, PH, PW  int
	OH, OW          int
	InOff, OutOff   int
	OutC            int
	OutCOffset      int
}

// GlobalAvgPoolSpec is the mean over H and W: NCHW{B}c at arena+InOff to
// [N][ceil(C/B)][1][1][B] at arena+OutOff.
type GlobalAvgPoolSpec struct {
	N, C, H, W    int
	InOff, OutOff int
}

// ReorderSpec converts between plain NCHW and NCHW{B}c: to blocked when
// ToBlocked (padding lanes written as zero), else back to plain.
type ReorderSpec struct {
	N, C, H, W    int
	InOff, OutOff int
	ToBlocked     bool
}

// DenseSpec is a fully connected layer out[n][o] = sum_i x[n][i]*w[i][o] +
// bias[o]. x is plain [N][I] at arena+InOff, the weight is [I][O] at
// weights+WeightOff — transposed at build time from PyTorch's [O][I] so that
// the kernel vectorizes over O —, the bias [O] at weights+BiasOff, the output
// plain [N][O] at arena+OutOff.
type DenseSpec struct {
	N, I, O                           int
	InOff, WeightOff, BiasOff, OutOff int
	HasBias                           bool
}

// SoftmaxSpec is a numerically stable softmax along the last axis of a plain
// [N][K] tensor: out = exp(x - max) / sum exp(x - max).
type SoftmaxSpec struct {
	N, K          int
	InOff, OutOff int
}

// CopySpec copies Elems floats from arena+InOff to arena+OutOff (the ranges
// must not overlap). With Rows > 1 it copies Rows such runs, row r from
// arena+InOff+r*InStride to arena+OutOff+r*OutStride: a concat operand's
// channel slice in every image (0 or 1 Rows: one run).
type CopySpec struct {
	Elems               int
	InOff, OutOff       int
	Rows                int
	InStride, OutStride int
}

// rows returns the number of runs (at least 1).
func (s CopySpec) rows() int { return max(s.Rows, 1) }

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// nonNeg returns an error naming the first negative value.
func nonNeg(what string, kv ...any) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if v := kv[i+1].(int); v < 0 {
			return fmt.Errorf("%s: %s = %d is negative", what, kv[i], v)
		} else if v > maxElems {
			return fmt.Errorf("%s: %s = %d is too large", what, kv[i], v)
		}
	}
	return nil
}

func positive(what string, kv ...any) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if v := kv[i+1].(int); v <= 0 {
			return fmt.Errorf("%s: %s = %d must be positive", what, kv[i], v)
		} else if v > maxElems {
			return fmt.Errorf("%s: %s = %d is too large", what, kv[i], v)
		}
	}
	return nil
}

// maxElems bounds every extent so that offsets fit comfortably in int64 and
// int arithmetic never overflows.
const maxElems = 1 << 40

// prod multiplies positive sizes, saturating at maxElems+1 so that absurd
// specs fail the extent checks instead of overflowing.
func prod(xs ...int) int {
	p := 1
	for _, x := range xs {
		if x > 0 && p > (maxElems+1)/x {
			return maxElems + 1
		}
		p *= x
	}
	return min(p, maxElems+1)
}

// maxKernel bounds convolution windows (code size grows with the width).
const maxKernel = 64

func checkExtent(what, name string, off, n int) error {
	if n > maxElems || off > maxElems-n {
		return fmt.Errorf("%s: %s extent [%d, %d+%d) too large", what, name, off, off, n)
	}
	return nil
}

// Validate checks the spec against the block size b of a target.
func (s ConvSpec) Validate(b int) error {
	const w = "conv"
	if err := positive(w, "N", s.N, "C", s.C, "H", s.H, "W", s.W, "O", s.O, "KH", s.KH, "KW", s.KW,
		"SH", s.SH, "SW", s.SW, "OH", s.OH, "OW", s.OW, "OutC", s.OutC); err != nil {
		return err
	}
	if err := nonNeg(w, "PH", s.PH, "PW", s.PW, "InOff", s.InOff, "WeightOff", s.WeightOff, "BiasOff", s.BiasOff,
		"ResidualOff", s.ResidualOff, "OutOff", s.OutOff, "OutCOffset", s.OutCOffset); err != nil {
		return err
	}
	if err := nonNeg(w, "DH", s.DH, "DW", s.DW, "Groups", s.Groups); err != nil {
		return err
	}
	if err := checkClip(w, s.Clip, s.Lo, s.Hi); err != nil {
		return err
	}
	dh, dw := s.dil()
	if oh, ow := kir.ConvOut(s.H, kir.DilatedKernel(s.KH, dh), s.SH, s.PH), kir.ConvOut(s.W, kir.DilatedKernel(s.KW, dw), s.SW, s.PW); oh != s.OH || ow != s.OW {
		return fmt.Errorf("conv: output %dx%d, but input %dx%d, kernel %dx%d, stride %dx%d, pad %dx%d, dilation %dx%d give %dx%d",
			s.OH, s.OW, s.H, s.W, s.KH, s.KW, s.SH, s.SW, s.PH, s.PW, dh, dw, oh, ow)
	}
	if err := s.validateMask(); err != nil { // conv_groups.go
		return err
	}
	if g := s.groups(); g > 1 {
		if s.C%g != 0 || s.O%g != 0 || (s.C/g)%b != 0 || (s.O/g)%b != 0 || s.InPlain {
			return fmt.Errorf("conv: groups %d need blocked input and per-group channel counts %d, %d that are multiples of the block %d",
				g, s.C/max(g, 1), s.O/max(g, 1), b)
		}
	}
	if s.OutCOffset%b != 0 {
		return fmt.Errorf("conv: OutCOffset %d is not a multiple of the block %d", s.OutCOffset, b)
	}
	if s.OutCOffset+s.O > s.OutC {
		return fmt.Errorf("conv: channels [%d, %d) outside the destination's %d", s.OutCOffset, s.OutCOffset+s.O, s.OutC)
	}
	if s.KH > maxKernel || s.KW > maxKernel {
		return fmt.Errorf("conv: kernel %dx%d larger than %d", s.KH, s.KW, maxKernel)
	}
	cb, ob := ceilDiv(s.C, b), ceilDiv(s.O, b)
	in := prod(s.N, cb, b, s.H, s.W)
	if s.InPlain {
		in = prod(s.N, s.C, s.H, s.W)
	}
	if err := checkExtent(w, "input", s.InOff, in); err != nil {
		return err
	}
	if err := checkExtent(w, "weight", s.WeightOff, prod(ob, ceilDiv(cb, s.groups()), s.KH, s.KW, b, b)); err != nil {
		return err
	}
	out := prod(s.N, ceilDiv(s.OutC, b), b, s.OH, s.OW)
	if err := checkExtent(w, "output", s.OutOff, out); err != nil {
		return err
	}
	if Overlap(s.InOff, in, s.OutOff, out) {
		return fmt.Errorf("conv: input [%d, %d) overlaps output [%d, %d)", s.InOff, s.InOff+in, s.OutOff, s.OutOff+out)
	}
	if s.HasResidual {
		if err := checkExtent(w, "residual", s.ResidualOff, prod(s.N, ob, b, s.OH, s.OW)); err != nil {
			return err
		}
		inPlace := s.ResidualOff == s.OutOff && s.OutC == s.O && s.OutCOffset == 0
		if !inPlace && Overlap(s.ResidualOff, s.N*ob*b*s.OH*s.OW, s.OutOff, out) {
			return fmt.Errorf("conv: residual overlaps the output without being it")
		}
	}
	return nil
}

// dil returns the dilation, 0 read as 1.
func (s ConvSpec) dil() (int, int) { return max(s.DH, 1), max(s.DW, 1) }

// groups returns the group count, 0 read as 1.
func (s ConvSpec) groups() int { return max(s.Groups, 1) }

// Overlap reports whether the arena ranges [a, a+an) and [b, b+bn) share
// a float.
func Overlap(a, an, b, bn int) bool { return a < b+bn && b < a+an }

// Validate checks the spec against the block size b of a target.
func (s PoolSpec) Validate(b int) error {
	w := "avgpool"
	if s.Max {
		w = "maxpool"
	}
	if err := positive(w, "N", s.N, "C", s.C, "H", s.H, "W", s.W, "KH", s.KH, "KW", s.KW,
		"SH", s.SH, "SW", s.SW, "OH", s.OH, "OW", s.OW, "OutC", s.OutC); err != nil {
		return err
	}
	if err := nonNeg(w, "PH", s.PH, "PW", s.PW, "InOff", s.InOff, "OutOff", s.OutOff, "OutCOffset", s.OutCOffset); err != nil {
		return err
	}
	if 2*s.PH > s.KH || 2*s.PW > s.KW {
		return fmt.Errorf("%s: pad %dx%d must be at most half the kernel %dx%d", w, s.PH, s.PW, s.KH, s.KW)
	}
	if oh, ow := kir.ConvOut(s.H, s.KH, s.SH, s.PH), kir.ConvOut(s.W, s.KW, s.SW, s.PW); oh != s.OH || ow != s.OW {
		return fmt.Errorf("%s: output %dx%d, but the window gives %dx%d", w, s.OH, s.OW, oh, ow)
	}
	if s.OutCOffset%b != 0 {
		return fmt.Errorf("%s: OutCOffset %d is not a multiple of the block %d", w, s.OutCOffset, b)
	}
	if s.OutCOffset+s.C > s.OutC {
		return fmt.Errorf("%s: channels [%d, %d) outside the destination's %d", w, s.OutCOffset, s.OutCOffset+s.C, s.OutC)
	}
	in := prod(s.N, ceilDiv(s.C, b), b, s.H, s.W)
	out := prod(s.N, ceilDiv(s.OutC, b), b, s.OH, s.OW)
	return checkInOut(w, s.InOff, in, s.OutOff, out)
}

// Validate checks the spec against the block size b of a target.
func (s GlobalAvgPoolSpec) Validate(b int) error {
	const w = "global_avgpool"
	if err := positive(w, "N", s.N, "C", s.C, "H", s.H, "W", s.W); err != nil {
		return err
	}
	if err := nonNeg(w, "InOff", s.InOff, "OutOff", s.OutOff); err != nil {
		return err
	}
	cb := ceilDiv(s.C, b)
	in, out := prod(s.N, cb, b, s.H, s.W), prod(s.N, cb, b)
	return checkInOut(w, s.InOff, in, s.OutOff, out)
}

// Validate checks the spec against the block size b of a target.
func (s ReorderSpec) Validate(b int) error {
	const w = "reorder"
	if err := positive(w, "N", s.N, "C", s.C, "H", s.H, "W", s.W); err != nil {
		return err
	}
	if err := nonNeg(w, "InOff", s.InOff, "OutOff", s.OutOff); err != nil {
		return err
	}
	plain, blocked := prod(s.N, s.C, s.H, s.W), prod(s.N, ceilDiv(s.C, b), b, s.H, s.W)
	in, out := plain, blocked
	if !s.ToBlocked {
		in, out = blocked, plain
	}
	return checkInOut(w, s.InOff, in, s.OutOff, out)
}

// Validate checks the spec.
func (s DenseSpec) Validate() error {
	const w = "dense"
	if err := positive(w, "N", s.N, "I", s.I, "O", s.O); err != nil {
		return err
	}
	if err := nonNeg(w, "InOff", s.InOff, "WeightOff", s.WeightOff, "BiasOff", s.BiasOff, "OutOff", s.OutOff); err != nil {
		return err
	}
	for _, e := range []struct {
		n       string
		off, sz int
	}{{"input", s.InOff, prod(s.N, s.I)}, {"weight", s.WeightOff, prod(s.I, s.O)}, {"bias", s.BiasOff, s.O}, {"output", s.OutOff, prod(s.N, s.O)}} {
		if err := checkExtent(w, e.n, e.off, e.sz); err != nil {
			return err
		}
	}
	if Overlap(s.InOff, s.N*s.I, s.OutOff, s.N*s.O) {
		return fmt.Errorf("%s: input overlaps output", w)
	}
	return nil
}

// Validate checks the spec. The output may be the input (in place).
func (s SoftmaxSpec) Validate() error {
	const w = "softmax"
	if err := positive(w, "N", s.N, "K", s.K); err != nil {
		return err
	}
	if err := nonNeg(w, "InOff", s.InOff, "OutOff", s.OutOff); err != nil {
		return err
	}
	if err := checkExtent(w, "input", s.InOff, prod(s.N, s.K)); err != nil {
		return err
	}
	if err := checkExtent(w, "output", s.OutOff, prod(s.N, s.K)); err != nil {
		return err
	}
	if s.InOff != s.OutOff && Overlap(s.InOff, s.N*s.K, s.OutOff, s.N*s.K) {
		return fmt.Errorf("%s: input partially overlaps output", w)
	}
	return nil
}

// Validate checks the spec.
func (s CopySpec) Validate() error {
	const w = "copy"
	if err := positive(w, "Elems", s.Elems); err != nil {
		return err
	}
	if err := nonNeg(w, "InOff", s.InOff, "OutOff", s.OutOff, "Rows", s.Rows, "InStride", s.InStride, "OutStride", s.OutStride); err != nil {
		return err
	}
	r := s.rows()
	if r > 1 && (s.InStride < s.Elems || s.OutStride < s.Elems) {
		return fmt.Errorf("%s: strides %d, %d shorter than a row of %d", w, s.InStride, s.OutStride, s.Elems)
	}
	in := prod(r-1, s.InStride) + s.Elems
	out := prod(r-1, s.OutStride) + s.Elems
	if r == 1 {
		in, out = s.Elems, s.Elems
	}
	if err := checkExtent(w, "input", s.InOff, in); err != nil {
		return err
	}
	if err := checkExtent(w, "output", s.OutOff, out); err != nil {
		return err
	}
	if Overlap(s.InOff, in, s.OutOff, out) {
		return fmt.Errorf("%s: ranges overlap", w)
	}
	return nil
}

// checkInOut checks that the input extent [inOff, inOff+in) and the output
// extent [outOff, outOff+out) are representable and do not overlap.
func checkInOut(what string, inOff, in, outOff, out int) error {
	if err := checkExtent(what, "input", inOff, in); err != nil {
		return err
	}
	if err := checkExtent(what, "output", outOff, out); err != nil {
		return err
	}
	if Overlap(inOff, in, outOff, out) {
		return fmt.Errorf("%s: input overlaps output", what)
	}
	return nil
}
