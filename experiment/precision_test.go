package experiment

import (
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kiln-dev/kiln/internal/fixtures"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
)

func readFixtureST(t *testing.T, file string) map[string]*tensor.Tensor {
	t.Helper()
	f, err := tensor.ReadSafetensorsFile(fixtures.Path(t, "fixtures", "training", file))
	if err != nil {
		t.Fatal(err)
	}
	return f.Tensors
}

// TestEval64MatchesPyTorchFloat64 checks the float64 reference against
// PyTorch's float64 gradients of the training fixtures (step 1 of
// shared/fixtures/training: the fixture's initial weights, batch 0 of
// batches_x.npy, label smoothing 0.1): every gradient must agree to 1e-6
// of its largest magnitude (the reference reaches Go as float32, which
// rounds it by up to 6e-8); the float32 interpreter's worst gradient is
// 100 times further off (EXPERIMENTS.md), so the study's float64 side is a
// float64 computation of the right gradients.
func TestEval64MatchesPyTorchFloat64(t *testing.T) {
	xs, err := tensor.ReadNPYFile(fixtures.Path(t, "fixtures", "training", "batches_x.npy"))
	if err != nil {
		t.Fatal(err)
	}
	ys, err := tensor.ReadNPYInt64File(fixtures.Path(t, "fixtures", "training", "batches_y.npy"))
	if err != nil {
		t.Fatal(err)
	}
	batch := xs.Shape[1]
	per := xs.Numel() / xs.Shape[0]
	x, err := tensor.FromData(xs.Shape[1:], xs.Data[:per])
	if err != nil {
		t.Fatal(err)
	}
	target := tensor.New(batch, 10)
	for i, l := range ys.Data[:batch] {
		target.Data[i*10+int(l)] = 1
	}
	for _, tc := range []struct{ file, fixture string }{
		{"mini_inception.kiln", "inc"},
		{"mini_inception_resnet.kiln", "res"},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			g, err := Net{Label: tc.fixture, File: tc.file}.Load(batch)
			if err != nil {
				t.Fatal(err)
			}
			sg, err := train.Step(g, train.StepOptions{Smoothing: 0.1, Optimizer: train.PaperRMSProp})
			if err != nil {
				t.Fatal(err)
			}
			params := readFixtureST(t, tc.fixture+".init.safetensors")
			ref := readFixtureST(t, tc.fixture+".grads_f64.safetensors")
			var names []string
			var want []int
			for name, d := range sg.Grads {
				names = append(names, name)
				want = append(want, d)
			}
			got, err := Eval64(sg.Graph, params, map[string]*tensor.Tensor{"x": x, sg.Target: target}, slices.Clone(want))
			if err != nil {
				t.Fatal(err)
			}
			if len(ref) != len(names) {
				t.Errorf("%d gradients, the fixture has %d", len(names), len(ref))
			}
			worst := 0.0
			for i, name := range names {
				r, ok := ref[name]
				if !ok {
					t.Errorf("no reference gradient %s", name)
					continue
				}
				g := got[want[i]].d
				mx, diff := 0.0, 0.0
				for j, v := range r.Data {
					mx = math.Max(mx, math.Abs(float64(v)))
					diff = math.Max(diff, math.Abs(g[j]-float64(v)))
				}
				// The reference is stored as float32: allow its rounding.
				if e := diff / mx; !(e <= 1e-6) {
					t.Errorf("%s: float64 gradient differs from PyTorch float64 by %.3g of max|ref|", name, e)
				} else {
					worst = math.Max(worst, e)
				}
			}
			t.Logf("%d gradients, worst relative difference %.3g", len(names), worst)
		})
	}
}

// TestPrecisionStudySmall runs the study on a batch of two images, one
// seed and depth 1, and checks its files and that every error is finite
// and below 1 (float32 and float64 agree to some digits on every tensor).
func TestPrecisionStudySmall(t *testing.T) {
	needFashionMNIST(t)
	out := t.TempDir()
	rows, errs, err := PrecisionStudy(PrecisionOptions{Out: out, Batch: 2, Seeds: 1, Depths: []int{1}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || len(errs) != 173+122 {
		t.Fatalf("%d rows and %d tensors, want 2 and %d", len(rows), len(errs), 173+122)
	}
	for _, e := range errs {
		if !(e.Err < 1) || !(e.ErrPerturbed < 1) {
			t.Errorf("%s %s: error %v, control %v", e.Net, e.Tensor, e.Err, e.ErrPerturbed)
		}
	}
	lines := readLines(t, filepath.Join(out, "precision_tensors.csv"))
	if lines[0] != PrecisionTensorsHeader || len(lines) != 1+len(errs) {
		t.Errorf("precision_tensors.csv: header %q, %d rows", lines[0], len(lines)-1)
	}
	fh, err := os.Open(filepath.Join(out, PrecisionPlotFile))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := png.Decode(fh); err != nil {
		t.Errorf("%s: %v", PrecisionPlotFile, err)
	}
	again, err := ReadPrecisionTensors(filepath.Join(out, "precision_tensors.csv"))
	if err != nil || len(again) != len(errs) || again[0].Tensor != errs[0].Tensor {
		t.Errorf("ReadPrecisionTensors: %d rows, %v", len(again), err)
	}
	if md := readLines(t, filepath.Join(out, "precision.md")); len(md) != 8 {
		t.Errorf("precision.md: %d lines, want 8 (three lines of text, a blank, the header, the rule, two rows)", len(md))
	}
}
