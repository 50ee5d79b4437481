package passes

// dcePass removes nodes that no output or update depends on (a backward walk
// from the outputs, the updated params and their new values). Marks do not
// keep nodes alive; marks on removed nodes are dropped.
var dcePass = &Pass{
	Name: "dce",
	Doc:  "remove nodes no output needs",
	Run: func(s *State) error {
		g := s.Graph
		live := make([]bool, len(g.Nodes))
		for _, o := range g.Outputs {
			live[o] = true
		}
		for _, u := range g.Updates {
			live[u.Param], live[u.Value] = true, true
		}
		for i := len(g.Nodes) - 1; i >= 0; i-- {
			if live[i] {
				for _, a := range g.Nodes[i].Args {
					live[a] = true
				}
			}
		}
		r := newRewriter(g)
		for i := range g.Nodes {
			if live[i] {
				r.copyNode(i)
			}
		}
		s.Graph = r.finish()
		return nil
	},
}
