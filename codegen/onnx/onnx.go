// Package onnx exports a Kiln network as a standard ONNX model, so that other
// runtimes (ONNX Runtime, in bench/peers) can run exactly the network Kiln
// compiles, with the same weights; and imports ONNX models as .kiln networks
// (ReadModel, Import; see import.go).
//
// # What is exported
//
// The graph is the network as written: the elaborated IR that dsl.LoadFile
// returns, before any of Kiln's passes (no fused ops, no blocked layouts).
// Each IR op maps to one standard ONNX operator of the default domain at
// opset [Opset]:
//
//	conv2d          Conv (kernel_shape, strides, pads, group, dilations 1)
//	batchnorm       BatchNormalization (epsilon)
//	relu            Relu
//	add             Add
//	mul (by c)      Mul, with c as a scalar float initializer
//	concat          Concat (axis)
//	maxpool         MaxPool (kernel_shape, strides, pads)
//	avgpool         AveragePool (kernel_shape, strides, pads, count_include_pad)
//	global_avgpool  GlobalAveragePool
//	flatten         Flatten (axis 1)
//	dense           Gemm (transB 1)
//	dropout         omitted (identity at inference)
//	softmax         Softmax (axis; single-axis semantics since opset 13)
//	sigmoid, tanh, sub, global_maxpool, channel_mul, clip, silu, hardswish
//	                see export_ext.go (silu and hardswish as two nodes)
//
// Any other op (for example the fused ops that Kiln's passes introduce) is an
// error naming the node. Parameters become initializers named by their
// checkpoint keys (the param node names), holding float32 raw_data. The graph
// input keeps the network input's name; the output is named "output" (with
// several outputs, output_0, output_1, ...); an output that is not a node's
// own result (a dropout, an input, a value returned twice) is copied with
// Identity. All shapes are fixed: the batch size is the one the graph was
// elaborated for. Each node's source position is its doc_string.
//
// # Encoding
//
// The model is written with google.golang.org/protobuf/encoding/protowire,
// the low-level wire-format encoder of the maintained Go protobuf module (the
// one its generated code is built on), against the message and field numbers
// of onnx.proto. We chose it over generated types because the export writes
// only eleven small message types; generating onnx.pb.go would add protoc and
// protoc-gen-go to the build, or thousands of lines of checked-in generated
// code to keep in step with the schema, and proto.Marshal of a message tree
// would hold every weight twice (the tree, then the marshalled buffer) for
// models of several hundred MiB, while the wire encoder appends the weights'
// bytes straight into the one output buffer. The field numbers below are those
// of onnx/onnx.proto in ONNX 1.8.0, the release that introduced opset 13 and
// IR version 7 (IR_VERSION_2020_5_8). ONNX only ever appends fields, so they
// are unchanged in every later release; each constant cites its proto field.
package onnx

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"google.golang.org/protobuf/encoding/protowire"
)

// Opset is the version of the default ("ai.onnx") operator set the model
// imports. Every operator above binds to its newest definition at or below
// it: Conv-11, BatchNormalization-9, Relu-13, Add-13, Mul-13, Concat-13,
// MaxPool-12, AveragePool-11, GlobalAveragePool-1, Flatten-13, Gemm-13,
// Softmax-13.
const Opset = 13

// IRVersion is the ONNX IR version written (onnx.proto enum Version:
// IR_VERSION_2020_5_8 = 0x7, ONNX 1.8), the first that supports opset 13.
const IRVersion = 7

// Field numbers of onnx.proto (ONNX 1.8.0, syntax proto2, package onnx).
const (
	modelIRVersion     = 1  // ModelProto: optional int64 ir_version = 1;
	modelProducerName  = 2  // ModelProto: optional string producer_name = 2;
	modelProducerVers  = 3  // ModelProto: optional string producer_version = 3;
	modelDocString     = 6  // ModelProto: optional string doc_string = 6;
	modelGraph         = 7  // ModelProto: optional GraphProto graph = 7;
	modelOpsetImport   = 8  // ModelProto: repeated OperatorSetIdProto opset_import = 8;
	opsetIDDomain      = 1  // OperatorSetIdProto: optional string domain = 1;
	opsetIDVersion     = 2  // OperatorSetIdProto: optional int64 version = 2;
	graphNode          = 1  // GraphProto: repeated NodeProto node = 1;
	graphName          = 2  // GraphProto: optional string name = 2;
	graphInitializer   = 5  // GraphProto: repeated TensorProto initializer = 5;
	graphDocString     = 10 // GraphProto: optional string doc_string = 10;
	graphInput         = 11 // GraphProto: repeated ValueInfoProto input = 11;
	graphOutput        = 12 // GraphProto: repeated ValueInfoProto output = 12;
	nodeInput          = 1  // NodeProto: repeated string input = 1;
	nodeOutput         = 2  // NodeProto: repeated string output = 2;
	nodeName           = 3  // NodeProto: optional string name = 3;
	nodeOpType         = 4  // NodeProto: optional string op_type = 4;
	nodeAttribute      = 5  // NodeProto: repeated AttributeProto attribute = 5;
	nodeDocString      = 6  // NodeProto: optional string doc_string = 6;
	attrName           = 1  // AttributeProto: optional string name = 1;
	attrF              = 2  // AttributeProto: optional float f = 2;
	attrI              = 3  // AttributeProto: optional int64 i = 3;
	attrInts           = 8  // AttributeProto: repeated int64 ints = 8;
	attrType           = 20 // AttributeProto: optional AttributeType type = 20;
	valueInfoName      = 1  // ValueInfoProto: optional string name = 1;
	valueInfoType      = 2  // ValueInfoProto: optional TypeProto type = 2;
	typeTensorType     = 1  // TypeProto: Tensor tensor_type = 1; (oneof value)
	typeTensorElemType = 1  // TypeProto.Tensor: optional int32 elem_type = 1;
	typeTensorShape    = 2  // TypeProto.Tensor: optional TensorShapeProto shape = 2;
	shapeDim           = 1  // TensorShapeProto: repeated Dimension dim = 1;
	dimValue           = 1  // TensorShapeProto.Dimension: int64 dim_value = 1; (oneof value)
	tensorDims         = 1  // TensorProto: repeated int64 dims = 1;
	tensorDataType     = 2  // TensorProto: optional int32 data_type = 2;
	tensorName         = 8  // TensorProto: optional string name = 8;
	tensorRawData      = 9  // TensorProto: optional bytes raw_data = 9;
)

// Enum values of onnx.proto.
const (
	attrTypeFloat = 1 // AttributeProto.AttributeType FLOAT = 1
	attrTypeInt   = 2 // AttributeProto.AttributeType INT = 2
	attrTypeInts  = 7 // AttributeProto.AttributeType INTS = 7
	dataTypeFloat = 1 // TensorProto.DataType FLOAT = 1 (float32)
)

// OutputName is the name of the graph output (of the first output, when a
// graph has several: output_0, output_1, ...).
const OutputName = "output"

// Options configure an export.
type Options struct {
	// ProducerVersion is written as ModelProto.producer_version (the
	// producer_name is "kiln").
	ProducerVersion string
	// DocString is written as ModelProto.doc_string (optional).
	DocString string
}

// Encode returns the ONNX model of g (see the package documentation) with the
// weights in params, keyed by checkpoint name. Every param of g must be in
// params with its declared shape.
func Encode(g *ir.Graph, params map[string]*tensor.Tensor, opts Options) ([]byte, error) {
	head, graph, err := encode(g, params, opts)
	if err != nil {
		return nil, err
	}
	return append(head, graph...), nil
}

// Write writes the ONNX model of g to w; see Encode.
func Write(w io.Writer, g *ir.Graph, params map[string]*tensor.Tensor, opts Options) error {
	head, graph, err := encode(g, params, opts)
	if err != nil {
		return err
	}
	if _, err := w.Write(head); err != nil {
		return err
	}
	_, err = w.Write(graph)
	return err
}

// WriteFile writes the ONNX model of g to path atomically (tensor.WriteFileAtomic):
// on any error the file is left as it was. The model is built in memory
// first, so an unsupported op or a missing weight never touches the file.
func WriteFile(path string, g *ir.Graph, params map[string]*tensor.Tensor, opts Options) error {
	head, graph, err := encode(g, params, opts)
	if err != nil {
		return err
	}
	return tensor.WriteFileAtomic(path, func(w io.Writer) error {
		if _, err := w.Write(head); err != nil {
			return err
		}
		_, err := w.Write(graph)
		return err
	})
}

// encode returns the ModelProto as two pieces, everything up to and including
// the key and length of the graph field, and the GraphProto itself, so that the
// graph (which holds every weight) is not copied once more.
func encode(g *ir.Graph, params map[string]*tensor.Tensor, opts Options) (head, graph []byte, err error) {
	graph, err = encodeGraph(g, params)
	if err != nil {
		return nil, nil, err
	}
	var m []byte
	m = appendVarintField(m, modelIRVersion, IRVersion)
	m = appendStringField(m, modelProducerName, "kiln")
	if opts.ProducerVersion != "" {
		m = appendStringField(m, modelProducerVers, opts.ProducerVersion)
	}
	if opts.DocString != "" {
		m = appendStringField(m, modelDocString, opts.DocString)
	}
	var opset []byte
	opset = appendStringField(opset, opsetIDDomain, "")
	opset = appendVarintField(opset, opsetIDVersion, Opset)
	m = appendBytesField(m, modelOpsetImport, opset)
	m = protowire.AppendTag(m, modelGraph, protowire.BytesType)
	m = protowire.AppendVarint(m, uint64(len(graph)))
	return m, graph, nil
}

// exporter holds the state of one graph conversion.
type exporter struct {
	g      *ir.Graph
	params map[string]*tensor.Tensor
	// names[i] is the ONNX value that holds the result of node i.
	names []string
	// used records every value and initializer name, to keep them distinct.
	used  map[string]int
	nodes [][]byte // encoded NodeProtos
	// inits holds the GraphProto.initializer fields of the constants the
	// export adds (the scalars of Mul), already tagged.
	inits []byte
}

func encodeGraph(g *ir.Graph, params map[string]*tensor.Tensor) ([]byte, error) {
	if err := g.Verify(); err != nil {
		return nil, fmt.Errorf("onnx: invalid graph %s: %w", g.Name, err)
	}
	x := &exporter{g: g, params: params, names: make([]string, len(g.Nodes)), used: map[string]int{}}
	// Output values are named after the outputs; other computed values after
	// their node. Outputs that are not a node's own result (an input, a
	// param, a dropout, a value returned twice) are copied with Identity.
	outName := make(map[int]string)
	for k, o := range g.Outputs {
		name := OutputName
		if len(g.Outputs) > 1 {
			name = fmt.Sprintf("%s_%d", OutputName, k)
		}
		n := g.Nodes[o]
		if _, dup := outName[o]; !dup && n.Op != ir.OpInput && n.Op != ir.OpParam && n.Op != ir.OpDropout {
			outName[o] = name
		}
	}
	var initBytes int
	for i, n := range g.Nodes {
		if !n.Type.Layout.IsPlain() {
			return nil, x.errorf(i, "value has the physical layout %s; export the graph before Kiln's passes", n.Type.Layout)
		}
		if n.Type.DType != ir.F32 {
			return nil, x.errorf(i, "element type %s is not supported (f32 only)", n.Type.DType)
		}
		switch n.Op {
		case ir.OpInput:
			if err := x.claim(i, n.Name); err != nil {
				return nil, err
			}
			x.names[i] = n.Name
			continue
		case ir.OpParam:
			if err := x.claim(i, n.Name); err != nil {
				return nil, err
			}
			x.names[i] = n.Name
			t, ok := params[n.Name]
			if !ok || t == nil {
				return nil, x.errorf(i, "no weight %q", n.Name)
			}
			if !ir.ShapeEqual(t.Shape, n.Type.Shape) || len(t.Data) != n.Type.Numel() {
				return nil, x.errorf(i, "weight %q has shape %s, the network declares %s", n.Name, tensor.ShapeString(t.Shape), ir.ShapeString(n.Type.Shape))
			}
			initBytes += 4*len(t.Data) + len(n.Name) + 32
			continue
		case ir.OpDropout:
			x.names[i] = x.names[n.Args[0]]
			continue
		}
		name, ok := outName[i]
		if !ok {
			name = valueName(i, n)
		}
		if err := x.claim(i, name); err != nil {
			return nil, err
		}
		x.names[i] = name
		if err := x.convert(i, n); err != nil {
			return nil, err
		}
	}
	var outs [][]byte
	seen := map[int]bool{}
	for k, o := range g.Outputs {
		name := OutputName
		if len(g.Outputs) > 1 {
			name = fmt.Sprintf("%s_%d", OutputName, k)
		}
		if outName[o] != name || seen[o] {
			if err := x.claim(o, name); err != nil {
				return nil, err
			}
			x.addNode("Identity", name+"/identity", g.Nodes[o].Pos, []string{x.names[o]}, name, nil)
		}
		seen[o] = true
		outs = append(outs, valueInfo(name, g.Nodes[o].Type.Shape))
	}

	// Assemble the GraphProto: nodes, name, initializers, inputs, outputs.
	size := initBytes + 1024
	for _, b := range x.nodes {
		size += len(b) + 8
	}
	gb := make([]byte, 0, size)
	for _, b := range x.nodes {
		gb = appendBytesField(gb, graphNode, b)
	}
	gb = appendStringField(gb, graphName, g.Name)
	for _, n := range g.Params() {
		gb = appendInitializer(gb, n.Name, n.Type.Shape, params[n.Name].Data)
	}
	gb = append(gb, x.inits...)
	gb = appendStringField(gb, graphDocString, "exported by kiln from network "+g.Name+" as written (before Kiln's passes)")
	for _, n := range g.Inputs() {
		gb = appendBytesField(gb, graphInput, valueInfo(n.Name, n.Type.Shape))
	}
	for _, b := range outs {
		gb = appendBytesField(gb, graphOutput, b)
	}
	return gb, nil
}

// valueName names the result of node i: its scope path, op and index
// (stem.0.conv/conv2d_2). The "/" keeps these apart from checkpoint keys and
// input names, which never contain one.
func valueName(i int, n *ir.Node) string {
	if n.Name == "" {
		return fmt.Sprintf("%s_%d", n.Op, i)
	}
	return fmt.Sprintf("%s/%s_%d", n.Name, n.Op, i)
}

// claim records name as the ONNX name of a value made for node i.
func (x *exporter) claim(i int, name string) error {
	if name == "" {
		return x.errorf(i, "empty name")
	}
	if j, dup := x.used[name]; dup {
		return x.errorf(i, "ONNX name %q is also used by %%%d", name, j)
	}
	x.used[name] = i
	return nil
}

func (x *exporter) errorf(i int, format string, args ...any) error {
	n := x.g.Nodes[i]
	what := fmt.Sprintf("%%%d %s", i, n.Op)
	if n.Name != "" {
		what += fmt.Sprintf(" %q", n.Name)
	}
	return ir.Errorf(n.Pos, "onnx export of %s: node %s: %s", x.g.Name, what, fmt.Sprintf(format, args...))
}

// convert appends the ONNX node(s) computing node i.
func (x *exporter) convert(i int, n *ir.Node) error {
	in := make([]string, len(n.Args))
	for k, a := range n.Args {
		in[k] = x.names[a]
	}
	out := x.names[i]
	var attrs [][]byte
	window := func(kernel []int) {
		s, p := n.Attrs.Ints("stride"), n.Attrs.Ints("pad")
		attrs = append(attrs,
			intsAttr("kernel_shape", kernel...),
			intsAttr("strides", s...),
			intsAttr("pads", p[0], p[1], p[0], p[1]))
	}
	var op string
	switch n.Op {
	case ir.OpConv2D:
		op = "Conv"
		w := x.g.Nodes[n.Args[1]].Type.Shape
		window(w[2:4])
		attrs = append(attrs, intsAttr("dilations", n.Attrs.Ints("dilation")...), intAttr("group", n.Attrs.Int("groups")))
	case ir.OpBatchNorm:
		op = "BatchNormalization"
		attrs = append(attrs, floatAttr("epsilon", float32(n.Attrs.Float("eps"))))
	case ir.OpReLU:
		op = "Relu"
	case ir.OpAdd:
		op = "Add"
	case ir.OpMul:
		op = "Mul"
		c := out + "/c"
		if err := x.claim(i, c); err != nil {
			return err
		}
		x.inits = appendInitializer(x.inits, c, nil, []float32{float32(n.Attrs.Float("c"))})
		in = append(in, c)
	case ir.OpConcat:
		op = "Concat"
		attrs = append(attrs, intAttr("axis", n.Attrs.Int("axis")))
	case ir.OpMaxPool:
		op = "MaxPool"
		window(n.Attrs.Ints("kernel"))
	case ir.OpAvgPool:
		op = "AveragePool"
		window(n.Attrs.Ints("kernel"))
		cip := 0
		if n.Attrs.Bool("count_include_pad") {
			cip = 1
		}
		attrs = append(attrs, intAttr("count_include_pad", cip))
	case ir.OpGlobalAvgPool:
		op = "GlobalAveragePool"
	case ir.OpFlatten:
		op = "Flatten"
		attrs = append(attrs, intAttr("axis", 1))
	case ir.OpDense:
		op = "Gemm"
		attrs = append(attrs, intAttr("transB", 1))
	case ir.OpSoftmax:
		op = "Softmax"
		attrs = append(attrs, intAttr("axis", n.Attrs.Int("axis")))
	default:
		// The activations and squeeze-and-excitation ops (export_ext.go).
		var ok bool
		var err error
		if op, in, attrs, ok, err = x.convertExt(i, n, in, out); err != nil {
			return err
		} else if ok {
			break
		}
		return x.errorf(i, "op %s has no ONNX equivalent in this exporter (supported: the ops of the network as written; export before Kiln's passes)", n.Op)
	}
	x.addNode(op, out, n.Pos, in, out, attrs)
	return nil
}

// addNode appends a NodeProto; the node's source position becomes its
// doc_string.
func (x *exporter) addNode(op, name string, pos ir.Pos, in []string, out string, attrs [][]byte) {
	var b []byte
	for _, s := range in {
		b = appendStringField(b, nodeInput, s)
	}
	b = appendStringField(b, nodeOutput, out)
	b = appendStringField(b, nodeName, name)
	b = appendStringField(b, nodeOpType, op)
	for _, a := range attrs {
		b = appendBytesField(b, nodeAttribute, a)
	}
	if pos.IsValid() {
		b = appendStringField(b, nodeDocString, pos.String())
	}
	x.nodes = append(x.nodes, b)
}

// valueInfo encodes a ValueInfoProto of a float tensor with a fixed shape.
func valueInfo(name string, shape []int) []byte {
	var sh []byte
	for _, d := range shape {
		sh = appendBytesField(sh, shapeDim, appendVarintField(nil, dimValue, uint64(d)))
	}
	var tt []byte
	tt = appendVarintField(tt, typeTensorElemType, dataTypeFloat)
	tt = appendBytesField(tt, typeTensorShape, sh)
	var b []byte
	b = appendStringField(b, valueInfoName, name)
	b = appendBytesField(b, valueInfoType, appendBytesField(nil, typeTensorType, tt))
	return b
}

// appendInitializer appends a GraphProto.initializer field: a float
// TensorProto with dims, name and little-endian raw_data.
func appendInitializer(b []byte, name string, shape []int, data []float32) []byte {
	var hdr []byte
	for _, d := range shape {
		hdr = appendVarintField(hdr, tensorDims, uint64(d))
	}
	hdr = appendVarintField(hdr, tensorDataType, dataTypeFloat)
	hdr = appendStringField(hdr, tensorName, name)
	raw := 4 * len(data)
	hdr = protowire.AppendTag(hdr, tensorRawData, protowire.BytesType)
	hdr = protowire.AppendVarint(hdr, uint64(raw))
	b = protowire.AppendTag(b, graphInitializer, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(len(hdr)+raw))
	b = append(b, hdr...)
	for _, v := range data {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

func intAttr(name string, v int) []byte {
	var b []byte
	b = appendStringField(b, attrName, name)
	b = appendVarintField(b, attrType, attrTypeInt)
	b = appendVarintField(b, attrI, uint64(int64(v)))
	return b
}

// intsAttr encodes an INTS attribute. The repeated int64 field is written
// unpacked, the proto2 default that onnx.proto declares (parsers accept both).
func intsAttr(name string, vs ...int) []byte {
	var b []byte
	b = appendStringField(b, attrName, name)
	b = appendVarintField(b, attrType, attrTypeInts)
	for _, v := range vs {
		b = appendVarintField(b, attrInts, uint64(int64(v)))
	}
	return b
}

func floatAttr(name string, v float32) []byte {
	var b []byte
	b = appendStringField(b, attrName, name)
	b = appendVarintField(b, attrType, attrTypeFloat)
	b = protowire.AppendTag(b, attrF, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, math.Float32bits(v))
	return b
}

func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendStringField(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}
