package ir

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// Op names. The op table (table below) is the single source of truth for each
// op's operands, attributes, shape rule and cost.
const (
	OpInput         = "input"
	OpParam         = "param"
	OpConv2D        = "conv2d"
	OpBatchNorm     = "batchnorm"
	OpReLU          = "relu"
	OpAdd           = "add"
	OpMul           = "mul"
	OpConcat        = "concat"
	OpMaxPool       = "maxpool"
	OpAvgPool       = "avgpool"
	OpGlobalAvgPool = "global_avgpool"
	OpFlatten       = "flatten"
	OpDense         = "dense"
	OpDropout       = "dropout"
	OpSoftmax       = "softmax"
)

// AttrKind is the type of an attribute value.
type AttrKind int

// Attribute kinds and the Go type stored in Attrs for each.
const (
	AttrInt    AttrKind = iota + 1 // int
	AttrFloat                      // float64
	AttrBool                       // bool
	AttrInts                       // []int
	AttrString                     // string
)

func (k AttrKind) String() string {
	switch k {
	case AttrInt:
		return "int"
	case AttrFloat:
		return "float"
	case AttrBool:
		return "bool"
	case AttrInts:
		return "int list"
	case AttrString:
		return "string"
	}
	return "?"
}

// Attrs maps attribute names to values of the Go types listed under AttrKind.
type Attrs map[string]any

// Int returns an int attribute (0 if absent).
func (a Attrs) Int(k string) int { v, _ := a[k].(int); return v }

// Float returns a float attribute (0 if absent).
func (a Attrs) Float(k string) float64 { v, _ := a[k].(float64); return v }

// Bool returns a bool attribute (false if absent).
func (a Attrs) Bool(k string) bool { v, _ := a[k].(bool); return v }

// Ints returns an int-list attribute (nil if absent).
func (a Attrs) Ints(k string) []int { v, _ := a[k].([]int); return v }

// String returns a string attribute ("" if absent).
func (a Attrs) String(k string) string { v, _ := a[k].(string); return v }

// AttrDef declares one attribute of an op.
type AttrDef struct {
	Name string
	Kind AttrKind
	// Default is used when the attribute is absent; nil means required.
	Default any
	// Len is the required length of an int list (0: any).
	Len int
	// Check validates the value (optional).
	Check func(v any) error
}

// OpDef describes an op: its operands, attributes, shape rule and cost.
type OpDef struct {
	Name string
	// Operands names the operands, for messages and docs. Optional trailing
	// operands are those past MinArgs.
	Operands []string
	MinArgs  int
	MaxArgs  int // -1: variadic
	Attrs    []AttrDef
	// Infer computes the result type from the operand types and attributes.
	Infer func(n *Node, args []Type) (Type, error)
	// InferResults, set instead of Infer for ops with several results,
	// computes the type of every result (at least two; see multi.go).
	InferResults func(n *Node, args []Type) ([]Type, error)
	// MACs counts multiply-accumulates (conv and dense only), nil for zero.
	MACs func(n *Node, args []Type) int64
	// Layouts checks the operand layouts (operands are the operand nodes)
	// against the result layout out; nil means every operand has the
	// result's layout. See rules.go.
	Layouts func(n *Node, operands []*Node, out Layout) error
	// DTypes lists the result dtypes the op accepts (operands always share
	// the result's dtype); nil accepts every dtype.
	DTypes []DType
	// Doc is a one-line description.
	Doc string
}

func (d *OpDef) arity() string {
	switch {
	case d.MaxArgs < 0:
		return fmt.Sprintf("want at least %d operands", d.MinArgs)
	case d.MinArgs == d.MaxArgs:
		return fmt.Sprintf("want %d operands (%s)", d.MinArgs, strings.Join(d.Operands, ", "))
	default:
		return fmt.Sprintf("want %d to %d operands (%s)", d.MinArgs, d.MaxArgs, strings.Join(d.Operands, ", "))
	}
}

// Attr returns the declaration of attribute name, or nil.
func (d *OpDef) Attr(name string) *AttrDef {
	for i := range d.Attrs {
		if d.Attrs[i].Name == name {
			return &d.Attrs[i]
		}
	}
	return nil
}

func (d *OpDef) checkAttrs(n *Node, fill bool) error {
	for k := range n.Attrs {
		if d.Attr(k) == nil {
			return Errorf(n.Pos, "%s: unknown attribute %q", n.Op, k)
		}
	}
	for _, a := range d.Attrs {
		v, ok := n.Attrs[a.Name]
		if !ok {
			if a.Default == nil {
				return Errorf(n.Pos, "%s: missing attribute %q", n.Op, a.Name)
			}
			if !fill {
				return Errorf(n.Pos, "%s: attribute %q not set", n.Op, a.Name)
			}
			if n.Attrs == nil {
				n.Attrs = Attrs{}
			}
			v = a.Default
			if l, isList := v.([]int); isList {
				v = append([]int(nil), l...)
			}
			n.Attrs[a.Name] = v
		}
		if err := checkKind(a, v); err != nil {
			return Errorf(n.Pos, "%s: attribute %s: %v", n.Op, a.Name, err)
		}
		if a.Check != nil {
			if err := a.Check(v); err != nil {
				return Errorf(n.Pos, "%s: attribute %s: %v", n.Op, a.Name, err)
			}
		}
	}
	return nil
}

func checkKind(a AttrDef, v any) error {
	ok := false
	switch a.Kind {
	case AttrInt:
		_, ok = v.(int)
	case AttrFloat:
		var f float64
		f, ok = v.(float64)
		if ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
			return fmt.Errorf("must be finite, got %v", f)
		}
	case AttrBool:
		_, ok = v.(bool)
	case AttrString:
		_, ok = v.(string)
	case AttrInts:
		var l []int
		l, ok = v.([]int)
		if ok && a.Len > 0 && len(l) != a.Len {
			return fmt.Errorf("want %d values, got %d", a.Len, len(l))
		}
	}
	if !ok {
		return fmt.Errorf("want %s, got %T", a.Kind, v)
	}
	return nil
}

var table = map[string]*OpDef{}

// Lookup returns the definition of op, or nil.
func Lookup(op string) *OpDef { return table[op] }

// Ops returns all op names, sorted.
func Ops() []string {
	var out []string
	for k := range table {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func register(d *OpDef) { table[d.Name] = d }

func positive(v any) error {
	for _, x := range asInts(v) {
		if x <= 0 {
			return fmt.Errorf("must be positive, got %v", v)
		}
	}
	return nil
}

func nonNegative(v any) error {
	for _, x := range asInts(v) {
		if x < 0 {
			return fmt.Errorf("must not be negative, got %v", v)
		}
	}
	return nil
}

func asInts(v any) []int {
	switch x := v.(type) {
	case int:
		return []int{x}
	case []int:
		return x
	}
	return nil
}

func rankIs(t Type, r int, what string) error {
	if t.Rank() != r {
		return fmt.Errorf("%s must have rank %d, got %s", what, r, t)
	}
	return nil
}

func same(t Type) Type {
	return Type{DType: t.DType, Shape: append([]int(nil), t.Shape...), Layout: t.Layout}
}

// DilatedKernel is the extent (k-1)*d+1 of a kernel of size k with dilation
// d (PyTorch's Conv2d: the taps are d apart).
func DilatedKernel(k, d int) int { return (k-1)*d + 1 }

// ConvOut is the output size of a convolution or pooling window along one
// axis: floor((in + 2*pad - k) / stride) + 1 (PyTorch, ceil_mode=False).
func ConvOut(in, k, stride, pad int) int {
	span := in + 2*pad - k
	if span < 0 {
		return 0
	}
	return span/stride + 1
}

func declared(n *Node, _ []Type) (Type, error) {
	if n.Type.Rank() == 0 {
		return Type{}, fmt.Errorf("%q needs a declared shape", n.Name)
	}
	for _, d := range n.Type.Shape {
		if d <= 0 {
			return Type{}, fmt.Errorf("%q: shape %s has a non-positive dimension", n.Name, ShapeString(n.Type.Shape))
		}
	}
	return same(n.Type), nil
}

var windowAttrs = []AttrDef{
	{Name: "kernel", Kind: AttrInts, Len: 2, Check: positive},
	{Name: "stride", Kind: AttrInts, Len: 2, Default: []int{1, 1}, Check: positive},
	{Name: "pad", Kind: AttrInts, Len: 2, Default: []int{0, 0}, Check: nonNegative},
}

func poolInfer(n *Node, args []Type) (Type, error) {
	x := args[0]
	if err := rankIs(x, 4, "input"); err != nil {
		return Type{}, err
	}
	k, s, p := n.Attrs.Ints("kernel"), n.Attrs.Ints("stride"), n.Attrs.Ints("pad")
	for i := 0; i < 2; i++ {
		if 2*p[i] > k[i] {
			return Type{}, fmt.Errorf("pad %v must be at most half the kernel %v", p, k)
		}
	}
	ho, wo := ConvOut(x.Shape[2], k[0], s[0], p[0]), ConvOut(x.Shape[3], k[1], s[1], p[1])
	if ho <= 0 || wo <= 0 {
		return Type{}, fmt.Errorf("window %s with pad %v does not fit input %s", ShapeString(k), p, ShapeString(x.Shape))
	}
	return Type{DType: x.DType, Shape: []int{x.Shape[0], x.Shape[1], ho, wo}, Layout: x.Layout}, nil
}

func init() {
	register(&OpDef{Name: OpInput, Doc: "a network input; Name is its name, Type its declared type",
		Infer: declared})
	register(&OpDef{Name: OpParam, Doc: "a weight or buffer; Name is its checkpoint key",
		Attrs: []AttrDef{{Name: "buffer", Kind: AttrBool, Default: false}},
		Infer: declared})
	register(&OpDef{
		Name: OpConv2D, Operands: []string{"x", "weight", "bias"}, MinArgs: 2, MaxArgs: 3,
		Layouts: convLayouts, DTypes: floatDTypes,
		Doc: "2-D convolution (cross-correlation), NCHW input, OIHW weight, symmetric zero padding",
		Attrs: []AttrDef{
			{Name: "stride", Kind: AttrInts, Len: 2, Default: []int{1, 1}, Check: positive},
			{Name: "pad", Kind: AttrInts, Len: 2, Default: []int{0, 0}, Check: nonNegative},
			{Name: "groups", Kind: AttrInt, Default: 1, Check: positive},
			{Name: "dilation", Kind: AttrInts, Len: 2, Default: []int{1, 1}, Check: positive},
		},
		Infer: func(n *Node, a []Type) (Type, error) {
			x, w := a[0], a[1]
			if err := rankIs(x, 4, "input"); err != nil {
				return Type{}, err
			}
			if err := rankIs(w, 4, "weight"); err != nil {
				return Type{}, err
			}
			g := n.Attrs.Int("groups")
			c, o := x.Shape[1], w.Shape[0]
			if c%g != 0 || o%g != 0 {
				return Type{}, fmt.Errorf("groups %d must divide input channels %d and output channels %d", g, c, o)
			}
			if w.Shape[1] != c/g {
				return Type{}, fmt.Errorf("weight %s expects %d input channels per group, input has %d channels", ShapeString(w.Shape), w.Shape[1], c)
			}
			if len(a) == 3 && (a[2].Rank() != 1 || a[2].Shape[0] != o) {
				return Type{}, fmt.Errorf("bias shape %s, want %d", ShapeString(a[2].Shape), o)
			}
			s, p, d := n.Attrs.Ints("stride"), n.Attrs.Ints("pad"), n.Attrs.Ints("dilation")
			ho, wo := ConvOut(x.Shape[2], DilatedKernel(w.Shape[2], d[0]), s[0], p[0]), ConvOut(x.Shape[3], DilatedKernel(w.Shape[3], d[1]), s[1], p[1])
			if ho <= 0 || wo <= 0 {
				return Type{}, fmt.Errorf("kernel %s with pad %v does not fit input %s", ShapeString(w.Shape[2:]), p, ShapeString(x.Shape))
			}
			return Type{DType: x.DType, Shape: []int{x.Shape[0], o, ho, wo}, Layout: x.Layout}, nil
		},
		MACs: func(n *Node, a []Type) int64 {
			w := a[1].Shape
			return int64(n.Type.Numel()) * int64(w[1]*w[2]*w[3])
		},
	})
	register(&OpDef{
		Name: OpBatchNorm, Operands: []string{"x", "weight", "bias", "running_mean", "running_var"}, MinArgs: 5, MaxArgs: 5,
		Layouts: firstSameRestPlain, DTypes: floatDTypes,
		Doc: "inference batch normalization over channel axis 1: (x-mean)/sqrt(var+eps)*weight+bias, then max(·, 0) when relu is set (fuse-epilogue sets it)",
		Attrs: []AttrDef{{Name: "eps", Kind: AttrFloat, Default: 1e-5, Check: func(v any) error {
			if v.(float64) <= 0 {
				return fmt.Errorf("must be positive")
			}
			return nil
		}}, {Name: "relu", Kind: AttrBool, Default: false}},
		Infer: func(n *Node, a []Type) (Type, error) {
			if a[0].Rank() < 2 {
				return Type{}, fmt.Errorf("input must have rank >= 2, got %s", a[0])
			}
			c := a[0].Shape[1]
			for i, p := range a[1:] {
				if p.Rank() != 1 || p.Shape[0] != c {
					return Type{}, fmt.Errorf("%s shape %s, want %d", n.opDef().Operands[i+1], ShapeString(p.Shape), c)
				}
			}
			return same(a[0]), nil
		},
	})
	unary := func(name, doc string, attrs ...AttrDef) {
		register(&OpDef{Name: name, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1, Doc: doc, Attrs: attrs, DTypes: floatDTypes,
			Infer: func(n *Node, a []Type) (Type, error) { return same(a[0]), nil }})
	}
	unary(OpReLU, "max(x, 0)")
	unary(OpMul, "x * c for a constant c", AttrDef{Name: "c", Kind: AttrFloat})
	unary(OpDropout, "dropout with probability p; identity at inference", AttrDef{Name: "p", Kind: AttrFloat, Default: 0.0,
		Check: func(v any) error {
			if f := v.(float64); f < 0 || f >= 1 {
				return fmt.Errorf("must be in [0, 1), got %v", f)
			}
			return nil
		}})
	register(&OpDef{Name: OpAdd, Operands: []string{"x", "y"}, MinArgs: 2, MaxArgs: 2, Doc: "elementwise x + y (equal shapes)",
		DTypes: floatDTypes,
		Infer: func(n *Node, a []Type) (Type, error) {
			if !ShapeEqual(a[0].Shape, a[1].Shape) {
				return Type{}, fmt.Errorf("shapes differ: %s and %s", ShapeString(a[0].Shape), ShapeString(a[1].Shape))
			}
			return same(a[0]), nil
		}})
	register(&OpDef{Name: OpConcat, Operands: []string{"xs"}, MinArgs: 1, MaxArgs: -1, Doc: "concatenation along axis",
		Attrs: []AttrDef{{Name: "axis", Kind: AttrInt, Default: 1, Check: nonNegative}},
		Infer: func(n *Node, a []Type) (Type, error) {
			ax := n.Attrs.Int("axis")
			if ax >= a[0].Rank() {
				return Type{}, fmt.Errorf("axis %d out of range for %s", ax, a[0])
			}
			out := same(a[0])
			out.Shape[ax] = 0
			for i, t := range a {
				if t.Rank() != a[0].Rank() {
					return Type{}, fmt.Errorf("operand %d has rank %d, operand 0 has rank %d", i, t.Rank(), a[0].Rank())
				}
				for d := range t.Shape {
					if d != ax && t.Shape[d] != a[0].Shape[d] {
						return Type{}, fmt.Errorf("operand %d has shape %s, operand 0 has %s: they may differ only in axis %d", i, ShapeString(t.Shape), ShapeString(a[0].Shape), ax)
					}
				}
				out.Shape[ax] += t.Shape[ax]
			}
			return out, nil
		}})
	register(&OpDef{Name: OpMaxPool, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1, Doc: "max pooling (padding never wins)",
		Attrs: windowAttrs, Infer: poolInfer})
	register(&OpDef{Name: OpAvgPool, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1,
		Doc:    "average pooling; count_include_pad false divides by the number of real pixels",
		DTypes: floatDTypes,
		Attrs:  append(append([]AttrDef(nil), windowAttrs...), AttrDef{Name: "count_include_pad", Kind: AttrBool, Default: true}),
		Infer:  poolInfer})
	register(&OpDef{Name: OpGlobalAvgPool, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1, Doc: "mean over H and W: NCHW -> NC11",
		DTypes: floatDTypes,
		Infer: func(n *Node, a []Type) (Type, error) {
			if err := rankIs(a[0], 4, "input"); err != nil {
				return Type{}, err
			}
			return Type{DType: a[0].DType, Shape: []int{a[0].Shape[0], a[0].Shape[1], 1, 1}, Layout: a[0].Layout}, nil
		}})
	register(&OpDef{Name: OpFlatten, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1, Doc: "N x ... -> N x prod(...)",
		Layouts: allPlain,
		Infer: func(n *Node, a []Type) (Type, error) {
			if a[0].Rank() < 2 {
				return Type{}, fmt.Errorf("input must have rank >= 2, got %s", a[0])
			}
			return Type{DType: a[0].DType, Shape: []int{a[0].Shape[0], a[0].Numel() / a[0].Shape[0]}}, nil
		}})
	register(&OpDef{Name: OpDense, Operands: []string{"x", "weight", "bias"}, MinArgs: 2, MaxArgs: 3,
		Doc:     "fully connected: x[N,I] * weight[O,I]^T + bias[O]",
		Layouts: allPlain, DTypes: floatDTypes,
		Infer: func(n *Node, a []Type) (Type, error) {
			x, w := a[0], a[1]
			if err := rankIs(x, 2, "input"); err != nil {
				return Type{}, err
			}
			if err := rankIs(w, 2, "weight"); err != nil {
				return Type{}, err
			}
			if w.Shape[1] != x.Shape[1] {
				return Type{}, fmt.Errorf("weight %s expects %d inputs, input has %d", ShapeString(w.Shape), w.Shape[1], x.Shape[1])
			}
			if len(a) == 3 && (a[2].Rank() != 1 || a[2].Shape[0] != w.Shape[0]) {
				return Type{}, fmt.Errorf("bias shape %s, want %d", ShapeString(a[2].Shape), w.Shape[0])
			}
			return Type{DType: x.DType, Shape: []int{x.Shape[0], w.Shape[0]}}, nil
		},
		MACs: func(n *Node, a []Type) int64 { return int64(n.Type.Numel()) * int64(a[1].Shape[1]) },
	})
	register(&OpDef{Name: OpSoftmax, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1, Doc: "softmax along axis",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: []AttrDef{{Name: "axis", Kind: AttrInt, Default: 1, Check: nonNegative}},
		Infer: func(n *Node, a []Type) (Type, error) {
			if ax := n.Attrs.Int("axis"); ax >= a[0].Rank() {
				return Type{}, fmt.Errorf("axis %d out of range for %s", ax, a[0])
			}
			return same(a[0]), nil
		}})
}

func (n *Node) opDef() *OpDef { return Lookup(n.Op) }

// MACs returns the multiply-accumulate count of node i (conv and dense).
func (g *Graph) MACs(i int) int64 {
	n := g.Nodes[i]
	d := Lookup(n.Op)
	if d == nil || d.MACs == nil {
		return 0
	}
	args := make([]Type, len(n.Args))
	for j, a := range n.Args {
		args[j] = g.Nodes[a].Type
	}
	return d.MACs(n, args)
}
