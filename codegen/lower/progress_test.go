package lower

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
	"github.com/kiln-dev/kiln/train"
)

// TestDriverProgressStore: a training step's driver stores the completion
// word after each kernel of a single-threaded run (on every target: one C
// driver), an inference program's driver does not.
func TestDriverProgressStore(t *testing.T) {
	kernels := []rt.KernelInfo{{Name: "a", Tiles: 1}, {Name: "b", Tiles: 2}}
	for _, tc := range []struct {
		progress bool
		targets  []codegen.Target
	}{
		{false, []codegen.Target{codegen.AVX512, codegen.AVX2}},
		{true, []codegen.Target{codegen.AVX512, codegen.AVX2}},
		{true, []codegen.Target{codegen.NEON}},
	} {
		src := driverSourceOpts(tc.targets, kernels, 4096, 0, tc.progress)
		want := 0
		if tc.progress {
			want = len(tc.targets)
		}
		if n := strings.Count(src, "__atomic_store_n(pw, ((pep0 + (uint64_t)k + 1) & KILN_EP_MASK) << KILN_CNT_BITS, __ATOMIC_RELEASE);"); n != want {
			t.Errorf("progress %v, %d targets: %d progress stores in the driver, want %d", tc.progress, len(tc.targets), n, want)
		}
	}
	if driverSource([]codegen.Target{codegen.AVX2}, kernels, 4096, 0) != driverSourceOpts([]codegen.Target{codegen.AVX2}, kernels, 4096, 0, false) {
		t.Error("driverSource differs from driverSourceOpts without progress")
	}
}

// TestRunProgressOutputsFinal compiles a training step of the tiny
// networks with every value an output and runs it with
// rt.Model.RunProgress on 1 and 2 threads, polling as fast as it can: the
// reported kernel counts increase to the kernel count, and every output
// read from the arena as soon as the count reached its
// Program.OutputReady equals, bit for bit, its value after the run (no
// later kernel writes it).
func TestRunProgressOutputsFinal(t *testing.T) {
	tc, err := codegen.FindLLVM()
	testenv.Check(t, err)
	for _, net := range []string{"tiny_bn", "tiny_mix", "tiny_sib"} {
		sg, params, inputs := stepFixture(t, net, 2, train.PaperRMSProp)
		g := *sg.Graph
		g.Outputs = append([]int(nil), sg.Graph.Outputs...)
		for i, n := range g.Nodes {
			if !n.IsMulti() && n.Op != ir.OpParam && n.Op != ir.OpInput && !slices.Contains(g.Outputs, i) && n.Type.Rank() > 0 {
				g.Outputs = append(g.Outputs, i)
			}
		}
		in := g.Inputs()[0].Name
		if in == sg.Target {
			in = g.Inputs()[1].Name
		}
		st, err := passes.RunTraining(&g, passes.Options{})
		if err != nil {
			t.Fatal(err)
		}
		p, err := LowerTraining(st, params, []codegen.Target{codegen.AVX512, codegen.AVX2}, TrainOptions{Input: in, LR: 0.01})
		if err != nil {
			t.Fatal(err)
		}
		so := filepath.Join(t.TempDir(), "step.so")
		if err := p.Compile(context.Background(), tc, so, nil); err != nil {
			t.Fatal(err)
		}
		nk := len(p.Manifest.Kernels)
		if len(p.OutputReady) != len(g.Outputs) {
			t.Fatalf("%s: OutputReady has %d entries for %d outputs", net, len(p.OutputReady), len(g.Outputs))
		}
		for k, r := range p.OutputReady {
			if r < 1 || r > nk {
				t.Errorf("%s: output %d ready after %d kernels, want 1..%d", net, k, r, nk)
			}
		}
		// A sibling group's kernel writes its other members' values too
		// (kernelSpec.also): their weight gradients are ready before the
		// last kernel, as their optimizer updates follow.
		wgroups := passes.WgradSiblings(st.Graph)
		if net == "tiny_sib" && len(wgroups) != 1 {
			t.Errorf("%s: %d weight-gradient sibling groups, want 1", net, len(wgroups))
		}
		for _, grp := range wgroups {
			for _, m := range grp[1:] {
				if k := slices.Index(st.Graph.Outputs, m); k >= 0 && p.OutputReady[k] >= nk {
					t.Errorf("%s: sibling weight gradient %%%d ready only after the last kernel", net, m)
				}
			}
		}
		for _, threads := range []int{1, 2} {
			m, err := rt.Open(rt.Artifact{Manifest: p.Manifest, SharedObjectPath: so, Weights: p.Weights}, rt.Options{Threads: threads, MaxSessions: 1})
			if err != nil {
				t.Fatal(err)
			}
			if err := m.SetState(sg.Target, inputs[sg.Target].Data); err != nil {
				t.Fatal(err)
			}
			offs := make([]int64, len(g.Outputs))
			for k := 2; k < len(g.Outputs); k++ {
				for _, s := range m.Manifest().State {
					if s.Name == OutputState(k) {
						offs[k] = s.Update
					}
				}
			}
			early := make([][]float32, len(g.Outputs))
			var dones []int
			out := make([]float32, g.Nodes[g.Outputs[1]].Type.Numel())
			for range 3 {
				clear(early)
				dones = dones[:0]
				err := m.RunProgress(inputs[in].Data, out, time.Nanosecond, func(done int, arena []float32) {
					dones = append(dones, done)
					for k := 2; k < len(g.Outputs); k++ {
						if early[k] == nil && p.OutputReady[k] <= done {
							n := int64(g.Nodes[g.Outputs[k]].Type.Numel())
							early[k] = slices.Clone(arena[offs[k] : offs[k]+n])
						}
					}
				})
				if err != nil {
					t.Fatal(err)
				}
				increasing := len(dones) > 0 && dones[0] > 0 && dones[len(dones)-1] == nk
				for i := 1; i < len(dones); i++ {
					increasing = increasing && dones[i] > dones[i-1]
				}
				if !increasing {
					t.Errorf("%s, %d threads: reported kernel counts %v, want increasing to %d", net, threads, dones, nk)
				}
				for k := 2; k < len(g.Outputs); k++ {
					final, _ := m.State(OutputState(k))
					if !slices.Equal(early[k], final) {
						t.Errorf("%s, %d threads: output %d (%%%d %s) read after %d kernels differs from its final value", net, threads, k, g.Outputs[k], g.Nodes[g.Outputs[k]].Op, p.OutputReady[k])
					}
				}
			}
			t.Logf("%s, %d threads: %d kernels, counts reported in the last run: %v", net, threads, nk, dones)
			m.Close()
		}
	}
}
