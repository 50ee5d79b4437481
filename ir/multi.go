package ir

import (
	"fmt"
	"strings"
)

// Several results and mutable state.
//
// An op may produce several values (BatchNorm in training mode returns its
// output, the batch mean and the batch variance). Such a node carries the type
// of every result in Node.Results and its own Type is the zero Type: a tuple
// is not a tensor. Its results are used only through "result" nodes,
// %k = result (%n) {index=i}, whose type is Results[i] (XLA's
// get-tuple-element, TVM Relay's TupleGetItem). Keeping operands as plain
// node indices this way leaves every pass, the printer and the planner
// unchanged for single-result ops, and the verifier rejects any other use of
// a multi-result node (as an operand of another op, an output, a mark or an
// update).
//
// Parameters are constants folded into the weights unless the graph updates
// them: Graph.Updates lists (param, value) pairs, meaning "after a run, the
// param holds value" (training's running statistics and optimizer steps). An
// updated param is mutable state of the artifact: passes must not fold it
// (see Graph.Mutable), the interpreter returns the new values in
// Result.Updates, and DCE keeps the update values alive.

// Op names of the multi-result machinery.
const (
	// OpResult selects result Attrs["index"] of a multi-result node.
	OpResult = "result"
	// OpBatchNormTrain is training-mode batch normalization: results y,
	// batch mean, batch variance.
	OpBatchNormTrain = "batchnorm_train"
)

// Update records that, after a run, param node Param holds the value of node
// Value. Printed "update %Param %Value".
type Update struct {
	Param int
	Value int
}

// IsMulti reports whether n has several results.
func (n *Node) IsMulti() bool { return len(n.Results) > 0 }

// Mutable reports whether node i is a param that the graph updates.
func (g *Graph) Mutable(i int) bool {
	for _, u := range g.Updates {
		if u.Param == i {
			return true
		}
	}
	return false
}

// resultType is the type of a result node: the index-th result of its
// operand, which must have several results.
func (g *Graph) resultType(n *Node) (Type, error) {
	p := g.Nodes[n.Args[0]]
	if !p.IsMulti() {
		return Type{}, fmt.Errorf("operand %%%d (%s) has a single result; result selects from multi-result ops only", n.Args[0], p.Op)
	}
	k := n.Attrs.Int("index")
	if k < 0 || k >= len(p.Results) {
		return Type{}, fmt.Errorf("index %d out of range: %%%d (%s) has %d results", k, n.Args[0], p.Op, len(p.Results))
	}
	return same(p.Results[k]), nil
}

// checkResults validates the result types of a multi-result node n (at idx)
// and, when infer is false, compares them with the recorded ones.
func (g *Graph) checkResults(idx int, def *OpDef, n *Node, args []Type, infer bool) error {
	ts, err := def.InferResults(n, args)
	if err != nil {
		return Errorf(n.Pos, "%s: %v", n.Op, err)
	}
	if len(ts) < 2 {
		return Errorf(n.Pos, "%s: internal error: a multi-result op inferred %d results", n.Op, len(ts))
	}
	for k, t := range ts {
		if t.DType.Size() == 0 {
			return Errorf(n.Pos, "%%%d %s: result %d has no valid dtype (%s)", idx, n.Op, k, t.DType)
		}
		for _, d := range t.Shape {
			if d <= 0 {
				return Errorf(n.Pos, "%s: result %d shape %s has a non-positive dimension", n.Op, k, ShapeString(t.Shape))
			}
		}
	}
	if err := g.checkOperands(idx, def, n, ts[0]); err != nil {
		return err
	}
	if infer {
		n.Results, n.Type = ts, Type{}
		return nil
	}
	if n.Type.DType != 0 || len(n.Type.Shape) != 0 || !n.Type.Layout.IsPlain() {
		return Errorf(n.Pos, "%%%d %s: a multi-result node has no single type, got %s", idx, n.Op, n.Type)
	}
	if len(n.Results) != len(ts) {
		return Errorf(n.Pos, "%%%d %s: recorded %d results, inferred %d", idx, n.Op, len(n.Results), len(ts))
	}
	for k := range ts {
		if !ts[k].Equal(n.Results[k]) {
			return Errorf(n.Pos, "%%%d %s: recorded result %d type %s differs from inferred %s", idx, n.Op, k, n.Results[k], ts[k])
		}
	}
	return nil
}

// verifyUpdates checks Graph.Updates: each names a param, at most once, with
// a single-result value of exactly the param's (plain) type.
func (g *Graph) verifyUpdates(errs *ErrorList) {
	seen := map[int]bool{}
	for _, u := range g.Updates {
		if u.Param < 0 || u.Param >= len(g.Nodes) || u.Value < 0 || u.Value >= len(g.Nodes) {
			errs.Add(fmt.Errorf("update %%%d %%%d out of range", u.Param, u.Value))
			continue
		}
		p, v := g.Nodes[u.Param], g.Nodes[u.Value]
		switch {
		case p.Op != OpParam:
			errs.Add(Errorf(v.Pos, "update %%%d %%%d: %%%d is a %s, only params are mutable", u.Param, u.Value, u.Param, p.Op))
		case seen[u.Param]:
			errs.Add(Errorf(v.Pos, "param %q (%%%d) is updated twice", p.Name, u.Param))
		case v.IsMulti():
			errs.Add(Errorf(v.Pos, "update of %q: %%%d has %d results; select one with result", p.Name, u.Value, len(v.Results)))
		case !p.Type.Layout.IsPlain() || !v.Type.Equal(p.Type):
			errs.Add(Errorf(v.Pos, "update of %q: value %%%d has type %s, want the param's %s", p.Name, u.Value, v.Type, p.Type))
		}
		seen[u.Param] = true
	}
}

// tupleString prints result types as (f32[1,8,4,4], f32[8], f32[8]).
func tupleString(ts []Type) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = t.String()
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func init() {
	register(&OpDef{
		Name: OpResult, Operands: []string{"tuple"}, MinArgs: 1, MaxArgs: 1,
		Doc:   "result number index of a multi-result node",
		Attrs: []AttrDef{{Name: "index", Kind: AttrInt}},
		// Graph.check computes the type from the producer (resultType): the
		// operand's own Type is the zero tuple type.
		Infer: func(n *Node, a []Type) (Type, error) {
			return Type{}, fmt.Errorf("internal error: result is typed by its producer")
		},
	})
	register(&OpDef{
		Name: OpBatchNormTrain, Operands: []string{"x", "weight", "bias"}, MinArgs: 3, MaxArgs: 3,
		Layouts: firstSameRestPlain, DTypes: floatDTypes,
		Doc: "training batch normalization over channel axis 1 with batch statistics: results " +
			"y = (x-mean)/sqrt(var+eps)*weight+bias, the batch mean and the biased batch variance (PyTorch's training forward)",
		Attrs: []AttrDef{{Name: "eps", Kind: AttrFloat, Default: 1e-5, Check: func(v any) error {
			if v.(float64) <= 0 {
				return fmt.Errorf("must be positive")
			}
			return nil
		}},
			// ghost > 0: statistics over each group of ghost images of the
			// batch ("ghost batch"; the mean and variance results are the
			// groups' averages); sync: statistics all-reduced across the
			// data-parallel replicas (ir/interp's Options.Reducer). See
			// train.Options.
			{Name: "ghost", Kind: AttrInt, Default: 0, Check: func(v any) error {
				if v.(int) < 0 {
					return fmt.Errorf("must not be negative")
				}
				return nil
			}},
			{Name: "sync", Kind: AttrBool, Default: false}},
		InferResults: func(n *Node, a []Type) ([]Type, error) {
			if a[0].Rank() < 2 {
				return nil, fmt.Errorf("input must have rank >= 2, got %s", a[0])
			}
			if k := n.Attrs.Int("ghost"); k > 0 && a[0].Shape[0]%k != 0 {
				return nil, fmt.Errorf("ghost batch %d does not divide the batch %d", k, a[0].Shape[0])
			}
			c := a[0].Shape[1]
			for i, p := range a[1:] {
				if p.Rank() != 1 || p.Shape[0] != c {
					return nil, fmt.Errorf("%s shape %s, want %d", n.opDef().Operands[i+1], ShapeString(p.Shape), c)
				}
			}
			vec := Type{DType: a[0].DType, Shape: []int{c}}
			return []Type{same(a[0]), vec, same(vec)}, nil
		},
	})
}
