package tests

import (
	"fmt"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/fixtures"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// Tolerance is the fixtures README's recommended bound: max|got-ref| <= tol * max|ref|.
const fixtureTol = 1e-4

var networks = []string{"inception_v4", "inception_resnet_v2", "inception_resnet_v1"}

func loadNet(t testing.TB, name string, batch int, input []int) *ir.Graph {
	t.Helper()
	g, err := dsl.LoadFile(name+".kiln", dsl.Options{Batch: batch, InputShape: input, FS: archs.FS})
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return g
}

// loadBlock elaborates one block of an archs file as a network of its own:
// the block is called unassigned, so its parameters carry block-relative
// names (branch0.conv.weight), as in the fixtures.
func loadBlock(t testing.TB, file, call string, in []int) *ir.Graph {
	t.Helper()
	src := fmt.Sprintf("import %q\nnetwork block_test(x: f32[N, %d, %d, %d]) {\n    return %s\n}\n", file, in[1], in[2], in[3], call)
	g, err := dsl.Load("block_test.kiln", []byte(src), dsl.Options{Batch: in[0], FS: archs.FS})
	if err != nil {
		t.Fatalf("elaborate %s from %s: %v", call, file, err)
	}
	return g
}

// procedural builds every parameter of g with the fixtures' generator.
func procedural(t testing.TB, g *ir.Graph) map[string]*tensor.Tensor {
	t.Helper()
	out, err := g.GeneratedParams()
	if err != nil {
		t.Fatalf("generate: %v", err)
	}
	return out
}

func readNPY(t testing.TB, elems ...string) *tensor.Tensor {
	t.Helper()
	x, err := tensor.ReadNPYFile(fixtures.Path(t, elems...))
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// compare returns max|got-ref| / max|ref| and fails if it exceeds tol.
func compare(t testing.TB, what string, got, ref *tensor.Tensor, tol float64) float64 {
	t.Helper()
	d, err := tensor.MaxAbsDiff(got, ref)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	rel := d / tensor.MaxAbs(ref)
	if !(rel <= tol) {
		t.Errorf("%s: max|got-ref| = %.3g = %.3g x max|ref|, want <= %g", what, d, rel, tol)
	}
	return rel
}

func stageName(file string) string {
	return strings.TrimSuffix(strings.TrimPrefix(file, "stage_"), ".npy")
}
