package onnx

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	"google.golang.org/protobuf/encoding/protowire"
)

// message is a decoded protobuf message: the values of each field number in
// order, varints as uint64, fixed32 as uint32, length-delimited as []byte.
type message map[protowire.Number][]any

// decode parses b with protowire, failing the test on malformed input.
func decode(t *testing.T, b []byte) message {
	t.Helper()
	m := message{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad tag: %v", protowire.ParseError(n))
		}
		b = b[n:]
		var v any
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			v, n = protowire.ConsumeFixed32(b)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			t.Fatalf("field %d: unexpected wire type %d", num, typ)
		}
		if n < 0 {
			t.Fatalf("field %d: %v", num, protowire.ParseError(n))
		}
		b = b[n:]
		m[num] = append(m[num], v)
	}
	return m
}

func (m message) str(num protowire.Number) string {
	if len(m[num]) == 0 {
		return ""
	}
	return string(m[num][0].([]byte))
}

func (m message) strs(num protowire.Number) []string {
	var out []string
	for _, v := range m[num] {
		out = append(out, string(v.([]byte)))
	}
	return out
}

func (m message) varint(num protowire.Number) uint64 {
	if len(m[num]) == 0 {
		return 0
	}
	return m[num][0].(uint64)
}

func (m message) ints(num protowire.Number) []int {
	var out []int
	for _, v := range m[num] {
		out = append(out, int(int64(v.(uint64))))
	}
	return out
}

func (m message) msgs(t *testing.T, num protowire.Number) []message {
	t.Helper()
	var out []message
	for _, v := range m[num] {
		out = append(out, decode(t, v.([]byte)))
	}
	return out
}

// valueShape returns the name and fixed shape of a float ValueInfoProto.
func valueShape(t *testing.T, vi message) (string, []int) {
	t.Helper()
	tt := vi.msgs(t, valueInfoType)[0].msgs(t, typeTensorType)[0]
	if tt.varint(typeTensorElemType) != dataTypeFloat {
		t.Fatalf("value %s: elem_type %d", vi.str(valueInfoName), tt.varint(typeTensorElemType))
	}
	var shape []int
	for _, d := range tt.msgs(t, typeTensorShape)[0].msgs(t, shapeDim) {
		shape = append(shape, int(d.varint(dimValue)))
	}
	return vi.str(valueInfoName), shape
}

func loadTiny(t *testing.T, batch int) (*ir.Graph, map[string]*tensor.Tensor) {
	t.Helper()
	g, err := dsl.LoadFile("tiny.kiln", dsl.Options{Batch: batch, FS: archs.FS})
	if err != nil {
		t.Fatal(err)
	}
	params, err := g.GeneratedParams()
	if err != nil {
		t.Fatal(err)
	}
	return g, params
}

var onnxOp = map[string]string{
	ir.OpConv2D: "Conv", ir.OpBatchNorm: "BatchNormalization", ir.OpReLU: "Relu", ir.OpAdd: "Add",
	ir.OpMul: "Mul", ir.OpConcat: "Concat", ir.OpMaxPool: "MaxPool", ir.OpAvgPool: "AveragePool",
	ir.OpGlobalAvgPool: "GlobalAveragePool", ir.OpFlatten: "Flatten", ir.OpDense: "Gemm", ir.OpSoftmax: "Softmax",
}

// TestTinyModel decodes the exported tiny network and checks the model
// header, the node list against the IR, every initializer's name and bytes,
// and the input and output declarations.
func TestTinyModel(t *testing.T) {
	g, params := loadTiny(t, 3)
	b, err := Encode(g, params, Options{ProducerVersion: "test"})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Write(&buf, g, params, Options{ProducerVersion: "test"}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), b) {
		t.Fatal("Write and Encode differ")
	}
	model := decode(t, b)
	if model.varint(modelIRVersion) != IRVersion || model.str(modelProducerName) != "kiln" || model.str(modelProducerVers) != "test" {
		t.Fatalf("model header: ir_version %d producer %q %q", model.varint(modelIRVersion), model.str(modelProducerName), model.str(modelProducerVers))
	}
	ops := model.msgs(t, modelOpsetImport)
	if len(ops) != 1 || ops[0].str(opsetIDDomain) != "" || ops[0].varint(opsetIDVersion) != Opset {
		t.Fatalf("opset_import %v", ops)
	}
	graphs := model.msgs(t, modelGraph)
	if len(graphs) != 1 {
		t.Fatalf("%d graphs", len(graphs))
	}
	gr := graphs[0]
	if gr.str(graphName) != "tiny" {
		t.Fatalf("graph name %q", gr.str(graphName))
	}

	// Nodes: one per IR op except input, param and dropout, in order.
	var wantOps []string
	counts := map[string]int{}
	for _, n := range g.Nodes {
		counts[n.Op]++
		if op, ok := onnxOp[n.Op]; ok {
			wantOps = append(wantOps, op)
		}
	}
	if counts[ir.OpMul] == 0 || counts[ir.OpAvgPool] == 0 || counts[ir.OpConcat] == 0 {
		t.Fatalf("tiny no longer covers mul, avgpool and concat: %v", counts)
	}
	nodes := gr.msgs(t, graphNode)
	var gotOps []string
	produced := map[string]bool{}
	for _, n := range nodes {
		gotOps = append(gotOps, n.str(nodeOpType))
		for _, o := range n.strs(nodeOutput) {
			produced[o] = true
		}
	}
	if d := cmp.Diff(wantOps, gotOps); d != "" {
		t.Fatalf("node op types (-want +got):\n%s", d)
	}

	// Initializers: every param under its checkpoint key with its bytes, then
	// one scalar per mul.
	inits := gr.msgs(t, graphInitializer)
	byName := map[string]message{}
	for _, in := range inits {
		byName[in.str(tensorName)] = in
	}
	for _, p := range g.Params() {
		in, ok := byName[p.Name]
		if !ok {
			t.Fatalf("no initializer %q", p.Name)
		}
		if !cmp.Equal(in.ints(tensorDims), p.Type.Shape) || in.varint(tensorDataType) != dataTypeFloat {
			t.Fatalf("initializer %s: dims %v type %d, want %v float", p.Name, in.ints(tensorDims), in.varint(tensorDataType), p.Type.Shape)
		}
		raw := in[tensorRawData][0].([]byte)
		w := params[p.Name].Data
		if len(raw) != 4*len(w) {
			t.Fatalf("initializer %s: %d bytes", p.Name, len(raw))
		}
		for i, v := range w {
			if got := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])); got != v {
				t.Fatalf("initializer %s[%d] = %v, want %v", p.Name, i, got, v)
			}
		}
	}
	if len(inits) != len(g.Params())+counts[ir.OpMul] {
		t.Fatalf("%d initializers, want %d params + %d mul constants", len(inits), len(g.Params()), counts[ir.OpMul])
	}

	// Every node input is the graph input, an initializer or an earlier output.
	seen := map[string]bool{"image": true}
	for name := range byName {
		seen[name] = true
	}
	for _, n := range nodes {
		for _, in := range n.strs(nodeInput) {
			if !seen[in] {
				t.Fatalf("node %s reads %q before it is defined", n.str(nodeName), in)
			}
		}
		for _, o := range n.strs(nodeOutput) {
			seen[o] = true
		}
	}

	ins, outs := gr.msgs(t, graphInput), gr.msgs(t, graphOutput)
	if len(ins) != 1 || len(outs) != 1 {
		t.Fatalf("%d inputs, %d outputs", len(ins), len(outs))
	}
	if name, shape := valueShape(t, ins[0]); name != "image" || !cmp.Equal(shape, []int{3, 3, 32, 32}) {
		t.Fatalf("input %s %v", name, shape)
	}
	if name, shape := valueShape(t, outs[0]); name != OutputName || !cmp.Equal(shape, []int{3, 10}) || !produced[OutputName] {
		t.Fatalf("output %s %v (produced: %v)", name, shape, produced[OutputName])
	}
}

// TestAttributes checks the attributes written for each kind of node of tiny.
func TestAttributes(t *testing.T) {
	g, params := loadTiny(t, 1)
	b, err := Encode(g, params, Options{})
	if err != nil {
		t.Fatal(err)
	}
	gr := decode(t, b).msgs(t, modelGraph)[0]
	attrs := func(n message) map[string]any {
		out := map[string]any{}
		for _, a := range n.msgs(t, nodeAttribute) {
			switch a.varint(attrType) {
			case attrTypeInt:
				out[a.str(attrName)] = int(int64(a.varint(attrI)))
			case attrTypeInts:
				out[a.str(attrName)] = a.ints(attrInts)
			case attrTypeFloat:
				out[a.str(attrName)] = math.Float32frombits(a[attrF][0].(uint32))
			default:
				t.Fatalf("attribute %s: type %d", a.str(attrName), a.varint(attrType))
			}
		}
		return out
	}
	want := map[string]map[string]any{
		// stem.0.conv: 3x3 stride 2, no padding.
		"stem.0.conv/conv2d_2":  {"kernel_shape": []int{3, 3}, "strides": []int{2, 2}, "pads": []int{0, 0, 0, 0}, "dilations": []int{1, 1}, "group": 1},
		"stem.0.bn/batchnorm_7": {"epsilon": float32(0.001)},
		"stem.2/maxpool_17":     {"kernel_shape": []int{3, 3}, "strides": []int{2, 2}, "pads": []int{0, 0, 0, 0}},
		OutputName:              {"axis": 1},
	}
	found := map[string]bool{}
	for _, n := range gr.msgs(t, graphNode) {
		name := n.str(nodeName)
		a := attrs(n)
		switch n.str(nodeOpType) {
		case "AveragePool":
			if a["count_include_pad"] == nil || len(a["kernel_shape"].([]int)) != 2 {
				t.Fatalf("AveragePool %s attributes %v", name, a)
			}
			found["AveragePool"] = true
		case "Gemm":
			if a["transB"] != 1 {
				t.Fatalf("Gemm %s attributes %v", name, a)
			}
			found["Gemm"] = true
		case "Concat":
			if a["axis"] != 1 {
				t.Fatalf("Concat %s attributes %v", name, a)
			}
		case "Mul":
			in := n.strs(nodeInput)
			if len(in) != 2 || in[1] != name+"/c" {
				t.Fatalf("Mul %s inputs %v", name, in)
			}
			found["Mul"] = true
		}
		if w, ok := want[name]; ok {
			if d := cmp.Diff(w, a); d != "" {
				t.Errorf("node %s attributes (-want +got):\n%s", name, d)
			}
			found[name] = true
		}
	}
	for k := range want {
		if !found[k] {
			t.Errorf("no node %s", k)
		}
	}
	for _, k := range []string{"AveragePool", "Gemm", "Mul"} {
		if !found[k] {
			t.Errorf("no %s node", k)
		}
	}
}

// TestErrors covers what the exporter refuses: ops of the optimized graph,
// missing or mis-shaped weights, and that WriteFile leaves the file alone.
func TestErrors(t *testing.T) {
	g, params := loadTiny(t, 1)
	tgt, err := passes.LookupTarget("avx512")
	if err != nil {
		t.Fatal(err)
	}
	og, _ := loadTiny(t, 1)
	st, err := passes.Run(og, passes.Options{Target: tgt, Disabled: map[string]bool{}, PrintAfter: map[string]bool{}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Encode(st.Graph, params, Options{})
	if err == nil || !strings.Contains(err.Error(), "node %") || !strings.Contains(err.Error(), "before Kiln's passes") {
		t.Fatalf("optimized graph: got %v, want an error naming the node", err)
	}
	t.Logf("optimized graph: %v", err)

	missing := map[string]*tensor.Tensor{}
	for k, v := range params {
		missing[k] = v
	}
	delete(missing, "stem.1.bn.running_var")
	if _, err := Encode(g, missing, Options{}); err == nil || !strings.Contains(err.Error(), `no weight "stem.1.bn.running_var"`) {
		t.Fatalf("missing weight: %v", err)
	}
	missing["stem.1.bn.running_var"] = tensor.New(3)
	if _, err := Encode(g, missing, Options{}); err == nil || !strings.Contains(err.Error(), "has shape 3, the network declares 16") {
		t.Fatalf("mis-shaped weight: %v", err)
	}

	path := filepath.Join(t.TempDir(), "m.onnx")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(path, g, missing, Options{}); err == nil {
		t.Fatal("WriteFile with a bad weight succeeded")
	}
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Fatalf("file changed after a failed export: %q", b)
	}
	if err := WriteFile(path, g, params, Options{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); len(b) < 1000 {
		t.Fatalf("exported file has %d bytes", len(b))
	}
}

// TestIdentityOutputs covers outputs that are not a node's own result: a
// dropout (omitted, so its operand is copied with Identity) and a value
// returned twice.
func TestIdentityOutputs(t *testing.T) {
	g := &ir.Graph{Name: "n"}
	x := g.MustAdd(&ir.Node{Op: ir.OpInput, Name: "x", Type: ir.Type{DType: ir.F32, Shape: []int{2, 4}}})
	r := g.MustAdd(&ir.Node{Op: ir.OpReLU, Name: "r", Args: []int{x}})
	d := g.MustAdd(&ir.Node{Op: ir.OpDropout, Name: "d", Args: []int{r}, Attrs: ir.Attrs{"p": 0.5}})
	s := g.MustAdd(&ir.Node{Op: ir.OpSoftmax, Name: "s", Args: []int{d}})
	g.Outputs = []int{d, s, s}
	b, err := Encode(g, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	gr := decode(t, b).msgs(t, modelGraph)[0]
	var got []string
	for _, n := range gr.msgs(t, graphNode) {
		got = append(got, n.str(nodeOpType)+"("+strings.Join(n.strs(nodeInput), ",")+")->"+strings.Join(n.strs(nodeOutput), ","))
	}
	want := []string{
		"Relu(x)->r/relu_1",
		"Softmax(r/relu_1)->output_1",
		"Identity(r/relu_1)->output_0",
		"Identity(output_1)->output_2",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("nodes (-want +got):\n%s", d)
	}
	var outs []string
	for _, o := range gr.msgs(t, graphOutput) {
		name, _ := valueShape(t, o)
		outs = append(outs, name)
	}
	if d := cmp.Diff([]string{"output_0", "output_1", "output_2"}, outs); d != "" {
		t.Fatalf("outputs (-want +got):\n%s", d)
	}
}
