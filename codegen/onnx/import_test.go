package onnx

import (
	"encoding/binary"
	"math"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"google.golang.org/protobuf/encoding/protowire"
)

// testInput is a deterministic input of the given shape.
func testInput(shape ...int) *tensor.Tensor {
	x := tensor.New(shape...)
	for i := range x.Data {
		x.Data[i] = float32(math.Sin(0.37*float64(i)) + 0.1*math.Cos(1.3*float64(i)))
	}
	return x
}

// runOne runs g on x and returns its single output.
func runOne(t *testing.T, g *ir.Graph, params map[string]*tensor.Tensor, x *tensor.Tensor) *tensor.Tensor {
	t.Helper()
	res, err := interp.Run(g, params, map[string]*tensor.Tensor{g.Inputs()[0].Name: x}, interp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return res.Outputs[0]
}

// TestImportRoundTrip exports networks with Encode, reads them back with
// ReadModel and Import, and requires the imported network (elaborated from
// the written .kiln, with the written weights) to compute the original's
// output within 1e-5 x max|ref| in the interpreter. It also checks that each
// imported weight holds the values of the initializer Names says it came from.
func TestImportRoundTrip(t *testing.T) {
	tests := []struct {
		net   string
		batch int
		input []int // per-sample input shape, nil for the declared one
	}{
		{"tiny", 1, nil},
		{"tiny", 2, []int{3, 40, 40}},
		{"mini_inception", 1, nil},
		{"inception_resnet_v1", 1, []int{3, 75, 75}},
	}
	for _, tc := range tests {
		t.Run(tc.net, func(t *testing.T) {
			g, err := dsl.LoadFile(tc.net+".kiln", dsl.Options{Batch: tc.batch, InputShape: tc.input, FS: archs.FS})
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
			m, err := ReadModel(b, tc.net+".onnx", Limits{})
			if err != nil {
				t.Fatal(err)
			}
			imp, err := Import(m, ImportOptions{Source: tc.net + ".onnx"})
			if err != nil {
				t.Fatal(err)
			}
			if testing.Verbose() && tc.net == "tiny" && tc.batch == 1 {
				t.Logf("%s", imp.Source)
			}
			// The written source, elaborated afresh at the batch, is the network.
			ig, err := dsl.Load(tc.net+"_imported.kiln", imp.Source, dsl.Options{Batch: tc.batch})
			if err != nil {
				t.Fatal(err)
			}
			if len(ig.Params()) != len(g.Params()) {
				t.Errorf("imported network has %d parameters, the original %d", len(ig.Params()), len(g.Params()))
			}
			for k, src := range imp.Names {
				orig, ok := params[src]
				if !ok {
					t.Errorf("weight %s: Names says %q, which is no original parameter", k, src)
					continue
				}
				if d, err := tensor.MaxAbsDiff(orig, imp.Weights[k]); err != nil || d != 0 {
					t.Errorf("weight %s differs from %s: %v %v", k, src, d, err)
				}
			}
			x := testInput(g.Inputs()[0].Type.Shape...)
			ref := runOne(t, g, params, x)
			got := runOne(t, ig, imp.Weights, x)
			d, err := tensor.MaxAbsDiff(ref, got)
			if err != nil {
				t.Fatal(err)
			}
			if bound := 1e-5 * tensor.MaxAbs(ref); d > bound {
				t.Fatalf("max |imported - original| = %g > %g", d, bound)
			}
			t.Logf("%s: %d lines of .kiln, %d weights, max diff %g", tc.net, strings.Count(string(imp.Source), "\n"), len(imp.Weights), d)
		})
	}
}

// A minimal ONNX writer for hand-made test models.

type tmodel struct {
	opset   int
	nodes   [][]byte
	inits   []byte
	inputs  [][]byte
	outputs [][]byte
}

func tnode(op, name string, in, out []string, attrs ...[]byte) []byte {
	var b []byte
	for _, s := range in {
		b = appendStringField(b, nodeInput, s)
	}
	for _, s := range out {
		b = appendStringField(b, nodeOutput, s)
	}
	b = appendStringField(b, nodeName, name)
	b = appendStringField(b, nodeOpType, op)
	for _, a := range attrs {
		b = appendBytesField(b, nodeAttribute, a)
	}
	return b
}

func strAttr(name, v string) []byte {
	var b []byte
	b = appendStringField(b, attrName, name)
	b = appendVarintField(b, attrType, attrTypeString)
	return appendStringField(b, attrS, v)
}

func tensorAttr(name string, t []byte) []byte {
	var b []byte
	b = appendStringField(b, attrName, name)
	b = appendVarintField(b, attrType, attrTypeTensor)
	return appendBytesField(b, attrT, t)
}

// int64Tensor encodes an INT64 TensorProto with packed int64_data.
func int64Tensor(name string, vs ...int64) []byte {
	var b []byte
	b = appendVarintField(b, tensorDims, uint64(len(vs)))
	b = appendVarintField(b, tensorDataType, dataTypeInt64)
	b = appendStringField(b, tensorName, name)
	var packed []byte
	for _, v := range vs {
		packed = protowire.AppendVarint(packed, uint64(v))
	}
	return appendBytesField(b, tensorInt64Data, packed)
}

// floatTensor encodes a FLOAT TensorProto with float_data (not raw_data).
func floatTensor(name string, dims []int, vs ...float32) []byte {
	var b []byte
	for _, d := range dims {
		b = appendVarintField(b, tensorDims, uint64(d))
	}
	b = appendVarintField(b, tensorDataType, dataTypeFloat)
	b = appendStringField(b, tensorName, name)
	var packed []byte
	for _, v := range vs {
		packed = binary.LittleEndian.AppendUint32(packed, math.Float32bits(v))
	}
	return appendBytesField(b, tensorFloatData, packed)
}

func (m *tmodel) node(op, name string, in, out []string, attrs ...[]byte) *tmodel {
	m.nodes = append(m.nodes, tnode(op, name, in, out, attrs...))
	return m
}

func (m *tmodel) init(name string, shape []int, data []float32) *tmodel {
	m.inits = appendInitializer(m.inits, name, shape, data)
	return m
}

func (m *tmodel) bytes() []byte {
	var g []byte
	for _, n := range m.nodes {
		g = appendBytesField(g, graphNode, n)
	}
	g = appendStringField(g, graphName, "t")
	g = append(g, m.inits...)
	for _, v := range m.inputs {
		g = appendBytesField(g, graphInput, v)
	}
	for _, v := range m.outputs {
		g = appendBytesField(g, graphOutput, v)
	}
	var b []byte
	b = appendVarintField(b, modelIRVersion, 8)
	b = appendStringField(b, modelProducerName, "test")
	opset := m.opset
	if opset == 0 {
		opset = 17
	}
	b = appendBytesField(b, modelOpsetImport, appendVarintField(appendStringField(nil, opsetIDDomain, ""), opsetIDVersion, uint64(opset)))
	return appendBytesField(b, modelGraph, g)
}

func seqData(n int, scale float32) []float32 {
	d := make([]float32, n)
	for i := range d {
		d[i] = scale * float32(math.Sin(float64(i)+0.5))
	}
	return d
}

// importBytes reads and imports a model.
func importBytes(b []byte) (*Imported, error) {
	m, err := ReadModel(b, "t.onnx", Limits{})
	if err != nil {
		return nil, err
	}
	return Import(m, ImportOptions{Source: "t.onnx"})
}

// TestImportDense checks the dense mappings numerically against a direct
// computation: MatMul + Add (the bias Add is absorbed), Gemm with transB 0,
// alpha and beta, Reshape to [0, -1] with a Constant shape, Mul by a
// Constant, and opset-11 Softmax (axis 1 of a 2-D input).
func TestImportDense(t *testing.T) {
	const in, hid, out = 4, 3, 2
	w1, b1 := seqData(in*hid, 0.5), seqData(hid, 0.1) // MatMul B is [in, hid]
	w2, b2 := seqData(hid*out, -0.7), seqData(out, 0.3)
	m := &tmodel{opset: 11}
	m.init("fc1.weight", []int{in, hid}, w1).init("fc1.bias", []int{hid}, b1)
	m.init("fc2.weight", []int{hid, out}, w2).init("fc2.bias", []int{1, out}, b2)
	m.node("Constant", "shape", nil, []string{"shape"}, tensorAttr("value", int64Tensor("", 0, -1)))
	m.node("Reshape", "flat", []string{"x", "shape"}, []string{"xf"})
	m.node("MatMul", "/fc1/MatMul", []string{"xf", "fc1.weight"}, []string{"h0"})
	m.node("Add", "/fc1/Add", []string{"fc1.bias", "h0"}, []string{"h1"})
	m.node("Relu", "relu", []string{"h1"}, []string{"h2"})
	m.node("Constant", "two", nil, []string{"two"}, tensorAttr("value", floatTensor("", nil, 2)))
	m.node("Mul", "scale", []string{"h2", "two"}, []string{"h3"})
	m.node("Dropout", "drop", []string{"h3"}, []string{"h4", "mask"}, floatAttr("ratio", 0.5))
	m.node("Gemm", "fc2", []string{"h4", "fc2.weight", "fc2.bias"}, []string{"y0"}, floatAttr("alpha", 2), floatAttr("beta", 0.5))
	m.node("Softmax", "sm", []string{"y0"}, []string{"y"})
	m.inputs = [][]byte{valueInfo("x", []int{2, in, 1, 1})}
	m.outputs = [][]byte{valueInfo("y", []int{2, out})}
	imp, err := importBytes(m.bytes())
	if err != nil {
		t.Fatal(err)
	}
	src := string(imp.Source)
	for _, want := range []string{"fc1 = dense(flatten_1, 3)", "mul_1 = 2 * relu_1", "fc2 = dense(mul_1, 2)", "softmax_1 = softmax(fc2)"} {
		if !strings.Contains(src, want) {
			t.Errorf("source lacks %q:\n%s", want, src)
		}
	}
	x := testInput(2, in, 1, 1)
	got := runOne(t, imp.Graph, imp.Weights, x)
	for n := 0; n < 2; n++ {
		h := make([]float64, hid)
		for j := range h {
			s := float64(b1[j])
			for i := 0; i < in; i++ {
				s += float64(x.Data[n*in+i]) * float64(w1[i*hid+j])
			}
			h[j] = 2 * math.Max(s, 0)
		}
		y := make([]float64, out)
		var sum float64
		for k := range y {
			s := 0.5 * float64(b2[k])
			for j := range h {
				s += 2 * h[j] * float64(w2[j*out+k])
			}
			y[k] = s
		}
		mx := math.Max(y[0], y[1])
		for k := range y {
			y[k] = math.Exp(y[k] - mx)
			sum += y[k]
		}
		for k := range y {
			if d := math.Abs(y[k]/sum - float64(got.Data[n*out+k])); d > 1e-6 {
				t.Errorf("y[%d,%d] = %v, want %v", n, k, got.Data[n*out+k], y[k]/sum)
			}
		}
	}
	if imp.Names["fc1.weight"] != "fc1.weight (transposed)" || imp.Names["fc2.bias"] != "fc2.bias (times beta 0.5)" {
		t.Errorf("names: %v", imp.Names)
	}
}

// convModel is a small conv network used by TestImportConv and, with
// changes, by TestImportErrors.
func convModel(convAttrs ...[]byte) *tmodel {
	m := &tmodel{}
	m.init("conv.weight", []int{4, 2, 3, 3}, seqData(72, 0.3))
	m.init("bn.weight", []int{4}, []float32{1, 2, 3, 4}).init("bn.bias", []int{4}, seqData(4, 1))
	m.init("bn.running_mean", []int{4}, seqData(4, 0.1)).init("bn.running_var", []int{4}, []float32{1, 0.5, 2, 3})
	m.node("Conv", "/conv/Conv", []string{"input.1", "conv.weight"}, []string{"c"}, convAttrs...)
	m.node("BatchNormalization", "/bn/BatchNormalization", []string{"c", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"}, []string{"b"}, floatAttr("epsilon", 1e-3))
	m.node("Relu", "/relu/Relu", []string{"b"}, []string{"r"})
	m.node("MaxPool", "/pool/MaxPool", []string{"r"}, []string{"p", "idx"}, intsAttr("kernel_shape", 3, 3), intsAttr("strides", 2, 2), intsAttr("pads", 1, 1, 1, 1), intAttr("ceil_mode", 1))
	m.node("AveragePool", "/avg/AveragePool", []string{"r"}, []string{"a"}, intsAttr("kernel_shape", 3, 3), intsAttr("strides", 2, 2), intsAttr("pads", 1, 1, 1, 1))
	m.node("Add", "/add/Add", []string{"p", "a"}, []string{"s"})
	m.node("Concat", "/cat/Concat", []string{"s", "p"}, []string{"k"}, intAttr("axis", -3))
	m.node("GlobalAveragePool", "/gap/GlobalAveragePool", []string{"k"}, []string{"g"})
	m.node("Flatten", "/flat/Flatten", []string{"g"}, []string{"f"})
	m.node("Identity", "id", []string{"f"}, []string{"y"})
	m.inputs = [][]byte{valueInfo("input.1", []int{1, 2, 9, 9})}
	m.outputs = [][]byte{valueInfo("y", []int{1, 8})}
	return m
}

// TestImportConv checks the statements written for the conv-network ops:
// auto_pad SAME_UPPER resolved to a symmetric pad, no bias, epsilon, ceil_mode
// that changes no size, AveragePool's ONNX default count_include_pad 0, a
// negative concat axis, an unused MaxPool indices output, and names derived
// from initializer prefixes.
func TestImportConv(t *testing.T) {
	imp, err := importBytes(convModel(strAttr("auto_pad", "SAME_UPPER")).bytes())
	if err != nil {
		t.Fatal(err)
	}
	src := string(imp.Source)
	for _, want := range []string{
		"conv = conv2d(x, 4, 3x3, pad=1, bias=false)",
		"bn = batchnorm(conv, eps=0.001)",
		"maxpool_1 = maxpool(relu_1, 3x3, stride=2, pad=1)",
		"avgpool_1 = avgpool(relu_1, 3x3, stride=2, pad=1, count_include_pad=false)",
		"add_1 = maxpool_1 + avgpool_1",
		"concat_1 = concat(add_1, maxpool_1)",
		"network t(input_1: f32[N, 2, 9, 9]) -> f32[N, 8]",
	} {
		if !strings.Contains(src, want) {
			t.Errorf("source lacks %q:\n%s", want, src)
		}
	}
	for _, k := range []string{"conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"} {
		if imp.Names[k] != k {
			t.Errorf("weight %s comes from %q", k, imp.Names[k])
		}
	}
	// The import's own graph and the interpreter agree on a run.
	runOne(t, imp.Graph, imp.Weights, testInput(1, 2, 9, 9))
}

// TestImportErrors covers what the importer refuses, each with the message
// that names the node, op, attribute or field.
func TestImportErrors(t *testing.T) {
	unsupported := convModel()
	unsupported.node("Erf", "/act1/Erf", []string{"y"}, []string{"s1"})
	unsupported.node("Erf", "/act2/Erf", []string{"s1"}, []string{"s2"})
	unsupported.node("Relu", "after", []string{"s2"}, []string{"s3"}) // depends on poison: not reported
	unsupported.node("GridSample", "up", []string{"y"}, []string{"s4"})
	unsupported.node("MyOp", "custom", []string{"y"}, []string{"s5"})
	unsupported.nodes[len(unsupported.nodes)-1] = append(unsupported.nodes[len(unsupported.nodes)-1], appendStringField(nil, nodeDomain, "com.example")...)

	twoInputs := convModel()
	twoInputs.inputs = append(twoInputs.inputs, valueInfo("z", []int{1, 2}))

	uneven := convModel(strAttr("auto_pad", "SAME_UPPER"), intsAttr("strides", 2, 2))
	uneven.inputs = [][]byte{valueInfo("input.1", []int{1, 2, 10, 10})}

	usedIdx := convModel()
	usedIdx.node("Relu", "uses-indices", []string{"idx"}, []string{"q"})

	tests := []struct {
		name string
		b    []byte
		want []string
	}{
		{"unsupported", unsupported.bytes(), []string{"4 node(s) use ops kiln import does not support",
			`GridSample (1): "up"`, `Erf (2): "/act1/Erf", "/act2/Erf"`, `com.example::MyOp (1): "custom"`}},
		{"asymmetric pads", convModel(intsAttr("pads", 0, 0, 1, 1)).bytes(),
			[]string{`graph.node[0] "/conv/Conv" (Conv): attribute "pads" = [0 0 1 1]: asymmetric padding`}},
		{"dilations", convModel(intsAttr("dilations", 0, 2)).bytes(), []string{`(Conv): attribute "dilations" = [0 2] must be positive`}},
		{"unknown attribute", convModel(intAttr("frobnicate", 1)).bytes(), []string{`(Conv): attribute "frobnicate" is not supported`}},
		{"same, stride 2", convModel(strAttr("auto_pad", "SAME_UPPER"), intsAttr("strides", 2, 2)).bytes(), nil},
		{"uneven same", uneven.bytes(), []string{`(Conv): attribute "auto_pad" = SAME_UPPER pads axis 2 by 1 in all, unevenly`}},
		{"opset 10", (&tmodel{opset: 10}).bytes(), []string{"opset 10 is not supported (kiln import reads opset 11 to 21"}},
		{"two inputs", twoInputs.bytes(), []string{`a Kiln network has one input; graph "t" has 2: "input.1", "z"`}},
		{"used indices", usedIdx.bytes(), []string{`"/pool/MaxPool" (MaxPool): output "idx" is used`}},
		{"truncated", convModel().bytes()[:200], []string{"t.onnx: model: byte 15: field 7: unexpected EOF"}},
		{"wrong wire type", appendVarintField(nil, modelGraph, 3), []string{"model (field 7): byte 1: wire type 0, want 2 (bytes)"}},
		{"group", []byte{0x0b}, []string{"wire type 3 (groups are not used by onnx.proto)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := importBytes(tc.b)
			if tc.want == nil {
				if err != nil { // stride 2 over 9 with a 3x3 kernel: total pad 2, even
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if tc.name == "unsupported" && strings.Contains(err.Error(), "after") {
				t.Errorf("a node depending on an unsupported one is reported:\n%v", err)
			}
			t.Logf("%v", err)
		})
	}
}

// FuzzReadONNX feeds arbitrary bytes to ReadModel and, when they decode, to
// Import: neither may panic or hang.
func FuzzReadONNX(f *testing.F) {
	f.Add(convModel().bytes())
	f.Add(convModel(strAttr("auto_pad", "SAME_LOWER")).bytes())
	m := &tmodel{opset: 13}
	m.node("Constant", "c", nil, []string{"s"}, tensorAttr("value", int64Tensor("", 0, -1)))
	m.node("Reshape", "r", []string{"x", "s"}, []string{"y"})
	m.inputs = [][]byte{valueInfo("x", []int{1, 2, 3, 3})}
	m.outputs = [][]byte{valueInfo("y", []int{1, 18})}
	f.Add(m.bytes())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ReadModel(b, "fuzz.onnx", Limits{MaxNodes: 64, MaxInitializers: 64})
		if err != nil {
			return
		}
		for _, t := range m.Graph.Initializers {
			if n, err := t.Numel(); err != nil || n > 1<<16 {
				return // large tensors are valid but slow to fuzz
			}
		}
		if len(m.Graph.Inputs) > 0 {
			for _, d := range m.Graph.Inputs[0].Dims {
				if d.Value > 64 {
					return
				}
			}
		}
		_, _ = Import(m, ImportOptions{})
	})
}
