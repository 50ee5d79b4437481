package interp

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/internal/fixtures"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// netBuilder builds timm's inception_v4 directly in IR, with timm's
// state_dict keys as param names, so that the interpreter can be checked
// against the PyTorch fixtures without depending on the DSL.
type netBuilder struct {
	g     *ir.Graph
	specs []tensor.Spec
}

func (nb *netBuilder) add(n *ir.Node) int { return nb.g.MustAdd(n) }

func (nb *netBuilder) param(name string, shape ...int) int {
	nb.specs = append(nb.specs, tensor.Spec{Name: name, Shape: shape})
	return nb.add(&ir.Node{Op: ir.OpParam, Name: name, Type: ir.Type{DType: ir.F32, Shape: shape}})
}

func (nb *netBuilder) channels(x int) int { return nb.g.Nodes[x].Type.Shape[1] }

// conv is timm's ConvNormAct: Conv2d(bias=False) → BatchNorm2d(eps=1e-3) → ReLU.
func (nb *netBuilder) conv(x int, prefix string, out, kh, kw, stride, ph, pw int) int {
	w := nb.param(prefix+".conv.weight", out, nb.channels(x), kh, kw)
	c := nb.add(&ir.Node{Op: ir.OpConv2D, Name: prefix + ".conv", Args: []int{x, w},
		Attrs: ir.Attrs{"stride": []int{stride, stride}, "pad": []int{ph, pw}}})
	var bn []int
	for _, s := range []string{"weight", "bias", "running_mean", "running_var"} {
		bn = append(bn, nb.param(prefix+".bn."+s, out))
	}
	b := nb.add(&ir.Node{Op: ir.OpBatchNorm, Name: prefix + ".bn", Args: append([]int{c}, bn...), Attrs: ir.Attrs{"eps": 1e-3}})
	return nb.add(&ir.Node{Op: ir.OpReLU, Name: prefix, Args: []int{b}})
}

// conv1 is a 1x1 conv; convK a square k×k conv with stride s and padding p.
func (nb *netBuilder) conv1(x int, prefix string, out int) int {
	return nb.conv(x, prefix, out, 1, 1, 1, 0, 0)
}

func (nb *netBuilder) convK(x int, prefix string, out, k, s, p int) int {
	return nb.conv(x, prefix, out, k, k, s, p, p)
}

func (nb *netBuilder) maxpool(x int) int {
	return nb.add(&ir.Node{Op: ir.OpMaxPool, Args: []int{x}, Attrs: ir.Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}}})
}

func (nb *netBuilder) avgpool(x int) int {
	return nb.add(&ir.Node{Op: ir.OpAvgPool, Args: []int{x}, Attrs: ir.Attrs{
		"kernel": []int{3, 3}, "pad": []int{1, 1}, "count_include_pad": false}})
}

func (nb *netBuilder) cat(xs ...int) int {
	return nb.add(&ir.Node{Op: ir.OpConcat, Args: xs, Attrs: ir.Attrs{"axis": 1}})
}

// inceptionV4 builds timm inception_v4 (ARCHITECTURES.md) for an input of
// batch×3×size×size, with marks "features.N" on the stage outputs that the
// fixtures hold.
func inceptionV4(batch, size int) *netBuilder {
	nb := &netBuilder{g: &ir.Graph{Name: "inception_v4"}}
	x := nb.add(&ir.Node{Op: ir.OpInput, Name: "input", Type: ir.Type{DType: ir.F32, Shape: []int{batch, 3, size, size}}})
	f := func(i int) string { return fmt.Sprintf("features.%d", i) }
	x = nb.convK(x, f(0), 32, 3, 2, 0)
	x = nb.convK(x, f(1), 32, 3, 1, 0)
	x = nb.convK(x, f(2), 64, 3, 1, 1)
	nb.g.SetMark(f(2), x)
	// Mixed3a
	x = nb.cat(nb.maxpool(x), nb.convK(x, f(3)+".conv", 96, 3, 2, 0))
	// Mixed4a
	{
		p := f(4)
		b0 := nb.convK(nb.conv1(x, p+".branch0.0", 64), p+".branch0.1", 96, 3, 1, 0)
		b1 := nb.conv1(x, p+".branch1.0", 64)
		b1 = nb.conv(b1, p+".branch1.1", 64, 1, 7, 1, 0, 3)
		b1 = nb.conv(b1, p+".branch1.2", 64, 7, 1, 1, 3, 0)
		b1 = nb.convK(b1, p+".branch1.3", 96, 3, 1, 0)
		x = nb.cat(b0, b1)
	}
	// Mixed5a
	x = nb.cat(nb.convK(x, f(5)+".conv", 192, 3, 2, 0), nb.maxpool(x))
	nb.g.SetMark(f(5), x)
	for i := 6; i <= 9; i++ { // InceptionA
		p := f(i)
		b0 := nb.conv1(x, p+".branch0", 96)
		b1 := nb.convK(nb.conv1(x, p+".branch1.0", 64), p+".branch1.1", 96, 3, 1, 1)
		b2 := nb.convK(nb.conv1(x, p+".branch2.0", 64), p+".branch2.1", 96, 3, 1, 1)
		b2 = nb.convK(b2, p+".branch2.2", 96, 3, 1, 1)
		b3 := nb.conv1(nb.avgpool(x), p+".branch3.1", 96)
		x = nb.cat(b0, b1, b2, b3)
	}
	nb.g.SetMark(f(9), x)
	{ // ReductionA
		p := f(10)
		b0 := nb.convK(x, p+".branch0", 384, 3, 2, 0)
		b1 := nb.convK(nb.conv1(x, p+".branch1.0", 192), p+".branch1.1", 224, 3, 1, 1)
		b1 = nb.convK(b1, p+".branch1.2", 256, 3, 2, 0)
		x = nb.cat(b0, b1, nb.maxpool(x))
	}
	nb.g.SetMark(f(10), x)
	for i := 11; i <= 17; i++ { // InceptionB
		p := f(i)
		b0 := nb.conv1(x, p+".branch0", 384)
		b1 := nb.conv1(x, p+".branch1.0", 192)
		b1 = nb.conv(b1, p+".branch1.1", 224, 1, 7, 1, 0, 3)
		b1 = nb.conv(b1, p+".branch1.2", 256, 7, 1, 1, 3, 0)
		b2 := nb.conv1(x, p+".branch2.0", 192)
		b2 = nb.conv(b2, p+".branch2.1", 192, 7, 1, 1, 3, 0)
		b2 = nb.conv(b2, p+".branch2.2", 224, 1, 7, 1, 0, 3)
		b2 = nb.conv(b2, p+".branch2.3", 224, 7, 1, 1, 3, 0)
		b2 = nb.conv(b2, p+".branch2.4", 256, 1, 7, 1, 0, 3)
		b3 := nb.conv1(nb.avgpool(x), p+".branch3.1", 128)
		x = nb.cat(b0, b1, b2, b3)
	}
	nb.g.SetMark(f(17), x)
	{ // ReductionB
		p := f(18)
		b0 := nb.convK(nb.conv1(x, p+".branch0.0", 192), p+".branch0.1", 192, 3, 2, 0)
		b1 := nb.conv1(x, p+".branch1.0", 256)
		b1 = nb.conv(b1, p+".branch1.1", 256, 1, 7, 1, 0, 3)
		b1 = nb.conv(b1, p+".branch1.2", 320, 7, 1, 1, 3, 0)
		b1 = nb.convK(b1, p+".branch1.3", 320, 3, 2, 0)
		x = nb.cat(b0, b1, nb.maxpool(x))
	}
	nb.g.SetMark(f(18), x)
	for i := 19; i <= 21; i++ { // InceptionC
		p := f(i)
		b0 := nb.conv1(x, p+".branch0", 256)
		b10 := nb.conv1(x, p+".branch1_0", 384)
		b1 := nb.cat(nb.conv(b10, p+".branch1_1a", 256, 1, 3, 1, 0, 1), nb.conv(b10, p+".branch1_1b", 256, 3, 1, 1, 1, 0))
		b2 := nb.conv1(x, p+".branch2_0", 384)
		b2 = nb.conv(b2, p+".branch2_1", 448, 3, 1, 1, 1, 0)
		b2 = nb.conv(b2, p+".branch2_2", 512, 1, 3, 1, 0, 1)
		b2 = nb.cat(nb.conv(b2, p+".branch2_3a", 256, 1, 3, 1, 0, 1), nb.conv(b2, p+".branch2_3b", 256, 3, 1, 1, 1, 0))
		b3 := nb.conv1(nb.avgpool(x), p+".branch3.1", 256)
		x = nb.cat(b0, b1, b2, b3)
	}
	nb.g.SetMark(f(21), x)
	x = nb.add(&ir.Node{Op: ir.OpGlobalAvgPool, Args: []int{x}})
	x = nb.add(&ir.Node{Op: ir.OpFlatten, Args: []int{x}})
	w := nb.param("last_linear.weight", 1000, 1536)
	b := nb.param("last_linear.bias", 1000)
	x = nb.add(&ir.Node{Op: ir.OpDense, Name: "last_linear", Args: []int{x, w, b}})
	nb.g.Outputs = []int{x}
	return nb
}

// generate builds the procedural fixture weights for every param.
func (nb *netBuilder) generate(t testing.TB) map[string]*tensor.Tensor {
	t.Helper()
	params := map[string]*tensor.Tensor{}
	for _, s := range nb.specs {
		p, err := tensor.Generate(s.Name, s.Shape)
		if err != nil {
			t.Fatal(err)
		}
		params[s.Name] = p
	}
	return params
}

func (nb *netBuilder) macs() int64 {
	var m int64
	for i := range nb.g.Nodes {
		m += nb.g.MACs(i)
	}
	return m
}

// TestInceptionV4Fixture runs the whole of timm inception_v4 on the shared
// PyTorch fixture (batch 2, 139×139, procedural weights) and compares every
// stage output and the logits with tolerance 1e-5 × max|ref|.
func TestInceptionV4Fixture(t *testing.T) {
	if testing.Short() {
		t.Skip("whole-network fixture (about 5 G MACs) skipped in -short mode")
	}
	dir := fixtures.Path(t, "fixtures", "inception_v4")
	nb := inceptionV4(2, 139)
	if m := inceptionV4(1, 299).macs(); m != 12253974624 {
		t.Errorf("inception_v4 at 299: %d MACs, want 12,253,974,624 (ARCHITECTURES.md)", m)
	}
	params := nb.generate(t)
	// The builder must name and shape every tensor exactly as timm does.
	var want struct {
		Tensors []struct {
			Name  string
			Shape []int
		}
	}
	loadJSON(t, filepath.Join(dir, "tensors.json"), &want)
	var specs []tensor.Spec
	for _, s := range want.Tensors {
		specs = append(specs, tensor.Spec{Name: s.Name, Shape: s.Shape})
	}
	if err := tensor.CheckWeights("tensors.json", specs, params); err != nil {
		t.Fatal(err)
	}
	in, err := tensor.ReadNPYFile(filepath.Join(dir, "input.npy"))
	if err != nil {
		t.Fatal(err)
	}
	var keep []int
	for _, m := range nb.g.Marks {
		keep = append(keep, m.Node)
	}
	res, err := Run(nb.g, params, map[string]*tensor.Tensor{"input": in}, Options{Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	compare := func(file string, got *tensor.Tensor) {
		ref, err := tensor.ReadNPYFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		d, err := tensor.MaxAbsDiff(got, ref)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		m := tensor.MaxAbs(ref)
		t.Logf("%-26s max|got-ref| = %.3g = %.2g × max|ref|", file, d, d/m)
		if !(d <= 1e-5*m) {
			t.Errorf("%s: max|got-ref| = %.3g exceeds 1e-5 × max|ref| = %.3g", file, d, 1e-5*m)
		}
	}
	for _, m := range nb.g.Marks {
		compare("stage_"+m.Name+".npy", res.Values[m.Node])
	}
	compare("logits.npy", res.Outputs[0])
}
