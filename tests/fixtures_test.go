package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/fixtures"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
)

// blockFixtures maps each fixture block to the archs block that implements it.
var blockFixtures = []struct {
	tag, file, call string
}{
	{"v4_mixed3a", "inception_v4.kiln", "mixed_3a(x)"},
	{"v4_mixed4a", "inception_v4.kiln", "mixed_4a(x)"},
	{"v4_mixed5a", "inception_v4.kiln", "mixed_5a(x)"},
	{"v4_inception_a", "inception_v4.kiln", "inception_a(x)"},
	{"v4_reduction_a", "inception_v4.kiln", "reduction_a(x, 192, 224, 256, 384)"},
	{"v4_inception_b", "inception_v4.kiln", "inception_b(x)"},
	{"v4_reduction_b", "inception_v4.kiln", "reduction_b(x)"},
	{"v4_inception_c", "inception_v4.kiln", "inception_c(x)"},
	{"v2_mixed_5b", "inception_resnet_v2.kiln", "mixed_5b(x)"},
	{"v2_block35", "inception_resnet_v2.kiln", "block35(x, scale=0.17)"},
	{"v2_mixed_6a", "inception_resnet_v2.kiln", "reduction_a(x, 256, 256, 384, 384)"},
	{"v2_block17", "inception_resnet_v2.kiln", "block17(x, scale=0.10)"},
	{"v2_mixed_7a", "inception_resnet_v2.kiln", "mixed_7a(x)"},
	{"v2_block8", "inception_resnet_v2.kiln", "block8(x, scale=0.20)"},
	{"v2_block8_final", "inception_resnet_v2.kiln", "block8(x, scale=1.0, activate=false)"},
}

// TestBlockFixtures runs every timm block fixture through the interpreter:
// shipped weights where the fixture has them (loaded by name and checked),
// procedural weights otherwise.
func TestBlockFixtures(t *testing.T) {
	for _, bf := range blockFixtures {
		t.Run(bf.tag, func(t *testing.T) {
			t.Parallel()
			x := readNPY(t, "fixtures", "blocks", bf.tag, "input.npy")
			want := readNPY(t, "fixtures", "blocks", bf.tag, "output.npy")
			g := loadBlock(t, bf.file, bf.call, x.Shape)
			params := procedural(t, g)
			if p := filepath.Join(fixtures.SharedDir(), "fixtures", "blocks", bf.tag, "weights.safetensors"); fileExists(p) {
				f, err := tensor.ReadSafetensorsFile(p)
				if err != nil {
					t.Fatal(err)
				}
				var specs []tensor.Spec
				for _, n := range g.Params() {
					specs = append(specs, tensor.Spec{Name: n.Name, Shape: n.Type.Shape})
				}
				if err := tensor.CheckWeights(p, specs, f.Tensors); err != nil {
					t.Fatal(err)
				}
				params = f.Tensors
			}
			res, err := interp.Run(g, params, map[string]*tensor.Tensor{"x": x}, interp.Options{})
			if err != nil {
				t.Fatal(err)
			}
			rel := compare(t, bf.tag, res.Outputs[0], want, fixtureTol)
			t.Logf("%s: max|got-ref| / max|ref| = %.2e", bf.tag, rel)
		})
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestNetworkFixtures runs Inception-v4 and Inception-ResNet-v2 at 2x3x139x139
// with procedural weights and compares the logits and every stage output
// (marks named like the timm modules) with timm.
func TestNetworkFixtures(t *testing.T) {
	for _, net := range []string{"inception_v4", "inception_resnet_v2"} {
		t.Run(net, func(t *testing.T) {
			x := readNPY(t, "fixtures", net, "input.npy")
			g := loadNet(t, net, x.Shape[0], x.Shape[1:])
			entries, err := os.ReadDir(fixtures.Path(t, "fixtures", net))
			if err != nil {
				t.Fatal(err)
			}
			stages := map[int]string{}
			var keep []int
			for _, e := range entries {
				if !strings.HasPrefix(e.Name(), "stage_") {
					continue
				}
				id, ok := g.Mark(stageName(e.Name()))
				if !ok {
					t.Fatalf("%s has no mark %q for fixture %s", net, stageName(e.Name()), e.Name())
				}
				stages[id] = e.Name()
				keep = append(keep, id)
			}
			if len(stages) < 7 {
				t.Fatalf("only %d stage fixtures found", len(stages))
			}
			params := procedural(t, g)
			res, err := interp.Run(g, params, map[string]*tensor.Tensor{"image": x}, interp.Options{Keep: keep})
			if err != nil {
				t.Fatal(err)
			}
			for id, file := range stages {
				rel := compare(t, net+"/"+file, res.Values[id], readNPY(t, "fixtures", net, file), fixtureTol)
				t.Logf("%s/%s: %.2e", net, file, rel)
			}
			logits := readNPY(t, "fixtures", net, "logits.npy")
			rel := compare(t, net+"/logits", res.Outputs[0], logits, fixtureTol)
			t.Logf("%s/logits: %.2e", net, rel)
			// The fully optimized graph (folded, fused, in-place concats,
			// NCHW16c) against timm too.
			s, err := passes.Run(g, passes.Options{VerifyEach: true})
			if err != nil {
				t.Fatal(err)
			}
			opt, err := interp.Run(s.Graph, params, map[string]*tensor.Tensor{"image": x}, interp.Options{})
			if err != nil {
				t.Fatal(err)
			}
			rel = compare(t, net+"/logits after the pipeline", opt.Outputs[0], logits, fixtureTol)
			t.Logf("%s/logits after the pipeline: %.2e", net, rel)
		})
	}
}
