package main

import (
	"flag"
	"fmt"

	"github.com/kiln-dev/kiln/ir"
)

func init() {
	register(&command{name: "check", args: "FILE", summary: "parse, elaborate, verify and check that a network builds for --target; print a one-line summary",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			var nf netFlags
			nf.register(fs)
			nf.registerMACs(fs)
			targetName := fs.String("target", hostTarget(), "build `TARGET` whose legality to check (kiln targets lists them)")
			return eachBatch(&nf, func(args []string) error {
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				g, err := nf.load(file)
				if err != nil {
					return err
				}
				if err := nf.checkMACs(g); err != nil {
					return err
				}
				if err := g.Verify(); err != nil {
					return err
				}
				// The same legality check kiln build runs before LLVM: a
				// network that checks also builds, or check says why not.
				bt, err := lookupBuildTarget(*targetName)
				if err != nil {
					return err
				}
				if err := checkBuildable(g, bt); err != nil {
					return fmt.Errorf("%s does not build for %s: %w", g.Name, bt.name, err)
				}
				params, learnable := countParams(g)
				var ins []string
				for _, n := range g.Inputs() {
					ins = append(ins, n.Name+" "+n.Type.String())
				}
				outs := ""
				for i, o := range g.Outputs {
					if i > 0 {
						outs += ", "
					}
					outs += g.Nodes[o].Type.String()
				}
				fmt.Fprintf(e.stdout, "ok %s: input %s -> %s; %d nodes, %d tensors, %s parameters, %s MACs\n",
					g.Name, joinComma(ins), outs, len(g.Nodes), params, commas(learnable), commas(totalMACs(g)))
				return nil
			})
		}})
}

// countParams returns the number of param tensors and of learnable scalars
// (buffers such as BatchNorm running statistics are not learnable).
func countParams(g *ir.Graph) (tensors int, learnable int64) {
	for _, n := range g.Params() {
		tensors++
		if !n.Attrs.Bool("buffer") {
			learnable += int64(n.Type.Numel())
		}
	}
	return
}

func totalMACs(g *ir.Graph) int64 {
	var m int64
	for i := range g.Nodes {
		m += g.MACs(i)
	}
	return m
}

func joinComma(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ", "
		}
		out += x
	}
	return out
}

// commas formats n with thousands separators: 12,253,974,624.
func commas(n int64) string {
	s := fmt.Sprint(n)
	neg := ""
	if n < 0 {
		neg, s = "-", s[1:]
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return neg + s
}
