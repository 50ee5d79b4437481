package interp

import (
	"fmt"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// Physical values. A value whose node has a non-empty Type.Layout is held in
// memory as its physical layout (see ir/layout.go): the tensor.Tensor's Data
// has ir.PhysicalNumel elements and its Shape is the physical shape
//
//	NCHW{c}c      logical [N, C, H, W]   physical [N, ceil(C/c), H, W, c]
//	OIhw{c}i{c}o  logical [O, I, kh, kw] physical [ceil(O/c), ceil(I/c), kh, kw, c (in), c (out)]
//
// so that the row-major index of the physical shape is the memory offset:
//
//	NCHW{c}c:      phys[n][C/c][h][w][C%c]             = x[n][C][h][w]
//	OIhw{c}i{c}o:  phys[O/c][I/c][y][x][I%c][O%c]      = w[O][I][y][x]
//
// Lanes for channels past C (or O, I) in the last block are padding and
// always zero in values the interpreter produces. Inputs and params with a
// layout are fed physical too, and graph outputs and Options.Keep values are
// returned as stored; ToLogical and ToPhysical convert for callers.

// PhysicalShape returns the shape of the tensor that holds a value of type t:
// t.Shape for the plain layout, the blocked shape above otherwise. Layouts
// that do not apply to t are reported as ir.PhysicalNumel reports them.
func PhysicalShape(t ir.Type) ([]int, error) {
	if _, err := ir.PhysicalNumel(t); err != nil {
		return nil, err
	}
	s := t.Shape
	if t.Layout == "" {
		return append([]int(nil), s...), nil
	}
	if c, ok := ir.ActivationBlock(t.Layout); ok {
		return []int{s[0], ceilDiv(s[1], c), s[2], s[3], c}, nil
	}
	if c, ok := ir.WeightBlock(t.Layout); ok {
		return []int{ceilDiv(s[0], c), ceilDiv(s[1], c), s[2], s[3], c, c}, nil
	}
	// Unreachable while PhysicalShape and ir.PhysicalNumel know the same
	// layouts.
	return nil, fmt.Errorf("layout %q of %s is not known to the interpreter", t.Layout, t)
}

// checkPhysical reports whether x is a physical value of type typ: its shape
// is PhysicalShape(typ) and it holds that many elements.
func checkPhysical(x *tensor.Tensor, typ ir.Type) error {
	want, err := PhysicalShape(typ)
	if err != nil {
		return err
	}
	if x == nil {
		return fmt.Errorf("nil tensor for %s", typ)
	}
	n, _ := ir.PhysicalNumel(typ)
	if !ir.ShapeEqual(x.Shape, want) || len(x.Data) != n {
		return fmt.Errorf("tensor of shape %s with %d values is not a physical %s (want shape %s)",
			ir.ShapeString(x.Shape), len(x.Data), typ, ir.ShapeString(want))
	}
	return nil
}

// blockedIndex calls f(logical, physical) for every element of a value of
// type t (t.Layout non-empty and valid), with the logical row-major index and
// the index of the same element in the physical layout.
func blockedIndex(t ir.Type, f func(l, p int)) {
	s := t.Shape
	if c, ok := ir.ActivationBlock(t.Layout); ok {
		n, ch, hw := s[0], s[1], s[2]*s[3]
		cb := ceilDiv(ch, c)
		for b := 0; b < n; b++ {
			for k := 0; k < ch; k++ {
				l := (b*ch + k) * hw
				p := ((b*cb+k/c)*hw)*c + k%c
				for i := 0; i < hw; i++ {
					f(l+i, p+i*c)
				}
			}
		}
		return
	}
	c, _ := ir.WeightBlock(t.Layout)
	o, in, khw := s[0], s[1], s[2]*s[3]
	ib := ceilDiv(in, c)
	for oc := 0; oc < o; oc++ {
		for ic := 0; ic < in; ic++ {
			l := (oc*in + ic) * khw
			p := (((oc/c)*ib+ic/c)*khw*c+ic%c)*c + oc%c
			for i := 0; i < khw; i++ {
				f(l+i, p+i*c*c)
			}
		}
	}
}

// ToLogical converts x, a physical value of type typ (as Run returns it), to
// its logical tensor: shape typ.Shape, row-major NCHW (activations) or OIHW
// (weights) order, padding lanes dropped. For the plain layout it returns x
// itself. It fails if x is not a physical value of typ or typ's layout does
// not apply to its shape.
func ToLogical(x *tensor.Tensor, typ ir.Type) (*tensor.Tensor, error) {
	if err := checkPhysical(x, typ); err != nil {
		return nil, err
	}
	if typ.Layout == "" {
		return x, nil
	}
	out := tensor.New(typ.Shape...)
	blockedIndex(typ, func(l, p int) { out.Data[l] = x.Data[p] })
	return out, nil
}

// ToPhysical converts x, a logical tensor of shape typ.Shape, to the physical
// value of type typ (the inverse of ToLogical), with zero padding lanes. For
// the plain layout it returns x itself.
func ToPhysical(x *tensor.Tensor, typ ir.Type) (*tensor.Tensor, error) {
	want, err := PhysicalShape(typ)
	if err != nil {
		return nil, err
	}
	if x == nil || !ir.ShapeEqual(x.Shape, typ.Shape) || len(x.Data) != typ.Numel() {
		return nil, fmt.Errorf("ToPhysical: tensor is not a logical %s", typ)
	}
	if typ.Layout == "" {
		return x, nil
	}
	out := tensor.New(want...)
	blockedIndex(typ, func(l, p int) { out.Data[p] = x.Data[l] })
	return out, nil
}
