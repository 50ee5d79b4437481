package train

import (
	"fmt"

	"github.com/kiln-dev/kiln/ir"
)

// Gradients appends to g the reverse-mode derivative of the scalar node loss
// with respect to each node of wrt (params), and returns the node holding
// each gradient (absent when the loss does not depend on it).
//
// The algorithm is textbook reverse accumulation (Griewank and Walther,
// "Evaluating Derivatives", 2008, ch. 3; what PyTorch's autograd does at run
// time, done here once on the graph): nodes that depend on a wrt param are
// marked, then the graph is walked from the loss back to its operands in
// reverse node order, which is a reverse topological order, and each op's
// vector-Jacobian product is emitted as IR ops (ir/ops_train.go) for the
// operands that need a gradient. A value used several times gets the sum of
// its users' contributions. The emitted nodes carry the position of the
// forward node they differentiate, so an error names the source line.
//
// The loss must be a softmax_xent node (its gradient seed is implicit: d
// loss/d loss = 1). Multi-result ops are differentiated through their result
// nodes: batchnorm_train's batch statistics feed only the running-statistics
// updates, which are state and have no gradient, so only its first result
// carries one.
func Gradients(g *ir.Graph, loss int, wrt []int) (map[int]int, error) {
	if loss < 0 || loss >= len(g.Nodes) || g.Nodes[loss].Op != ir.OpSoftmaxXent {
		return nil, fmt.Errorf("train: the loss must be a softmax_xent node")
	}
	b := &gradBuilder{g: g, grad: map[int]int{}, tuple: map[int]map[int]int{}}
	b.needs = make([]bool, len(g.Nodes))
	for _, w := range wrt {
		if w < 0 || w >= len(g.Nodes) || g.Nodes[w].Op != ir.OpParam {
			return nil, fmt.Errorf("train: gradient with respect to %%%d, which is not a param", w)
		}
		b.needs[w] = true
	}
	for i, n := range g.Nodes[:loss+1] {
		for _, a := range n.Args {
			b.needs[i] = b.needs[i] || b.needs[a]
		}
	}
	for i := loss; i >= 0; i-- {
		if !b.needs[i] {
			continue
		}
		if err := b.node(i, i == loss); err != nil {
			n := g.Nodes[i]
			return nil, ir.Errorf(n.Pos, "train: gradient of %%%d %s: %v", i, n.Op, err)
		}
	}
	out := map[int]int{}
	for _, w := range wrt {
		if d, ok := b.grad[w]; ok {
			out[w] = d
		}
	}
	return out, nil
}

// gradBuilder holds the gradients accumulated so far: grad[i] is the node
// holding d loss / d value(i); tuple[i][k] the same for result k of a
// multi-result node i.
type gradBuilder struct {
	g     *ir.Graph
	needs []bool
	grad  map[int]int
	tuple map[int]map[int]int
	pos   ir.Pos
	err   error
}

// add appends a node at the current forward node's position.
func (b *gradBuilder) add(op string, attrs ir.Attrs, args ...int) int {
	if b.err != nil {
		return -1
	}
	id, err := b.g.Add(&ir.Node{Op: op, Args: args, Attrs: attrs, Pos: b.pos})
	if err != nil {
		b.err = err
		return -1
	}
	return id
}

// accumulate adds the contribution d to the gradient of node i.
func (b *gradBuilder) accumulate(i, d int) {
	if d < 0 || !b.needs[i] {
		return
	}
	if old, ok := b.grad[i]; ok {
		d = b.add(ir.OpAdd, nil, old, d)
	}
	b.grad[i] = d
}

// hw returns the spatial size [H, W] of a 4-D node.
func (b *gradBuilder) hw(i int) []int {
	s := b.g.Nodes[i].Type.Shape
	return []int{s[2], s[3]}
}

// node emits the vector-Jacobian products of node i.
func (b *gradBuilder) node(i int, isLoss bool) error {
	g := b.g
	n := g.Nodes[i]
	b.pos = n.Pos
	a := n.Args
	if n.Op == ir.OpResult {
		if dy, ok := b.grad[i]; ok {
			p := a[0]
			if b.tuple[p] == nil {
				b.tuple[p] = map[int]int{}
			}
			k := n.Attrs.Int("index")
			if old, ok := b.tuple[p][k]; ok {
				dy = b.add(ir.OpAdd, nil, old, dy)
			}
			b.tuple[p][k] = dy
		}
		return b.err
	}
	if n.IsMulti() {
		return b.multi(i)
	}
	if isLoss {
		// d loss / d logits; the target is data, not differentiated.
		b.accumulate(a[0], b.add(ir.OpSoftmaxXentGrad, ir.Attrs{"smoothing": n.Attrs.Float("smoothing")}, a[0], a[1]))
		return b.err
	}
	dy, ok := b.grad[i]
	if !ok {
		return nil // the loss does not depend on this value
	}
	switch n.Op {
	case ir.OpParam, ir.OpInput:
	case ir.OpConv2D:
		if d := n.Attrs.Ints("dilation"); d[0] != 1 || d[1] != 1 {
			return ir.Errorf(n.Pos, "train: gradients of a dilated convolution (dilation %v) are not implemented", d)
		}
		conv := ir.Attrs{"stride": n.Attrs.Ints("stride"), "pad": n.Attrs.Ints("pad"), "groups": n.Attrs.Int("groups")}
		if b.needs[a[0]] {
			at := copyAttrs(conv)
			at["input_hw"] = b.hw(a[0])
			b.accumulate(a[0], b.add(ir.OpConv2DGradInput, at, dy, a[1]))
		}
		if b.needs[a[1]] {
			at := copyAttrs(conv)
			ws := g.Nodes[a[1]].Type.Shape
			at["kernel"] = []int{ws[2], ws[3]}
			b.accumulate(a[1], b.add(ir.OpConv2DGradWeight, at, dy, a[0]))
		}
		if len(a) == 3 && b.needs[a[2]] {
			b.accumulate(a[2], b.add(ir.OpBiasGrad, nil, dy))
		}
	case ir.OpDense:
		if b.needs[a[0]] {
			b.accumulate(a[0], b.add(ir.OpDenseGradInput, nil, dy, a[1]))
		}
		if b.needs[a[1]] {
			b.accumulate(a[1], b.add(ir.OpDenseGradWeight, nil, dy, a[0]))
		}
		if len(a) == 3 && b.needs[a[2]] {
			b.accumulate(a[2], b.add(ir.OpBiasGrad, nil, dy))
		}
	case ir.OpReLU:
		b.accumulate(a[0], b.add(ir.OpReLUGrad, nil, dy, i))
	case ir.OpAdd:
		b.accumulate(a[0], dy)
		b.accumulate(a[1], dy)
	case ir.OpMul:
		b.accumulate(a[0], b.add(ir.OpMul, ir.Attrs{"c": n.Attrs.Float("c")}, dy))
	case ir.OpMul2:
		b.accumulate(a[0], b.add(ir.OpMul2, nil, dy, a[1]))
		b.accumulate(a[1], b.add(ir.OpMul2, nil, dy, a[0]))
	case ir.OpConcat:
		axis, off := n.Attrs.Int("axis"), 0
		for _, x := range a {
			size := g.Nodes[x].Type.Shape[axis]
			if b.needs[x] {
				b.accumulate(x, b.add(ir.OpSlice, ir.Attrs{"axis": axis, "offset": off, "size": size}, dy))
			}
			off += size
		}
	case ir.OpMaxPool:
		b.accumulate(a[0], b.add(ir.OpMaxPoolGrad, ir.Attrs{"kernel": n.Attrs.Ints("kernel"), "stride": n.Attrs.Ints("stride"), "pad": n.Attrs.Ints("pad")}, dy, a[0]))
	case ir.OpAvgPool:
		b.accumulate(a[0], b.add(ir.OpAvgPoolGrad, ir.Attrs{"kernel": n.Attrs.Ints("kernel"), "stride": n.Attrs.Ints("stride"), "pad": n.Attrs.Ints("pad"),
			"count_include_pad": n.Attrs.Bool("count_include_pad"), "input_hw": b.hw(a[0])}, dy))
	case ir.OpGlobalAvgPool:
		b.accumulate(a[0], b.add(ir.OpGlobalAvgPoolGrad, ir.Attrs{"input_hw": b.hw(a[0])}, dy))
	case ir.OpFlatten, ir.OpReshape:
		b.accumulate(a[0], b.add(ir.OpReshape, ir.Attrs{"shape": append([]int(nil), g.Nodes[a[0]].Type.Shape...)}, dy))
	case ir.OpDropout:
		if p := n.Attrs.Float("p"); p != 0 {
			return fmt.Errorf("inference dropout with p = %g in a training graph (train.Forward makes it dropout_train)", p)
		}
		b.accumulate(a[0], dy)
	default:
		return fmt.Errorf("no gradient rule for op %s", n.Op)
	}
	return b.err
}

// multi differentiates a multi-result node from its results' gradients.
func (b *gradBuilder) multi(i int) error {
	n := b.g.Nodes[i]
	a := n.Args
	grads := b.tuple[i]
	if len(grads) == 0 {
		return nil
	}
	result := func(of, k int) int { return b.add(ir.OpResult, ir.Attrs{"index": k}, of) }
	switch n.Op {
	case ir.OpBatchNormTrain:
		dy, ok := grads[0]
		if !ok || len(grads) != 1 {
			return fmt.Errorf("gradient through the batch statistics (results 1 and 2) is not supported: they feed the running statistics, which are state")
		}
		t := b.add(ir.OpBatchNormTrainGrad, ir.Attrs{"eps": n.Attrs.Float("eps"), "ghost": n.Attrs.Int("ghost"), "sync": n.Attrs.Bool("sync")}, dy, a[0], a[1], result(i, 1), result(i, 2))
		for k, x := range a {
			if b.needs[x] {
				b.accumulate(x, result(t, k))
			}
		}
	case ir.OpDropoutTrain:
		dy, ok := grads[0]
		if !ok || len(grads) != 1 {
			return fmt.Errorf("gradient through the dropout mask is not supported")
		}
		p := n.Attrs.Float("p")
		d := b.add(ir.OpMul2, nil, dy, result(i, 1))
		b.accumulate(a[0], b.add(ir.OpMul, ir.Attrs{"c": 1 / (1 - p)}, d))
	default:
		return fmt.Errorf("no gradient rule for op %s", n.Op)
	}
	return b.err
}

func copyAttrs(a ir.Attrs) ir.Attrs {
	c := ir.Attrs{}
	for k, v := range a {
		c[k] = v
	}
	return c
}
