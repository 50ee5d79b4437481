package ir

import "fmt"

// OpUpsample is spatial upsampling by an integer factor: PyTorch's
// nn.Upsample(scale_factor=s, mode=...) and F.interpolate, and ONNX's
// Resize with equal integer H and W scales. Modes:
//
//   - "nearest": out[n,c,oh,ow] = x[n,c,oh/s,ow/s] (PyTorch's "nearest",
//     ONNX coordinate_transformation_mode asymmetric, nearest_mode floor);
//   - "bilinear": PyTorch's bilinear interpolation. The source coordinate
//     of output index o is, with align_corners=false, (o+0.5)/s-0.5
//     clamped below at 0 (ONNX half_pixel), and with align_corners=true
//     o·(in-1)/(out-1) (ONNX align_corners); i0 = floor(src),
//     i1 = min(i0+1, in-1), λ1 = src-i0, λ0 = 1-λ1, and
//     out = λ0h·(λ0w·x[i0h,i0w] + λ1w·x[i0h,i1w]) + λ1h·(λ0w·x[i1h,i0w] + λ1w·x[i1h,i1w])
//     (aten/src/ATen/native/UpSample.h, area_pixel_compute_source_index;
//     UpSampleBilinear2d.cpp).
//
// Only integer factors >= 1, equal for H and W, are supported.
const OpUpsample = "upsample"

// Upsample modes.
const (
	UpsampleNearest  = "nearest"
	UpsampleBilinear = "bilinear"
)

func init() {
	register(&OpDef{Name: OpUpsample, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1,
		Doc: "upsample H and W by an integer factor (PyTorch nn.Upsample: nearest, or bilinear with align_corners)",
		Attrs: []AttrDef{
			{Name: "scale", Kind: AttrInt, Default: 2, Check: positive},
			{Name: "mode", Kind: AttrString, Default: UpsampleNearest, Check: func(v any) error {
				if s, _ := v.(string); s != UpsampleNearest && s != UpsampleBilinear {
					return fmt.Errorf("must be %q or %q, got %q", UpsampleNearest, UpsampleBilinear, v)
				}
				return nil
			}},
			{Name: "align_corners", Kind: AttrBool, Default: false},
		},
		DTypes: floatDTypes,
		Infer: func(n *Node, a []Type) (Type, error) {
			if err := rankIs(a[0], 4, "input"); err != nil {
				return Type{}, err
			}
			if n.Attrs.Bool("align_corners") && n.Attrs.String("mode") != UpsampleBilinear {
				return Type{}, fmt.Errorf("align_corners applies to mode %q only", UpsampleBilinear)
			}
			s := n.Attrs.Int("scale")
			t := same(a[0])
			t.Shape[2], t.Shape[3] = a[0].Shape[2]*s, a[0].Shape[3]*s
			return t, nil
		}})
}

// UpsampleSource returns, for output index o of an upsampling of an axis of
// size in by the integer factor s, the two source indices and the weight
// of the second as an exact fraction num/den: src = i0 + num/den, λ1 =
// num/den. Nearest mode gives (o/s, o/s, 0, 1). The interpreter, the
// kernel and the tests share it, so they agree on the indices exactly.
func UpsampleSource(o, in, s int, mode string, alignCorners bool) (i0, i1, num, den int) {
	out := in * s
	switch {
	case mode != UpsampleBilinear:
		return o / s, o / s, 0, 1
	case alignCorners:
		if out == 1 {
			return 0, 0, 0, 1
		}
		num, den = o*(in-1), out-1
	default:
		// (o + 0.5)/s - 0.5 = (2o + 1 - s) / 2s, clamped at 0.
		num, den = max(0, 2*o+1-s), 2*s
	}
	i0 = num / den
	return i0, min(i0+1, in-1), num - i0*den, den
}
