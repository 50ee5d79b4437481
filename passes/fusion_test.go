package passes

import (
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// loadSrc elaborates a .kiln source (imports from the built-in library).
func loadSrc(t *testing.T, src string) *ir.Graph {
	t.Helper()
	g, err := dsl.Load("net.kiln", []byte(src), dsl.Options{Batch: 1, FS: archs.FS})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// sameOutput runs a and b on the same procedural weights and input in the
// interpreter and requires max|a-b| <= 1e-5 max|a|.
func sameOutput(t *testing.T, a, b *ir.Graph) {
	t.Helper()
	params, err := a.GeneratedParams()
	if err != nil {
		t.Fatal(err)
	}
	in := a.Inputs()[0]
	x, err := tensor.Generate("input", in.Type.Shape)
	if err != nil {
		t.Fatal(err)
	}
	run := func(g *ir.Graph) *tensor.Tensor {
		res, err := interp.Run(g, params, map[string]*tensor.Tensor{in.Name: x}, interp.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return res.Outputs[0]
	}
	want, got := run(a), run(b)
	d, err := tensor.MaxAbsDiff(got, want)
	if err != nil {
		t.Fatal(err)
	}
	if d > 1e-5*tensor.MaxAbs(want) {
		t.Fatalf("rewritten graph differs: max|diff| %.3g, max|ref| %.3g", d, tensor.MaxAbs(want))
	}
}

// TestSharedAddFusion is the ResNet-block crash of issue 10: an add fed by
// two convs (the torchvision downsample pattern, with and without
// BatchNorm on both paths) made both convs absorb the add ("operand used
// after removal"). One conv must absorb it, with the other conv's result as
// its residual, and the rewritten graph must compute the same values.
func TestSharedAddFusion(t *testing.T) {
	cases := []struct{ name, src string }{
		{"two convs", `
block down(x) {
    a = conv2d(x, 8, 1)
    b = conv2d(x, 8, 1)
    return a + b
}
network r(image: f32[N, 3, 32, 32]) {
    y = down(image)
    return y
}`},
		{"conv+bn on both paths, then relu", `
block downsample(x, out) {
    conv = conv2d(x, out, 1, stride=2, bias=false)
    bn = batchnorm(conv)
    return bn
}
block basic(x, out) {
    conv1 = conv2d(x, out, 3, stride=2, pad=1, bias=false)
    bn1 = batchnorm(conv1)
    shortcut = downsample(x, out)
    return relu(bn1 + shortcut)
}
network r(image: f32[N, 16, 32, 32]) {
    layer = basic(image, 32)
    return layer
}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := loadSrc(t, c.src)
			s, err := Run(g, Options{Target: Targets[0], VerifyEach: true, StopAfter: "fuse-epilogue"})
			if err != nil {
				t.Fatal(err)
			}
			ops := OpCounts(s.Graph)
			if ops[ir.OpAdd] != 0 || ops[ir.OpConv2D] != 0 || ops[ir.OpFusedConv] != 2 {
				t.Fatalf("ops after fuse-epilogue: %v; want the add fused and 2 fused_convs", ops)
			}
			residuals := 0
			for _, n := range s.Graph.Nodes {
				if n.Op == ir.OpFusedConv && n.Attrs.Bool("residual") {
					residuals++
					_, r, _ := ir.FusedConvOperands(n)
					if s.Graph.Nodes[n.Args[r]].Op != ir.OpFusedConv {
						t.Errorf("residual operand is %s, want the other conv", s.Graph.Nodes[n.Args[r]].Op)
					}
				}
			}
			if residuals != 1 {
				t.Errorf("%d fused_convs have a residual, want 1", residuals)
			}
			sameOutput(t, g, s.Graph)
			if _, err := Run(g, Options{Target: Targets[0], VerifyEach: true, Consumer: Codegen}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestFoldBNMarks checks that a mark (a network-level assignment) stops
// fold-bn only when it is on the conv's output, which folding would hide;
// a mark on the BatchNorm's output moves to the folded conv.
func TestFoldBNMarks(t *testing.T) {
	cases := []struct {
		name, src string
		folded    bool
	}{
		{"mark on the batchnorm", `
block cb(x) {
    conv = conv2d(x, 8, 3, pad=1, bias=false)
    return batchnorm(conv)
}
network m(image: f32[N, 3, 16, 16]) {
    bn1 = cb(image)
    return relu(bn1)
}`, true},
		{"mark on the conv", `
network m(image: f32[N, 3, 16, 16]) {
    conv1 = conv2d(image, 8, 3, pad=1, bias=false)
    bn1 = batchnorm(conv1)
    return relu(bn1)
}`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := loadSrc(t, c.src)
			s, err := Run(g, Options{Target: Targets[0], VerifyEach: true, StopAfter: "fold-bn"})
			if err != nil {
				t.Fatal(err)
			}
			if got := OpCounts(s.Graph)[ir.OpBatchNorm] == 0; got != c.folded {
				t.Fatalf("batchnorm folded: %v, want %v", got, c.folded)
			}
			for _, mk := range g.Marks {
				found := false
				for _, m := range s.Graph.Marks {
					found = found || m.Name == mk.Name
				}
				if !found {
					t.Errorf("mark %q lost", mk.Name)
				}
			}
			sameOutput(t, g, s.Graph)
		})
	}
}

// TestRewriteErrorNamesNode checks that an internal error of a rewrite (an
// operand used after its removal) names the pass, the node being processed
// and its source position.
func TestRewriteErrorNamesNode(t *testing.T) {
	g := loadSrc(t, `
network m(image: f32[N, 3, 16, 16]) {
    conv1 = conv2d(image, 8, 3, pad=1)
    act = relu(conv1)
    return act
}`)
	broken := &Pass{Name: "broken", Run: func(s *State) error {
		g := s.Graph
		r := newRewriter(g)
		for i, n := range g.Nodes {
			r.at(i)
			if n.Op == ir.OpConv2D {
				continue // removed, but its user still reads it
			}
			r.copyNode(i)
		}
		s.Graph = r.finish()
		return nil
	}}
	_, err := runPasses(g, []*Pass{broken}, Options{})
	if err == nil {
		t.Fatal("no error")
	}
	relu := -1
	for i, n := range g.Nodes {
		if n.Op == ir.OpReLU {
			relu = i
		}
	}
	for _, want := range []string{"pass broken: internal error: ", g.Nodes[relu].Pos.String(), `relu "act"`, `conv2d "conv1"`, "used after removal"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

// TestBatchNormReLUFusion checks that fuse-epilogue folds a ReLU into the
// standalone BatchNorm before it (pre-activation blocks, DenseNet) when the
// BatchNorm's only user is that ReLU, and leaves both when the BatchNorm
// result is used elsewhere too.
func TestBatchNormReLUFusion(t *testing.T) {
	cases := []struct {
		name         string
		src          string
		relus, fused int
	}{
		{"pre-activation", `
block pre(x) {
    b = batchnorm(x)
    a = relu(b)
    return conv2d(a, 8, 3, pad=1, bias=false)
}
network r(image: f32[N, 8, 16, 16]) {
    y = pre(image)
    return y
}`, 0, 1},
		{"batchnorm used twice", `
block pre(x) {
    b = batchnorm(x)
    a = relu(b)
    return conv2d(a, 8, 3, pad=1, bias=false) + b
}
network r(image: f32[N, 8, 16, 16]) {
    y = pre(image)
    return y
}`, 1, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := loadSrc(t, c.src)
			s, err := Run(g, Options{Target: Targets[0], VerifyEach: true, StopAfter: "fuse-epilogue"})
			if err != nil {
				t.Fatal(err)
			}
			relus, fused := 0, 0
			for _, n := range s.Graph.Nodes {
				switch {
				case n.Op == ir.OpReLU:
					relus++
				case n.Op == ir.OpBatchNorm && n.Attrs.Bool("relu"):
					fused++
				}
			}
			if relus != c.relus || fused != c.fused {
				t.Fatalf("after fuse-epilogue: %d relu, %d batchnorm with relu; want %d and %d\n%s", relus, fused, c.relus, c.fused, s.Graph)
			}
			for _, n := range g.Nodes {
				if n.Op == ir.OpBatchNorm && n.Attrs.Bool("relu") {
					t.Fatal("the pass changed the input graph's batchnorm")
				}
			}
			sameOutput(t, g, s.Graph)
			if _, err := Run(g, Options{Target: Targets[0], VerifyEach: true, Consumer: Codegen}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
