package main

import (
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/fixtures"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestTrainClipGradNorm replays step 1 of the mini_inception fixture with
// --clip-grad-norm set to half the global L2 norm of PyTorch's float64
// gradients: grads1.safetensors (the gradients the update used) must be
// PyTorch's gradients times clip_grad_norm_'s coefficient
// min(1, X/(‖g‖ + 1e-6)), computed here in float64, within the fixtures
// README's rule for gradients (4× PyTorch float32's own error, or 1e-5).
func TestTrainClipGradNorm(t *testing.T) {
	fx := func(name string) string { return fixtures.Path(t, "fixtures", "training", name) }
	ref, err := tensor.ReadSafetensorsFile(fx("inc.grads_f64.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	var ss float64
	for _, g := range ref.Tensors {
		for _, v := range g.Data {
			ss += float64(v) * float64(v)
		}
	}
	norm := math.Sqrt(ss)
	maxNorm := norm / 2
	coef := maxNorm / (norm + 1e-6)
	out := t.TempDir()
	code, stdout, errs := kiln(t, "train", "mini_inception", "--init", fx("inc.init.safetensors"),
		"--batches-x", fx("batches_x.npy"), "--batches-y", fx("batches_y.npy"), "--steps", "1",
		"--clip-grad-norm", strconv.FormatFloat(maxNorm, 'g', -1, 64), "--out", out)
	if code != 0 {
		t.Fatalf("kiln train: exit %d\n%s%s", code, stdout, errs)
	}
	var index struct {
		Models map[string]struct {
			Torch struct {
				Grads map[string]float64 `json:"grads"`
			} `json:"torch_f32_vs_f64"`
		} `json:"models"`
	}
	readJSON(t, fx("index.json"), &index)
	got, err := tensor.ReadSafetensorsFile(filepath.Join(out, "grads1.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Tensors) != len(ref.Tensors) {
		t.Errorf("grads1: %d tensors, the fixture has %d", len(got.Tensors), len(ref.Tensors))
	}
	var gotSS, worst float64
	for name, r := range ref.Tensors {
		g := got.Tensors[name]
		if g == nil || len(g.Data) != len(r.Data) {
			t.Errorf("grads1 %s: missing or mis-shaped", name)
			continue
		}
		var d, m float64
		for i, v := range r.Data {
			w := float64(v) * coef
			d = math.Max(d, math.Abs(float64(g.Data[i])-w))
			m = math.Max(m, math.Abs(w))
			gotSS += float64(g.Data[i]) * float64(g.Data[i])
		}
		e := d / m
		worst = math.Max(worst, e)
		if !(e <= math.Max(4*index.Models["inc"].Torch.Grads[name], 1e-5)) {
			t.Errorf("grads1 %s: error %.3g against PyTorch's gradient × %.6f", name, e, coef)
		}
	}
	t.Logf("‖g‖ = %.6g, --clip-grad-norm %.6g, coef %.6g: clipped norm %.6g, worst tensor error %.2g", norm, maxNorm, coef, math.Sqrt(gotSS), worst)
	if n := math.Sqrt(gotSS); math.Abs(n-maxNorm) > 1e-5*maxNorm {
		t.Errorf("the clipped gradients' norm is %.7g, want --clip-grad-norm %.7g", n, maxNorm)
	}
}

// TestTrainClipFlagErrors: a clipping threshold that cannot clip is a usage
// error, and a resumed run keeps its checkpoint's thresholds.
func TestTrainClipFlagErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--clip-grad-norm", "-1", "--data", "fashion-mnist", "--out", t.TempDir()}, "--clip-grad-norm -1: must be positive and finite (0: off)"},
		{[]string{"--clip-grad-value", "NaN", "--batches-x", "x.npy", "--batches-y", "y.npy", "--out", t.TempDir()}, "--clip-grad-value NaN: must be positive and finite"},
		{[]string{"--clip-grad-norm", "+Inf", "--data", "fashion-mnist", "--out", t.TempDir()}, "--clip-grad-norm +Inf: must be positive and finite"},
		{[]string{"--resume", t.TempDir(), "--clip-grad-norm", "1"}, "--clip-grad-norm: a resumed run keeps the settings"},
	} {
		code, _, errs := kiln(t, append([]string{"train", "mini_inception"}, c.args...)...)
		if code != 2 || !strings.Contains(errs, c.want) {
			t.Errorf("kiln train %s: exit %d, stderr %q; want exit 2 and %q", strings.Join(c.args, " "), code, errs, c.want)
		}
	}
}
