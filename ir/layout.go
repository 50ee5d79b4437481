package ir

import (
	"fmt"
	"strconv"
	"strings"
)

// Physical layouts. The logical shape of a value never changes; its Layout
// says how the elements are arranged in memory:
//
//	plain (zero value, printed "")  row-major: NCHW for activations, OIHW for conv weights
//	NCHW{B}c     activations blocked by B channels: [N][ceil(C/B)][H][W][B]
//	OIhw{B}i{B}o conv weights: [ceil(O/B)][ceil(I/B)][kh][kw][B in][B out]
//
// Channels past C (or O, I) in the last block are zero padding. Layout is a
// small comparable value; its index arithmetic (Offset, PhysicalShape,
// ActivationStrides, WeightStrides) is the only implementation in Kiln: the
// interpreter, the planner, the kernel spec builders and the tests use it.

// LayoutKind is the family of a physical layout.
type LayoutKind uint8

// Layout kinds. LayoutPlain is the zero value.
const (
	LayoutPlain    LayoutKind = iota // row-major logical order
	LayoutNCHWc                      // NCHW{B}c activations
	LayoutOIhwIiOo                   // OIhw{B}i{B}o conv weights
)

// Layout is a physical layout: a kind and, for blocked kinds, the channel
// block B. The zero value is the plain row-major layout, so Type{} literals
// without a layout mean what they always meant.
type Layout struct {
	Kind  LayoutKind
	Block int
}

// Plain is the plain row-major layout (the zero Layout).
var Plain = Layout{}

// NCHWc returns the activation layout NCHW{b}c.
func NCHWc(b int) Layout { return Layout{Kind: LayoutNCHWc, Block: b} }

// OIhwIiOo returns the weight layout OIhw{b}i{b}o.
func OIhwIiOo(b int) Layout { return Layout{Kind: LayoutOIhwIiOo, Block: b} }

// IsPlain reports whether l is the plain layout.
func (l Layout) IsPlain() bool { return l == Plain }

// IsActivation reports whether l is an NCHW{B}c layout.
func (l Layout) IsActivation() bool { return l.Kind == LayoutNCHWc }

// IsWeight reports whether l is an OIhw{B}i{B}o layout.
func (l Layout) IsWeight() bool { return l.Kind == LayoutOIhwIiOo }

// String is the text form used after '@' in types: "", "NCHW16c",
// "OIhw16i16o". Invalid values print as layout(kind,block).
func (l Layout) String() string {
	switch {
	case l.Kind == LayoutPlain && l.Block == 0:
		return ""
	case l.Kind == LayoutNCHWc && l.Block > 0:
		return "NCHW" + strconv.Itoa(l.Block) + "c"
	case l.Kind == LayoutOIhwIiOo && l.Block > 0:
		b := strconv.Itoa(l.Block)
		return "OIhw" + b + "i" + b + "o"
	}
	return fmt.Sprintf("layout(%d,%d)", l.Kind, l.Block)
}

// Valid reports whether l is a well-formed layout.
func (l Layout) Valid() error {
	switch l.Kind {
	case LayoutPlain:
		if l.Block == 0 {
			return nil
		}
	case LayoutNCHWc, LayoutOIhwIiOo:
		if l.Block > 0 {
			return nil
		}
	}
	return fmt.Errorf("invalid layout %s", l)
}

// ParseLayout parses the text form of a layout: "" (plain), "NCHW{B}c" or
// "OIhw{B}i{B}o" with B a positive decimal without leading zeros. The error
// names the bad layout.
func ParseLayout(s string) (Layout, error) {
	bad := func() (Layout, error) {
		return Layout{}, fmt.Errorf("unknown layout %q (want \"\", NCHW{B}c or OIhw{B}i{B}o)", s)
	}
	block := func(d string) (int, bool) {
		b, err := strconv.Atoi(d)
		return b, err == nil && b > 0 && d == strconv.Itoa(b)
	}
	switch {
	case s == "":
		return Plain, nil
	case strings.HasPrefix(s, "NCHW") && strings.HasSuffix(s, "c") && len(s) > 5:
		if b, ok := block(s[4 : len(s)-1]); ok {
			return NCHWc(b), nil
		}
	case strings.HasPrefix(s, "OIhw") && strings.HasSuffix(s, "o"):
		in, out, ok := strings.Cut(s[4:len(s)-1], "i")
		bi, ok1 := block(in)
		bo, ok2 := block(out)
		if ok && ok1 && ok2 {
			if bi != bo {
				return Layout{}, fmt.Errorf("layout %q: input and output blocks differ (%d, %d)", s, bi, bo)
			}
			return OIhwIiOo(bi), nil
		}
	}
	return bad()
}

// MustParseLayout is ParseLayout for constants known to be valid; it panics
// on error.
func MustParseLayout(s string) Layout {
	l, err := ParseLayout(s)
	if err != nil {
		panic(err)
	}
	return l
}

func ceilTo(x, c int) int  { return (x + c - 1) / c * c }
func ceilDiv(x, c int) int { return (x + c - 1) / c }

// applies checks that l is valid for a value of logical shape s: blocked
// layouts need rank 4.
func (l Layout) applies(s []int) error {
	if err := l.Valid(); err != nil {
		return err
	}
	if !l.IsPlain() && len(s) != 4 {
		return fmt.Errorf("layout %s does not apply to shape %s (rank %d, want 4)", l, ShapeString(s), len(s))
	}
	return nil
}

// PhysicalShape returns the shape of the row-major array that holds a value
// of logical shape s in layout l: s itself for the plain layout,
// [N][ceil(C/B)][H][W][B] for NCHW{B}c and [ceil(O/B)][ceil(I/B)][kh][kw][B][B]
// for OIhw{B}i{B}o. The row-major index of the physical shape is the memory
// offset.
func (l Layout) PhysicalShape(s []int) ([]int, error) {
	if err := l.applies(s); err != nil {
		return nil, err
	}
	b := l.Block
	switch l.Kind {
	case LayoutNCHWc:
		return []int{s[0], ceilDiv(s[1], b), s[2], s[3], b}, nil
	case LayoutOIhwIiOo:
		return []int{ceilDiv(s[0], b), ceilDiv(s[1], b), s[2], s[3], b, b}, nil
	}
	return append([]int(nil), s...), nil
}

// PhysicalNumel is the number of elements a value of logical shape s
// occupies in layout l, padding included.
func (l Layout) PhysicalNumel(s []int) (int, error) {
	ps, err := l.PhysicalShape(s)
	if err != nil {
		return 0, err
	}
	n := 1
	for _, d := range ps {
		n *= d
	}
	return n, nil
}

// Offset returns the element offset of logical index idx (n,c,h,w for
// activations, o,i,kh,kw for weights, any rank for plain) of a value of
// logical shape s stored in layout l. It assumes the layout applies to s and
// idx is in range.
//
//	plain:         row-major over s
//	NCHW{B}c:      (((n*ceil(C/B) + c/B)*H + h)*W + w)*B + c%B
//	OIhw{B}i{B}o:  ((((o/B)*ceil(I/B) + i/B)*kh + y)*kw + x)*B*B + (i%B)*B + o%B
func (l Layout) Offset(s []int, idx ...int) int {
	b := l.Block
	switch l.Kind {
	case LayoutNCHWc:
		st := l.ActivationStrides(s, b)
		return idx[0]*st.N + (idx[1]/b)*st.Block + (idx[1]%b)*st.Channel + idx[2]*st.Row + idx[3]*st.Pixel
	case LayoutOIhwIiOo:
		st := l.WeightStrides(s)
		return (idx[0]/b)*st.OBlock + (idx[0]%b)*st.O + (idx[1]/b)*st.IBlock + (idx[1]%b)*st.I + idx[2]*st.Row + idx[3]*st.Col
	}
	off := 0
	for k, d := range s {
		off = off*d + idx[k]
	}
	return off
}

// ChannelBlockStrides are the element strides of a 4-D activation when its
// channels are taken in blocks of b: the element (n, k*b+j, h, w) (channel j
// of block k) is at
//
//	n*N + k*Block + j*Channel + h*Row + w*Pixel.
type ChannelBlockStrides struct {
	N, Block, Channel, Row, Pixel int
}

// ActivationStrides returns the strides of a 4-D activation of logical shape
// s = [N, C, H, W] in layout l, its channels grouped in blocks of b. For
// NCHW{B}c, b must be B (blocks are the layout's own):
// Block = H*W*B, Channel = 1, Row = W*B, Pixel = B. For the plain layout any
// b > 0 works: Block = b*H*W, Channel = H*W, Row = W, Pixel = 1.
func (l Layout) ActivationStrides(s []int, b int) ChannelBlockStrides {
	c, h, w := s[1], s[2], s[3]
	if l.Kind == LayoutNCHWc {
		cb := ceilDiv(c, l.Block)
		return ChannelBlockStrides{N: cb * h * w * l.Block, Block: h * w * l.Block, Channel: 1, Row: w * l.Block, Pixel: l.Block}
	}
	return ChannelBlockStrides{N: c * h * w, Block: b * h * w, Channel: h * w, Row: w, Pixel: 1}
}

// WeightBlockStrides are the element strides of a conv weight in
// OIhw{B}i{B}o: the element (o, i, y, x) is at
//
//	(o/B)*OBlock + (o%B)*O + (i/B)*IBlock + (i%B)*I + y*Row + x*Col.
type WeightBlockStrides struct {
	OBlock, IBlock, Row, Col, I, O int
}

// WeightStrides returns the strides of a weight of logical shape
// s = [O, I, kh, kw] in layout l (an OIhw{B}i{B}o layout).
func (l Layout) WeightStrides(s []int) WeightBlockStrides {
	b := l.Block
	ib := ceilDiv(s[1], b)
	return WeightBlockStrides{OBlock: ib * s[2] * s[3] * b * b, IBlock: s[2] * s[3] * b * b, Row: s[3] * b * b, Col: b * b, I: b, O: 1}
}

// PhysicalNumel is the number of elements the value occupies in memory,
// padding included.
func PhysicalNumel(t Type) (int, error) {
	if err := t.Layout.Valid(); err != nil {
		return 0, err
	}
	n, err := t.Layout.PhysicalNumel(t.Shape)
	if err != nil {
		return 0, fmt.Errorf("layout %s does not apply to %s", t.Layout, t)
	}
	return n, nil
}

// PhysicalBytes is the size of the value in memory in bytes, padding
// included: PhysicalNumel times the element size of its dtype.
func PhysicalBytes(t Type) (int64, error) {
	n, err := PhysicalNumel(t)
	if err != nil {
		return 0, err
	}
	if t.DType.Size() == 0 {
		return 0, fmt.Errorf("%s has no element size", t)
	}
	return int64(n) * int64(t.DType.Size()), nil
}
