package main

import (
	"flag"
	"fmt"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/passes"
)

func init() {
	register(&command{name: "dump", args: "FILE", summary: "print the IR as text (parses back with ir.Parse) or Graphviz DOT, before or after the pass pipeline",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			var nf netFlags
			nf.register(fs)
			var pf pipeFlags
			pf.register(fs, false)
			format := fs.String("format", "text", "output `format`: text, dot, or counts (op counts before and after the pipeline)")
			return func(args []string) error {
				if pf.listPasses {
					listPasses(e.stdout)
					return nil
				}
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				if *format != "text" && *format != "dot" && *format != "counts" {
					return usagef("--format must be text, dot or counts, got %q", *format)
				}
				g, err := nf.load(file)
				if err != nil {
					return err
				}
				if *format == "counts" {
					pf.optimize = true
				}
				st, err := pf.run(g, e.stdout)
				if err != nil {
					return err
				}
				switch *format {
				case "dot":
					return ir.WriteDOTWith(e.stdout, st.Graph, planNote(st))
				case "counts":
					_, err := e.stdout.Write([]byte(passes.FormatOpCounts(g, st.Graph)))
					return err
				}
				if len(pf.printAfter) > 0 || pf.printAfterAll {
					return nil // already printed
				}
				return ir.Print(e.stdout, st.Graph)
			}
		}})
}

// planNote labels DOT nodes with their arena buffer when the pipeline planned
// memory: buffer number, byte range, and the channel slice of an in-place
// concat write.
func planNote(st *passes.State) func(i int) string {
	if st.Plan == nil {
		return nil
	}
	p := st.Plan
	return func(i int) string {
		b := p.BufferOf[i]
		if b < 0 {
			return "build time (weights)"
		}
		buf := p.Buffers[b]
		s := fmt.Sprintf("buffer %d @%d+%d B", b, buf.Offset, buf.Size)
		n := st.Graph.Nodes[i]
		if ir.IntoOperand(n) >= 0 {
			off := n.Attrs.Int("offset")
			s += fmt.Sprintf(", channels [%d,%d) of %d", off, off+sliceChannels(st.Graph, i), n.Type.Shape[1])
		}
		return s
	}
}

// sliceChannels is the number of channels a destination write produces.
func sliceChannels(g *ir.Graph, i int) int {
	n := g.Nodes[i]
	switch n.Op {
	case ir.OpFusedConv:
		return g.Nodes[n.Args[1]].Type.Shape[0]
	default:
		return g.Nodes[n.Args[0]].Type.Shape[1]
	}
}
