package passes_test

import (
	"slices"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/passes"
	"github.com/kiln-dev/kiln/train"
)

// TestConvSiblings checks group-siblings on the mini networks' training
// steps: each Inception-A and -B block's 1x1 convolutions of the block
// input (four in mini_inception, the pooling branch's moved before its
// pool; three and two in mini_inception_resnet's A and B blocks) form one
// group of adjacent nodes, and their input gradients one tree of adds
// (GradInputSiblings), and their weight gradients one group of adjacent
// nodes (WgradSiblings); the order stays topological, and the plan keeps
// every value a group reads or writes live over the whole group (up to an
// input-gradient group's root), which the compiled step's one kernel per
// group needs.
func TestConvSiblings(t *testing.T) {
	for _, c := range []struct {
		net   string
		sizes []int
	}{
		{"mini_inception", []int{4, 4, 4, 4, 4, 4}},
		{"mini_inception_resnet", []int{3, 3, 3, 2, 2, 2}},
	} {
		net := c.net
		t.Run(net, func(t *testing.T) {
			g, err := dsl.LoadFile(net+".kiln", dsl.Options{FS: archs.FS, Batch: 2})
			if err != nil {
				t.Fatal(err)
			}
			sg, err := train.Step(g, train.StepOptions{Smoothing: 0.1, Optimizer: train.PaperRMSProp})
			if err != nil {
				t.Fatal(err)
			}
			st, err := passes.RunTraining(sg.Graph, passes.Options{})
			if err != nil {
				t.Fatal(err)
			}
			tg, p := st.Graph, st.Plan
			if err := tg.Verify(); err != nil {
				t.Fatal(err)
			}
			if err := p.Check(tg); err != nil {
				t.Fatal(err)
			}
			groups := passes.ConvSiblings(tg)
			var sizes []int
			for _, grp := range groups {
				sizes = append(sizes, len(grp))
			}
			if !slices.Equal(sizes, c.sizes) {
				t.Fatalf("sibling groups of %v convolutions, want %v (3 Inception-A blocks, then 3 -B)", sizes, c.sizes)
			}
			// The input gradients: one group per forward group, of as
			// many gradients.
			var gsizes []int
			for _, grp := range passes.GradInputSiblings(tg) {
				for _, m := range grp.Members {
					if op := tg.Nodes[m].Op; op != ir.OpConv2DGradInput && op != ir.OpAdd {
						t.Errorf("%%%d %s in an input-gradient group", m, op)
					}
					for _, a := range tg.Nodes[m].Args {
						if b := p.BufferOf[a]; b >= 0 && p.Buffers[b].End < grp.Root {
							t.Errorf("input-gradient group at %%%d: operand %%%d live to %d only", grp.Root, a, p.Buffers[b].End)
						}
					}
				}
				if grp.Members[len(grp.Members)-1] != grp.Root {
					t.Errorf("input-gradient group %v: the root %%%d is not its last node", grp.Members, grp.Root)
				}
				gsizes = append(gsizes, len(grp.Grads))
			}
			slices.Sort(gsizes)
			want := slices.Sorted(slices.Values(c.sizes))
			if !slices.Equal(gsizes, want) {
				t.Errorf("input-gradient groups of %v gradients, want %v", gsizes, want)
			}
			// The weight gradients: one group per forward group, of as
			// many gradients of the same input, adjacent.
			wgroups := passes.WgradSiblings(tg)
			var wsizes []int
			for _, grp := range wgroups {
				wsizes = append(wsizes, len(grp))
				for _, m := range grp {
					if n := tg.Nodes[m]; n.Op != ir.OpConv2DGradWeight || n.Args[1] != tg.Nodes[grp[0]].Args[1] {
						t.Fatalf("%%%d %s %v in a group of weight gradients of %%%d", m, n.Op, n.Args, tg.Nodes[grp[0]].Args[1])
					}
				}
			}
			slices.Sort(wsizes)
			if !slices.Equal(wsizes, want) {
				t.Errorf("weight-gradient groups of %v gradients, want %v", wsizes, want)
			}
			for _, grp := range append(groups, wgroups...) {
				s, e := grp[0], grp[len(grp)-1]
				live := func(v int, what string) {
					b := p.BufferOf[v]
					if b < 0 {
						return
					}
					if buf := p.Buffers[b]; buf.Start > s || buf.End < e {
						t.Errorf("group %d..%d (%s): %s %%%d live over %d..%d only", s, e, tg.Nodes[s].Name, what, v, buf.Start, buf.End)
					}
				}
				for _, m := range grp {
					n := tg.Nodes[m]
					if n.Op == ir.OpConv2D && n.Args[0] != tg.Nodes[s].Args[0] {
						t.Fatalf("%%%d %s %v in a group of convolutions of %%%d", m, n.Op, n.Args, tg.Nodes[s].Args[0])
					}
					live(m, "output")
					for _, a := range n.Args {
						live(a, "operand")
					}
				}
			}
		})
	}
}
