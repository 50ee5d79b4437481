package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/fixtures"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestTrainReplaysFixture replays the training fixture of the residual mini
// network from the command line (kiln train --init --batches-x --batches-y
// --steps --out) and checks the files it writes: the losses against
// PyTorch float64's, grads1 and step3 tensor by tensor against the float64
// reference within 4x PyTorch float32's own error (or 1e-5), the fixtures
// README's rule.
func TestTrainReplaysFixture(t *testing.T) {
	fx := func(name string) string { return fixtures.Path(t, "fixtures", "training", name) }
	out := t.TempDir()
	code, stdout, errs := kiln(t, "train", "mini_inception_resnet", "--init", fx("res.init.safetensors"),
		"--batches-x", fx("batches_x.npy"), "--batches-y", fx("batches_y.npy"), "--steps", "3", "--out", out)
	if code != 0 {
		t.Fatalf("kiln train: exit %d\n%s%s", code, stdout, errs)
	}
	var index struct {
		Models map[string]struct {
			Losses    []float64 `json:"losses"`
			LossesF64 []float64 `json:"losses_f64"`
			Torch     struct {
				Grads map[string]float64 `json:"grads"`
				Step3 map[string]float64 `json:"step3"`
			} `json:"torch_f32_vs_f64"`
		} `json:"models"`
	}
	readJSON(t, fx("index.json"), &index)
	ref := index.Models["res"]
	var got struct {
		Losses []float64 `json:"losses"`
	}
	readJSON(t, filepath.Join(out, "losses.json"), &got)
	if len(got.Losses) != 3 {
		t.Fatalf("losses.json: %v, want 3 losses", got.Losses)
	}
	for i, l := range got.Losses {
		errTorch := math.Abs(ref.Losses[i]-ref.LossesF64[i]) / ref.LossesF64[i]
		if e := math.Abs(l-ref.LossesF64[i]) / ref.LossesF64[i]; !(e <= math.Max(4*errTorch, 1e-5)) {
			t.Errorf("loss %d: %.7f, PyTorch float64 %.7f", i+1, l, ref.LossesF64[i])
		}
	}
	for _, c := range []struct {
		file, ref string
		torch     map[string]float64
	}{
		{"grads1.safetensors", "res.grads_f64.safetensors", ref.Torch.Grads},
		{"step3.safetensors", "res.step3_f64.safetensors", ref.Torch.Step3},
	} {
		g, err := tensor.ReadSafetensorsFile(filepath.Join(out, c.file))
		if err != nil {
			t.Fatal(err)
		}
		r, err := tensor.ReadSafetensorsFile(fx(c.ref))
		if err != nil {
			t.Fatal(err)
		}
		if len(g.Tensors) != len(r.Tensors) {
			t.Errorf("%s: %d tensors, the fixture has %d", c.file, len(g.Tensors), len(r.Tensors))
		}
		for name, want := range r.Tensors {
			d, err := tensor.MaxAbsDiff(g.Tensors[name], want)
			if err != nil {
				t.Errorf("%s %s: %v", c.file, name, err)
				continue
			}
			if e := d / tensor.MaxAbs(want); !(e <= math.Max(4*c.torch[name], 1e-5)) {
				t.Errorf("%s %s: error %.3g, PyTorch float32's %.3g", c.file, name, e, c.torch[name])
			}
		}
	}
	for _, f := range []string{"grads2.safetensors", "step1.safetensors", "step2.safetensors"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("missing %s: %v", f, err)
		}
	}
}

func TestTrainErrors(t *testing.T) {
	fx := func(name string) string { return fixtures.Path(t, "fixtures", "training", name) }
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no batches", []string{"--out", t.TempDir()}, 2, "--batches-x, --batches-y and --out are required"},
		{"labels as images", []string{"--batches-x", fx("batches_y.npy"), "--batches-y", fx("batches_y.npy"), "--out", t.TempDir()}, 1, "batches_y.npy"},
		{"images as labels", []string{"--batches-x", fx("batches_x.npy"), "--batches-y", fx("eval_y.npy"), "--out", t.TempDir()}, 1, "want (3, 8) to match"},
		{"too many steps", []string{"--batches-x", fx("batches_x.npy"), "--batches-y", fx("batches_y.npy"), "--steps", "4", "--out", t.TempDir()}, 1, "holds only 3 batches"},
		{"unknown optimizer", []string{"--batches-x", fx("batches_x.npy"), "--batches-y", fx("batches_y.npy"), "--optimizer", "adam", "--out", t.TempDir()}, 1, `unknown optimizer "adam"`},
	}
	for _, c := range cases {
		code, _, errs := kiln(t, append([]string{"train", "mini_inception"}, c.args...)...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want exit %d and %q", c.name, code, errs, c.code, c.want)
		}
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestPlanTrain checks kiln plan --train on the residual mini network: the
// report's arena is at least its lower bound and well under the naive sum,
// and the gradient bytes are the learnable parameters' (316,634 floats, each
// tensor 64-byte aligned).
func TestPlanTrain(t *testing.T) {
	code, out, errs := kiln(t, "plan", "mini_inception_resnet", "--train", "--batch", "8")
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errs)
	}
	field := func(name string) int64 {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, name) {
				var v string
				fmt.Sscan(strings.TrimSpace(strings.TrimPrefix(l, name)), &v)
				n, err := strconv.ParseInt(strings.ReplaceAll(v, ",", ""), 10, 64)
				if err != nil {
					t.Fatalf("%s: %v in %q", name, err, l)
				}
				return n
			}
		}
		t.Fatalf("no %q line in:\n%s", name, out)
		return 0
	}
	arena, bound, naive, grads, kept := field("arena"), field("lower bound"), field("naive"), field("gradients"), field("kept")
	if arena < bound || arena >= naive/2 || kept <= 0 {
		t.Errorf("arena %d, lower bound %d, naive %d, kept %d:\n%s", arena, bound, naive, kept, out)
	}
	if grads < 316634*4 || grads > 316634*4+64*int64(200) {
		t.Errorf("gradients %d bytes, want 316,634 floats plus alignment", grads)
	}
}
