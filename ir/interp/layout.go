package interp

import (
	"fmt"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// Physical values. A value whose node has a non-plain Type.Layout is held in
// memory as its physical layout: the tensor.Tensor's Data has
// ir.PhysicalNumel elements and its Shape is the physical shape
// (ir.Layout.PhysicalShape)
//
//	NCHW{c}c      logical [N, C, H, W]   physical [N, ceil(C/c), H, W, c]
//	OIhw{c}i{c}o  logical [O, I, kh, kw] physical [ceil(O/c), ceil(I/c), kh, kw, c (in), c (out)]
//
// so that the row-major index of the physical shape is the memory offset
// ir.Layout.Offset computes. Lanes for channels past C (or O, I) in the last
// block are padding and always zero in values the interpreter produces.
// Inputs and params with a layout are fed physical too, and graph outputs and
// Options.Keep values are returned as stored; ToLogical and ToPhysical
// convert for callers.

// PhysicalShape returns the shape of the tensor that holds a value of type t
// (t.Layout.PhysicalShape). Layouts that do not apply to t are reported as
// ir.PhysicalNumel reports them.
func PhysicalShape(t ir.Type) ([]int, error) {
	if _, err := ir.PhysicalNumel(t); err != nil {
		return nil, err
	}
	return t.Layout.PhysicalShape(t.Shape)
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
// type t (t.Layout valid for t), with the logical row-major index and the
// index of the same element in the physical layout. The physical index is
// the layout's own arithmetic (ir.Layout.ActivationStrides / WeightStrides,
// the strides ir.Layout.Offset uses), taken once per channel.
func blockedIndex(t ir.Type, f func(l, p int)) {
	s, l := t.Shape, t.Layout
	switch {
	case l.IsActivation():
		st, b := l.ActivationStrides(s, l.Block), l.Block
		w := s[3]
		for n := 0; n < s[0]; n++ {
			for c := 0; c < s[1]; c++ {
				for h := 0; h < s[2]; h++ {
					lo := ((n*s[1]+c)*s[2] + h) * w
					po := n*st.N + (c/b)*st.Block + (c%b)*st.Channel + h*st.Row
					for x := 0; x < w; x++ {
						f(lo+x, po+x*st.Pixel)
					}
				}
			}
		}
	case l.IsWeight():
		st, b := l.WeightStrides(s), l.Block
		kw := s[3]
		for o := 0; o < s[0]; o++ {
			for i := 0; i < s[1]; i++ {
				for y := 0; y < s[2]; y++ {
					lo := ((o*s[1]+i)*s[2] + y) * kw
					po := (o/b)*st.OBlock + (o%b)*st.O + (i/b)*st.IBlock + (i%b)*st.I + y*st.Row
					for x := 0; x < kw; x++ {
						f(lo+x, po+x*st.Col)
					}
				}
			}
		}
	default:
		for i := 0; i < t.Numel(); i++ {
			f(i, i)
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
	if typ.Layout.IsPlain() {
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
	if typ.Layout.IsPlain() {
		return x, nil
	}
	out := tensor.New(want...)
	blockedIndex(typ, func(l, p int) { out.Data[p] = x.Data[l] })
	return out, nil
}
