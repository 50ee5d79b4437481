package interp

import (
	"fmt"
	"testing"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// refConvDilated is refConv with dilation (PyTorch's Conv2d: tap (ky, kx)
// reads input pixel (oy*sh-ph+ky*dh, ox*sw-pw+kx*dw)), as a naive float64
// loop.
func refConvDilated(x, w *tensor.Tensor, stride, pad, dil []int, groups int) *ref {
	n, c, h, wd := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	o, cg, kh, kw := w.Shape[0], w.Shape[1], w.Shape[2], w.Shape[3]
	ho := (h+2*pad[0]-((kh-1)*dil[0]+1))/stride[0] + 1
	wo := (wd+2*pad[1]-((kw-1)*dil[1]+1))/stride[1] + 1
	og := o / groups
	out := newRef(n, o, ho, wo)
	for b := 0; b < n; b++ {
		for oc := 0; oc < o; oc++ {
			g := oc / og
			for oy := 0; oy < ho; oy++ {
				for ox := 0; ox < wo; ox++ {
					s := 0.0
					for ic := 0; ic < cg; ic++ {
						for ky := 0; ky < kh; ky++ {
							for kx := 0; kx < kw; kx++ {
								iy, ix := oy*stride[0]-pad[0]+ky*dil[0], ox*stride[1]-pad[1]+kx*dil[1]
								if iy < 0 || iy >= h || ix < 0 || ix >= wd {
									continue
								}
								s += float64(x.Data[((b*c+g*cg+ic)*h+iy)*wd+ix]) * float64(w.Data[((oc*cg+ic)*kh+ky)*kw+kx])
							}
						}
					}
					out.data[((b*o+oc)*ho+oy)*wo+ox] = s
				}
			}
		}
	}
	return out
}

func TestConv2DDilated(t *testing.T) {
	cases := []struct {
		name                  string
		n, c, h, w, o, kh, kw int
		stride, pad, dil      []int
		groups                int
	}{
		{"3x3/d2/pad2", 1, 5, 11, 9, 6, 3, 3, []int{1, 1}, []int{2, 2}, []int{2, 2}, 1},
		{"3x3/d3,1/stride2", 2, 4, 13, 10, 5, 3, 3, []int{2, 2}, []int{1, 1}, []int{3, 1}, 1},
		{"3x3/d2/depthwise", 1, 6, 9, 9, 6, 3, 3, []int{1, 1}, []int{2, 2}, []int{2, 2}, 6},
		{"2x3/d2,3/groups2", 1, 4, 12, 14, 6, 2, 3, []int{1, 2}, []int{0, 3}, []int{2, 3}, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := newBuilder(t, int64(len(c.name)))
			x := b.input("x", c.n, c.c, c.h, c.w)
			w := b.param("w", -1, 1, c.o, c.c/c.groups, c.kh, c.kw)
			y := b.op(ir.OpConv2D, ir.Attrs{"stride": c.stride, "pad": c.pad, "groups": c.groups, "dilation": c.dil}, x, w)
			for _, threads := range []int{1, 2} {
				res := b.run(threads, y)
				checkClose(t, fmt.Sprintf("threads=%d", threads), res.Outputs[0],
					refConvDilated(b.val(x), b.val(w), c.stride, c.pad, c.dil, c.groups), tol)
			}
		})
	}
}
