package onnx

import (
	"encoding/binary"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// This file reads an ONNX ModelProto from its protobuf wire encoding with
// protowire, the same low-level package the exporter writes with (see the
// package documentation for why there is no generated code). The reader
// decodes only what the importer needs: the model's IR version, producer and
// opset imports; the main graph's nodes (with their attributes), initializers,
// inputs and outputs. Everything else is skipped by wire type, as protobuf
// parsers skip unknown fields.
//
// The input is untrusted. The reader
//   - never recurses beyond the fixed message nesting it decodes (Model →
//     Graph → Node → Attribute → Tensor, and ValueInfo → Type → Tensor type →
//     Shape → Dimension): attributes holding subgraphs (If, Loop, Scan) are
//     recorded by type and not parsed, so a deeply nested file costs nothing;
//   - refuses the group wire types (never used by onnx.proto), and fields
//     whose wire type differs from the schema's;
//   - bounds counts (Limits) and tensor sizes, checking the element count
//     against the data without overflow;
//   - keeps tensor data as sub-slices of the input (no copy);
//   - names the failing field in every error, as a path from the model with
//     indices (graph.node[12].attribute[3].ints) and the byte offset.

// Field numbers of onnx.proto read by the importer, beyond those the exporter
// writes (onnx.go). Every number is that of onnx/onnx.proto (ONNX 1.8.0 and
// later; fields are only ever appended).
const (
	nodeDomain         = 7  // NodeProto: optional string domain = 7;
	attrS              = 4  // AttributeProto: optional bytes s = 4;
	attrT              = 5  // AttributeProto: optional TensorProto t = 5;
	attrFloats         = 7  // AttributeProto: repeated float floats = 7;
	tensorFloatData    = 4  // TensorProto: repeated float float_data = 4 [packed = true];
	tensorInt32Data    = 5  // TensorProto: repeated int32 int32_data = 5 [packed = true];
	tensorInt64Data    = 7  // TensorProto: repeated int64 int64_data = 7 [packed = true];
	tensorDoubleData   = 10 // TensorProto: repeated double double_data = 10 [packed = true];
	tensorDataLocation = 14 // TensorProto: optional DataLocation data_location = 14;
	dimParam           = 2  // TensorShapeProto.Dimension: string dim_param = 2; (oneof value)
)

// ONNX enum values the importer reads (onnx.proto).
const (
	attrTypeString  = 3 // AttributeType STRING
	attrTypeTensor  = 4 // AttributeType TENSOR
	attrTypeFloats  = 6 // AttributeType FLOATS
	dataTypeInt32   = 6 // TensorProto.DataType INT32
	dataTypeInt64   = 7 // TensorProto.DataType INT64
	dataTypeDouble  = 11
	dataLocExternal = 1 // TensorProto.DataLocation EXTERNAL
)

// Limits bound what ReadModel accepts.
type Limits struct {
	MaxNodes        int // nodes in the graph (default 1<<20)
	MaxInitializers int // initializers (default 1<<20)
	MaxAttributes   int // attributes per node (default 1024)
	MaxValues       int // inputs or outputs per node, graph inputs and outputs (default 1<<16)
	MaxDims         int // dimensions of a tensor or shape (default 16)
}

func (l Limits) withDefaults() Limits {
	if l.MaxNodes <= 0 {
		l.MaxNodes = 1 << 20
	}
	if l.MaxInitializers <= 0 {
		l.MaxInitializers = 1 << 20
	}
	if l.MaxAttributes <= 0 {
		l.MaxAttributes = 1024
	}
	if l.MaxValues <= 0 {
		l.MaxValues = 1 << 16
	}
	if l.MaxDims <= 0 {
		l.MaxDims = 16
	}
	return l
}

// Model is the part of an ONNX ModelProto the importer uses.
type Model struct {
	IRVersion       int64
	ProducerName    string
	ProducerVersion string
	// Opsets maps each imported operator-set domain ("" is the default
	// ai.onnx domain) to its version.
	Opsets map[string]int64
	Graph  Graph
}

// Graph is a GraphProto: nodes in file order, initializers, inputs, outputs.
type Graph struct {
	Name         string
	Nodes        []*Node
	Initializers []*TensorProto
	Inputs       []*ValueInfo
	Outputs      []*ValueInfo
}

// Node is a NodeProto. Index is its position in Graph.Nodes.
type Node struct {
	Index           int
	Name, OpType    string
	Domain          string
	Inputs, Outputs []string
	Attrs           []*Attribute
}

// Attribute is an AttributeProto. Graph-valued attributes (Type GRAPH or
// GRAPHS) are recorded by type only.
type Attribute struct {
	Name   string
	Type   int64
	F      float32
	I      int64
	S      []byte
	T      *TensorProto
	Floats []float32
	Ints   []int64
	// Kinds records which value fields were present, for a model that omits
	// the type field (IR version < 3 allowed that).
	hasF, hasI, hasS bool
}

// TensorProto is a tensor: an initializer or a Constant's value. Data stays
// in the wire form it arrived in (raw_data or a typed repeated field).
type TensorProto struct {
	Name     string
	Dims     []int64
	DataType int64
	Raw      []byte
	Floats   []float32
	Int64s   []int64
	Int32s   []int64
	Doubles  []float64
	External bool
	path     string // where it was read, for messages
}

// ValueInfo is a ValueInfoProto of a tensor: name, element type and shape
// (HasShape false when the shape is absent).
type ValueInfo struct {
	Name     string
	ElemType int64
	HasShape bool
	Dims     []Dim
}

// Dim is one dimension: a value, or a symbolic parameter (Param != ""), or
// neither (unknown).
type Dim struct {
	Value int64
	Param string
}

// reader decodes one model; buf is the whole input, so that errors can give
// absolute byte offsets.
type reader struct {
	buf []byte
	lim Limits
}

// ReadModel decodes an ONNX model (a serialized ModelProto). name is used in
// messages (the file name). Errors name the field path and byte offset.
func ReadModel(data []byte, name string, lim Limits) (*Model, error) {
	r := &reader{buf: data, lim: lim.withDefaults()}
	m := &Model{Opsets: map[string]int64{}}
	err := r.fields(data, "model", func(f field) error {
		switch f.num {
		case modelIRVersion:
			v, err := f.varint()
			m.IRVersion = int64(v)
			return err
		case modelProducerName:
			s, err := f.bytes()
			m.ProducerName = string(s)
			return err
		case modelProducerVers:
			s, err := f.bytes()
			m.ProducerVersion = string(s)
			return err
		case modelOpsetImport:
			b, err := f.bytes()
			if err != nil {
				return err
			}
			var dom string
			var ver int64
			err = r.fields(b, f.path+".opset_import", func(g field) error {
				switch g.num {
				case opsetIDDomain:
					s, err := g.bytes()
					dom = string(s)
					return err
				case opsetIDVersion:
					v, err := g.varint()
					ver = int64(v)
					return err
				}
				return nil
			})
			if err != nil {
				return err
			}
			if dom == "ai.onnx" {
				dom = ""
			}
			if len(m.Opsets) >= 1024 {
				return f.errorf("more than 1024 opset imports")
			}
			m.Opsets[dom] = ver
			return nil
		case modelGraph:
			b, err := f.bytes()
			if err != nil {
				return err
			}
			return r.graph(b, "graph", &m.Graph)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return m, nil
}

func (r *reader) graph(b []byte, path string, g *Graph) error {
	return r.fields(b, path, func(f field) error {
		switch f.num {
		case graphName:
			s, err := f.bytes()
			g.Name = string(s)
			return err
		case graphNode:
			b, err := f.bytes()
			if err != nil {
				return err
			}
			if len(g.Nodes) >= r.lim.MaxNodes {
				return f.errorf("more than %d nodes", r.lim.MaxNodes)
			}
			n := &Node{Index: len(g.Nodes)}
			if err := r.node(b, fmt.Sprintf("%s.node[%d]", path, len(g.Nodes)), n); err != nil {
				return err
			}
			g.Nodes = append(g.Nodes, n)
		case graphInitializer:
			b, err := f.bytes()
			if err != nil {
				return err
			}
			if len(g.Initializers) >= r.lim.MaxInitializers {
				return f.errorf("more than %d initializers", r.lim.MaxInitializers)
			}
			t, err := r.tensor(b, fmt.Sprintf("%s.initializer[%d]", path, len(g.Initializers)))
			if err != nil {
				return err
			}
			g.Initializers = append(g.Initializers, t)
		case graphInput, graphOutput:
			b, err := f.bytes()
			if err != nil {
				return err
			}
			list, what := &g.Inputs, "input"
			if f.num == graphOutput {
				list, what = &g.Outputs, "output"
			}
			if len(*list) >= r.lim.MaxValues {
				return f.errorf("more than %d graph %ss", r.lim.MaxValues, what)
			}
			vi, err := r.valueInfo(b, fmt.Sprintf("%s.%s[%d]", path, what, len(*list)))
			if err != nil {
				return err
			}
			*list = append(*list, vi)
		}
		return nil
	})
}

func (r *reader) node(b []byte, path string, n *Node) error {
	return r.fields(b, path, func(f field) error {
		switch f.num {
		case nodeInput, nodeOutput:
			s, err := f.bytes()
			if err != nil {
				return err
			}
			list := &n.Inputs
			if f.num == nodeOutput {
				list = &n.Outputs
			}
			if len(*list) >= r.lim.MaxValues {
				return f.errorf("more than %d values", r.lim.MaxValues)
			}
			*list = append(*list, string(s))
		case nodeName:
			s, err := f.bytes()
			n.Name = string(s)
			return err
		case nodeOpType:
			s, err := f.bytes()
			n.OpType = string(s)
			return err
		case nodeDomain:
			s, err := f.bytes()
			n.Domain = string(s)
			return err
		case nodeAttribute:
			b, err := f.bytes()
			if err != nil {
				return err
			}
			if len(n.Attrs) >= r.lim.MaxAttributes {
				return f.errorf("more than %d attributes", r.lim.MaxAttributes)
			}
			a, err := r.attribute(b, fmt.Sprintf("%s.attribute[%d]", path, len(n.Attrs)))
			if err != nil {
				return err
			}
			n.Attrs = append(n.Attrs, a)
		}
		return nil
	})
}

func (r *reader) attribute(b []byte, path string) (*Attribute, error) {
	a := &Attribute{}
	err := r.fields(b, path, func(f field) error {
		switch f.num {
		case attrName:
			s, err := f.bytes()
			a.Name = string(s)
			return err
		case attrType:
			v, err := f.varint()
			a.Type = int64(v)
			return err
		case attrF:
			v, err := f.fixed32()
			a.F, a.hasF = math.Float32frombits(v), true
			return err
		case attrI:
			v, err := f.varint()
			a.I, a.hasI = int64(v), true
			return err
		case attrS:
			s, err := f.bytes()
			a.S, a.hasS = s, true
			return err
		case attrT:
			b, err := f.bytes()
			if err != nil {
				return err
			}
			a.T, err = r.tensor(b, f.path)
			return err
		case attrFloats:
			return f.floats(&a.Floats, r.lim.MaxValues)
		case attrInts:
			return f.varints(&a.Ints, r.lim.MaxValues)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if a.Type == 0 { // IR version < 3: infer the type from the field present
		switch {
		case a.T != nil:
			a.Type = attrTypeTensor
		case a.hasF:
			a.Type = attrTypeFloat
		case a.hasI:
			a.Type = attrTypeInt
		case a.hasS:
			a.Type = attrTypeString
		case len(a.Floats) > 0:
			a.Type = attrTypeFloats
		case len(a.Ints) > 0:
			a.Type = attrTypeInts
		}
	}
	return a, nil
}

func (r *reader) tensor(b []byte, path string) (*TensorProto, error) {
	t := &TensorProto{path: path}
	err := r.fields(b, path, func(f field) error {
		switch f.num {
		case tensorDims:
			if err := f.varints(&t.Dims, r.lim.MaxDims); err != nil {
				return err
			}
		case tensorDataType:
			v, err := f.varint()
			t.DataType = int64(v)
			return err
		case tensorName:
			s, err := f.bytes()
			t.Name = string(s)
			return err
		case tensorRawData:
			s, err := f.bytes()
			t.Raw = s
			return err
		case tensorFloatData:
			return f.floats(&t.Floats, math.MaxInt32)
		case tensorInt64Data:
			return f.varints(&t.Int64s, math.MaxInt32)
		case tensorInt32Data:
			return f.varints(&t.Int32s, math.MaxInt32)
		case tensorDoubleData:
			return f.doubles(&t.Doubles)
		case tensorDataLocation:
			v, err := f.varint()
			t.External = v == dataLocExternal
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i, d := range t.Dims {
		if d < 0 {
			return nil, fmt.Errorf("%s: tensor %q: dims[%d] = %d is negative", path, t.Name, i, d)
		}
	}
	return t, nil
}

func (r *reader) valueInfo(b []byte, path string) (*ValueInfo, error) {
	vi := &ValueInfo{}
	err := r.fields(b, path, func(f field) error {
		switch f.num {
		case valueInfoName:
			s, err := f.bytes()
			vi.Name = string(s)
			return err
		case valueInfoType:
			b, err := f.bytes()
			if err != nil {
				return err
			}
			return r.fields(b, f.path+".type", func(f field) error {
				if f.num != typeTensorType {
					return nil // sequence, map, optional, sparse: not a tensor
				}
				b, err := f.bytes()
				if err != nil {
					return err
				}
				return r.fields(b, f.path+".tensor_type", func(f field) error {
					switch f.num {
					case typeTensorElemType:
						v, err := f.varint()
						vi.ElemType = int64(v)
						return err
					case typeTensorShape:
						b, err := f.bytes()
						if err != nil {
							return err
						}
						vi.HasShape = true
						return r.fields(b, f.path+".shape", func(f field) error {
							if f.num != shapeDim {
								return nil
							}
							b, err := f.bytes()
							if err != nil {
								return err
							}
							if len(vi.Dims) >= r.lim.MaxDims {
								return f.errorf("more than %d dimensions", r.lim.MaxDims)
							}
							var d Dim
							err = r.fields(b, fmt.Sprintf("%s.dim[%d]", f.path, len(vi.Dims)), func(f field) error {
								switch f.num {
								case dimValue:
									v, err := f.varint()
									d.Value = int64(v)
									return err
								case dimParam:
									s, err := f.bytes()
									d.Param = string(s)
									return err
								}
								return nil
							})
							vi.Dims = append(vi.Dims, d)
							return err
						})
					}
					return nil
				})
			})
		}
		return nil
	})
	return vi, err
}

// field is one decoded field of a message: its number and wire type, the
// value (v for varint and fixed types, b for length-delimited), its path for
// messages and its absolute byte offset in the input.
type field struct {
	num  protowire.Number
	typ  protowire.Type
	v    uint64
	b    []byte
	path string
	off  int
}

// fields calls fn for each field of the message b (a sub-slice of r.buf).
func (r *reader) fields(b []byte, path string, fn func(field) error) error {
	for len(b) > 0 {
		off := r.offset(b)
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%s: byte %d: bad field tag: %v", path, off, protowire.ParseError(n))
		}
		b = b[n:]
		f := field{num: num, typ: typ, path: fmt.Sprintf("%s (field %d)", path, num), off: r.offset(b)}
		switch typ {
		case protowire.VarintType:
			f.v, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var v uint32
			v, n = protowire.ConsumeFixed32(b)
			f.v = uint64(v)
		case protowire.Fixed64Type:
			f.v, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			f.b, n = protowire.ConsumeBytes(b)
		default:
			return fmt.Errorf("%s: byte %d: field %d has wire type %d (groups are not used by onnx.proto)", path, off, num, typ)
		}
		if n < 0 {
			return fmt.Errorf("%s: byte %d: field %d: %v", path, f.off, num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

// offset returns the position of sub-slice b in r.buf.
func (r *reader) offset(b []byte) int { return len(r.buf) - len(b) }

func (f field) errorf(format string, args ...any) error {
	return fmt.Errorf("%s: byte %d: %s", f.path, f.off, fmt.Sprintf(format, args...))
}

func (f field) wantType(t protowire.Type, what string) error {
	if f.typ != t {
		return f.errorf("wire type %d, want %d (%s)", f.typ, t, what)
	}
	return nil
}

func (f field) varint() (uint64, error) { return f.v, f.wantType(protowire.VarintType, "varint") }

func (f field) fixed32() (uint32, error) {
	return uint32(f.v), f.wantType(protowire.Fixed32Type, "fixed32")
}

func (f field) bytes() ([]byte, error) { return f.b, f.wantType(protowire.BytesType, "bytes") }

// varints appends a repeated integer field, packed or not, keeping at most max
// values.
func (f field) varints(dst *[]int64, max int) error {
	if f.typ == protowire.VarintType {
		if len(*dst) >= max {
			return f.errorf("more than %d values", max)
		}
		*dst = append(*dst, int64(f.v))
		return nil
	}
	if err := f.wantType(protowire.BytesType, "varint or packed varints"); err != nil {
		return err
	}
	b := f.b
	for len(b) > 0 {
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return f.errorf("packed varint %d: %v", len(*dst), protowire.ParseError(n))
		}
		if len(*dst) >= max {
			return f.errorf("more than %d values", max)
		}
		*dst = append(*dst, int64(v))
		b = b[n:]
	}
	return nil
}

// floats appends a repeated float field, packed or not.
func (f field) floats(dst *[]float32, max int) error {
	if f.typ == protowire.Fixed32Type {
		if len(*dst) >= max {
			return f.errorf("more than %d values", max)
		}
		*dst = append(*dst, math.Float32frombits(uint32(f.v)))
		return nil
	}
	if err := f.wantType(protowire.BytesType, "fixed32 or packed floats"); err != nil {
		return err
	}
	if len(f.b)%4 != 0 {
		return f.errorf("packed floats: %d bytes is not a multiple of 4", len(f.b))
	}
	if len(*dst)+len(f.b)/4 > max {
		return f.errorf("more than %d values", max)
	}
	for i := 0; i < len(f.b); i += 4 {
		*dst = append(*dst, math.Float32frombits(binary.LittleEndian.Uint32(f.b[i:])))
	}
	return nil
}

// doubles appends a repeated double field, packed or not.
func (f field) doubles(dst *[]float64) error {
	if f.typ == protowire.Fixed64Type {
		*dst = append(*dst, math.Float64frombits(f.v))
		return nil
	}
	if err := f.wantType(protowire.BytesType, "fixed64 or packed doubles"); err != nil {
		return err
	}
	if len(f.b)%8 != 0 {
		return f.errorf("packed doubles: %d bytes is not a multiple of 8", len(f.b))
	}
	for i := 0; i < len(f.b); i += 8 {
		*dst = append(*dst, math.Float64frombits(binary.LittleEndian.Uint64(f.b[i:])))
	}
	return nil
}

// Numel returns the element count of t, or an error if the dims overflow
// the limit (1<<40 elements).
func (t *TensorProto) Numel() (int, error) {
	n := int64(1)
	for _, d := range t.Dims {
		if d < 0 {
			return 0, fmt.Errorf("tensor %q: negative dimension %d", t.Name, d)
		}
		if d != 0 && n > (1<<40)/d {
			return 0, fmt.Errorf("tensor %q: dims %v exceed 2^40 elements", t.Name, t.Dims)
		}
		n *= d
	}
	return int(n), nil
}

// FloatData returns the tensor's values as float32 (FLOAT or DOUBLE data),
// checking the element count against dims.
func (t *TensorProto) FloatData() ([]float32, error) {
	n, err := t.Numel()
	if err != nil {
		return nil, err
	}
	if t.External {
		return nil, fmt.Errorf("tensor %q stores its data in an external file; save the model with the tensors inside it (onnx.save_model(m, path, save_as_external_data=False))", t.Name)
	}
	out := make([]float32, 0, min(n, 1<<20))
	switch t.DataType {
	case dataTypeFloat:
		switch {
		case t.Raw != nil:
			if len(t.Raw) != 4*n {
				return nil, fmt.Errorf("tensor %q: raw_data has %d bytes, dims %v need %d", t.Name, len(t.Raw), t.Dims, 4*n)
			}
			for i := 0; i < len(t.Raw); i += 4 {
				out = append(out, math.Float32frombits(binary.LittleEndian.Uint32(t.Raw[i:])))
			}
		default:
			if len(t.Floats) != n {
				return nil, fmt.Errorf("tensor %q: float_data has %d values, dims %v need %d", t.Name, len(t.Floats), t.Dims, n)
			}
			out = append(out, t.Floats...)
		}
	case dataTypeDouble:
		switch {
		case t.Raw != nil:
			if len(t.Raw) != 8*n {
				return nil, fmt.Errorf("tensor %q: raw_data has %d bytes, dims %v need %d", t.Name, len(t.Raw), t.Dims, 8*n)
			}
			for i := 0; i < len(t.Raw); i += 8 {
				out = append(out, float32(math.Float64frombits(binary.LittleEndian.Uint64(t.Raw[i:]))))
			}
		default:
			if len(t.Doubles) != n {
				return nil, fmt.Errorf("tensor %q: double_data has %d values, dims %v need %d", t.Name, len(t.Doubles), t.Dims, n)
			}
			for _, v := range t.Doubles {
				out = append(out, float32(v))
			}
		}
	default:
		return nil, fmt.Errorf("tensor %q has element type %s; want float32", t.Name, dataTypeName(t.DataType))
	}
	return out, nil
}

// IntData returns the values of an INT64 or INT32 tensor.
func (t *TensorProto) IntData() ([]int64, error) {
	n, err := t.Numel()
	if err != nil {
		return nil, err
	}
	if t.External {
		return nil, fmt.Errorf("tensor %q stores its data in an external file", t.Name)
	}
	if n > 1<<20 {
		return nil, fmt.Errorf("tensor %q: %d integers is more than an importer needs", t.Name, n)
	}
	var out []int64
	switch t.DataType {
	case dataTypeInt64, dataTypeInt32:
		size := 8
		if t.DataType == dataTypeInt32 {
			size = 4
		}
		switch {
		case t.Raw != nil:
			if len(t.Raw) != size*n {
				return nil, fmt.Errorf("tensor %q: raw_data has %d bytes, dims %v need %d", t.Name, len(t.Raw), t.Dims, size*n)
			}
			for i := 0; i < len(t.Raw); i += size {
				if size == 8 {
					out = append(out, int64(binary.LittleEndian.Uint64(t.Raw[i:])))
				} else {
					out = append(out, int64(int32(binary.LittleEndian.Uint32(t.Raw[i:]))))
				}
			}
		case t.DataType == dataTypeInt64:
			if len(t.Int64s) != n {
				return nil, fmt.Errorf("tensor %q: int64_data has %d values, dims %v need %d", t.Name, len(t.Int64s), t.Dims, n)
			}
			out = append(out, t.Int64s...)
		default:
			if len(t.Int32s) != n {
				return nil, fmt.Errorf("tensor %q: int32_data has %d values, dims %v need %d", t.Name, len(t.Int32s), t.Dims, n)
			}
			for _, v := range t.Int32s {
				out = append(out, int64(int32(v)))
			}
		}
	default:
		return nil, fmt.Errorf("tensor %q has element type %s; want int64", t.Name, dataTypeName(t.DataType))
	}
	return out, nil
}

// dataTypeName names a TensorProto.DataType value.
func dataTypeName(t int64) string {
	names := []string{"UNDEFINED", "FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64", "STRING", "BOOL",
		"FLOAT16", "DOUBLE", "UINT32", "UINT64", "COMPLEX64", "COMPLEX128", "BFLOAT16"}
	if t >= 0 && t < int64(len(names)) {
		return names[t]
	}
	return fmt.Sprintf("data type %d", t)
}
