package onnx

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/kiln-dev/kiln/ir"
	"google.golang.org/protobuf/encoding/protowire"
)

// Resize and Reshape: export of upsample and reshape, import of Resize
// (opset 11+).
//
// Export (opset 13): upsample is Resize with roi absent and a constant
// scales [1, 1, s, s];
//
//	nearest                         mode "nearest", coordinate_transformation_mode
//	                                "asymmetric", nearest_mode "floor" (what
//	                                PyTorch writes for nn.Upsample(mode="nearest"))
//	bilinear                        mode "linear", "half_pixel"
//	bilinear, align_corners=true    mode "linear", "align_corners"
//
// reshape is Reshape with a constant INT64 shape.
//
// Import: Resize with a constant scales [1, 1, s, s] or sizes [N, C, s·H,
// s·W] for one integer s >= 1 (an empty scales, as opset 11 and 12 write
// beside sizes, counts as absent; roi is ignored, as it is for every mode
// but tf_crop_and_resize) becomes upsample:
//
//	mode "nearest" with (asymmetric, floor), or (half_pixel or
//	pytorch_half_pixel, round_prefer_floor or round_prefer_ceil) — both are
//	floor(o/s) for an integer s (the half-pixel source (o+0.5)/s-0.5 lies
//	strictly within 0.5 of floor(o/s)) — as nearest;
//	mode "linear" with half_pixel or pytorch_half_pixel (equal when the
//	output is larger than 1; ONNX's edge padding at the borders is
//	PyTorch's clamp) as bilinear, with align_corners as bilinear with
//	align_corners=true.
//
// Every other combination (cubic, asymmetric linear, tf_half_pixel_for_nn,
// tf_crop_and_resize, antialias, axes, a non-integer or unequal scale, a
// batch or channel scale) is refused naming the attribute and value.

// stringAttr encodes a STRING attribute.
func stringAttr(name, v string) []byte {
	var b []byte
	b = appendStringField(b, attrName, name)
	b = appendVarintField(b, attrType, attrTypeString)
	b = appendStringField(b, attrS, v)
	return b
}

// appendInt64Initializer appends a 1-D INT64 initializer (raw_data, little
// endian).
func appendInt64Initializer(b []byte, name string, data []int) []byte {
	var hdr []byte
	hdr = appendVarintField(hdr, tensorDims, uint64(len(data)))
	hdr = appendVarintField(hdr, tensorDataType, dataTypeInt64)
	hdr = appendStringField(hdr, tensorName, name)
	raw := make([]byte, 0, 8*len(data))
	for _, v := range data {
		raw = binary.LittleEndian.AppendUint64(raw, uint64(int64(v)))
	}
	hdr = appendBytesField(hdr, tensorRawData, raw)
	b = protowire.AppendTag(b, graphInitializer, protowire.BytesType)
	return protowire.AppendBytes(b, hdr)
}

// convertShape exports upsample and reshape (see the file comment).
func (x *exporter) convertShape(i int, n *ir.Node, in []string, out string) (op string, ins []string, attrs [][]byte, ok bool, err error) {
	switch n.Op {
	case ir.OpUpsample:
		sc := out + "/scales"
		if err := x.claim(i, sc); err != nil {
			return "", nil, nil, false, err
		}
		s := float32(n.Attrs.Int("scale"))
		x.inits = appendInitializer(x.inits, sc, []int{4}, []float32{1, 1, s, s})
		switch {
		case n.Attrs.String("mode") != ir.UpsampleBilinear:
			attrs = [][]byte{stringAttr("mode", "nearest"), stringAttr("coordinate_transformation_mode", "asymmetric"), stringAttr("nearest_mode", "floor")}
		case n.Attrs.Bool("align_corners"):
			attrs = [][]byte{stringAttr("mode", "linear"), stringAttr("coordinate_transformation_mode", "align_corners")}
		default:
			attrs = [][]byte{stringAttr("mode", "linear"), stringAttr("coordinate_transformation_mode", "half_pixel")}
		}
		return "Resize", []string{in[0], "", sc}, attrs, true, nil
	case ir.OpReshape:
		sh := out + "/shape"
		if err := x.claim(i, sh); err != nil {
			return "", nil, nil, false, err
		}
		x.inits = appendInt64Initializer(x.inits, sh, n.Attrs.Ints("shape"))
		return "Reshape", []string{in[0], sh}, nil, true, nil
	}
	return "", nil, nil, false, nil
}

// resize imports a Resize node (see the file comment).
func (c *importer) resize(n *Node) {
	as, ok := c.attrs(n, "mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
		"exclude_outside", "extrapolation_value", "antialias", "axes", "keep_aspect_ratio_policy")
	if !ok || !c.onlyOutput(n) {
		return
	}
	x, ok := c.tensorInput(n, 0)
	if !ok {
		return
	}
	xs := c.shapeOf(x)
	if len(xs) != 4 {
		c.fail(n, "only 4-D (N, C, H, W) inputs are supported, got %v", xs)
		return
	}
	str := func(name, def string) (string, bool) { return c.attrString(n, as, name, def) }
	mode, ok1 := str("mode", "nearest")
	ctm, ok2 := str("coordinate_transformation_mode", "half_pixel")
	nm, ok3 := str("nearest_mode", "round_prefer_floor")
	kar, ok4 := str("keep_aspect_ratio_policy", "stretch")
	aa, ok5 := c.attrInt(n, as, "antialias", 0)
	if !(ok1 && ok2 && ok3 && ok4 && ok5) {
		return
	}
	if _, has := as["axes"]; has {
		c.fail(n, "attribute \"axes\" is not supported (scales or sizes must cover all four axes)")
		return
	}
	if aa != 0 {
		c.fail(n, "attribute \"antialias\" = %d is not supported", aa)
		return
	}
	if kar != "stretch" {
		c.fail(n, "attribute \"keep_aspect_ratio_policy\" = %q is not supported (only \"stretch\")", kar)
		return
	}
	var attrs ir.Attrs
	expr := ""
	switch {
	case mode == "nearest" && (ctm == "asymmetric" && nm == "floor" ||
		(ctm == "half_pixel" || ctm == "pytorch_half_pixel") && (nm == "round_prefer_floor" || nm == "round_prefer_ceil")):
		attrs = ir.Attrs{"mode": ir.UpsampleNearest}
	case mode == "nearest":
		c.fail(n, "mode \"nearest\" with coordinate_transformation_mode %q and nearest_mode %q is not supported "+
			"(Kiln's nearest is floor(o/scale): asymmetric with floor, or half_pixel with round_prefer_floor/ceil)", ctm, nm)
		return
	case mode == "linear" && (ctm == "half_pixel" || ctm == "pytorch_half_pixel"):
		attrs = ir.Attrs{"mode": ir.UpsampleBilinear}
		expr = `, mode="bilinear"`
	case mode == "linear" && ctm == "align_corners":
		attrs = ir.Attrs{"mode": ir.UpsampleBilinear, "align_corners": true}
		expr = `, mode="bilinear", align_corners=true`
	case mode == "linear":
		c.fail(n, "mode \"linear\" with coordinate_transformation_mode %q is not supported (half_pixel, pytorch_half_pixel or align_corners)", ctm)
		return
	default:
		c.fail(n, "attribute \"mode\" = %q is not supported (nearest or linear)", mode)
		return
	}
	s, ok := c.resizeScale(n, xs)
	if !ok {
		return
	}
	attrs["scale"] = s
	if s != 2 {
		expr = fmt.Sprintf(", scale=%d", s) + expr
	}
	c.emit(n, c.tempName("upsample"), fmt.Sprintf("upsample(%s%s)", x.expr, expr), fmt.Sprintf("Resize %q", n.Name), ir.OpUpsample, []int{x.node}, attrs)
}

// resizeScale returns the one integer factor of Resize's scales (input 2)
// or sizes (input 3).
func (c *importer) resizeScale(n *Node, xs []int) (int, bool) {
	st, ok := c.optionalConst(n, 2, "scales")
	if !ok {
		return 0, false
	}
	if st != nil {
		if k, err := st.Numel(); err == nil && k == 0 {
			st = nil // opset 11/12: an empty scales beside sizes
		}
	}
	zt, ok := c.optionalConst(n, 3, "sizes")
	if !ok {
		return 0, false
	}
	var f [4]float64
	switch {
	case st != nil && zt != nil:
		c.fail(n, "both scales and sizes are given")
		return 0, false
	case st != nil:
		v, err := st.FloatData()
		if err != nil || len(v) != 4 {
			c.fail(n, "input 2 (scales) must hold 4 floats (%v)", err)
			return 0, false
		}
		for i := range f {
			f[i] = float64(v[i])
		}
	case zt != nil:
		v, err := zt.IntData()
		if err != nil || len(v) != 4 {
			c.fail(n, "input 3 (sizes) must hold 4 ints (%v)", err)
			return 0, false
		}
		for i := range f {
			f[i] = float64(v[i]) / float64(xs[i])
		}
	default:
		c.fail(n, "neither scales nor sizes is given")
		return 0, false
	}
	s := f[2]
	if f[0] != 1 || f[1] != 1 || f[3] != s || s != math.Trunc(s) || s < 1 || s > 1<<16 {
		c.fail(n, "scale factors %v: only [1, 1, s, s] with an integer s >= 1 are supported", f)
		return 0, false
	}
	return int(s), true
}

// dilations reads Conv's dilations attribute (default 1, 1).
func (c *importer) dilations(n *Node, as map[string]*Attribute) ([]int, bool) {
	d64, ok := c.attrInts(n, as, "dilations", 2, []int64{1, 1})
	if !ok {
		return nil, false
	}
	d := make([]int, 2)
	for i, v := range d64 {
		if v <= 0 || v > 1<<16 {
			c.fail(n, "attribute \"dilations\" = %v must be positive", d64)
			return nil, false
		}
		d[i] = int(v)
	}
	return d, true
}

// emitReshape writes reshape(x, shape) for a resolved constant shape; a
// leading batch dimension equal to x's is written -1, so the source stays
// valid for every batch size.
func (c *importer) emitReshape(n *Node, x *value, shape []int) {
	s := "("
	for i, d := range shape {
		if i > 0 {
			s += ", "
		}
		if i == 0 && len(shape) > 1 && d == c.shapeOf(x)[0] {
			s += "-1"
			continue
		}
		s += fmt.Sprint(d)
	}
	s += ")"
	c.emit(n, c.tempName("reshape"), fmt.Sprintf("reshape(%s, %s)", x.expr, s), fmt.Sprintf("Reshape %q", n.Name), ir.OpReshape, []int{x.node}, ir.Attrs{"shape": shape})
}
