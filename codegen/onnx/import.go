package onnx

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// # Import
//
// Import converts an ONNX model (ReadModel) into a .kiln source and its
// weights. It reads the main graph of a model of the default operator set at
// opset MinImportOpset..MaxImportOpset and maps each node to the DSL builtin
// computing the same function:
//
//	Conv                 conv2d (group, strides, dilations, symmetric pads or
//	                     auto_pad that resolves to them)
//	BatchNormalization   batchnorm (epsilon; inference mode)
//	Relu                 relu
//	Add                  a + b (two tensors of one shape)
//	Mul                  c * a (one operand a one-element constant)
//	Concat               concat (axis)
//	MaxPool              maxpool (ceil_mode only where it changes no size)
//	AveragePool          avgpool (count_include_pad)
//	GlobalAveragePool    global_avgpool
//	Flatten (axis 1)     flatten
//	Reshape to [N, -1]   flatten (the constant shape must resolve to it);
//	                     any other constant shape: reshape
//	Resize               upsample (resize.go: integer scales, nearest/linear)
//	Gemm                 dense (transA 0; transB either way; alpha and beta
//	                     folded into the weight and bias)
//	MatMul [+ Add]       dense (constant right operand; a following Add of a
//	                     constant vector, as PyTorch writes nn.Linear, is its bias)
//	Softmax              softmax (axis; before opset 13 only the last axis,
//	                     where the 2-D coercion is the same function)
//	Sigmoid, Tanh, HardSwish, GlobalMaxPool, Clip, Sub, Mul of two tensors
//	                     see import_ext.go
//	Dropout, Identity    no statement: the output is the input
//	Constant             folded: its value is a constant operand
//
// Every other node is reported, all of them at once, grouped by op type with
// the names of the nodes; a node that only depends on an unsupported one is
// not reported again. Conversion errors (an attribute Kiln cannot express, a
// shape the op rejects) name the node, its op and the attribute.
//
// # The .kiln it writes
//
// One block, <net>_body(x), holds one statement per computing node in file
// order, and the network calls it. Keeping the statements inside a block keeps
// them out of the network's marks (every network-level assignment is a named
// module output, which Kiln keeps observable and so never fuses away). A
// statement that creates weights is `P = conv2d(...)`, `batchnorm` or `dense`;
// by the DSL's naming rule its parameters are P.weight, P.bias (and
// P.running_mean, P.running_var). P is derived from the ONNX names: the common
// prefix of the node's initializer names up to their last "." (so
// "layer1.0.conv1.weight" gives layer1_0_conv1), else the node name, else
// the op, made into an identifier and unique. Statements without weights are
// named after their op (relu_3). Each weight statement carries a comment
// naming the ONNX node and the initializers it reads, and Imported.Names
// records the mapping kiln name → ONNX initializer name (a Gemm with transB 0
// or a MatMul stores the transpose; alpha and beta are multiplied in).
//
// The import elaborates its own output with the DSL before returning, and
// fails with an internal error if the parameters or the output type differ
// from those it built; what Import returns is therefore a source `kiln check`
// parses and elaborates.

// Opsets the importer accepts for the default domain.
const (
	MinImportOpset = 11
	MaxImportOpset = 21
)

// ImportOptions configure Import.
type ImportOptions struct {
	// Source names the ONNX file in messages and in the header comment.
	Source string
	// Batch is the batch size used where the model's batch dimension is
	// symbolic (default 1). The .kiln declares the batch as N either way.
	Batch int
	// InputShape, if set, replaces the non-batch dimensions of the input
	// (needed where the model declares them symbolic).
	InputShape []int
	// Name is the network name (default: the graph name, else "imported").
	Name string
}

// Imported is the result of Import.
type Imported struct {
	// Source is the .kiln program.
	Source []byte
	// Weights holds every parameter of the network, by its name in the .kiln
	// (its checkpoint key).
	Weights map[string]*tensor.Tensor
	// Names maps each weight's .kiln name to the ONNX initializer it was
	// read from (with " (transposed)" or " (scaled)" appended where the
	// values were transformed).
	Names map[string]string
	// Graph is the network as dsl.Load elaborates Source at the import's
	// batch size.
	Graph *ir.Graph
}

// value is what an ONNX value name stands for during conversion: a tensor the
// network computes (node of the IR graph, DSL variable), a constant, or
// poison (produced by a node that failed to convert).
type value struct {
	node   int
	expr   string
	konst  *TensorProto
	poison bool
}

type importer struct {
	m      *Model
	opts   ImportOptions
	opset  int64
	g      *ir.Graph
	vals   map[string]*value
	uses   map[string][]int // value name -> indices of the nodes reading it
	outs   map[string]bool  // graph output names
	skip   map[int]bool     // nodes already converted with an earlier one
	idents map[string]bool
	counts map[string]int
	lines  []string
	// unsupported groups node names by op type; errs collects other errors.
	unsupported map[string][]string
	errs        []string
	weights     map[string]*tensor.Tensor
	names       map[string]string
}

// keywords are the DSL's reserved words and a few likely future ones; an
// identifier never takes one of these names.
var keywords = map[string]bool{"block": true, "network": true, "import": true, "return": true, "seq": true,
	"if": true, "else": true, "true": true, "false": true, "repeat": true, "and": true, "or": true, "not": true, "N": true}

// Import converts m; see the section comment above.
func Import(m *Model, opts ImportOptions) (*Imported, error) {
	if opts.Batch <= 0 {
		opts.Batch = 1
	}
	src := opts.Source
	if src == "" {
		src = "model.onnx"
	}
	opset, ok := m.Opsets[""]
	if !ok {
		return nil, fmt.Errorf("%s: the model imports no default-domain (ai.onnx) opset", src)
	}
	if opset < MinImportOpset || opset > MaxImportOpset {
		return nil, fmt.Errorf("%s: opset %d is not supported (kiln import reads opset %d to %d; convert with onnx.version_converter)", src, opset, MinImportOpset, MaxImportOpset)
	}
	c := &importer{m: m, opts: opts, opset: opset, g: &ir.Graph{}, vals: map[string]*value{}, uses: map[string][]int{},
		outs: map[string]bool{}, skip: map[int]bool{}, idents: map[string]bool{}, counts: map[string]int{},
		unsupported: map[string][]string{}, weights: map[string]*tensor.Tensor{}, names: map[string]string{}}
	c.opts.Source = src
	return c.run()
}

func (c *importer) run() (*Imported, error) {
	gr := &c.m.Graph
	name := c.opts.Name
	if name == "" {
		name = gr.Name
	}
	name = c.ident(name, "imported")
	c.g.Name = name
	for _, t := range gr.Initializers {
		if t.Name == "" {
			return nil, fmt.Errorf("%s: %s: initializer without a name", c.opts.Source, t.path)
		}
		c.vals[t.Name] = &value{node: -1, konst: t}
	}
	// The network input: the one graph input that is not an initializer.
	var inputs []*ValueInfo
	for _, vi := range gr.Inputs {
		if _, isInit := c.vals[vi.Name]; !isInit {
			inputs = append(inputs, vi)
		}
	}
	if len(inputs) != 1 {
		var ns []string
		for _, vi := range inputs {
			ns = append(ns, strconv.Quote(vi.Name))
		}
		return nil, fmt.Errorf("%s: a Kiln network has one input; graph %q has %d: %s", c.opts.Source, gr.Name, len(inputs), strings.Join(ns, ", "))
	}
	if len(gr.Outputs) != 1 {
		return nil, fmt.Errorf("%s: a Kiln network has one output; graph %q has %d", c.opts.Source, gr.Name, len(gr.Outputs))
	}
	in := inputs[0]
	shape, err := c.inputShape(in)
	if err != nil {
		return nil, err
	}
	inName := c.ident(in.Name, "input")
	id, err := c.g.Add(&ir.Node{Op: ir.OpInput, Name: inName, Type: ir.Type{DType: ir.F32, Shape: shape}})
	if err != nil {
		return nil, fmt.Errorf("%s: input %q: %v", c.opts.Source, in.Name, err)
	}
	c.vals[in.Name] = &value{node: id, expr: "x"}
	c.idents["x"] = true
	for _, n := range gr.Nodes {
		for _, v := range n.Inputs {
			if v != "" {
				c.uses[v] = append(c.uses[v], n.Index)
			}
		}
	}
	c.outs[gr.Outputs[0].Name] = true

	for _, n := range gr.Nodes {
		if c.skip[n.Index] {
			continue
		}
		c.convert(n)
	}
	if msg := c.report(); msg != "" {
		return nil, fmt.Errorf("%s", msg)
	}
	outName := gr.Outputs[0].Name
	out, ok := c.vals[outName]
	switch {
	case !ok:
		return nil, fmt.Errorf("%s: graph output %q is not computed by any node", c.opts.Source, outName)
	case out.konst != nil:
		return nil, fmt.Errorf("%s: graph output %q is a constant", c.opts.Source, outName)
	}
	c.g.Outputs = []int{out.node}
	return c.finish(name, inName, out)
}

// inputShape is the input's shape with the batch and InputShape applied.
func (c *importer) inputShape(in *ValueInfo) ([]int, error) {
	if in.ElemType != dataTypeFloat {
		return nil, fmt.Errorf("%s: input %q has element type %s; Kiln networks take float32", c.opts.Source, in.Name, dataTypeName(in.ElemType))
	}
	if !in.HasShape || len(in.Dims) < 2 {
		return nil, fmt.Errorf("%s: input %q needs a declared shape of rank 2 or more (batch first)", c.opts.Source, in.Name)
	}
	shape := make([]int, len(in.Dims))
	shape[0] = c.opts.Batch
	if v := in.Dims[0].Value; v > 0 && in.Dims[0].Param == "" {
		if v > 1<<16 {
			return nil, fmt.Errorf("%s: input %q: batch %d is too large", c.opts.Source, in.Name, v)
		}
		shape[0] = int(v)
	}
	if s := c.opts.InputShape; len(s) > 0 {
		if len(s) != len(shape)-1 {
			return nil, fmt.Errorf("%s: input shape %v has %d dimensions; input %q has %d besides the batch", c.opts.Source, s, len(s), in.Name, len(shape)-1)
		}
		copy(shape[1:], s)
		return shape, nil
	}
	for i, d := range in.Dims[1:] {
		if d.Value <= 0 || d.Param != "" {
			return nil, fmt.Errorf("%s: input %q: dimension %d is not a fixed size (%q); give the input shape (kiln import --input CxHxW)", c.opts.Source, in.Name, i+1, d.Param)
		}
		if d.Value > 1<<20 {
			return nil, fmt.Errorf("%s: input %q: dimension %d = %d is too large", c.opts.Source, in.Name, i+1, d.Value)
		}
		shape[i+1] = int(d.Value)
	}
	return shape, nil
}

// report formats the unsupported ops and conversion errors, or "".
func (c *importer) report() string {
	var b strings.Builder
	if len(c.unsupported) > 0 {
		ops := make([]string, 0, len(c.unsupported))
		total := 0
		for op, ns := range c.unsupported {
			ops = append(ops, op)
			total += len(ns)
		}
		sort.Strings(ops)
		fmt.Fprintf(&b, "%s: %d node(s) use ops kiln import does not support:", c.opts.Source, total)
		for _, op := range ops {
			ns := c.unsupported[op]
			q := make([]string, len(ns))
			for i, s := range ns {
				q[i] = strconv.Quote(s)
			}
			fmt.Fprintf(&b, "\n  %s (%d): %s", op, len(ns), strings.Join(q, ", "))
		}
	}
	for _, e := range c.errs {
		if b.Len() > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s: %s", c.opts.Source, e)
	}
	return b.String()
}

// ident makes s a fresh DSL identifier: characters other than letters,
// digits and _ become _, runs of _ collapse, a leading digit gets a v prefix,
// keywords get a _ suffix, and a taken name gets _2, _3, ...
func (c *importer) ident(s, fallback string) string {
	var b strings.Builder
	last := byte('_')
	for i := 0; i < len(s) && b.Len() < 48; i++ {
		ch := s[i]
		ok := ch == '_' || ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9'
		if !ok {
			ch = '_'
		}
		if ch == '_' && last == '_' {
			continue
		}
		b.WriteByte(ch)
		last = ch
	}
	id := strings.TrimRight(b.String(), "_")
	if id == "" {
		id = fallback
	}
	if id[0] >= '0' && id[0] <= '9' {
		id = "v" + id
	}
	if keywords[id] {
		id += "_"
	}
	base := id
	for k := 2; c.idents[id]; k++ {
		id = fmt.Sprintf("%s_%d", base, k)
	}
	c.idents[id] = true
	return id
}

// layerName derives the statement name of a node that creates weights from
// the names of its initializers (their common prefix before the last "."),
// else from the node name, else from the op.
func (c *importer) layerName(n *Node, inits []string) string {
	prefix := ""
	for i, s := range inits {
		p := s
		if k := strings.LastIndexByte(s, '.'); k > 0 {
			p = s[:k]
		} else {
			prefix = ""
			break
		}
		if i == 0 {
			prefix = p
		} else if p != prefix {
			prefix = ""
			break
		}
	}
	if prefix != "" && !strings.Contains(prefix, "::") {
		return c.ident(prefix, strings.ToLower(n.OpType))
	}
	if nm := strings.TrimPrefix(n.Name, "/"); nm != "" {
		nm = strings.TrimSuffix(nm, "/"+n.OpType)
		return c.ident(nm, strings.ToLower(n.OpType))
	}
	return c.ident(strings.ToLower(n.OpType), "layer")
}

// tempName names a statement without weights: its op and a counter.
func (c *importer) tempName(op string) string {
	c.counts[op]++
	return c.ident(fmt.Sprintf("%s_%d", op, c.counts[op]), op)
}

func (c *importer) fail(n *Node, format string, args ...any) {
	c.errs = append(c.errs, fmt.Sprintf("%s: %s", describe(n), fmt.Sprintf(format, args...)))
	c.poison(n)
}

func describe(n *Node) string {
	s := fmt.Sprintf("graph.node[%d]", n.Index)
	if n.Name != "" {
		s += fmt.Sprintf(" %q", n.Name)
	}
	return s + " (" + n.OpType + ")"
}

func (c *importer) poison(n *Node) {
	for _, o := range n.Outputs {
		if o != "" {
			c.vals[o] = &value{node: -1, poison: true}
		}
	}
}

// attrs checks n's attributes against the names the converter understands and
// returns them by name.
func (c *importer) attrs(n *Node, known ...string) (map[string]*Attribute, bool) {
	out := make(map[string]*Attribute, len(n.Attrs))
	for _, a := range n.Attrs {
		ok := false
		for _, k := range known {
			ok = ok || a.Name == k
		}
		if !ok {
			c.fail(n, "attribute %q is not supported by kiln import", a.Name)
			return nil, false
		}
		if _, dup := out[a.Name]; dup {
			c.fail(n, "attribute %q is given twice", a.Name)
			return nil, false
		}
		out[a.Name] = a
	}
	return out, true
}

// attrInt returns an INT attribute or def.
func (c *importer) attrInt(n *Node, as map[string]*Attribute, name string, def int64) (int64, bool) {
	a, ok := as[name]
	if !ok {
		return def, true
	}
	if a.Type != attrTypeInt {
		c.fail(n, "attribute %q has type %d, want INT", name, a.Type)
		return 0, false
	}
	return a.I, true
}

func (c *importer) attrFloat(n *Node, as map[string]*Attribute, name string, def float32) (float32, bool) {
	a, ok := as[name]
	if !ok {
		return def, true
	}
	if a.Type != attrTypeFloat {
		c.fail(n, "attribute %q has type %d, want FLOAT", name, a.Type)
		return 0, false
	}
	return a.F, true
}

func (c *importer) attrString(n *Node, as map[string]*Attribute, name, def string) (string, bool) {
	a, ok := as[name]
	if !ok {
		return def, true
	}
	if a.Type != attrTypeString {
		c.fail(n, "attribute %q has type %d, want STRING", name, a.Type)
		return "", false
	}
	return string(a.S), true
}

// attrInts returns an INTS attribute of length want (0: any), or def.
func (c *importer) attrInts(n *Node, as map[string]*Attribute, name string, want int, def []int64) ([]int64, bool) {
	a, ok := as[name]
	if !ok {
		return def, true
	}
	if a.Type != attrTypeInts {
		c.fail(n, "attribute %q has type %d, want INTS", name, a.Type)
		return nil, false
	}
	if want > 0 && len(a.Ints) != want {
		c.fail(n, "attribute %q has %d values, want %d (2-D only)", name, len(a.Ints), want)
		return nil, false
	}
	return a.Ints, true
}

// input returns n's input k: a computed tensor or a constant. A missing or
// poisoned input returns ok false (poison propagates silently).
func (c *importer) input(n *Node, k int) (*value, bool) {
	if k >= len(n.Inputs) || n.Inputs[k] == "" {
		c.fail(n, "input %d is missing", k)
		return nil, false
	}
	v, ok := c.vals[n.Inputs[k]]
	if !ok {
		c.fail(n, "input %q is not defined before the node (nodes must be in topological order)", n.Inputs[k])
		return nil, false
	}
	if v.poison {
		c.poison(n)
		return nil, false
	}
	return v, true
}

// tensorInput returns input k, which must be computed (not a constant).
func (c *importer) tensorInput(n *Node, k int) (*value, bool) {
	v, ok := c.input(n, k)
	if !ok {
		return nil, false
	}
	if v.konst != nil {
		c.fail(n, "input %d (%q) is a constant; kiln import needs a computed tensor there", k, n.Inputs[k])
		return nil, false
	}
	return v, true
}

// constInput returns input k, which must be a constant (initializer or
// Constant).
func (c *importer) constInput(n *Node, k int, what string) (*TensorProto, bool) {
	v, ok := c.input(n, k)
	if !ok {
		return nil, false
	}
	if v.konst == nil {
		c.fail(n, "input %d (%s, %q) must be an initializer or a Constant; kiln import does not support computed weights", k, what, n.Inputs[k])
		return nil, false
	}
	return v.konst, true
}

// onlyOutput checks that n's outputs past the first are unused (the mask of
// Dropout, the indices of MaxPool, the statistics of a training BatchNorm).
func (c *importer) onlyOutput(n *Node) bool {
	if len(n.Outputs) == 0 || n.Outputs[0] == "" {
		c.fail(n, "has no output")
		return false
	}
	for _, o := range n.Outputs[1:] {
		if o != "" && (len(c.uses[o]) > 0 || c.outs[o]) {
			c.fail(n, "output %q is used; kiln import supports only the first output", o)
			return false
		}
	}
	return true
}

// shapeOf returns the IR shape of a computed value.
func (c *importer) shapeOf(v *value) []int { return c.g.Nodes[v.node].Type.Shape }

// emit adds the IR node op over args with attrs, and the statement
// `name = expr`, and binds n's first output to it.
func (c *importer) emit(n *Node, name, expr, comment string, op string, args []int, attrs ir.Attrs) {
	id, err := c.g.Add(&ir.Node{Op: op, Name: name, Args: args, Attrs: attrs})
	if err != nil {
		c.fail(n, "%v", err)
		return
	}
	line := fmt.Sprintf("    %s = %s", name, expr)
	if comment != "" {
		line += "   # " + comment
	}
	c.lines = append(c.lines, line)
	c.vals[n.Outputs[0]] = &value{node: id, expr: name}
}

// param adds the weight P.suffix with data (from ONNX initializer src) and
// returns its node.
func (c *importer) param(n *Node, name string, shape []int, data []float32, src string, buffer bool) (int, bool) {
	t, err := tensor.FromData(shape, data)
	if err != nil {
		c.fail(n, "weight %s: %v", name, err)
		return -1, false
	}
	for i, v := range data {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			c.fail(n, "weight %s (initializer %q) element %d is %v", name, src, i, v)
			return -1, false
		}
	}
	id, err := c.g.Add(&ir.Node{Op: ir.OpParam, Name: name, Type: ir.Type{DType: ir.F32, Shape: shape}, Attrs: ir.Attrs{"buffer": buffer}})
	if err != nil {
		c.fail(n, "weight %s: %v", name, err)
		return -1, false
	}
	c.weights[name] = t
	c.names[name] = src
	return id, true
}

// floats decodes a constant as float32 with dims as ints.
func (c *importer) floats(n *Node, t *TensorProto) ([]int, []float32, bool) {
	data, err := t.FloatData()
	if err != nil {
		c.fail(n, "%v", err)
		return nil, nil, false
	}
	dims := make([]int, len(t.Dims))
	for i, d := range t.Dims {
		dims[i] = int(d)
	}
	return dims, data, true
}

// fmtFloat writes a float32 in the shortest form that reads back as the same
// float32, and returns the float64 the DSL will parse from it.
func fmtFloat(f float32) (string, float64) {
	s := strconv.FormatFloat(float64(f), 'g', -1, 32)
	v, _ := strconv.ParseFloat(s, 64)
	return s, v
}

// pair formats an (h, w) window argument: "2" when equal, else "(2, 1)".
func pair(v []int) string {
	if v[0] == v[1] {
		return strconv.Itoa(v[0])
	}
	return fmt.Sprintf("(%d, %d)", v[0], v[1])
}

// window resolves the strides and pads of a Conv or pooling node over the
// input spatial size in (h, w) and kernel k. pads must be symmetric (Kiln
// pads each side equally); auto_pad SAME_* is accepted where its total
// padding is even. ceil is ceil_mode, accepted where it changes no output
// size.
func (c *importer) window(n *Node, as map[string]*Attribute, in, k []int, ceil bool) (stride, pad []int, ok bool) {
	s64, ok := c.attrInts(n, as, "strides", 2, []int64{1, 1})
	if !ok {
		return nil, nil, false
	}
	p64, ok := c.attrInts(n, as, "pads", 4, []int64{0, 0, 0, 0})
	if !ok {
		return nil, nil, false
	}
	d64, ok := c.attrInts(n, as, "dilations", 2, []int64{1, 1})
	if !ok {
		return nil, nil, false
	}
	autoPad, ok := c.attrString(n, as, "auto_pad", "NOTSET")
	if !ok {
		return nil, nil, false
	}
	if (d64[0] != 1 || d64[1] != 1) && n.OpType != "Conv" { // conv reads its dilations itself
		c.fail(n, "attribute \"dilations\" = %v: dilated windows are not supported", d64)
		return nil, nil, false
	}
	stride = make([]int, 2)
	pad = make([]int, 2)
	for i := 0; i < 2; i++ {
		if s64[i] <= 0 || s64[i] > 1<<16 {
			c.fail(n, "attribute \"strides\" = %v must be positive", s64)
			return nil, nil, false
		}
		stride[i] = int(s64[i])
	}
	switch autoPad {
	case "NOTSET":
		for i := 0; i < 2; i++ {
			if p64[i] < 0 || p64[i] > 1<<16 {
				c.fail(n, "attribute \"pads\" = %v is out of range", p64)
				return nil, nil, false
			}
			if p64[i] != p64[i+2] {
				c.fail(n, "attribute \"pads\" = %v: asymmetric padding (begin %v, end %v) is not supported", p64, p64[:2], p64[2:])
				return nil, nil, false
			}
			pad[i] = int(p64[i])
		}
	case "VALID":
	case "SAME_UPPER", "SAME_LOWER":
		for i := 0; i < 2; i++ {
			out := (in[i] + stride[i] - 1) / stride[i]
			total := max((out-1)*stride[i]+k[i]-in[i], 0)
			if total%2 != 0 {
				c.fail(n, "attribute \"auto_pad\" = %s pads axis %d by %d in all, unevenly; Kiln pads symmetrically", autoPad, i+2, total)
				return nil, nil, false
			}
			pad[i] = total / 2
		}
	default:
		c.fail(n, "attribute \"auto_pad\" = %q is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER", autoPad)
		return nil, nil, false
	}
	if ceil {
		for i := 0; i < 2; i++ {
			span := in[i] + 2*pad[i] - k[i]
			if span >= 0 && span%stride[i] != 0 {
				c.fail(n, "attribute \"ceil_mode\" = 1 changes the output size on axis %d; Kiln pools with floor", i+2)
				return nil, nil, false
			}
		}
	}
	return stride, pad, true
}

// convert maps one ONNX node.
func (c *importer) convert(n *Node) {
	if n.Domain != "" && n.Domain != "ai.onnx" {
		c.unsupported[n.Domain+"::"+n.OpType] = append(c.unsupported[n.Domain+"::"+n.OpType], n.Name)
		c.poison(n)
		return
	}
	if len(n.Outputs) == 0 {
		c.fail(n, "has no output")
		return
	}
	if c.convertFolded(n) { // import_shape.go: Shape, Gather, Unsqueeze, Squeeze, Concat of constants
		return
	}
	switch n.OpType {
	case "Constant":
		c.constant(n)
	case "Identity", "Dropout":
		c.identity(n)
	case "Conv":
		c.conv(n)
	case "BatchNormalization":
		c.batchnorm(n)
	case "Relu", "GlobalAveragePool":
		if _, ok := c.attrs(n); !ok || !c.onlyOutput(n) {
			return
		}
		x, ok := c.tensorInput(n, 0)
		if !ok {
			return
		}
		op := ir.OpReLU
		if n.OpType == "GlobalAveragePool" {
			op = ir.OpGlobalAvgPool
		}
		name := c.tempName(op)
		c.emit(n, name, fmt.Sprintf("%s(%s)", op, x.expr), "", op, []int{x.node}, nil)
	case "Add":
		c.add(n)
	case "Mul":
		c.mul(n)
	case "Concat":
		c.concat(n)
	case "MaxPool", "AveragePool":
		c.pool(n)
	case "Flatten":
		c.flatten(n)
	case "Reshape":
		c.reshape(n)
	case "Gemm":
		c.gemm(n)
	case "MatMul":
		c.matmul(n)
	case "Softmax":
		c.softmax(n)
	case "Sigmoid", "Tanh", "HardSwish", "GlobalMaxPool":
		c.extUnary(n) // import_ext.go
	case "Clip":
		c.clip(n)
	case "HardSigmoid":
		c.hardSigmoid(n)
	case "Sub":
		c.sub(n)
	case "Resize":
		c.resize(n) // resize.go
	default:
		c.unsupported[n.OpType] = append(c.unsupported[n.OpType], n.Name)
		c.poison(n)
	}
}

func (c *importer) constant(n *Node) {
	as, ok := c.attrs(n, "value", "value_float", "value_floats", "value_int", "value_ints")
	if !ok {
		return
	}
	if len(as) != 1 || len(n.Outputs) != 1 {
		c.fail(n, "want exactly one value attribute and one output")
		return
	}
	for name, a := range as {
		t := &TensorProto{Name: n.Outputs[0], path: describe(n)}
		switch {
		case name == "value" && a.Type == attrTypeTensor && a.T != nil:
			cp := *a.T
			cp.Name = n.Outputs[0]
			t = &cp
		case name == "value_float" && a.Type == attrTypeFloat:
			t.DataType, t.Floats = dataTypeFloat, []float32{a.F}
		case name == "value_floats" && a.Type == attrTypeFloats:
			t.DataType, t.Floats, t.Dims = dataTypeFloat, a.Floats, []int64{int64(len(a.Floats))}
		case name == "value_int" && a.Type == attrTypeInt:
			t.DataType, t.Int64s = dataTypeInt64, []int64{a.I}
		case name == "value_ints" && a.Type == attrTypeInts:
			t.DataType, t.Int64s, t.Dims = dataTypeInt64, a.Ints, []int64{int64(len(a.Ints))}
		default:
			c.fail(n, "attribute %q has type %d, which does not match its name", name, a.Type)
			return
		}
		c.vals[n.Outputs[0]] = &value{node: -1, konst: t}
	}
}

// identity binds the output to the input: Identity, and Dropout at inference
// (its ratio has no effect; training_mode must be a false constant if given).
func (c *importer) identity(n *Node) {
	if _, ok := c.attrs(n, "seed", "ratio"); !ok || !c.onlyOutput(n) {
		return
	}
	if n.OpType == "Dropout" && len(n.Inputs) > 2 && n.Inputs[2] != "" {
		t, ok := c.constInput(n, 2, "training_mode")
		if !ok {
			return
		}
		if v, err := t.IntData(); err != nil || len(v) != 1 || v[0] != 0 {
			if t.DataType != 9 || len(t.Raw) != 1 || t.Raw[0] != 0 { // BOOL false
				c.fail(n, "training_mode must be false")
				return
			}
		}
	}
	v, ok := c.input(n, 0)
	if !ok {
		return
	}
	c.vals[n.Outputs[0]] = v
}

// optionalConst returns constant input i of n, or nil when the optional
// input is absent (missing or named ""); false after reporting an error.
func (c *importer) optionalConst(n *Node, i int, what string) (*TensorProto, bool) {
	if len(n.Inputs) <= i || n.Inputs[i] == "" {
		return nil, true
	}
	return c.constInput(n, i, what)
}

func (c *importer) conv(n *Node) {
	as, ok := c.attrs(n, "kernel_shape", "strides", "pads", "dilations", "group", "auto_pad")
	if !ok || !c.onlyOutput(n) {
		return
	}
	x, ok := c.tensorInput(n, 0)
	if !ok {
		return
	}
	wt, ok := c.constInput(n, 1, "W")
	if !ok {
		return
	}
	bt, ok := c.optionalConst(n, 2, "B")
	if !ok {
		return
	}
	wdims, wdata, ok := c.floats(n, wt)
	if !ok {
		return
	}
	xs := c.shapeOf(x)
	if len(wdims) != 4 || len(xs) != 4 {
		c.fail(n, "only 2-D convolution is supported (weight %v, input %v)", wdims, xs)
		return
	}
	if ks, ok := c.attrInts(n, as, "kernel_shape", 2, nil); !ok {
		return
	} else if ks != nil && (int(ks[0]) != wdims[2] || int(ks[1]) != wdims[3]) {
		c.fail(n, "attribute \"kernel_shape\" = %v differs from the weight's %v", ks, wdims[2:])
		return
	}
	group, ok := c.attrInt(n, as, "group", 1)
	if !ok {
		return
	}
	if group <= 0 || group > 1<<20 {
		c.fail(n, "attribute \"group\" = %d must be positive", group)
		return
	}
	dil, ok := c.dilations(n, as) // resize.go
	if !ok {
		return
	}
	stride, pad, ok := c.window(n, as, xs[2:], []int{ir.DilatedKernel(wdims[2], dil[0]), ir.DilatedKernel(wdims[3], dil[1])}, false)
	if !ok {
		return
	}
	inits := []string{wt.Name}
	if bt != nil {
		inits = append(inits, bt.Name)
	}
	name := c.layerName(n, inits)
	wid, ok := c.param(n, name+".weight", wdims, wdata, wt.Name, false)
	if !ok {
		return
	}
	args := []int{x.node, wid}
	if bt != nil {
		bdims, bdata, ok := c.floats(n, bt)
		if !ok {
			return
		}
		bid, ok := c.param(n, name+".bias", bdims, bdata, bt.Name, false)
		if !ok {
			return
		}
		args = append(args, bid)
	}
	expr := fmt.Sprintf("conv2d(%s, %d, %dx%d", x.expr, wdims[0], wdims[2], wdims[3])
	if stride[0] != 1 || stride[1] != 1 {
		expr += ", stride=" + pair(stride)
	}
	if pad[0] != 0 || pad[1] != 0 {
		expr += ", pad=" + pair(pad)
	}
	if group != 1 {
		expr += fmt.Sprintf(", groups=%d", group)
	}
	if bt == nil {
		expr += ", bias=false"
	}
	if dil[0] != 1 || dil[1] != 1 {
		expr += ", dilation=" + pair(dil)
	}
	expr += ")"
	c.emit(n, name, expr, fmt.Sprintf("Conv %q: %s", n.Name, strings.Join(inits, ", ")), ir.OpConv2D, args,
		ir.Attrs{"stride": stride, "pad": pad, "groups": int(group), "dilation": dil})
}

func (c *importer) batchnorm(n *Node) {
	as, ok := c.attrs(n, "epsilon", "momentum", "training_mode")
	if !ok || !c.onlyOutput(n) {
		return
	}
	if tm, ok := c.attrInt(n, as, "training_mode", 0); !ok {
		return
	} else if tm != 0 {
		c.fail(n, "attribute \"training_mode\" = 1: only inference batch normalization is supported")
		return
	}
	eps, ok := c.attrFloat(n, as, "epsilon", 1e-5)
	if !ok {
		return
	}
	if !(eps > 0) || math.IsInf(float64(eps), 0) {
		c.fail(n, "attribute \"epsilon\" = %v must be positive", eps)
		return
	}
	x, ok := c.tensorInput(n, 0)
	if !ok {
		return
	}
	parts := []string{"scale", "B", "input_mean", "input_var"}
	suffix := []string{"weight", "bias", "running_mean", "running_var"}
	ts := make([]*TensorProto, 4)
	inits := make([]string, 4)
	for k := range parts {
		if ts[k], ok = c.constInput(n, k+1, parts[k]); !ok {
			return
		}
		inits[k] = ts[k].Name
	}
	name := c.layerName(n, inits)
	args := []int{x.node}
	for k := range parts {
		dims, data, ok := c.floats(n, ts[k])
		if !ok {
			return
		}
		id, ok := c.param(n, name+"."+suffix[k], dims, data, ts[k].Name, k >= 2)
		if !ok {
			return
		}
		args = append(args, id)
	}
	es, ev := fmtFloat(eps)
	expr := fmt.Sprintf("batchnorm(%s)", x.expr)
	if ev != 1e-5 {
		expr = fmt.Sprintf("batchnorm(%s, eps=%s)", x.expr, es)
	}
	c.emit(n, name, expr, fmt.Sprintf("BatchNormalization %q: %s", n.Name, strings.Join(inits, ", ")), ir.OpBatchNorm, args, ir.Attrs{"eps": ev})
}

func (c *importer) add(n *Node) {
	if _, ok := c.attrs(n); !ok || !c.onlyOutput(n) {
		return
	}
	a, ok := c.input(n, 0)
	if !ok {
		return
	}
	b, ok := c.input(n, 1)
	if !ok {
		return
	}
	if a.konst != nil || b.konst != nil {
		c.fail(n, "adding a constant is supported only as the bias of a MatMul (Kiln's add takes two tensors of one shape)")
		return
	}
	name := c.tempName("add")
	c.emit(n, name, fmt.Sprintf("%s + %s", a.expr, b.expr), "", ir.OpAdd, []int{a.node, b.node}, nil)
}

func (c *importer) mul(n *Node) {
	if _, ok := c.attrs(n); !ok || !c.onlyOutput(n) {
		return
	}
	a, ok := c.input(n, 0)
	if !ok {
		return
	}
	b, ok := c.input(n, 1)
	if !ok {
		return
	}
	if a.konst == nil && b.konst == nil {
		c.mulTensors(n, a, b) // import_ext.go
		return
	}
	if a.konst != nil {
		a, b = b, a
	}
	if a.konst != nil || b.konst == nil {
		c.fail(n, "Mul is supported with one operand a one-element constant (Kiln's mul scales by a constant)")
		return
	}
	_, data, ok := c.floats(n, b.konst)
	if !ok {
		return
	}
	if len(data) != 1 || len(b.konst.Dims) > len(c.shapeOf(a)) {
		c.fail(n, "Mul by constant %q of dims %v: only a one-element constant is supported", b.konst.Name, b.konst.Dims)
		return
	}
	if math.IsNaN(float64(data[0])) || math.IsInf(float64(data[0]), 0) {
		c.fail(n, "Mul by constant %q = %v: must be finite", b.konst.Name, data[0])
		return
	}
	s, v := fmtFloat(data[0])
	name := c.tempName("mul")
	c.emit(n, name, fmt.Sprintf("%s * %s", s, a.expr), "", ir.OpMul, []int{a.node}, ir.Attrs{"c": v})
}

func (c *importer) concat(n *Node) {
	as, ok := c.attrs(n, "axis")
	if !ok || !c.onlyOutput(n) {
		return
	}
	axis, ok := c.attrInt(n, as, "axis", math.MinInt64)
	if !ok {
		return
	}
	if axis == math.MinInt64 {
		c.fail(n, "attribute \"axis\" is required")
		return
	}
	if len(n.Inputs) == 0 {
		c.fail(n, "has no inputs")
		return
	}
	var args []int
	var exprs []string
	for k := range n.Inputs {
		v, ok := c.tensorInput(n, k)
		if !ok {
			return
		}
		args = append(args, v.node)
		exprs = append(exprs, v.expr)
	}
	rank := int64(len(c.g.Nodes[args[0]].Type.Shape))
	if axis < -rank || axis >= rank {
		c.fail(n, "attribute \"axis\" = %d is out of range for rank %d", axis, rank)
		return
	}
	if axis < 0 {
		axis += rank
	}
	expr := "concat(" + strings.Join(exprs, ", ")
	if axis != 1 {
		expr += fmt.Sprintf(", axis=%d", axis)
	}
	c.emit(n, c.tempName("concat"), expr+")", "", ir.OpConcat, args, ir.Attrs{"axis": int(axis)})
}

func (c *importer) pool(n *Node) {
	known := []string{"kernel_shape", "strides", "pads", "dilations", "auto_pad", "ceil_mode"}
	if n.OpType == "MaxPool" {
		known = append(known, "storage_order")
	} else {
		known = append(known, "count_include_pad")
	}
	as, ok := c.attrs(n, known...)
	if !ok || !c.onlyOutput(n) {
		return
	}
	x, ok := c.tensorInput(n, 0)
	if !ok {
		return
	}
	xs := c.shapeOf(x)
	if len(xs) != 4 {
		c.fail(n, "only 2-D pooling is supported (input %v)", xs)
		return
	}
	k64, ok := c.attrInts(n, as, "kernel_shape", 2, nil)
	if !ok {
		return
	}
	if k64 == nil {
		c.fail(n, "attribute \"kernel_shape\" is required")
		return
	}
	kernel := make([]int, 2)
	for i, v := range k64 {
		if v <= 0 || v > 1<<16 {
			c.fail(n, "attribute \"kernel_shape\" = %v must be positive", k64)
			return
		}
		kernel[i] = int(v)
	}
	ceil, ok := c.attrInt(n, as, "ceil_mode", 0)
	if !ok {
		return
	}
	stride, pad, ok := c.window(n, as, xs[2:], kernel, ceil != 0)
	if !ok {
		return
	}
	op := ir.OpMaxPool
	attrs := ir.Attrs{"kernel": kernel, "stride": stride, "pad": pad}
	expr := fmt.Sprintf("maxpool(%s, %dx%d", x.expr, kernel[0], kernel[1])
	if n.OpType == "AveragePool" {
		op = ir.OpAvgPool
		cip, ok := c.attrInt(n, as, "count_include_pad", 0)
		if !ok {
			return
		}
		attrs["count_include_pad"] = cip != 0 || pad[0] == 0 && pad[1] == 0
		expr = fmt.Sprintf("avgpool(%s, %dx%d", x.expr, kernel[0], kernel[1])
	}
	if stride[0] != kernel[0] || stride[1] != kernel[1] {
		expr += ", stride=" + pair(stride)
	}
	if pad[0] != 0 || pad[1] != 0 {
		expr += ", pad=" + pair(pad)
	}
	if b, ok := attrs["count_include_pad"].(bool); ok && !b {
		expr += ", count_include_pad=false"
	}
	c.emit(n, c.tempName(op), expr+")", "", op, []int{x.node}, attrs)
}

func (c *importer) flatten(n *Node) {
	as, ok := c.attrs(n, "axis")
	if !ok || !c.onlyOutput(n) {
		return
	}
	x, ok := c.tensorInput(n, 0)
	if !ok {
		return
	}
	axis, ok := c.attrInt(n, as, "axis", 1)
	if !ok {
		return
	}
	rank := int64(len(c.shapeOf(x)))
	if axis < 0 {
		axis += rank
	}
	if axis != 1 {
		c.fail(n, "attribute \"axis\" = %d: only flattening after the batch axis (axis 1) is supported", axis)
		return
	}
	c.emitFlatten(n, x)
}

func (c *importer) emitFlatten(n *Node, x *value) {
	c.emit(n, c.tempName("flatten"), fmt.Sprintf("flatten(%s)", x.expr), "", ir.OpFlatten, []int{x.node}, nil)
}

// reshape accepts a constant target shape that resolves to [N, rest] (what
// PyTorch writes for x.view(N, -1) with a constant batch) or to the input's
// own shape.
func (c *importer) reshape(n *Node) {
	as, ok := c.attrs(n, "allowzero")
	if !ok || !c.onlyOutput(n) {
		return
	}
	allowZero, ok := c.attrInt(n, as, "allowzero", 0)
	if !ok {
		return
	}
	x, ok := c.tensorInput(n, 0)
	if !ok {
		return
	}
	st, ok := c.constInput(n, 1, "shape")
	if !ok {
		return
	}
	target, err := st.IntData()
	if err != nil {
		c.fail(n, "input 1 (shape): %v", err)
		return
	}
	xs := c.shapeOf(x)
	numel := 1
	for _, d := range xs {
		numel *= d
	}
	// Resolve 0 (copy, unless allowzero) and one -1 (infer), as ONNX does.
	res := make([]int, len(target))
	infer, known := -1, 1
	for i, d := range target {
		switch {
		case d == 0 && allowZero == 0:
			if i >= len(xs) {
				c.fail(n, "shape %v copies dimension %d, which the input %v lacks", target, i, xs)
				return
			}
			res[i] = xs[i]
		case d == -1 && infer < 0:
			infer = i
			continue
		case d < 0 || d > 1<<40:
			c.fail(n, "shape %v is not valid", target)
			return
		default:
			res[i] = int(d)
		}
		if res[i] == 0 || known > numel/res[i] { // also keeps known*res[i] from overflowing
			c.fail(n, "shape %v does not fit the input %v", target, xs)
			return
		}
		known *= res[i]
	}
	if infer >= 0 {
		if known == 0 || numel%known != 0 {
			c.fail(n, "shape %v does not fit the input %v", target, xs)
			return
		}
		res[infer] = numel / known
	}
	switch {
	case ir.ShapeEqual(res, xs):
		c.vals[n.Outputs[0]] = x
	case len(res) == 2 && res[0] == xs[0] && res[0]*res[1] == numel:
		c.emitFlatten(n, x)
	default:
		c.emitReshape(n, x, res) // resize.go
	}
}

// gemm maps Y = alpha * A * op(B) + beta * C with a constant B and C to dense:
// weight = alpha * op(B)^T ([out, in]), bias = beta * C broadcast to [out].
func (c *importer) gemm(n *Node) {
	as, ok := c.attrs(n, "alpha", "beta", "transA", "transB")
	if !ok || !c.onlyOutput(n) {
		return
	}
	alpha, ok1 := c.attrFloat(n, as, "alpha", 1)
	beta, ok2 := c.attrFloat(n, as, "beta", 1)
	transA, ok3 := c.attrInt(n, as, "transA", 0)
	transB, ok4 := c.attrInt(n, as, "transB", 0)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return
	}
	if transA != 0 {
		c.fail(n, "attribute \"transA\" = %d: only an untransposed input is supported", transA)
		return
	}
	x, ok := c.tensorInput(n, 0)
	if !ok {
		return
	}
	bt, ok := c.constInput(n, 1, "B")
	if !ok {
		return
	}
	ct, ok := c.optionalConst(n, 2, "C")
	if !ok {
		return
	}
	c.dense(n, x, bt, transB != 0, alpha, ct, beta)
}

// matmul maps A * B with a constant 2-D B to dense; when the only user of the
// product is an Add of a constant vector, that Add is the bias (PyTorch's
// nn.Linear at opset >= 14 without Gemm) and is converted with it.
func (c *importer) matmul(n *Node) {
	if _, ok := c.attrs(n); !ok || !c.onlyOutput(n) {
		return
	}
	x, ok := c.tensorInput(n, 0)
	if !ok {
		return
	}
	bt, ok := c.constInput(n, 1, "B")
	if !ok {
		return
	}
	var ct *TensorProto
	if us := c.uses[n.Outputs[0]]; len(us) == 1 && !c.outs[n.Outputs[0]] {
		add := c.m.Graph.Nodes[us[0]]
		if add.OpType == "Add" && (add.Domain == "" || add.Domain == "ai.onnx") && len(add.Inputs) == 2 && len(add.Outputs) >= 1 && len(add.Attrs) == 0 {
			other := add.Inputs[1]
			if other == n.Outputs[0] {
				other = add.Inputs[0]
			}
			if v, ok := c.vals[other]; ok && v.konst != nil && other != n.Outputs[0] {
				ct = v.konst
				c.skip[add.Index] = true
				defer func() {
					if v, ok := c.vals[n.Outputs[0]]; ok {
						c.vals[add.Outputs[0]] = v
					}
				}()
			}
		}
	}
	c.dense(n, x, bt, false, 1, ct, 1)
}

func (c *importer) dense(n *Node, x *value, bt *TensorProto, transB bool, alpha float32, ct *TensorProto, beta float32) {
	xs := c.shapeOf(x)
	if len(xs) != 2 {
		c.fail(n, "input %v: only a 2-D input is supported (flatten first)", xs)
		return
	}
	bdims, bdata, ok := c.floats(n, bt)
	if !ok {
		return
	}
	if len(bdims) != 2 {
		c.fail(n, "weight %q has dims %v; want 2-D", bt.Name, bdims)
		return
	}
	in, out := bdims[0], bdims[1]
	if transB {
		out, in = bdims[0], bdims[1]
	}
	w := make([]float32, len(bdata))
	for o := 0; o < out; o++ {
		for i := 0; i < in; i++ {
			v := bdata[i*out+o]
			if transB {
				v = bdata[o*in+i]
			}
			w[o*in+i] = alpha * v
		}
	}
	inits := []string{bt.Name}
	if ct != nil {
		inits = append(inits, ct.Name)
	}
	name := c.layerName(n, inits)
	src := bt.Name
	if !transB {
		src += " (transposed)"
	}
	if alpha != 1 {
		src += fmt.Sprintf(" (times alpha %v)", alpha)
	}
	wid, ok := c.param(n, name+".weight", []int{out, in}, w, src, false)
	if !ok {
		return
	}
	args := []int{x.node, wid}
	expr := fmt.Sprintf("dense(%s, %d)", x.expr, out)
	if ct != nil {
		cdims, cdata, ok := c.floats(n, ct)
		if !ok {
			return
		}
		okShape := len(cdata) == 1 || len(cdata) == out && (len(cdims) == 1 || len(cdims) == 2 && cdims[0] == 1)
		if !okShape {
			c.fail(n, "bias %q has dims %v; want [%d] or [1, %d]", ct.Name, cdims, out, out)
			return
		}
		b := make([]float32, out)
		for o := range b {
			b[o] = beta * cdata[o%len(cdata)]
		}
		bsrc := ct.Name
		if beta != 1 {
			bsrc += fmt.Sprintf(" (times beta %v)", beta)
		}
		bid, ok := c.param(n, name+".bias", []int{out}, b, bsrc, false)
		if !ok {
			return
		}
		args = append(args, bid)
	} else {
		expr = fmt.Sprintf("dense(%s, %d, bias=false)", x.expr, out)
	}
	c.emit(n, name, expr, fmt.Sprintf("%s %q: %s", n.OpType, n.Name, strings.Join(inits, ", ")), ir.OpDense, args, nil)
}

func (c *importer) softmax(n *Node) {
	as, ok := c.attrs(n, "axis")
	if !ok || !c.onlyOutput(n) {
		return
	}
	x, ok := c.tensorInput(n, 0)
	if !ok {
		return
	}
	rank := int64(len(c.shapeOf(x)))
	def := int64(-1)
	if c.opset < 13 {
		def = 1
	}
	axis, ok := c.attrInt(n, as, "axis", def)
	if !ok {
		return
	}
	if axis < -rank || axis >= rank {
		c.fail(n, "attribute \"axis\" = %d is out of range for rank %d", axis, rank)
		return
	}
	if axis < 0 {
		axis += rank
	}
	if c.opset < 13 && axis != rank-1 {
		c.fail(n, "attribute \"axis\" = %d: before opset 13 Softmax flattens the axes from %d on; only the last axis is supported", axis, axis)
		return
	}
	expr := fmt.Sprintf("softmax(%s)", x.expr)
	if axis != 1 {
		expr = fmt.Sprintf("softmax(%s, axis=%d)", x.expr, axis)
	}
	c.emit(n, c.tempName("softmax"), expr, "", ir.OpSoftmax, []int{x.node}, ir.Attrs{"axis": int(axis)})
}

// finish writes the source, elaborates it, and checks it against the graph
// built during conversion.
func (c *importer) finish(name, inName string, out *value) (*Imported, error) {
	in := c.g.Inputs()[0]
	dims := func(s []int) string {
		parts := []string{"N"}
		for _, d := range s[1:] {
			parts = append(parts, strconv.Itoa(d))
		}
		return "f32[" + strings.Join(parts, ", ") + "]"
	}
	outShape := c.g.Nodes[out.node].Type.Shape
	var b strings.Builder
	fmt.Fprintf(&b, "# Imported from %s by kiln import: producer %q %s, ONNX IR version %d, opset %d,\n",
		baseName(c.opts.Source), c.m.ProducerName, c.m.ProducerVersion, c.m.IRVersion, c.opset)
	fmt.Fprintf(&b, "# graph %q: %d nodes, %d initializers.\n", c.m.Graph.Name, len(c.m.Graph.Nodes), len(c.m.Graph.Initializers))
	b.WriteString("#\n")
	b.WriteString("# Weights: a statement P = conv2d(...), batchnorm(...) or dense(...) creates\n")
	b.WriteString("# P.weight and P.bias (batchnorm also P.running_mean, P.running_var); the\n")
	b.WriteString("# weights file kiln import writes holds them under these names. The comment\n")
	b.WriteString("# on each such line names the ONNX node and the initializers it reads.\n\n")
	fmt.Fprintf(&b, "block %s_body(x) {\n", name)
	for _, l := range c.lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "    return %s\n}\n\n", out.expr)
	fmt.Fprintf(&b, "network %s(%s: %s) -> %s {\n    return %s_body(%s)\n}\n", name, inName, dims(in.Type.Shape), dims(outShape), name, inName)
	src := []byte(b.String())

	g, err := dsl.Load(name+".kiln", src, dsl.Options{Batch: in.Type.Shape[0]})
	if err != nil {
		return nil, fmt.Errorf("%s: internal error: the imported source does not elaborate: %v", c.opts.Source, err)
	}
	want := map[string]string{}
	for _, p := range c.g.Params() {
		want[p.Name] = ir.ShapeString(p.Type.Shape)
	}
	got := map[string]string{}
	for _, p := range g.Params() {
		got[p.Name] = ir.ShapeString(p.Type.Shape)
	}
	if len(got) != len(want) {
		return nil, fmt.Errorf("%s: internal error: the imported source has %d parameters, the import made %d", c.opts.Source, len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			return nil, fmt.Errorf("%s: internal error: parameter %s is %q in the source, %s in the import", c.opts.Source, k, got[k], v)
		}
	}
	if gs := g.Nodes[g.Outputs[0]].Type.Shape; !ir.ShapeEqual(gs, outShape) {
		return nil, fmt.Errorf("%s: internal error: the imported source's output is %s, the import's %s", c.opts.Source, ir.ShapeString(gs), ir.ShapeString(outShape))
	}
	return &Imported{Source: src, Weights: c.weights, Names: c.names, Graph: g}, nil
}

// NamesJSON returns Names as a JSON object (kiln name → ONNX initializer),
// for the weights file's metadata.
func (im *Imported) NamesJSON() string {
	b, _ := json.Marshal(im.Names)
	return string(b)
}

func baseName(p string) string {
	if k := strings.LastIndexAny(p, `/\`); k >= 0 {
		return p[k+1:]
	}
	return p
}
