package passes

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func load(t testing.TB, name string, batch int, input []int) *ir.Graph {
	t.Helper()
	g, err := dsl.LoadFile(name+".kiln", dsl.Options{Batch: batch, InputShape: input, FS: archs.FS})
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return g
}

// runPrefix runs the pipeline up to and including pass stop ("" = none).
func runPrefix(t testing.TB, g *ir.Graph, target Target, stop string) *State {
	t.Helper()
	if stop == "" {
		return &State{Graph: Clone(g), Target: target}
	}
	s, err := Run(g, Options{Target: target, VerifyEach: true, StopAfter: stop})
	if err != nil {
		t.Fatalf("pipeline up to %s: %v", stop, err)
	}
	return s
}

// TestOrderingConstraints checks every pass's After list against the
// declared order, and that names are unique kebab-case.
func TestOrderingConstraints(t *testing.T) {
	pos := map[string]int{}
	for i, p := range Pipeline() {
		if _, dup := pos[p.Name]; dup {
			t.Errorf("duplicate pass %s", p.Name)
		}
		if strings.ToLower(p.Name) != p.Name || strings.ContainsAny(p.Name, " _") {
			t.Errorf("pass name %q is not kebab-case", p.Name)
		}
		pos[p.Name] = i
	}
	for _, p := range Pipeline() {
		for _, a := range p.After {
			j, ok := pos[a]
			if !ok {
				t.Errorf("%s: After names unknown pass %s", p.Name, a)
			} else if j >= pos[p.Name] {
				t.Errorf("%s must run after %s, but the pipeline has it at %d, %s at %d", p.Name, a, pos[p.Name], a, j)
			}
		}
	}
}

// TestGolden pins every pass's effect on the tiny network (NEON target, c=4,
// so that every concat offset is aligned): testdata/<pass>.golden holds the IR
// after the pass. Regenerate with go test ./passes -update.
func TestGolden(t *testing.T) {
	g := load(t, "tiny", 1, nil)
	neon, _ := LookupTarget("neon")
	for _, p := range Pipeline() {
		t.Run(p.Name, func(t *testing.T) {
			s := runPrefix(t, g, neon, p.Name)
			var b strings.Builder
			b.WriteString("// IR of archs/tiny.kiln after the pipeline up to and including " + p.Name + " (target neon)\n")
			if err := ir.Print(&b, s.Graph); err != nil {
				t.Fatal(err)
			}
			if s.Plan != nil {
				b.WriteString(planSummary(s))
			}
			checkGolden(t, filepath.Join("testdata", p.Name+".golden"), b.String())
		})
	}
}

func planSummary(s *State) string {
	var b strings.Builder
	b.WriteString("// plan\n")
	for i, buf := range s.Plan.Buffers {
		fmt.Fprintf(&b, "//   buffer %d steps %d-%d offset %d size %d\n", i, buf.Start, buf.End, buf.Offset, buf.Size)
	}
	fmt.Fprintf(&b, "//   arena %d lower bound %d naive %d\n", s.Plan.Arena, s.Plan.LowerBound, s.Plan.Naive)
	return b.String()
}

func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./passes -update to create it)", err)
	}
	if string(want) != got {
		t.Fatalf("%s differs from the golden file; rerun with -update if the change is intended.\n--- got\n%s", path, got)
	}
}

// TestNoStandaloneOps checks that after the full pipeline no standalone
// batchnorm, relu, add, mul or concat is left in the three networks.
func TestNoStandaloneOps(t *testing.T) {
	for _, net := range []string{"inception_v4", "inception_resnet_v2", "inception_resnet_v1"} {
		for _, target := range Targets {
			s := runPrefix(t, load(t, net, 1, nil), target, "plan-buffers")
			c := OpCounts(s.Graph)
			for _, op := range []string{ir.OpBatchNorm, ir.OpReLU, ir.OpAdd, ir.OpMul, ir.OpConcat} {
				if c[op] != 0 {
					t.Errorf("%s/%s: %d %s left", net, target.Name, c[op], op)
				}
			}
		}
	}
}

// TestPlans checks every plan the pipeline makes for the three networks
// (batch 1 and 4, every target): no two simultaneously live buffers overlap,
// and at batch 1, 299x299 the arena is within 1.05x of the live-bytes lower
// bound.
func TestPlans(t *testing.T) {
	for _, net := range []string{"inception_v4", "inception_resnet_v2", "inception_resnet_v1", "tiny"} {
		for _, batch := range []int{1, 4} {
			g := load(t, net, batch, nil)
			for _, target := range Targets {
				s := runPrefix(t, g, target, "plan-buffers")
				if err := s.Plan.Check(s.Graph); err != nil {
					t.Errorf("%s batch %d %s: %v", net, batch, target.Name, err)
				}
				ratio := float64(s.Plan.Arena) / float64(s.Plan.LowerBound)
				if batch == 1 && net != "tiny" && ratio > 1.05 {
					t.Errorf("%s batch 1 %s: arena %d is %.3fx the lower bound %d", net, target.Name, s.Plan.Arena, ratio, s.Plan.LowerBound)
				}
				if s.Plan.Arena < s.Plan.LowerBound || s.Plan.Naive < s.Plan.Arena {
					t.Errorf("%s: inconsistent plan: arena %d, bound %d, naive %d", net, s.Plan.Arena, s.Plan.LowerBound, s.Plan.Naive)
				}
			}
		}
	}
}

// TestPlanCheckCatchesOverlap makes sure the plan verifier can fail.
func TestPlanCheckCatchesOverlap(t *testing.T) {
	s := runPrefix(t, load(t, "tiny", 1, nil), Targets[0], "plan-buffers")
	p := s.Plan
	// Find two buffers live at the same time and put them at the same offset.
	for i := range p.Buffers {
		for j := i + 1; j < len(p.Buffers); j++ {
			a, b := p.Buffers[i], p.Buffers[j]
			if a.Start <= b.End && b.Start <= a.End {
				p.Buffers[j].Offset = a.Offset
				if err := p.Check(s.Graph); err == nil || !strings.Contains(err.Error(), "overlap") {
					t.Fatalf("Check accepted overlapping buffers %d and %d: %v", i, j, err)
				}
				return
			}
		}
	}
	t.Fatal("no simultaneously live buffers found")
}

// TestVerifyEachNamesPass checks that a pass producing an invalid graph is
// named in the error, and that a panicking pass is reported, not crashed on.
func TestVerifyEachNamesPass(t *testing.T) {
	breaking := &Pass{Name: "break-things", Run: func(s *State) error {
		s.Graph.Outputs = []int{len(s.Graph.Nodes) + 5}
		return nil
	}}
	panicking := &Pass{Name: "panic-things", Run: func(s *State) error {
		s.Graph.MustAdd(&ir.Node{Op: "nonsense"})
		return nil
	}}
	g := load(t, "tiny", 1, nil)
	_, err := runPasses(g, []*Pass{foldBN, breaking, dcePass}, Options{VerifyEach: true})
	if err == nil || !strings.Contains(err.Error(), "verifier failed after pass break-things") {
		t.Fatalf("got %v, want the verifier to name break-things", err)
	}
	_, err = runPasses(g, []*Pass{panicking}, Options{VerifyEach: true})
	if err == nil || !strings.Contains(err.Error(), "pass panic-things: internal error") {
		t.Fatalf("got %v, want an internal error naming panic-things", err)
	}
	_, err = Run(g, Options{Disabled: map[string]bool{"nope": true}})
	if err == nil || !strings.Contains(err.Error(), `unknown pass "nope"`) {
		t.Fatalf("unknown pass name accepted: %v", err)
	}
}
