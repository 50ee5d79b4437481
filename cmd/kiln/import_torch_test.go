package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// torchONNXDir holds ONNX files written by PyTorch's exporter
// (bench/onnx/export_torch.py), with their sample inputs and PyTorch's
// outputs.
const torchONNXDir = "../../tests/onnx"

// TestImportTorchExportMatchesORT imports ONNX files written by an
// independent tool, PyTorch 1.13's torch.onnx.export (a reduced-width
// ResNet with projection shortcuts and a reduced-width MobileNet-v2 with
// depthwise convs and ReLU6, BatchNorm folded by the exporter, symbolic
// batch, the Shape/Gather/Unsqueeze/Concat/Reshape flatten chain), builds
// them with kiln import at batch 2, and compares on the committed input:
//
//   - the compiled output (kiln run --backend cpu) with ONNX Runtime's
//     (bench/peers/ort_run.js) within 1e-4 x max|ort|, the fixtures README's
//     bound between two implementations;
//   - the compiled output with the interpreter's within 1e-5 x max|ref|, the
//     bound compiled code has against the interpreter everywhere;
//   - the interpreter's output with PyTorch's (NAME.torch.npy) within 1e-4.
func TestImportTorchExportMatchesORT(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ONNX Runtime (Node.js) and compiles; skipped with -short")
	}
	_, err := codegen.FindLLVM()
	testenv.Check(t, err)
	node := ensureORT(t)
	for _, name := range []string{"resnet_mini", "mobilenet_v2_mini"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			model := filepath.Join(torchONNXDir, name+".onnx")
			xpath := filepath.Join(torchONNXDir, name+".input.npy")
			net, wts := filepath.Join(dir, name+".kiln"), filepath.Join(dir, name+".safetensors")
			x, err := tensor.ReadNPYFile(xpath)
			if err != nil {
				t.Fatal(err)
			}
			batch := x.Shape[0]
			importKiln(t, "import", "--batch", strconv.Itoa(batch), model, "-o", net, "--weights-out", wts)

			ortPath := filepath.Join(dir, "ort.npy")
			res, err := exec.Command(node, filepath.Join(peersDir, "ort_run.js"), model, xpath, ortPath, "--threads", "1").Output()
			if err != nil {
				var stderr []byte
				if ee, ok := err.(*exec.ExitError); ok {
					stderr = ee.Stderr
				}
				t.Fatalf("ort_run.js: %v\n%s", err, stderr)
			}
			var info struct {
				ORT string `json:"ort"`
			}
			if err := json.Unmarshal(res, &info); err != nil {
				t.Fatalf("ort_run.js output %q: %v", res, err)
			}

			outs := map[string]*tensor.Tensor{}
			for _, backend := range []string{"interp", "cpu"} {
				p := filepath.Join(dir, backend+".npy")
				importKiln(t, "run", "--backend", backend, net, "--weights", wts, "--input", xpath, "--output", p)
				outs[backend] = importNPY(t, p)
			}
			ort := importNPY(t, ortPath)
			torch := importNPY(t, filepath.Join(torchONNXDir, name+".torch.npy"))
			for _, c := range []struct {
				what     string
				got, ref *tensor.Tensor
				tol      float64
			}{
				{"compiled vs ONNX Runtime " + info.ORT, outs["cpu"], ort, 1e-4},
				{"compiled vs interpreter", outs["cpu"], outs["interp"], 1e-5},
				{"interpreter vs PyTorch", outs["interp"], torch, 1e-4},
			} {
				diff, err := tensor.MaxAbsDiff(c.got, c.ref)
				if err != nil {
					t.Fatalf("%s: %v", c.what, err)
				}
				scale := tensor.MaxAbs(c.ref)
				t.Logf("%s %s, output %s: max|diff|/max|ref| = %.2e", name, c.what, tensor.ShapeString(c.got.Shape), diff/scale)
				if !(diff <= c.tol*scale) || scale == 0 {
					t.Errorf("%s %s: max|diff| = %.3g > %g x max|ref| (%.3g)", name, c.what, diff, c.tol, scale)
				}
			}
		})
	}
}

func importKiln(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := kiln(t, args...)
	if code != 0 {
		t.Fatalf("kiln %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func importNPY(t *testing.T, path string) *tensor.Tensor {
	t.Helper()
	v, err := tensor.ReadNPYFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
