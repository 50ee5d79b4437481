package tests

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen/onnx"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestCorpusONNXRoundTrip exports every corpus network to ONNX (kiln
// export --onnx), imports the file (kiln import), elaborates the imported
// source at batch 2 and requires the interpreter's outputs of both to
// agree within corpusTol x max|ref| (the same weights, renamed by import).
func TestCorpusONNXRoundTrip(t *testing.T) {
	for _, file := range corpus(t) {
		name := strings.TrimSuffix(filepath.Base(file), ".kiln")
		t.Run(name, func(t *testing.T) {
			g, err := dsl.LoadFile(file, dsl.Options{Batch: 2})
			if err != nil {
				t.Fatal(err)
			}
			params := procedural(t, g)
			b, err := onnx.Encode(g, params, onnx.Options{})
			if err != nil {
				t.Fatalf("export: %v", err)
			}
			m, err := onnx.ReadModel(b, name+".onnx", onnx.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			imp, err := onnx.Import(m, onnx.ImportOptions{Source: name + ".onnx", Batch: 2})
			if err != nil {
				t.Fatalf("import: %v", err)
			}
			ig, err := dsl.Load(name+"_imported.kiln", imp.Source, dsl.Options{Batch: 2})
			if err != nil {
				t.Fatalf("imported source: %v", err)
			}
			in := g.Inputs()[0]
			x, err := tensor.Generate("input", in.Type.Shape)
			if err != nil {
				t.Fatal(err)
			}
			run := func(g2 *interp.Result, err error) *tensor.Tensor {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
				return g2.Outputs[0]
			}
			want := run(interp.Run(g, params, map[string]*tensor.Tensor{in.Name: x}, interp.Options{}))
			got := run(interp.Run(ig, imp.Weights, map[string]*tensor.Tensor{ig.Inputs()[0].Name: x}, interp.Options{}))
			rel := compare(t, name+" imported", got, want, corpusTol)
			t.Logf("%s: max|imported-original|/max|ref| = %.2e", name, rel)
		})
	}
}
