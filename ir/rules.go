package ir

import (
	"fmt"
	"strings"
)

// Operand rules. Every op declares, in the op table, which operand layouts
// and dtypes it accepts (OpDef.Layouts, OpDef.DTypes); Graph.Add and Verify
// apply them after shape inference, so a graph that reads a value in a layout
// or dtype other than the one it is stored in is rejected where it is built,
// naming the node (%N, op) and its source position.
//
// dtype rule (all ops): every operand has the result's dtype (no op mixes f32
// and bf16), and the result's dtype is one the op accepts.
//
// Layout rules (nil OpDef.Layouts: every operand has the result's layout):
//
//	conv2d, fused_conv  result plain: every operand plain. Result NCHW{B}c:
//	                    x NCHW{B}c, or plain when x is a network input (the
//	                    RGB image read as NCHW); residual and into NCHW{B}c;
//	                    weight OIhw{B}i{B}o (plain for groups > 1, which
//	                    have no blocked kernel); bias plain.
//	batchnorm           x has the result's layout; its vectors plain.
//	flatten, dense,     every operand and the result plain.
//	softmax, fold_bn_*
//	pack_weight         x plain, the result OIhw{B}i{B}o (its layout attribute).
//	reorder             x and the result (its layout attribute) activation
//	                    layouts: plain or NCHW{B}c.

// floatDTypes are the dtypes arithmetic ops accept. Data movement ops accept
// every dtype (OpDef.DTypes nil).
var floatDTypes = []DType{F32, BF16, F16}

// layoutName prints a layout for messages: "plain" for the zero layout.
func layoutName(l Layout) string {
	if l.IsPlain() {
		return "plain"
	}
	return l.String()
}

// operandName names operand i of n for messages: its name in the op table
// and the value it refers to, e.g. "residual (operand 3, %17)".
func operandName(n *Node, i int) string {
	name := fmt.Sprintf("operand %d", i)
	if n.Op == OpFusedConv {
		b, r, into := FusedConvOperands(n)
		switch i {
		case 0:
			name = "x"
		case 1:
			name = "weight"
		case b:
			name = "bias"
		case r:
			name = "residual"
		case into:
			name = "into"
		}
	} else if d := Lookup(n.Op); d != nil && len(d.Operands) > 0 {
		name = strings.TrimSuffix(d.Operands[min(i, len(d.Operands)-1)], "?")
	}
	if i < len(n.Args) {
		return fmt.Sprintf("%s (operand %d, %%%d)", name, i, n.Args[i])
	}
	return name
}

func wantLayout(n *Node, ops []*Node, i int, want Layout, why string) error {
	if got := ops[i].Type.Layout; got != want {
		return fmt.Errorf("%s has layout %s, want %s%s", operandName(n, i), layoutName(got), layoutName(want), why)
	}
	return nil
}

// sameLayoutAll is the default rule: every operand has the result's layout.
func sameLayoutAll(n *Node, ops []*Node, out Layout) error {
	for i := range ops {
		if err := wantLayout(n, ops, i, out, " (the result's)"); err != nil {
			return err
		}
	}
	return nil
}

// allPlain requires every operand and the result to be plain.
func allPlain(n *Node, ops []*Node, out Layout) error {
	if !out.IsPlain() {
		return fmt.Errorf("result has layout %s, want plain", layoutName(out))
	}
	for i := range ops {
		if err := wantLayout(n, ops, i, Plain, ""); err != nil {
			return err
		}
	}
	return nil
}

// convLayouts is the rule of conv2d and fused_conv (see the table above).
func convLayouts(n *Node, ops []*Node, out Layout) error {
	if out.IsPlain() {
		return allPlain(n, ops, out)
	}
	if !out.IsActivation() {
		return fmt.Errorf("result has layout %s, want plain or NCHW{B}c", layoutName(out))
	}
	b, r, into := -1, -1, -1
	if n.Op == OpFusedConv {
		b, r, into = FusedConvOperands(n)
	} else if len(ops) == 3 {
		b = 2
	}
	const same = " (the result's)"
	if x := ops[0]; !(x.Type.Layout.IsPlain() && x.Op == OpInput) {
		if err := wantLayout(n, ops, 0, out, same+"; only a network input may be read as plain NCHW"); err != nil {
			return err
		}
	}
	wl := OIhwIiOo(out.Block)
	if n.Attrs.Int("groups") > 1 {
		wl = Plain
	}
	if err := wantLayout(n, ops, 1, wl, " (packed with the result's block)"); err != nil {
		return err
	}
	for _, k := range []int{r, into} {
		if k >= 0 {
			if err := wantLayout(n, ops, k, out, same); err != nil {
				return err
			}
		}
	}
	if b >= 0 {
		return wantLayout(n, ops, b, Plain, "")
	}
	return nil
}

// firstSameRestPlain: operand 0 has the result's layout, the others (per
// channel vectors) are plain.
func firstSameRestPlain(n *Node, ops []*Node, out Layout) error {
	if err := wantLayout(n, ops, 0, out, " (the result's)"); err != nil {
		return err
	}
	for i := 1; i < len(ops); i++ {
		if err := wantLayout(n, ops, i, Plain, ""); err != nil {
			return err
		}
	}
	return nil
}

func packWeightLayouts(n *Node, ops []*Node, out Layout) error {
	if !out.IsWeight() {
		return fmt.Errorf("layout %s is not a weight layout (OIhw{B}i{B}o)", layoutName(out))
	}
	return wantLayout(n, ops, 0, Plain, "")
}

func reorderLayouts(n *Node, ops []*Node, out Layout) error {
	if !out.IsPlain() && !out.IsActivation() {
		return fmt.Errorf("layout %s is not an activation layout (plain or NCHW{B}c)", layoutName(out))
	}
	if l := ops[0].Type.Layout; !l.IsPlain() && !l.IsActivation() {
		return fmt.Errorf("%s has layout %s, want plain or NCHW{B}c", operandName(n, 0), layoutName(l))
	}
	return nil
}

// checkOperands applies the op's dtype and layout rules to n (at index idx)
// with result type t.
func (g *Graph) checkOperands(idx int, def *OpDef, n *Node, t Type) error {
	ops := make([]*Node, len(n.Args))
	for i, a := range n.Args {
		ops[i] = g.Nodes[a]
		if d := ops[i].Type.DType; d != t.DType {
			return Errorf(n.Pos, "%%%d %s: %s has dtype %s, the result %s: operands must share one dtype", idx, n.Op, operandName(n, i), d, t.DType)
		}
	}
	if t.DType.Size() == 0 {
		return Errorf(n.Pos, "%%%d %s: result has no valid dtype (%s)", idx, n.Op, t.DType)
	}
	if def.DTypes != nil {
		ok := false
		for _, d := range def.DTypes {
			ok = ok || d == t.DType
		}
		if !ok {
			var names []string
			for _, d := range def.DTypes {
				names = append(names, d.String())
			}
			return Errorf(n.Pos, "%%%d %s: dtype %s not accepted (want %s)", idx, n.Op, t.DType, strings.Join(names, ", "))
		}
	}
	rule := def.Layouts
	if rule == nil {
		rule = sameLayoutAll
	}
	if err := rule(n, ops, t.Layout); err != nil {
		return Errorf(n.Pos, "%%%d %s: %v", idx, n.Op, err)
	}
	return nil
}
