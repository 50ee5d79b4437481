package main

import (
	"flag"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/passes"
	"github.com/kiln-dev/kiln/train"
)

func init() {
	register(&command{name: "plan", args: "FILE", summary: "run the inference pipeline and print the activation memory plan",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			var nf netFlags
			nf.register(fs)
			var pf pipeFlags
			pf.register(fs, true)
			verbose := fs.Bool("verbose", false, "print every buffer's live interval, offset and values")
			trainPlan := fs.Bool("train", false, "plan one training step (forward, backward, optimizer; train.Step) instead of inference")
			return func(args []string) error {
				if pf.listPasses {
					listPasses(e.stdout)
					return nil
				}
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				if *trainPlan {
					g, err := nf.load(file)
					if err != nil {
						return err
					}
					return printTrainingPlan(e.stdout, g, nf.batch)
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

// printTrainingPlan plans one training step of g (train.Step with the
// paper's RMSProp, through passes.TrainingPipeline) and prints the arena
// against its live-bytes lower bound, and what the bytes are: the state a
// step reads and writes (parameters, BatchNorm statistics, optimizer state),
// forward activations kept for the backward pass (values computed before
// the loss gradient and read after it, in the planned order), and the
// parameter gradients.
func printTrainingPlan(w io.Writer, g *ir.Graph, batch int) error {
	sg, err := train.Step(g, train.StepOptions{Smoothing: 0.1})
	if err != nil {
		return err
	}
	st, err := passes.RunTraining(sg.Graph, passes.Options{})
	if err != nil {
		return err
	}
	tg, p := st.Graph, st.Plan
	firstBack := len(tg.Nodes) // the loss gradient: the backward pass starts here
	for i, n := range tg.Nodes {
		if n.Op == ir.OpSoftmaxXentGrad {
			firstBack = i
			break
		}
	}
	users := tg.Users()
	var state, kept, grads int64
	for i, n := range tg.Nodes {
		b := passes.ValueBytes(n.Type)
		switch {
		case n.Op == ir.OpParam:
			state += b
			if !n.Attrs.Bool("buffer") {
				grads += b // its gradient has its type
			}
		case i < firstBack && n.Op != ir.OpInput && !n.IsMulti():
			for _, u := range users[i] {
				if u > firstBack {
					kept += b
					break
				}
			}
		}
	}
	mib := func(b int64) string { return fmt.Sprintf("%s bytes (%.2f MiB)", commas(b), float64(b)/(1<<20)) }
	fmt.Fprintf(w, "network      %s, batch %d, input %s: one training step (forward, backward, RMSProp)\n", g.Name, batch, g.Inputs()[0].Type)
	fmt.Fprintf(w, "nodes        %d (inference graph %d)\n", len(tg.Nodes), len(g.Nodes))
	fmt.Fprintf(w, "buffers      %d for %d values (%s)\n", len(p.Buffers), countValues(p.BufferOf), p.Strategy)
	fmt.Fprintf(w, "arena        %s\n", mib(p.Arena))
	fmt.Fprintf(w, "lower bound  %s  (arena / bound = %.4f)\n", mib(p.LowerBound), float64(p.Arena)/float64(max(p.LowerBound, 1)))
	fmt.Fprintf(w, "naive        %s  (one buffer per tensor; arena / naive = %.4f)\n", mib(p.Naive), float64(p.Arena)/float64(max(p.Naive, 1)))
	fmt.Fprintf(w, "state        %s  (parameters, BatchNorm statistics, optimizer state; in the arena)\n", mib(state))
	fmt.Fprintf(w, "kept         %s  (forward activations read by the backward pass)\n", mib(kept))
	fmt.Fprintf(w, "gradients    %s  (one per learnable parameter)\n", mib(grads))
	return nil
}
