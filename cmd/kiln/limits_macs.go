package main

import (
	"flag"
	"fmt"
	"math"
	"strconv"

	"github.com/kiln-dev/kiln/ir"
)

// defaultMaxMACs is kiln check's and kiln build's default limit on a
// network's multiply-accumulates per image (docs/LIMITS.md): 1e12, about
// 80 times Inception-v4's 12.3e9, so that only a network whose compilation
// and inference would run for hours is refused.
const defaultMaxMACs = 1e12

// macsFlag is --max-macs: a count that accepts 1e12 as well as
// 1000000000000.
type macsFlag struct{ v float64 }

func (f *macsFlag) String() string { return strconv.FormatFloat(f.v, 'g', -1, 64) }

func (f *macsFlag) Set(s string) error {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || v <= 0 {
		return fmt.Errorf("want a positive count such as 1e12, got %q", s)
	}
	f.v = v
	return nil
}

// registerMACs adds --max-macs to fs (kiln check and kiln build).
func (f *netFlags) registerMACs(fs *flag.FlagSet) {
	f.maxMACs = macsFlag{defaultMaxMACs}
	fs.Var(&f.maxMACs, "max-macs", "refuse a network with more than `N` multiply-accumulates per image")
}

// checkMACs refuses g when its multiply-accumulates per image (the op
// table's MAC counts summed over every node, as kiln stats prints them,
// divided by the batch, the input's leading dimension) exceed f's --max-macs. A count that overflows int64
// is over any limit. The error is positioned at the network's input
// declaration and names the node with the most MACs.
func (f *netFlags) checkMACs(g *ir.Graph) error {
	if f.maxMACs.v <= 0 {
		return nil
	}
	var total float64
	top, topMACs := -1, int64(0)
	for i := range g.Nodes {
		m := g.MACs(i)
		if m < 0 { // the op table's int64 product overflowed
			total = math.Inf(1)
			top, topMACs = i, math.MaxInt64
			break
		}
		total += float64(m)
		if m > topMACs {
			top, topMACs = i, m
		}
	}
	// The batch the graph was elaborated with: its input's leading dimension.
	batch := 1
	if in := g.Inputs(); len(in) > 0 && len(in[0].Type.Shape) > 0 && in[0].Type.Shape[0] > 0 {
		batch = in[0].Type.Shape[0]
	}
	perImage := total / float64(batch)
	if perImage <= f.maxMACs.v {
		return nil
	}
	pos := ir.Pos{}
	if in := g.Inputs(); len(in) > 0 {
		pos = in[0].Pos
	}
	biggest := ""
	if top >= 0 {
		n := g.Nodes[top]
		biggest = fmt.Sprintf("; the largest is %%%d %s at %s with %s", top, n.Op, n.Pos, commas(topMACs/int64(batch)))
	}
	count := "more than 9.2e18"
	if !math.IsInf(perImage, 0) && perImage < math.MaxInt64 {
		count = commas(int64(perImage))
	}
	return ir.Errorf(pos, "network %s: %s multiply-accumulates per image exceed the limit %s%s (raise it with --max-macs)",
		g.Name, count, f.maxMACs.String(), biggest)
}
