package ir

import (
	"fmt"
	"sort"

	"github.com/kiln-dev/kiln/ir/tensor"
)

// Node is one operation. Its result is the tensor value named by the node's
// index in Graph.Nodes.
type Node struct {
	// Op is the op name, a key of the op table (see Lookup).
	Op string
	// Name is the node's hierarchical name. For param nodes it is the full
	// checkpoint key (features.0.conv.weight); for input nodes the input's
	// name; for other nodes the scope path of the block call that made it
	// (features.0.conv), or "".
	Name string
	// Args are the operand node indices, all smaller than this node's index.
	Args []int
	// Attrs holds every attribute of the op, defaults filled in.
	Attrs Attrs
	// Type is the result type, set by shape inference; the zero Type for a
	// node with several results.
	Type Type
	// Results holds the type of every result of a multi-result op (see
	// multi.go), nil for single-result ops.
	Results []Type
	// Pos is the source position that produced the node.
	Pos Pos
}

// Mark names a value so that tools and tests can find a module's output (for
// example the output of timm module "features.5") after elaboration and passes.
type Mark struct {
	Name string
	Node int
}

// Graph is a network: nodes in topological order, the values it returns, and
// named marks.
type Graph struct {
	Name    string
	Nodes   []*Node
	Outputs []int
	Marks   []Mark
	// Updates makes params mutable state: after a run each Param holds the
	// value of its Value node (multi.go).
	Updates []Update
}

// Add appends n to the graph after checking its op, operands and attributes
// and inferring its type, and returns its index. Defaults of missing attributes
// are filled in. For input and param nodes n.Type must already hold the
// declared type. Errors carry n.Pos.
func (g *Graph) Add(n *Node) (int, error) {
	if err := g.check(len(g.Nodes), n, true); err != nil {
		return -1, err
	}
	g.Nodes = append(g.Nodes, n)
	return len(g.Nodes) - 1, nil
}

// MustAdd is Add for code that builds graphs known to be valid (tests,
// passes); it panics on error.
func (g *Graph) MustAdd(n *Node) int {
	id, err := g.Add(n)
	if err != nil {
		panic(err)
	}
	return id
}

// check validates node n placed at index idx. With infer set it fills defaults
// and writes the inferred type; otherwise it compares the inferred type with
// n.Type.
func (g *Graph) check(idx int, n *Node, infer bool) error {
	def := Lookup(n.Op)
	if def == nil {
		return Errorf(n.Pos, "unknown op %q", n.Op)
	}
	if len(n.Args) < def.MinArgs || (def.MaxArgs >= 0 && len(n.Args) > def.MaxArgs) {
		return Errorf(n.Pos, "%s: %s, got %d", n.Op, def.arity(), len(n.Args))
	}
	args := make([]Type, len(n.Args))
	for i, a := range n.Args {
		if a < 0 || a >= idx {
			return Errorf(n.Pos, "%s: operand %d refers to %%%d, which is not an earlier node", n.Op, i, a)
		}
		if g.Nodes[a].IsMulti() && n.Op != OpResult {
			return Errorf(n.Pos, "%s: operand %d (%%%d, %s) has %d results; select one with result", n.Op, i, a, g.Nodes[a].Op, len(g.Nodes[a].Results))
		}
		args[i] = g.Nodes[a].Type
	}
	if err := def.checkAttrs(n, infer); err != nil {
		return err
	}
	if def.InferResults != nil {
		return g.checkResults(idx, def, n, args, infer)
	}
	if n.IsMulti() {
		return Errorf(n.Pos, "%%%d %s: a single-result op has %d recorded results", idx, n.Op, len(n.Results))
	}
	var t Type
	var err error
	if n.Op == OpResult {
		t, err = g.resultType(n)
	} else {
		t, err = def.Infer(n, args)
	}
	if err != nil {
		return Errorf(n.Pos, "%s: %v", n.Op, err)
	}
	// The result dtype is inferred from the operands (the op's Infer) or
	// declared (input, param, empty); it is never defaulted.
	if t.DType.Size() == 0 {
		return Errorf(n.Pos, "%%%d %s: result has no valid dtype (%s); inputs and params must declare one", idx, n.Op, t.DType)
	}
	for _, d := range t.Shape {
		if d <= 0 {
			return Errorf(n.Pos, "%s: result shape %s has a non-positive dimension", n.Op, ShapeString(t.Shape))
		}
	}
	// The layout of reorder and pack_weight is their attribute's; other ops
	// take the layout recorded on the node (set by the layout pass), or when
	// building with a plain node layout the one Infer derived.
	// A result node has its producer's result layout (resultType).
	if !SetsLayout(n.Op) && n.Op != OpResult && (!n.Type.Layout.IsPlain() || !infer) {
		t.Layout = n.Type.Layout
	}
	if _, err := PhysicalNumel(t); err != nil {
		return Errorf(n.Pos, "%s: %v", n.Op, err)
	}
	if !infer && !t.Equal(n.Type) {
		return Errorf(n.Pos, "%s: recorded type %s differs from inferred %s", n.Op, n.Type, t)
	}
	// A result node's operand is a tuple, which has no dtype or layout of
	// its own; its type is the selected result's (resultType).
	if n.Op != OpResult {
		if err := g.checkOperands(idx, def, n, t); err != nil {
			return err
		}
	}
	if infer {
		n.Type = t
	}
	return nil
}

// Verify checks the whole graph: known ops, operand counts and order,
// attributes, types equal to those shape inference computes, unique input and
// parameter names (with identical shapes required for shared ones is not
// allowed: every key appears once), and valid outputs and marks. It returns
// every problem found, joined, or nil.
func (g *Graph) Verify() error {
	var errs ErrorList
	seen := map[string]int{}
	for i, n := range g.Nodes {
		if err := g.check(i, n, false); err != nil {
			errs.Add(err)
			continue
		}
		if n.Op == OpParam || n.Op == OpInput {
			key := n.Op + " " + n.Name
			if n.Name == "" {
				errs.Add(Errorf(n.Pos, "%s %%%d has no name", n.Op, i))
			} else if j, dup := seen[key]; dup {
				errs.Add(Errorf(n.Pos, "duplicate %s %q (also %%%d)", n.Op, n.Name, j))
			}
			seen[key] = i
		}
	}
	if len(g.Outputs) == 0 {
		errs.Add(fmt.Errorf("graph %s has no outputs", g.Name))
	}
	for _, o := range g.Outputs {
		if o < 0 || o >= len(g.Nodes) {
			errs.Add(fmt.Errorf("output %%%d out of range", o))
		} else if n := g.Nodes[o]; n.IsMulti() {
			errs.Add(Errorf(n.Pos, "output %%%d (%s) has %d results; return result nodes", o, n.Op, len(n.Results)))
		}
	}
	for _, m := range g.Marks {
		if m.Node < 0 || m.Node >= len(g.Nodes) {
			errs.Add(fmt.Errorf("mark %q refers to %%%d, out of range", m.Name, m.Node))
		} else if g.Nodes[m.Node].IsMulti() {
			errs.Add(fmt.Errorf("mark %q refers to %%%d, which has several results", m.Name, m.Node))
		}
	}
	g.verifyUpdates(&errs)
	return errs.Err()
}

// Params returns the param nodes in graph order, which is checkpoint order.
func (g *Graph) Params() []*Node { return g.byOp(OpParam) }

// GeneratedParams returns the procedural value (tensor.Generate) of every
// param of g, by name: the deterministic weights that tests, benchmarks
// and `--weights` less runs use.
func (g *Graph) GeneratedParams() (map[string]*tensor.Tensor, error) {
	out := map[string]*tensor.Tensor{}
	for _, p := range g.Params() {
		v, err := tensor.Generate(p.Name, p.Type.Shape)
		if err != nil {
			return nil, err
		}
		out[p.Name] = v
	}
	return out, nil
}

// Inputs returns the input nodes in graph order.
func (g *Graph) Inputs() []*Node { return g.byOp(OpInput) }

func (g *Graph) byOp(op string) []*Node {
	var out []*Node
	for _, n := range g.Nodes {
		if n.Op == op {
			out = append(out, n)
		}
	}
	return out
}

// Mark returns the node index recorded under name.
func (g *Graph) Mark(name string) (int, bool) {
	for _, m := range g.Marks {
		if m.Name == name {
			return m.Node, true
		}
	}
	return -1, false
}

// SetMark records (or moves) a mark and keeps marks sorted by name.
func (g *Graph) SetMark(name string, node int) {
	for i := range g.Marks {
		if g.Marks[i].Name == name {
			g.Marks[i].Node = node
			return
		}
	}
	g.Marks = append(g.Marks, Mark{name, node})
	sort.Slice(g.Marks, func(i, j int) bool { return g.Marks[i].Name < g.Marks[j].Name })
}

// Users returns, for every node, the indices of the nodes that use it as an
// operand (in order, with repeats if a node uses a value twice).
func (g *Graph) Users() [][]int {
	u := make([][]int, len(g.Nodes))
	for i, n := range g.Nodes {
		for _, a := range n.Args {
			u[a] = append(u[a], i)
		}
	}
	return u
}

// ErrorList collects several errors and reports them together, one per line.
type ErrorList []error

// Add appends err if non-nil.
func (l *ErrorList) Add(err error) {
	if err != nil {
		*l = append(*l, err)
	}
}

// Err returns nil for an empty list, else the list itself.
func (l ErrorList) Err() error {
	if len(l) == 0 {
		return nil
	}
	return l
}

func (l ErrorList) Error() string {
	s := ""
	for i, e := range l {
		if i > 0 {
			s += "\n"
		}
		s += e.Error()
	}
	return s
}

// DropoutSeed returns the smallest "seed" attribute of g's dropout_train
// nodes (train.Forward numbers them base, base+1, … in graph order, so
// this is the step's base seed), and false when g has none.
func (g *Graph) DropoutSeed() (int, bool) {
	s, found := 0, false
	for _, n := range g.Nodes {
		if n.Op == OpDropoutTrain {
			if v := n.Attrs.Int("seed"); !found || v < s {
				s, found = v, true
			}
		}
	}
	return s, found
}
