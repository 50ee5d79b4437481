package lower

import (
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/passes"
)

// Kernel is one lowered kernel of a Program as other code generators see
// it: the spec (a codegen spec value such as codegen.ConvSpec, with every
// arena and weight offset resolved, in elements) of one run-time node.
// codegen/cuda generates GPU kernels from the same specs, so the CPU and the
// GPU share one memory plan, one weights blob and one set of offsets.
type Kernel struct {
	// Name is the kernel's name (k<node>, k<node>_<j> for concat copies).
	Name string
	// Node is the graph node the kernel computes; Label its name.
	Node  int
	Label string
	// Spec is the codegen spec (codegen.ConvSpec, codegen.PoolSpec, …).
	Spec any
	// MACs is the node's multiply-accumulate count (0 where not counted).
	MACs int64
}

// Kernels returns the program's kernels in schedule order.
func (p *Program) Kernels() []Kernel {
	out := make([]Kernel, len(p.specs))
	for i, k := range p.specs {
		out[i] = Kernel{Name: k.name, Node: k.node, Label: p.graph.Nodes[k.node].Name, Spec: k.spec, MACs: k.macs}
	}
	return out
}

// Graph returns the lowered graph (the pipeline's final graph).
func (p *Program) Graph() *ir.Graph { return p.graph }

// Specs returns the kernels Lower would produce for the final pipeline
// state s and targets, without weights: weight and bias offsets are
// placeholders (0). It runs Check's legality checks first. Code
// generators use it to emit and check every kernel of a network without
// evaluating its weights.
func Specs(s *passes.State, targets []codegen.Target) ([]Kernel, error) {
	if err := Check(s, targets); err != nil {
		return nil, err
	}
	build := passes.BuildTime(s.Graph)
	weight := func(*ir.Node, string, func([][]float32) []float32, ...int) (int, error) { return 0, nil }
	specs, err := lowerNodes(s.Graph, s.Plan, build, targets[0].Block, weight)
	if err != nil {
		return nil, err
	}
	out := make([]Kernel, len(specs))
	for i, k := range specs {
		out[i] = Kernel{Name: k.name, Node: k.node, Label: s.Graph.Nodes[k.node].Name, Spec: k.spec, MACs: k.macs}
	}
	return out, nil
}
