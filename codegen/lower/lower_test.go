package lower

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
)

// compileNet runs the pipeline, lowers and compiles net, and opens it.
func compileNet(t *testing.T, net string, batch int, input []int, isa string) (*rt.Model, map[string]*tensor.Tensor, *tensor.Tensor, *tensor.Tensor) {
	t.Helper()
	g, err := dsl.LoadFile(net+".kiln", dsl.Options{Batch: batch, InputShape: input, FS: archs.FS})
	if err != nil {
		t.Fatal(err)
	}
	params := map[string]*tensor.Tensor{}
	for _, p := range g.Params() {
		params[p.Name], err = tensor.Generate(p.Name, p.Type.Shape)
		if err != nil {
			t.Fatal(err)
		}
	}
	x, err := tensor.Generate("input", g.Inputs()[0].Type.Shape)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := interp.Run(g, params, map[string]*tensor.Tensor{g.Inputs()[0].Name: x}, interp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := passes.Run(g, passes.Options{Target: passes.Targets[0], VerifyEach: true})
	if err != nil {
		t.Fatal(err)
	}
	p, err := Lower(s, params, []codegen.Target{codegen.AVX512, codegen.AVX2})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := codegen.FindLLVM()
	testenv.Check(t, err)
	so := filepath.Join(t.TempDir(), "net.so")
	if err := p.Compile(context.Background(), tc, so, nil); err != nil {
		t.Fatal(err)
	}
	a := rt.Artifact{Manifest: p.Manifest, SharedObjectPath: so, Weights: p.Weights}
	m, err := rt.Open(a, rt.Options{ISA: isa, Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	artifacts[m] = a
	t.Cleanup(func() { m.Close() })
	return m, params, x, ref.Outputs[0]
}

var artifacts = map[*rt.Model]rt.Artifact{}

// reopen opens the artifact behind m again with another ISA.
func reopen(t *testing.T, m *rt.Model, isa string) (*rt.Model, error) {
	m2, err := rt.Open(artifacts[m], rt.Options{ISA: isa, Threads: 2})
	if err == nil {
		t.Cleanup(func() { m2.Close() })
	}
	return m2, err
}

func TestTinyCompiled(t *testing.T) {
	for _, isa := range []string{"avx512", "avx2"} {
		for _, batch := range []int{1, 3} {
			m, _, x, want := compileNet(t, "tiny", batch, nil, isa)
			got := tensor.New(want.Shape...)
			if err := m.Run(x.Data, got.Data); err != nil {
				t.Fatal(err)
			}
			d, _ := tensor.MaxAbsDiff(got, want)
			rel := d / tensor.MaxAbs(want)
			t.Logf("tiny %s batch %d: max|diff|/max|ref| = %.2e", isa, batch, rel)
			if !(rel <= 1e-4) {
				t.Errorf("tiny %s batch %d: compiled differs from the interpreter by %.3g x max|ref|", isa, batch, rel)
			}
		}
	}
}

// TestNetworksCompiled compiles the three networks at batch 1 (299x299) and
// batch 4 (139x139, to keep the interpreter's share of CI time down), with
// AVX-512 and AVX2 kernels in one artifact, and checks both paths against the
// interpreter within 1e-4 x max|reference|.
func TestNetworksCompiled(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles three full networks; skipped with -short")
	}
	for _, net := range []string{"inception_v4", "inception_resnet_v2", "inception_resnet_v1"} {
		for _, batch := range []int{1, 4} {
			var size []int
			if batch > 1 {
				size = []int{3, 139, 139}
			}
			m, _, x, want := compileNet(t, net, batch, size, "avx512")
			for _, isa := range []string{"avx512", "avx2"} {
				if isa == "avx2" {
					m2, err := reopen(t, m, isa)
					if err != nil {
						t.Fatal(err)
					}
					m = m2
				}
				got := tensor.New(want.Shape...)
				if err := m.Run(x.Data, got.Data); err != nil {
					t.Fatal(err)
				}
				d, _ := tensor.MaxAbsDiff(got, want)
				rel := d / tensor.MaxAbs(want)
				t.Logf("%s batch %d %s: max|diff|/max|ref| = %.2e", net, batch, isa, rel)
				if !(rel <= 1e-4) {
					t.Errorf("%s batch %d %s: compiled differs from the interpreter by %.3g x max|ref|", net, batch, isa, rel)
				}
			}
		}
	}
}
