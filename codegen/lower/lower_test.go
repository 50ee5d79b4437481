package lower

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
)

// compiledNet is a network compiled and opened for a test, with what it was
// built from and the interpreter's reference values.
type compiledNet struct {
	m      *rt.Model
	g      *ir.Graph
	params map[string]*tensor.Tensor
	x      *tensor.Tensor
	want   *tensor.Tensor            // the interpreter's output
	taps   []string                  // mark names compiled as taps (Manifest.Taps order)
	ref    map[string]*tensor.Tensor // the interpreter's value of each tap
}

// compileNet runs the pipeline, lowers and compiles net, and opens it. With
// allTaps every mark of the network (each module's output) is compiled as
// a tap, and its interpreter value is kept for comparison.
func compileNet(t *testing.T, net string, batch int, input []int, isa string, allTaps bool) *compiledNet {
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
	c := &compiledNet{g: g, params: params, x: x, ref: map[string]*tensor.Tensor{}}
	var keep []int
	if allTaps {
		for _, mk := range g.Marks {
			c.taps = append(c.taps, mk.Name)
			keep = append(keep, mk.Node)
			g.Outputs = append(g.Outputs, mk.Node)
		}
	}
	res, err := interp.Run(g, params, map[string]*tensor.Tensor{g.Inputs()[0].Name: x}, interp.Options{Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	c.want = res.Outputs[0]
	for i, name := range c.taps {
		c.ref[name] = res.Values[keep[i]]
	}
	s, err := passes.Run(g, passes.Options{Target: passes.Targets[0], VerifyEach: true})
	if err != nil {
		t.Fatal(err)
	}
	a := build(t, s, params)
	if allTaps {
		if err := a.program.NameTaps(c.taps); err != nil {
			t.Fatal(err)
		}
		a.Manifest = a.program.Manifest
	}
	c.m, err = rt.Open(a.Artifact, rt.Options{ISA: isa, Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	artifacts[c.m] = a.Artifact
	t.Cleanup(func() { c.m.Close() })
	return c
}

// built is a lowered and compiled program with its artifact.
type built struct {
	rt.Artifact
	program *Program
}

// build lowers the planned state s with params for AVX-512 and AVX2 and
// compiles it (through the object cache: the same kernels with other
// weights compile once).
func build(t *testing.T, s *passes.State, params map[string]*tensor.Tensor) built {
	t.Helper()
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
	return built{rt.Artifact{Manifest: p.Manifest, SharedObjectPath: so, Weights: p.Weights}, p}
}

// run runs c's model (or m, when not nil) on c.x and returns the output and
// the taps' values by name.
func (c *compiledNet) run(t *testing.T, m *rt.Model) (*tensor.Tensor, map[string]*tensor.Tensor) {
	t.Helper()
	if m == nil {
		m = c.m
	}
	out := tensor.New(c.want.Shape...)
	taps := map[string]*tensor.Tensor{}
	bufs := make([][]float32, len(c.taps))
	for i, name := range c.taps {
		taps[name] = tensor.New(c.ref[name].Shape...)
		bufs[i] = taps[name].Data
	}
	if err := m.RunTaps(c.x.Data, out.Data, bufs); err != nil {
		t.Fatal(err)
	}
	return out, taps
}

// relErr is max|got-want| / max|want|.
func relErr(t *testing.T, got, want *tensor.Tensor) float64 {
	t.Helper()
	d, err := tensor.MaxAbsDiff(got, want)
	if err != nil {
		t.Fatal(err)
	}
	return d / tensor.MaxAbs(want)
}

// compiledTol is the tolerance of compiled code against the interpreter,
// relative to max|ref| of each compared tensor: the fixtures README's
// strict bound for plain direct/GEMM float32 kernels. Measured errors are
// about 1e-6; two swapped weight elements in one conv already exceed it
// (TestSwappedWeightsDetected).
const compiledTol = 1e-5

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
	for _, isa := range testenv.HostISAs(t, "avx512", "avx2") {
		for _, batch := range []int{1, 3} {
			c := compileNet(t, "tiny", batch, nil, isa, true)
			got, taps := c.run(t, nil)
			rel := relErr(t, got, c.want)
			t.Logf("tiny %s batch %d: max|diff|/max|ref| = %.2e", isa, batch, rel)
			if !(rel <= compiledTol) {
				t.Errorf("tiny %s batch %d: compiled differs from the interpreter by %.3g x max|ref|", isa, batch, rel)
			}
			for _, name := range c.taps {
				if rel := relErr(t, taps[name], c.ref[name]); !(rel <= compiledTol) {
					t.Errorf("tiny %s batch %d: stage %s differs from the interpreter by %.3g x max|ref|", isa, batch, name, rel)
				}
			}
		}
	}
}

// TestNetworksCompiled compiles the three networks at batch 1 (299x299) and
// batch 4 (139x139, to keep the interpreter's share of CI time down), with
// AVX-512 and AVX2 kernels in one artifact and every module output (mark)
// compiled as a tap, and checks the logits and every stage output on both
// ISAs against the interpreter within compiledTol x max|reference|.
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
			isas := testenv.HostISAs(t, "avx512", "avx2")
			c := compileNet(t, net, batch, size, isas[0], true)
			m := c.m
			for i, isa := range isas {
				if i > 0 {
					m2, err := reopen(t, m, isa)
					if err != nil {
						t.Fatal(err)
					}
					m = m2
				}
				if m.ISA() != isa {
					t.Fatalf("%s: model runs %s, want %s", net, m.ISA(), isa)
				}
				got, taps := c.run(t, m)
				rel := relErr(t, got, c.want)
				worst, worstName := 0.0, ""
				for _, name := range c.taps {
					r := relErr(t, taps[name], c.ref[name])
					if !(r <= compiledTol) {
						t.Errorf("%s batch %d %s: stage %s differs from the interpreter by %.3g x max|ref|", net, batch, isa, name, r)
					}
					if r > worst {
						worst, worstName = r, name
					}
				}
				t.Logf("%s batch %d %s: logits max|diff|/max|ref| = %.2e; %d stages, worst %s %.2e", net, batch, isa, rel, len(c.taps), worstName, worst)
				if !(rel <= compiledTol) {
					t.Errorf("%s batch %d %s: compiled differs from the interpreter by %.3g x max|ref|", net, batch, isa, rel)
				}
			}
		}
	}
}

// TestSwappedWeightsDetected builds Inception-ResNet-v2 with two elements of
// one convolution's weight swapped (the fixtures README's example of a
// subtle bug, conv2d_7b) and requires the logits comparison to fail the
// tolerance that TestNetworksCompiled applies: a tolerance this test
// passes could not catch such a bug.
func TestSwappedWeightsDetected(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles a full network; skipped with -short")
	}
	isa := testenv.HostISAs(t, "avx512", "avx2")[0]
	c := compileNet(t, "inception_resnet_v2", 1, nil, isa, false)
	got, _ := c.run(t, nil)
	if rel := relErr(t, got, c.want); !(rel <= compiledTol) {
		t.Fatalf("unmodified weights: compiled differs by %.3g x max|ref|", rel)
	}
	const name = "conv2d_7b.conv.weight"
	w, ok := c.params[name]
	if !ok {
		t.Fatalf("no param %s", name)
	}
	swapped := map[string]*tensor.Tensor{}
	for k, v := range c.params {
		swapped[k] = v
	}
	sw := tensor.New(w.Shape...)
	copy(sw.Data, w.Data)
	// Swap the first weight of output channels 0 and 1 (same input channel
	// and tap), as a transposed index would.
	per := len(sw.Data) / w.Shape[0]
	sw.Data[0], sw.Data[per] = sw.Data[per], sw.Data[0]
	swapped[name] = sw
	s, err := passes.Run(c.g, passes.Options{Target: passes.Targets[0]})
	if err != nil {
		t.Fatal(err)
	}
	a := build(t, s, swapped)
	m, err := rt.Open(a.Artifact, rt.Options{ISA: isa, Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	bad, _ := c.run(t, m)
	rel := relErr(t, bad, c.want)
	t.Logf("two weights of %s swapped: logits differ by %.2e x max|ref| (tolerance %.0e)", name, rel, compiledTol)
	if rel <= compiledTol {
		t.Errorf("two swapped weights change the logits by only %.3g x max|ref|, within the tolerance %g: the comparison cannot catch this bug", rel, compiledTol)
	}
}
