package onnx

import "math"

// Shape arithmetic at import time. PyTorch's exporter writes
// x.view(x.size(0), -1) with a symbolic batch as the chain
//
//	Shape(x) -> Gather(indices=0) -> Unsqueeze(axes=[0]) -> Concat(.., [-1]) -> Reshape(x, ..)
//
// The importer binds every dimension (the batch from --batch), so each link
// is a constant: Shape yields the int64 dims of its input, and Gather,
// Unsqueeze, Squeeze and Concat over constants are evaluated here as ONNX
// defines them (Operators.md), producing constants that Reshape then reads as
// its shape input. Only integer and float constants of rank at most 1 for
// Gather's data and Concat are folded; anything else is reported at the node.
// A shape folded this way records the import's batch, so a Reshape that is
// not a flatten is written with that batch (kiln import --batch sets it).

// maxFoldElems bounds the constants folded here (shape vectors are tiny).
const maxFoldElems = 1 << 16

// shapeConst folds Shape: the dims of a computed value or of a constant, as
// a 1-D int64 constant; opset 15's start and end attributes slice them.
func (c *importer) shapeConst(n *Node) {
	as, ok := c.attrs(n, "start", "end")
	if !ok || !c.onlyOutput(n) {
		return
	}
	v, ok := c.input(n, 0)
	if !ok {
		return
	}
	var dims []int64
	if v.konst != nil {
		dims = append(dims, v.konst.Dims...)
	} else {
		for _, d := range c.shapeOf(v) {
			dims = append(dims, int64(d))
		}
	}
	r := int64(len(dims))
	start, ok := c.attrInt(n, as, "start", 0)
	if !ok {
		return
	}
	end, ok := c.attrInt(n, as, "end", r)
	if !ok {
		return
	}
	clamp := func(i int64) int64 {
		if i < 0 {
			i += r
		}
		return max(0, min(i, r))
	}
	start, end = clamp(start), clamp(end)
	if end < start {
		end = start
	}
	out := append([]int64(nil), dims[start:end]...)
	c.setConst(n, &TensorProto{DataType: dataTypeInt64, Dims: []int64{int64(len(out))}, Int64s: out})
}

// gatherConst folds Gather over constants: 1-D data, scalar or 1-D indices (negative ones count from the end), axis 0.
func (c *importer) gatherConst(n *Node) {
	as, ok := c.attrs(n, "axis")
	if !ok || !c.onlyOutput(n) {
		return
	}
	axis, ok := c.attrInt(n, as, "axis", 0)
	if !ok {
		return
	}
	data, ok := c.foldInput(n, 0, "data")
	if !ok {
		return
	}
	idx, ok := c.foldInput(n, 1, "indices")
	if !ok {
		return
	}
	if len(data.Dims) != 1 || (axis != 0 && axis != -1) {
		c.fail(n, "kiln import folds Gather only on 1-D constant data along axis 0 (data dims %v, axis %d)", data.Dims, axis)
		return
	}
	if len(idx.Dims) > 1 {
		c.fail(n, "kiln import folds Gather only with scalar or 1-D indices (dims %v)", idx.Dims)
		return
	}
	is, err := idx.IntData()
	if err != nil {
		c.fail(n, "input 1 (indices): %v", err)
		return
	}
	vals, isInt, ok := c.constValues(n, data, "data")
	if !ok {
		return
	}
	m := int64(len(vals))
	out := make([]float64, len(is))
	for i, k := range is {
		if k < -m || k >= m {
			c.fail(n, "index %d is out of range for %d elements", k, m)
			return
		}
		if k < 0 {
			k += m
		}
		out[i] = vals[k]
	}
	dims := append([]int64(nil), idx.Dims...) // rank 0 indices: a scalar
	c.setConst(n, makeConst(out, dims, isInt))
}

// unsqueezeConst folds Unsqueeze and Squeeze of a constant: the values
// stay, the dims gain (lose) the axes given as input 1 (opset 13+) or as
// the axes attribute (before 13).
func (c *importer) unsqueezeConst(n *Node) {
	as, ok := c.attrs(n, "axes")
	if !ok || !c.onlyOutput(n) {
		return
	}
	data, ok := c.foldInput(n, 0, "data")
	if !ok {
		return
	}
	var axes []int64
	if len(n.Inputs) > 1 && n.Inputs[1] != "" {
		t, ok := c.constInput(n, 1, "axes")
		if !ok {
			return
		}
		a, err := t.IntData()
		if err != nil {
			c.fail(n, "input 1 (axes): %v", err)
			return
		}
		axes = a
	} else if a, ok := as["axes"]; ok {
		axes = a.Ints
	}
	dims := append([]int64(nil), data.Dims...)
	if n.OpType == "Unsqueeze" {
		r := int64(len(dims) + len(axes))
		out := make([]int64, r)
		set := make([]bool, r)
		for _, a := range axes {
			if a < -r || a >= r {
				c.fail(n, "axis %d is out of range for rank %d", a, r)
				return
			}
			if a < 0 {
				a += r
			}
			if set[a] {
				c.fail(n, "axis %d is repeated", a)
				return
			}
			set[a], out[a] = true, 1
		}
		k := 0
		for i := range out {
			if !set[i] {
				out[i] = dims[k]
				k++
			}
		}
		dims = out
	} else { // Squeeze: the given axes, or every 1
		r := int64(len(dims))
		drop := make([]bool, r)
		for _, a := range axes {
			if a < -r || a >= r {
				c.fail(n, "axis %d is out of range for rank %d", a, r)
				return
			}
			if a < 0 {
				a += r
			}
			if dims[a] != 1 {
				c.fail(n, "axis %d has size %d, not 1", a, dims[a])
				return
			}
			drop[a] = true
		}
		var out []int64
		for i, d := range dims {
			if !drop[i] && (len(axes) > 0 || d != 1) {
				out = append(out, d)
			}
		}
		dims = out
	}
	t := *data
	t.Dims, t.Name = dims, n.Outputs[0]
	c.setConst(n, &t)
}

// concatConst folds a Concat whose inputs are all 1-D (or scalar)
// constants.
func (c *importer) concatConst(n *Node) {
	as, ok := c.attrs(n, "axis")
	if !ok || !c.onlyOutput(n) {
		return
	}
	axis, ok := c.attrInt(n, as, "axis", 0)
	if !ok {
		return
	}
	if axis != 0 && axis != -1 {
		c.fail(n, "kiln import folds Concat of constants along axis 0 only (axis %d)", axis)
		return
	}
	var out []float64
	allInt := true
	for k := range n.Inputs {
		t, ok := c.foldInput(n, k, "input")
		if !ok {
			return
		}
		if len(t.Dims) > 1 {
			c.fail(n, "kiln import folds Concat of constants of rank 1 only (input %d has dims %v)", k, t.Dims)
			return
		}
		vals, isInt, ok := c.constValues(n, t, "input")
		if !ok {
			return
		}
		if len(out)+len(vals) > maxFoldElems {
			c.fail(n, "the folded constant would have over %d elements", maxFoldElems)
			return
		}
		allInt = allInt && isInt
		out = append(out, vals...)
	}
	c.setConst(n, makeConst(out, []int64{int64(len(out))}, allInt))
}

// allConst reports whether every input of n is a constant (so that Concat
// is folded rather than converted to concat).
func (c *importer) allConst(n *Node) bool {
	if len(n.Inputs) == 0 {
		return false
	}
	for _, in := range n.Inputs {
		v, ok := c.vals[in]
		if !ok || v.konst == nil {
			return false
		}
	}
	return true
}

// foldInput returns constant input k for folding, bounded in size.
func (c *importer) foldInput(n *Node, k int, what string) (*TensorProto, bool) {
	v, ok := c.input(n, k)
	if !ok {
		return nil, false
	}
	if v.konst == nil {
		c.fail(n, "input %d (%s, %q) is a computed tensor; kiln import folds %s only over constants and shapes", k, what, n.Inputs[k], n.OpType)
		return nil, false
	}
	if e, err := v.konst.Numel(); err != nil || e > maxFoldElems {
		c.fail(n, "input %d (%s): too large or malformed to fold", k, what)
		return nil, false
	}
	return v.konst, true
}

// constValues returns t's values as float64 (exact for the integers of a
// shape) and whether t is an integer tensor.
func (c *importer) constValues(n *Node, t *TensorProto, what string) ([]float64, bool, bool) {
	switch t.DataType {
	case dataTypeInt64, dataTypeInt32:
		is, err := t.IntData()
		if err != nil {
			c.fail(n, "%s: %v", what, err)
			return nil, false, false
		}
		out := make([]float64, len(is))
		for i, v := range is {
			out[i] = float64(v)
		}
		return out, true, true
	case dataTypeFloat:
		fs, err := t.FloatData()
		if err != nil {
			c.fail(n, "%s: %v", what, err)
			return nil, false, false
		}
		out := make([]float64, len(fs))
		for i, v := range fs {
			out[i] = float64(v)
		}
		return out, false, true
	}
	c.fail(n, "%s has element type %s; kiln import folds int32, int64 and float constants", what, dataTypeName(t.DataType))
	return nil, false, false
}

// makeConst builds an int64 (isInt) or float32 constant.
func makeConst(vals []float64, dims []int64, isInt bool) *TensorProto {
	if isInt {
		is := make([]int64, len(vals))
		for i, v := range vals {
			is[i] = int64(math.Round(v))
		}
		return &TensorProto{DataType: dataTypeInt64, Dims: dims, Int64s: is}
	}
	fs := make([]float32, len(vals))
	for i, v := range vals {
		fs[i] = float32(v)
	}
	return &TensorProto{DataType: dataTypeFloat, Dims: dims, Floats: fs}
}

// setConst binds n's output to the folded constant t.
func (c *importer) setConst(n *Node, t *TensorProto) {
	t.Name, t.path = n.Outputs[0], describe(n)
	c.vals[n.Outputs[0]] = &value{node: -1, konst: t}
}

// foldedOps are the ops this file folds, for the convert switch.
var foldedOps = map[string]func(c *importer, n *Node){
	"Shape":     (*importer).shapeConst,
	"Gather":    (*importer).gatherConst,
	"Unsqueeze": (*importer).unsqueezeConst,
	"Squeeze":   (*importer).unsqueezeConst,
}

// convertFolded converts n if it is a shape-arithmetic node (or a Concat of
// constants) and reports whether it did.
func (c *importer) convertFolded(n *Node) bool {
	if f, ok := foldedOps[n.OpType]; ok {
		f(c, n)
		return true
	}
	if n.OpType == "Concat" && c.allConst(n) {
		c.concatConst(n)
		return true
	}
	return false
}
