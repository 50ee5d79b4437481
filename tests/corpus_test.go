package tests

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/codegen/lower"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
)

// corpusTol is the bound of compiled code against the interpreter:
// max|got-ref| <= 1e-5 x max|ref| (the fixtures README's strict bound).
const corpusTol = 1e-5

// corpus lists tests/corpus/*.kiln: small networks in the classic CNN
// patterns, written from docs/DSL.md alone.
func corpus(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("corpus", "*.kiln"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	if len(files) < 6 {
		t.Fatalf("corpus has %d networks, want at least 6", len(files))
	}
	return files
}

// TestCorpusCompiled checks, builds and runs every corpus network: the
// build's legality check (lower.Check, what kiln check runs) must pass, the
// x86-64 artifact (AVX-512 and AVX2 kernels in one shared object) is run
// with each ISA the CPU has at batches 1 and 2 (1 with -short), and the output must match
// the interpreter within corpusTol x max|ref|.
func TestCorpusCompiled(t *testing.T) {
	tc, err := codegen.FindLLVM()
	testenv.Check(t, err)
	isas := testenv.HostISAs(t, "avx512", "avx2")
	for _, file := range corpus(t) {
		name := strings.TrimSuffix(filepath.Base(file), ".kiln")
		t.Run(name, func(t *testing.T) {
			batches := []int{1, 2}
			if testing.Short() {
				batches = batches[:1]
			}
			for _, batch := range batches {
				g, err := dsl.LoadFile(file, dsl.Options{Batch: batch})
				if err != nil {
					t.Fatal(err)
				}
				params := procedural(t, g)
				in := g.Inputs()[0]
				x, err := tensor.Generate("input", in.Type.Shape)
				if err != nil {
					t.Fatal(err)
				}
				res, err := interp.Run(g, params, map[string]*tensor.Tensor{in.Name: x}, interp.Options{})
				if err != nil {
					t.Fatal(err)
				}
				want := res.Outputs[0]
				s, err := passes.Run(g, passes.Options{Target: passes.Targets[0], VerifyEach: true, Consumer: passes.Codegen})
				if err != nil {
					t.Fatal(err)
				}
				targets := []codegen.Target{codegen.AVX512, codegen.AVX2}
				if err := lower.Check(s, targets); err != nil {
					t.Fatalf("check: %v", err)
				}
				p, err := lower.Lower(s, params, targets)
				if err != nil {
					t.Fatal(err)
				}
				so := filepath.Join(t.TempDir(), name+".so")
				if err := p.Compile(context.Background(), tc, so, nil); err != nil {
					t.Fatal(err)
				}
				art := rt.Artifact{Manifest: p.Manifest, SharedObjectPath: so, Weights: p.Weights}
				for _, isa := range isas {
					m, err := rt.Open(art, rt.Options{ISA: isa, Threads: 2})
					if err != nil {
						t.Fatal(err)
					}
					got := tensor.New(want.Shape...)
					err = m.Run(x.Data, got.Data)
					m.Close()
					if err != nil {
						t.Fatal(err)
					}
					rel := compare(t, name+" "+isa, got, want, corpusTol)
					t.Logf("%s batch %d %s: max|diff|/max|ref| = %.2e; ops %s", name, batch, isa, rel, kernelOps(s.Graph))
				}
			}
		})
	}
}

// kernelOps summarizes the run-time ops of a lowered graph, to show in the
// log which kernels a network exercised (fused or standalone).
func kernelOps(g *ir.Graph) string {
	build := passes.BuildTime(g)
	c := map[string]int{}
	for i, n := range g.Nodes {
		if !build[i] && n.Op != ir.OpInput {
			c[n.Op]++
		}
	}
	var ks []string
	for k := range c {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var parts []string
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%s=%d", k, c[k]))
	}
	return strings.Join(parts, " ")
}
