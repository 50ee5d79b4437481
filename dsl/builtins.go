package dsl

import (
	"fmt"
	"math"

	"github.com/alecthomas/participle/v2/lexer"

	"github.com/kiln-dev/kiln/ir"
)

// sig is a function signature: its parameters in positional order.
type sig struct {
	name   string
	params []sigParam
	// variadic: all positional arguments are collected (concat); params
	// then lists the keyword-only parameters.
	variadic bool
}

type sigParam struct {
	name     string
	required bool
}

func (s *sig) index(name string) int {
	for i, p := range s.params {
		if p.name == name {
			return i
		}
	}
	return -1
}

// builtin is a primitive function.
type builtin struct {
	sig sig
	fn  func(c *bcall) value
}

// argVal is an evaluated call argument.
type argVal struct {
	pos lexer.Position
	v   value
}

// bcall is one builtin invocation: bound arguments by parameter index (nil
// when absent, so the default applies), variadic ones in rest. Accessors
// report kind and range errors at the argument and set failed.
type bcall struct {
	e      *elab
	name   string
	pos    lexer.Position
	scope  string
	args   []*argVal
	rest   []*argVal
	failed bool
}

func params(names ...string) []sigParam {
	out := make([]sigParam, len(names))
	for i, n := range names {
		req := n[len(n)-1] == '!'
		if req {
			n = n[:len(n)-1]
		}
		out[i] = sigParam{name: n, required: req}
	}
	return out
}

var builtins map[string]*builtin

func init() {
	builtins = map[string]*builtin{}
	def := func(name string, variadic bool, ps []sigParam, fn func(c *bcall) value) {
		builtins[name] = &builtin{sig: sig{name: name, params: ps, variadic: variadic}, fn: fn}
	}
	def("conv2d", false, params("x!", "out!", "kernel!", "stride", "pad", "groups", "bias", "dilation"), bConv2D)
	def("batchnorm", false, params("x!", "eps"), bBatchNorm)
	def("dense", false, params("x!", "out!", "bias"), bDense)
	def("relu", false, params("x!"), unaryOp(ir.OpReLU))
	def("global_avgpool", false, params("x!"), unaryOp(ir.OpGlobalAvgPool))
	def("flatten", false, params("x!"), unaryOp(ir.OpFlatten))
	def("maxpool", false, params("x!", "kernel!", "stride", "pad"), bPool(ir.OpMaxPool))
	def("avgpool", false, params("x!", "kernel!", "stride", "pad", "count_include_pad"), bPool(ir.OpAvgPool))
	def("dropout", false, params("x!", "p"), bDropout)
	def("softmax", false, params("x!", "axis"), bSoftmax)
	def("concat", true, params("axis"), bConcat)
	def("channels", false, params("x!"), bChannels)
	defExtBuiltins() // builtins_ext.go: sigmoid, tanh, silu, hardswish, clip, relu6, global_maxpool
	// builtins_shape.go: upsample, reshape.
	defShapeBuiltins()
}

func (c *bcall) fail(a *argVal, format string, args ...any) {
	pos := c.pos
	if a != nil {
		pos = a.pos
	}
	c.e.report(pos, c.name+": "+fmt.Sprintf(format, args...))
	c.failed = true
}

func (c *bcall) paramName(i int) string { return builtins[c.name].sig.params[i].name }

func (c *bcall) describe(v value) string { return v.format(c.e.typeString) }

// get returns argument i, or nil if absent. A poison argument fails the call
// silently.
func (c *bcall) get(i int) *argVal {
	a := c.args[i]
	if a != nil && a.v.isPoison() {
		c.failed = true
		return nil
	}
	return a
}

func (c *bcall) tensor(i int) int {
	a := c.get(i)
	if a == nil {
		return -1
	}
	if a.v.k != kTensor {
		c.fail(a, "%s must be a tensor, got %s", c.paramName(i), c.describe(a.v))
		return -1
	}
	return a.v.node
}

// toInt converts a number to an int; floats must be integral.
func toInt(v value) (int, bool) {
	switch v.k {
	case kInt:
		return v.i, true
	case kFloat:
		if v.f == math.Trunc(v.f) && math.Abs(v.f) < 1<<53 {
			return int(v.f), true
		}
	}
	return 0, false
}

// size returns a size argument (channels, groups): an int >= min and within
// the size limit.
func (c *bcall) size(i, def, min int) int {
	a := c.get(i)
	if a == nil {
		return def
	}
	n, ok := toInt(a.v)
	if !ok {
		c.fail(a, "%s must be an int, got %s", c.paramName(i), c.describe(a.v))
		return def
	}
	c.checkRange(a, c.paramName(i), n, min)
	return n
}

func (c *bcall) checkRange(a *argVal, what string, n, min int) {
	switch {
	case n < min && min == 1:
		c.fail(a, "%s must be positive, got %d", what, n)
	case n < min:
		c.fail(a, "%s must not be negative, got %d", what, n)
	case n > c.e.lim.MaxSize:
		c.fail(a, "%s %d exceeds the size limit %d", what, n, c.e.lim.MaxSize)
	}
}

// pair returns a window argument (kernel, stride, pad): an int n meaning
// (n, n), a kernel literal HxW or a tuple (h, w), each element >= min.
func (c *bcall) pair(i int, def []int, min int) []int {
	a := c.get(i)
	if a == nil {
		return def
	}
	var out []int
	switch a.v.k {
	case kInt, kFloat:
		if n, ok := toInt(a.v); ok {
			out = []int{n, n}
		}
	case kTuple:
		if len(a.v.elems) == 2 {
			h, ok1 := toInt(a.v.elems[0])
			w, ok2 := toInt(a.v.elems[1])
			if ok1 && ok2 {
				out = []int{h, w}
			}
		}
	}
	if out == nil {
		c.fail(a, "%s must be an int or a pair (h, w), got %s", c.paramName(i), c.describe(a.v))
		return def
	}
	for _, n := range out {
		if n < min || n > c.e.lim.MaxSize {
			c.checkRange(a, c.paramName(i), n, min)
			break
		}
	}
	return out
}

func (c *bcall) boolean(i int, def bool) bool {
	a := c.get(i)
	if a == nil {
		return def
	}
	if a.v.k != kBool {
		c.fail(a, "%s must be a bool, got %s", c.paramName(i), c.describe(a.v))
		return def
	}
	return a.v.b
}

func (c *bcall) float(i int, def float64) float64 {
	a := c.get(i)
	if a == nil {
		return def
	}
	if !a.v.isNum() {
		c.fail(a, "%s must be a number, got %s", c.paramName(i), c.describe(a.v))
		return def
	}
	return a.v.num()
}

// shape returns the shape of tensor node x, or nil if x is -1.
func (c *bcall) shape(x int) []int {
	if x < 0 {
		return nil
	}
	return c.e.g.Nodes[x].Type.Shape
}

// param creates the parameter scope.suffix; after one failure the call's
// remaining parameters are skipped, so a clash is reported once per call.
func (c *bcall) param(suffix string, shape []int, buffer bool) int {
	if c.failed {
		return -1
	}
	id := c.e.param(c.pos, join(c.scope, suffix), shape, buffer)
	if id < 0 {
		c.failed = true
	}
	return id
}

func (c *bcall) node(op string, args []int, attrs ir.Attrs) value {
	return c.e.node(c.pos, op, c.scope, args, attrs)
}

func unaryOp(op string) func(c *bcall) value {
	return func(c *bcall) value {
		x := c.tensor(0)
		if c.failed {
			return poison
		}
		return c.node(op, []int{x}, nil)
	}
}

func bConv2D(c *bcall) value {
	x := c.tensor(0)
	out := c.size(1, 1, 1)
	k := c.pair(2, nil, 1)
	stride := c.pair(3, []int{1, 1}, 1)
	pad := c.pair(4, []int{0, 0}, 0)
	groups := c.size(5, 1, 1)
	bias := c.boolean(6, true)
	dilation := c.pair(7, []int{1, 1}, 1)
	if c.failed {
		return poison
	}
	xs := c.shape(x)
	if len(xs) != 4 {
		c.fail(nil, "input must be a 4-D tensor (N, C, H, W), got %s", c.e.typeString(x))
		return poison
	}
	if xs[1]%groups != 0 || out%groups != 0 {
		c.fail(nil, "groups %d must divide the input channels %d and out %d", groups, xs[1], out)
		return poison
	}
	args := []int{x, c.param("weight", []int{out, xs[1] / groups, k[0], k[1]}, false)}
	if bias {
		args = append(args, c.param("bias", []int{out}, false))
	}
	if c.e.anyFailed(args) {
		return poison
	}
	return c.node(ir.OpConv2D, args, ir.Attrs{"stride": stride, "pad": pad, "groups": groups, "dilation": dilation})
}

func bBatchNorm(c *bcall) value {
	x := c.tensor(0)
	eps := c.float(1, 1e-5)
	if !c.failed && !(eps > 0) {
		c.fail(c.args[1], "eps must be positive, got %g", eps)
	}
	if c.failed {
		return poison
	}
	xs := c.shape(x)
	if len(xs) < 2 {
		c.fail(nil, "input must have rank >= 2, got %s", c.e.typeString(x))
		return poison
	}
	ch := []int{xs[1]}
	args := []int{x, c.param("weight", ch, false), c.param("bias", ch, false),
		c.param("running_mean", ch, true), c.param("running_var", ch, true)}
	if c.e.anyFailed(args) {
		return poison
	}
	return c.node(ir.OpBatchNorm, args, ir.Attrs{"eps": eps})
}

func bDense(c *bcall) value {
	x := c.tensor(0)
	out := c.size(1, 1, 1)
	bias := c.boolean(2, true)
	if c.failed {
		return poison
	}
	xs := c.shape(x)
	if len(xs) != 2 {
		c.fail(nil, "input must be a 2-D tensor (N, features), got %s; flatten it first", c.e.typeString(x))
		return poison
	}
	args := []int{x, c.param("weight", []int{out, xs[1]}, false)}
	if bias {
		args = append(args, c.param("bias", []int{out}, false))
	}
	if c.e.anyFailed(args) {
		return poison
	}
	return c.node(ir.OpDense, args, nil)
}

func bPool(op string) func(c *bcall) value {
	return func(c *bcall) value {
		x := c.tensor(0)
		k := c.pair(1, nil, 1)
		stride := c.pair(2, k, 1)
		pad := c.pair(3, []int{0, 0}, 0)
		attrs := ir.Attrs{"kernel": k, "stride": stride, "pad": pad}
		if op == ir.OpAvgPool {
			attrs["count_include_pad"] = c.boolean(4, true)
		}
		if c.failed {
			return poison
		}
		return c.node(op, []int{x}, attrs)
	}
}

func bDropout(c *bcall) value {
	x := c.tensor(0)
	p := c.float(1, 0)
	if !c.failed && !(p >= 0 && p < 1) {
		c.fail(c.args[1], "p must be in [0, 1), got %g", p)
	}
	if c.failed {
		return poison
	}
	return c.node(ir.OpDropout, []int{x}, ir.Attrs{"p": p})
}

func bSoftmax(c *bcall) value {
	x := c.tensor(0)
	axis := c.size(1, 1, 0)
	if c.failed {
		return poison
	}
	return c.node(ir.OpSoftmax, []int{x}, ir.Attrs{"axis": axis})
}

func bConcat(c *bcall) value {
	axis := c.size(0, 1, 0)
	var xs []int
	for _, a := range c.rest {
		if a.v.isPoison() {
			c.failed = true
			continue
		}
		if a.v.k != kTensor {
			c.fail(a, "operands must be tensors, got %s", c.describe(a.v))
			continue
		}
		xs = append(xs, a.v.node)
	}
	if len(c.rest) == 0 {
		c.fail(nil, "needs at least one tensor")
	}
	if c.failed {
		return poison
	}
	return c.node(ir.OpConcat, xs, ir.Attrs{"axis": axis})
}

func bChannels(c *bcall) value {
	x := c.tensor(0)
	if c.failed {
		return poison
	}
	xs := c.shape(x)
	if len(xs) < 2 {
		c.fail(nil, "input must have rank >= 2, got %s", c.e.typeString(x))
		return poison
	}
	return intVal(xs[1])
}
