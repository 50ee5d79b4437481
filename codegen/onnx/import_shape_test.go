package onnx

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/kiln-dev/kiln/ir"
)

// int64Scalar encodes a rank-0 INT64 TensorProto.
func int64Scalar(v int64) []byte {
	var b []byte
	b = appendVarintField(b, tensorDataType, dataTypeInt64)
	return appendBytesField(b, tensorInt64Data, protowire.AppendVarint(nil, uint64(v)))
}

// flattenChainModel is x.view(x.size(0), -1) after a global average pool as
// PyTorch 1.13 exports it with a symbolic batch: Shape -> Gather(0) ->
// Unsqueeze(axes=[0]) -> Concat(.., [-1]) -> Reshape. gatherIn names
// Gather's data input (the Shape's output normally).
func flattenChainModel(gatherIn string) *tmodel {
	m := &tmodel{opset: 13}
	m.node("GlobalAveragePool", "gap", []string{"x"}, []string{"g"})
	m.node("Shape", "/Shape", []string{"g"}, []string{"s"})
	m.node("Constant", "/Constant", nil, []string{"zero"}, tensorAttr("value", int64Scalar(0)))
	m.node("Gather", "/Gather", []string{gatherIn, "zero"}, []string{"b"})
	m.node("Constant", "/Constant_1", nil, []string{"axes"}, tensorAttr("value", int64Tensor("", 0)))
	m.node("Unsqueeze", "/Unsqueeze", []string{"b", "axes"}, []string{"bu"})
	m.node("Constant", "/Constant_2", nil, []string{"m1"}, tensorAttr("value", int64Tensor("", -1)))
	m.node("Concat", "/Concat", []string{"bu", "m1"}, []string{"shape"}, intAttr("axis", 0))
	m.node("Reshape", "/Reshape", []string{"g", "shape"}, []string{"y"})
	m.inputs = [][]byte{valueInfo("x", []int{2, 3, 4, 4})}
	m.outputs = [][]byte{valueInfo("y", []int{2, 3})}
	return m
}

// TestImportShapeChain imports the Shape/Gather/Unsqueeze/Concat/Reshape
// chain PyTorch writes for x.view(x.size(0), -1): the chain folds to the
// constant shape [2, -1] and the Reshape becomes flatten, with the values
// of the global average pool.
func TestImportShapeChain(t *testing.T) {
	imp, err := importBytes(flattenChainModel("s").bytes())
	if err != nil {
		t.Fatal(err)
	}
	src := string(imp.Source)
	if !strings.Contains(src, "flatten(global_avgpool_1)") {
		t.Errorf("source lacks the flatten:\n%s", src)
	}
	out := imp.Graph.Nodes[imp.Graph.Outputs[0]]
	if !ir.ShapeEqual(out.Type.Shape, []int{2, 3}) {
		t.Fatalf("output shape %v, want [2 3]", out.Type.Shape)
	}
	x := testInput(2, 3, 4, 4)
	got := runOne(t, imp.Graph, imp.Weights, x)
	for i := 0; i < 6; i++ {
		var want float32
		for p := 0; p < 16; p++ {
			want += x.Data[i*16+p]
		}
		want /= 16
		if d := got.Data[i] - want; d > 1e-6 || d < -1e-6 {
			t.Errorf("y[%d] = %g, want %g", i, got.Data[i], want)
		}
	}
}

// TestImportFoldErrors checks that folding refuses what it cannot
// evaluate, at the node: Gather over a computed tensor, an index out of
// range, Unsqueeze with a repeated axis.
func TestImportFoldErrors(t *testing.T) {
	cases := []struct {
		name string
		m    *tmodel
		want string
	}{
		{"gather of a tensor", flattenChainModel("g"), `"/Gather" (Gather): input 0 (data, "g") is a computed tensor`},
		{"index out of range", func() *tmodel {
			m := flattenChainModel("s")
			m.nodes[2] = tnode("Constant", "/Constant", nil, []string{"zero"}, tensorAttr("value", int64Scalar(4)))
			return m
		}(), "index 4 is out of range for 4 elements"},
		{"repeated axis", func() *tmodel {
			m := flattenChainModel("s")
			m.nodes[4] = tnode("Constant", "/Constant_1", nil, []string{"axes"}, tensorAttr("value", int64Tensor("", 0, 0)))
			return m
		}(), "axis 0 is repeated"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := importBytes(tc.m.bytes())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
