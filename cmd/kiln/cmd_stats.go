package main

import (
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/kiln-dev/kiln/ir"
)

func init() {
	register(&command{name: "stats", args: "FILE", summary: "print learnable parameters and MACs (conv and dense multiply-accumulates) as exact integers",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			var nf netFlags
			nf.register(fs)
			layers := fs.Bool("layers", false, "also print a per-block table")
			return func(args []string) error {
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				g, err := nf.load(file)
				if err != nil {
					return err
				}
				_, learnable := countParams(g)
				in := g.Inputs()[0].Type
				fmt.Fprintf(e.stdout, "network:    %s\ninput:      %s\nparameters: %s\nMACs:       %s\n",
					g.Name, in, commas(learnable), commas(totalMACs(g)))
				if *layers {
					fmt.Fprintln(e.stdout)
					return blockTable(e, g)
				}
				return nil
			}
		}})
}

// blockStats is one row of the per-block table.
type blockStats struct {
	name   string
	out    ir.Type
	params int64
	macs   int64
}

// blockOf maps a node name to its block: the longest marked scope that is a
// path prefix of the name (features.6.branch1.0.conv -> features.6).
func blockOf(name string, marked map[string]bool) string {
	parts := strings.Split(name, ".")
	for k := len(parts); k > 0; k-- {
		if p := strings.Join(parts[:k], "."); marked[p] {
			return p
		}
	}
	return ""
}

// blockTable prints parameters, MACs and output shape for every marked block
// (the network-level assignments and their numbered children), in graph order.
func blockTable(e *env, g *ir.Graph) error {
	marked := map[string]bool{}
	for _, m := range g.Marks {
		marked[m.Name] = true
	}
	// Only leaf marks are rows: a mark that has marked children (a seq) is
	// represented by those children.
	parent := map[string]bool{}
	for _, m := range g.Marks {
		if i := strings.LastIndex(m.Name, "."); i > 0 && marked[m.Name[:i]] {
			parent[m.Name[:i]] = true
		}
	}
	leaf := map[string]bool{}
	for k := range marked {
		if !parent[k] {
			leaf[k] = true
		}
	}
	var rows []*blockStats
	byName := map[string]*blockStats{}
	for i, n := range g.Nodes {
		if n.Op == ir.OpInput {
			continue
		}
		b := blockOf(n.Name, leaf)
		if b == "" {
			b = "(other)"
		}
		r := byName[b]
		if r == nil {
			r = &blockStats{name: b}
			byName[b] = r
			rows = append(rows, r)
		}
		if n.Op == ir.OpParam && !n.Attrs.Bool("buffer") {
			r.params += int64(n.Type.Numel())
		}
		r.macs += g.MACs(i)
	}
	for _, m := range g.Marks {
		if r := byName[m.Name]; r != nil {
			r.out = g.Nodes[m.Node].Type
		}
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "block\tparameters\tMACs\toutput\t")
	var tp, tm int64
	for _, r := range rows {
		out := ""
		if r.out.Rank() > 0 {
			out = ir.ShapeString(r.out.Shape)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", r.name, commas(r.params), commas(r.macs), out)
		tp += r.params
		tm += r.macs
	}
	fmt.Fprintf(tw, "total\t%s\t%s\t\t\n", commas(tp), commas(tm))
	return tw.Flush()
}
