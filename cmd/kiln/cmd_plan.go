package main

import (
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/passes"
)

func init() {
	register(&command{name: "plan", args: "FILE", summary: "run the inference pipeline and print the activation memory plan",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			var nf netFlags
			nf.register(fs)
			var pf pipeFlags
			pf.register(fs, true)
			verbose := fs.Bool("verbose", false, "print every buffer's live interval, offset and values")
			return func(args []string) error {
				if pf.listPasses {
					listPasses(e.stdout)
					return nil
				}
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				// The plan is the one kiln build --target uses: same
				// pipeline, same build target (hence channel block).
				if err := pf.checkFor(passes.PlanReport); err != nil {
					return err
				}
				g, err := nf.load(file)
				if err != nil {
					return err
				}
				st, err := pf.run(g, e.stdout)
				if err != nil {
					return err
				}
				p := st.Plan
				if p == nil {
					return fmt.Errorf("the pipeline did not reach plan-buffers (disabled or stopped early)")
				}
				mib := func(b int64) string { return fmt.Sprintf("%s bytes (%.2f MiB)", commas(b), float64(b)/(1<<20)) }
				fmt.Fprintf(e.stdout, "network      %s, batch %d, input %s, target %s\n", g.Name, nf.batch, g.Inputs()[0].Type, st.Target.Name)
				fmt.Fprintf(e.stdout, "buffers      %d for %d run-time values (%s)\n", len(p.Buffers), countValues(p.BufferOf), p.Strategy)
				fmt.Fprintf(e.stdout, "arena        %s\n", mib(p.Arena))
				fmt.Fprintf(e.stdout, "lower bound  %s  (arena / bound = %.4f)\n", mib(p.LowerBound), float64(p.Arena)/float64(max(p.LowerBound, 1)))
				fmt.Fprintf(e.stdout, "naive        %s  (one buffer per tensor; arena / naive = %.4f)\n", mib(p.Naive), float64(p.Arena)/float64(max(p.Naive, 1)))
				for _, x := range planIO(st) {
					fmt.Fprintf(e.stdout, "%-12s %s %s at byte offset %d\n", x.what, x.name, st.Graph.Nodes[x.node].Type, x.offset)
				}
				if *verbose {
					fmt.Fprintln(e.stdout)
					tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "buffer\tsteps\toffset\tsize\tvalues")
					for i, b := range p.Buffers {
						vals := ""
						for k, v := range b.Values {
							if k > 0 {
								vals += " "
							}
							n := st.Graph.Nodes[v]
							vals += fmt.Sprintf("%%%d=%s", v, n.Op)
							if n.Name != "" {
								vals += "(" + n.Name + ")"
							}
						}
						fmt.Fprintf(tw, "%d\t%d-%d\t%d\t%d\t%s %s\n", i, b.Start, b.End, b.Offset, b.Size, ir.ShapeString(st.Graph.Nodes[b.Values[0]].Type.Shape), vals)
					}
					tw.Flush()
				}
				return nil
			}
		}})
}

// planIO is where the network's inputs and outputs lie in the arena.
type planIOEntry struct {
	what, name string
	node       int
	offset     int64 // bytes from the arena base
}

func planIO(st *passes.State) []planIOEntry {
	g, p := st.Graph, st.Plan
	var out []planIOEntry
	add := func(what string, i int) {
		if b := p.BufferOf[i]; b >= 0 {
			out = append(out, planIOEntry{what, g.Nodes[i].Name, i, p.Buffers[b].Offset})
		}
	}
	for i, n := range g.Nodes {
		if n.Op == ir.OpInput {
			add("input", i)
		}
	}
	for _, o := range g.Outputs {
		add("output", o)
	}
	return out
}

func countValues(bufferOf []int) int {
	n := 0
	for _, b := range bufferOf {
		if b >= 0 {
			n++
		}
	}
	return n
}
