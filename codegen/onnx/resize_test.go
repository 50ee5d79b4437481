package onnx

import (
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestShapeRoundTrip exports a network with nearest and bilinear
// upsampling (both coordinate modes), a 4-D reshape and back, and a
// dilated convolution, imports the file and compares the interpreter's
// outputs of both graphs.
func TestShapeRoundTrip(t *testing.T) {
	const src = `block body(x) {
    a = upsample(x)
    b = upsample(x, scale=3, mode="bilinear")
    c = upsample(x, mode="bilinear", align_corners=true)
    d = conv2d(concat(a, c), 4, 3, pad=2, dilation=2)
    e = reshape(reshape(d, (-1, 16, 5, 2)), (-1, 4, 10, 4))
    return flatten(global_avgpool(e)) + flatten(global_maxpool(b))
}
network shapes(x: f32[N, 4, 5, 2]) {
    return body(x)
}`
	g, err := dsl.Load("shapes.kiln", []byte(src), dsl.Options{Batch: 2})
	if err != nil {
		t.Fatal(err)
	}
	params, err := g.GeneratedParams()
	if err != nil {
		t.Fatal(err)
	}
	b, err := Encode(g, params, Options{})
	if err != nil {
		t.Fatal(err)
	}
	imp, err := importBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"upsample(x)", `upsample(x, scale=3, mode="bilinear")`, `upsample(x, mode="bilinear", align_corners=true)`,
		"dilation=2)", ", (-1, 16, 5, 2))", ", (-1, 4, 10, 4))"} {
		if !strings.Contains(string(imp.Source), want) {
			t.Errorf("imported source lacks %q:\n%s", want, imp.Source)
		}
	}
	for _, batch := range []int{2, 3} {
		og, err := dsl.Load("shapes.kiln", []byte(src), dsl.Options{Batch: batch})
		if err != nil {
			t.Fatal(err)
		}
		ig, err := dsl.Load("shapes_imported.kiln", imp.Source, dsl.Options{Batch: batch})
		if err != nil {
			t.Fatal(err)
		}
		x := testInput(og.Inputs()[0].Type.Shape...)
		ref, got := runOne(t, og, params, x), runOne(t, ig, imp.Weights, x)
		d, err := tensor.MaxAbsDiff(ref, got)
		if err != nil {
			t.Fatal(err)
		}
		if bound := 1e-5 * tensor.MaxAbs(ref); d > bound {
			t.Fatalf("batch %d: max |imported - original| = %g > %g", batch, d, bound)
		}
	}
}

// resizeModel is x[1, 2, 3, 4] -> Resize(attrs; roi absent, inputs as
// given) -> y.
func resizeModel(inputs []string, inits func(m *tmodel), attrs ...[]byte) []byte {
	m := &tmodel{}
	if inits != nil {
		inits(m)
	}
	m.node("Resize", "/up/Resize", append([]string{"x"}, inputs...), []string{"y"}, attrs...)
	m.inputs = [][]byte{valueInfo("x", []int{1, 2, 3, 4})}
	m.outputs = [][]byte{valueInfo("y", []int{1, 2, 6, 8})}
	return m.bytes()
}

// TestImportResize checks the Resize attribute combinations kiln import
// maps to upsample (what PyTorch writes for nn.Upsample nearest and
// bilinear with and without align_corners, sizes instead of scales, an
// empty opset-11 scales beside sizes) and the refusals, each naming the
// attribute.
func TestImportResize(t *testing.T) {
	scales := func(s float32) func(m *tmodel) {
		return func(m *tmodel) { m.init("scales", []int{4}, []float32{1, 1, s, s}) }
	}
	sizes := func(m *tmodel) {
		m.init("empty", []int{0}, nil)
		m.inits = appendInt64Initializer(m.inits, "sizes", []int{1, 2, 6, 8})
	}
	str := func(kv ...string) [][]byte {
		var out [][]byte
		for i := 0; i < len(kv); i += 2 {
			out = append(out, stringAttr(kv[i], kv[i+1]))
		}
		return out
	}
	ok := []struct {
		name   string
		model  []byte
		attrs  ir.Attrs
		source string
	}{
		{"pytorch nearest", resizeModel([]string{"", "scales"}, scales(2), str("mode", "nearest", "coordinate_transformation_mode", "asymmetric", "nearest_mode", "floor")...),
			ir.Attrs{"scale": 2, "mode": "nearest", "align_corners": false}, "upsample(x)"},
		{"default nearest", resizeModel([]string{"", "scales"}, scales(2)),
			ir.Attrs{"scale": 2, "mode": "nearest", "align_corners": false}, "upsample(x)"},
		{"bilinear", resizeModel([]string{"", "scales"}, scales(2), str("mode", "linear", "coordinate_transformation_mode", "pytorch_half_pixel")...),
			ir.Attrs{"scale": 2, "mode": "bilinear", "align_corners": false}, `upsample(x, mode="bilinear")`},
		{"align_corners sizes", resizeModel([]string{"", "empty", "sizes"}, sizes, str("mode", "linear", "coordinate_transformation_mode", "align_corners")...),
			ir.Attrs{"scale": 2, "mode": "bilinear", "align_corners": true}, `upsample(x, mode="bilinear", align_corners=true)`},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			imp, err := importBytes(tc.model)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(imp.Source), tc.source) {
				t.Errorf("source lacks %q:\n%s", tc.source, imp.Source)
			}
			var up *ir.Node
			for _, n := range imp.Graph.Nodes {
				if n.Op == ir.OpUpsample {
					up = n
				}
			}
			if up == nil {
				t.Fatalf("no upsample node")
			}
			for k, v := range tc.attrs {
				if up.Attrs[k] != v {
					t.Errorf("attribute %s = %v, want %v", k, up.Attrs[k], v)
				}
			}
		})
	}
	bad := []struct {
		name  string
		model []byte
		want  string
	}{
		{"cubic", resizeModel([]string{"", "scales"}, scales(2), str("mode", "cubic")...), `attribute "mode" = "cubic" is not supported`},
		{"asymmetric linear", resizeModel([]string{"", "scales"}, scales(2), str("mode", "linear", "coordinate_transformation_mode", "asymmetric")...),
			`coordinate_transformation_mode "asymmetric" is not supported`},
		{"nearest round", resizeModel([]string{"", "scales"}, scales(2), str("coordinate_transformation_mode", "asymmetric")...),
			`nearest_mode "round_prefer_floor" is not supported`},
		{"fractional", resizeModel([]string{"", "scales"}, scales(1.5)), "scale factors [1 1 1.5 1.5]"},
		{"none", resizeModel(nil, nil), "neither scales nor sizes"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := importBytes(tc.model)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "/up/Resize") {
				t.Errorf("error %v, want one naming /up/Resize and containing %q", err, tc.want)
			}
		})
	}
}

// TestImportConvDilations checks that Conv's dilations become conv2d's
// dilation (with SAME_UPPER padding resolved over the dilated kernel).
func TestImportConvDilations(t *testing.T) {
	imp, err := importBytes(convModel(intsAttr("dilations", 2, 2), strAttr("auto_pad", "SAME_UPPER")).bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(imp.Source), "pad=2, bias=false, dilation=2)") {
		t.Errorf("source lacks the dilated conv:\n%s", imp.Source)
	}
}
