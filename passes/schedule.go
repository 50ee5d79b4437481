package passes

import "github.com/kiln-dev/kiln/ir"

// schedulePass chooses a topological order that keeps live memory low.
//
// Build-time values (weights and their transforms) go first, in their old
// order; they live outside the arena. Run-time nodes are then list-scheduled
// greedily: among the ready nodes, take the one with the best memory balance
// (bytes of operands whose last use it is, minus the bytes it allocates; an
// in-place write allocates nothing), ties broken by the old order. This
// finishes one Inception branch before starting the next and frees each block
// input as early as possible. The new order is kept only if its live-bytes
// lower bound (as plan-buffers computes it) is below the old order's.
var schedulePass = &Pass{
	Name:  "schedule",
	Doc:   "topological order that keeps live memory low",
	After: []string{"dce"},
	Run: func(s *State) error {
		g := s.Graph
		order := greedyOrder(g)
		ng := reorder(g, order)
		if MakePlan(ng).LowerBound < MakePlan(g).LowerBound {
			s.Graph = ng
		}
		return nil
	},
}

func greedyOrder(g *ir.Graph) []int {
	build := BuildTime(g)
	users := g.Users()
	var order []int
	done := make([]bool, len(g.Nodes))
	for i := range g.Nodes {
		if build[i] {
			order = append(order, i)
			done[i] = true
		}
	}
	remaining := make([]int, len(g.Nodes)) // unscheduled users per value
	for i := range g.Nodes {
		remaining[i] = len(users[i])
	}
	for _, i := range order {
		for _, a := range g.Nodes[i].Args {
			remaining[a]--
		}
	}
	waiting := make([]int, len(g.Nodes)) // unscheduled operands per node
	var ready []int
	for i, n := range g.Nodes {
		if done[i] {
			continue
		}
		for _, a := range n.Args {
			if !done[a] {
				waiting[i]++
			}
		}
		if waiting[i] == 0 {
			ready = append(ready, i)
		}
	}
	score := func(i int) int64 {
		n := g.Nodes[i]
		var s int64
		if ir.IntoOperand(n) < 0 && n.Op != ir.OpDropout && n.Op != ir.OpFlatten && n.Op != ir.OpReshape {
			s -= valueBytes(n.Type)
		}
		seen := map[int]bool{}
		for _, a := range n.Args {
			if !build[a] && !seen[a] && remaining[a] == countArg(n, a) {
				s += valueBytes(g.Nodes[a].Type)
			}
			seen[a] = true
		}
		return s
	}
	for len(ready) > 0 {
		best := 0
		for k := 1; k < len(ready); k++ {
			a, b := score(ready[k]), score(ready[best])
			if a > b || (a == b && ready[k] < ready[best]) {
				best = k
			}
		}
		i := ready[best]
		ready = append(ready[:best], ready[best+1:]...)
		order = append(order, i)
		done[i] = true
		for _, a := range g.Nodes[i].Args {
			remaining[a]--
		}
		for _, u := range users[i] {
			waiting[u]--
			if waiting[u] == 0 {
				ready = append(ready, u)
			}
		}
	}
	return order
}

// countArg counts how often n uses value a.
func countArg(n *ir.Node, a int) int {
	c := 0
	for _, x := range n.Args {
		if x == a {
			c++
		}
	}
	return c
}

// reorder rebuilds g with its nodes in the given topological order.
func reorder(g *ir.Graph, order []int) *ir.Graph {
	r := newRewriter(g)
	for _, i := range order {
		r.copyNode(i)
	}
	return r.finish()
}
