package interp

import (
	"encoding/json"
	"math"
	"math/rand"
	"os"
	"testing"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// builder assembles a small test graph together with its params and inputs,
// filled with deterministic pseudo-random values.
type builder struct {
	t      testing.TB
	g      *ir.Graph
	r      *rand.Rand
	params map[string]*tensor.Tensor
	inputs map[string]*tensor.Tensor
}

func newBuilder(t testing.TB, seed int64) *builder {
	return &builder{t: t, g: &ir.Graph{Name: t.Name()}, r: rand.New(rand.NewSource(seed)),
		params: map[string]*tensor.Tensor{}, inputs: map[string]*tensor.Tensor{}}
}

// random returns a tensor with values uniform in [lo, hi).
func (b *builder) random(lo, hi float64, shape ...int) *tensor.Tensor {
	t := tensor.New(shape...)
	for i := range t.Data {
		t.Data[i] = float32(lo + (hi-lo)*b.r.Float64())
	}
	return t
}

// input adds an input node with uniform [-1, 1) data.
func (b *builder) input(name string, shape ...int) int {
	b.inputs[name] = b.random(-1, 1, shape...)
	return b.g.MustAdd(&ir.Node{Op: ir.OpInput, Name: name, Type: ir.Type{DType: ir.F32, Shape: shape}})
}

// param adds a param node with data uniform in [lo, hi).
func (b *builder) param(name string, lo, hi float64, shape ...int) int {
	b.params[name] = b.random(lo, hi, shape...)
	return b.g.MustAdd(&ir.Node{Op: ir.OpParam, Name: name, Type: ir.Type{DType: ir.F32, Shape: shape}})
}

// op adds an op node.
func (b *builder) op(op string, attrs ir.Attrs, args ...int) int {
	return b.g.MustAdd(&ir.Node{Op: op, Args: args, Attrs: attrs})
}

// run evaluates the graph with the given outputs and thread count.
func (b *builder) run(threads int, outputs ...int) *Result {
	b.t.Helper()
	b.g.Outputs = outputs
	res, err := Run(b.g, b.params, b.inputs, Options{Threads: threads})
	if err != nil {
		b.t.Fatalf("Run: %v", err)
	}
	return res
}

// val returns the data of a node's input or param tensor.
func (b *builder) val(id int) *tensor.Tensor {
	n := b.g.Nodes[id]
	if n.Op == ir.OpInput {
		return b.inputs[n.Name]
	}
	return b.params[n.Name]
}

// ref is a float64 reference result.
type ref struct {
	shape []int
	data  []float64
}

func newRef(shape ...int) *ref {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return &ref{shape: shape, data: make([]float64, n)}
}

// f64 widens float32 data.
func f64(xs []float32) []float64 {
	out := make([]float64, len(xs))
	for i, v := range xs {
		out[i] = float64(v)
	}
	return out
}

// checkClose fails unless got has want's shape and max|got-want| <= rel*max|want|.
func checkClose(t testing.TB, what string, got *tensor.Tensor, want *ref, rel float64) {
	t.Helper()
	if !ir.ShapeEqual(got.Shape, want.shape) {
		t.Fatalf("%s: shape %s, want %s", what, ir.ShapeString(got.Shape), ir.ShapeString(want.shape))
	}
	maxRef, maxErr, at := 0.0, 0.0, -1
	for i, w := range want.data {
		maxRef = math.Max(maxRef, math.Abs(w))
		d := math.Abs(float64(got.Data[i]) - w)
		if d > maxErr || d != d {
			maxErr, at = d, i
		}
	}
	tol := rel * maxRef
	if !(maxErr <= tol) {
		t.Errorf("%s: max|got-ref| = %.3g at element %d (got %v, ref %v), tolerance %.3g (max|ref| %.3g)",
			what, maxErr, at, got.Data[at], want.data[at], tol, maxRef)
	}
}

// tol is the tolerance of the op tests relative to max|ref|.
const tol = 1e-5

func loadJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
