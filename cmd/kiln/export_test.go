package main

import (
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// peersDir is bench/peers, where the ONNX Runtime side lives.
const peersDir = "../../bench/peers"

// ensureORT makes sure onnxruntime-node is installed in bench/peers (npm ci
// --ignore-scripts from the committed package-lock.json if node_modules is
// missing) and returns the path of node. Missing node or npm fail the test:
// CI must run it (.ci/install-deps installs Node.js).
func ensureORT(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node not found on PATH: the ONNX Runtime check needs Node.js (>= 18) and npm (.ci/install-deps)")
	}
	if _, err := os.Stat(filepath.Join(peersDir, "node_modules", "onnxruntime-node", "package.json")); err == nil {
		return node
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatalf("npm not found on PATH: needed to install onnxruntime-node in bench/peers")
	}
	cmd := exec.Command(npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund")
	cmd.Dir = peersDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in bench/peers: %v\n%s", err, out)
	}
	return node
}

// TestExportMatchesONNXRuntime exports tiny with kiln export --onnx, runs the
// model in ONNX Runtime (onnxruntime-node, bench/peers/ort_run.js) and
// compares its output with the Kiln interpreter's within 1e-4 x max|ref|: at
// batch 1 with procedural weights, and at batch 2 with a larger input and
// weights from a safetensors file.
func TestExportMatchesONNXRuntime(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ONNX Runtime (Node.js); skipped with -short")
	}
	node := ensureORT(t)
	dir := t.TempDir()

	// A checkpoint that differs from the procedural weights, to check that
	// --weights reaches the initializers.
	g0, err := loadNet("tiny", dsl.Options{Batch: 1})
	if err != nil {
		t.Fatal(err)
	}
	proc, err := loadWeights(g0, "")
	if err != nil {
		t.Fatal(err)
	}
	ckpt := map[string]*tensor.Tensor{}
	for k, v := range proc {
		w := tensor.New(v.Shape...)
		for i, x := range v.Data {
			w.Data[i] = x * float32(1+0.25*math.Sin(float64(i)+float64(len(k))))
		}
		ckpt[k] = w
	}
	wpath := filepath.Join(dir, "tiny.safetensors")
	if err := tensor.WriteSafetensorsFile(wpath, ckpt, nil); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		batch   int
		input   string // --input, "" for the declared 3x32x32
		weights string
		shape   []int
	}{
		{"batch1", 1, "", "", []int{1, 3, 32, 32}},
		{"batch2-40px-weights", 2, "3x40x40", wpath, []int{2, 3, 40, 40}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			model := filepath.Join(dir, tc.name+".onnx")
			args := []string{"export", "--onnx", "tiny", "--batch", strconv.Itoa(tc.batch), "-o", model}
			if tc.input != "" {
				args = append(args, "--input", tc.input)
			}
			if tc.weights != "" {
				args = append(args, "--weights", tc.weights)
			}
			code, out, errs := kiln(t, args...)
			if code != 0 || !strings.Contains(out, "wrote "+model) {
				t.Fatalf("kiln %v: exit %d\n%s%s", args, code, out, errs)
			}

			x := tensor.New(tc.shape...)
			for i := range x.Data {
				x.Data[i] = float32(math.Sin(0.37*float64(i)) + 0.1*math.Cos(1.3*float64(i)))
			}
			xpath, ypath := filepath.Join(dir, tc.name+"-x.npy"), filepath.Join(dir, tc.name+"-ort.npy")
			if err := tensor.WriteNPYFile(xpath, x); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(node, filepath.Join(peersDir, "ort_run.js"), model, xpath, ypath, "--threads", "1")
			res, err := cmd.Output()
			if err != nil {
				var stderr []byte
				if ee, ok := err.(*exec.ExitError); ok {
					stderr = ee.Stderr
				}
				t.Fatalf("ort_run.js: %v\n%s", err, stderr)
			}
			var info struct {
				ORT    string `json:"ort"`
				Input  string `json:"input"`
				Output string `json:"output"`
			}
			if err := json.Unmarshal(res, &info); err != nil {
				t.Fatalf("ort_run.js output %q: %v", res, err)
			}
			if info.Input != "image" || info.Output != "output" {
				t.Fatalf("ONNX Runtime sees input %q, output %q; want image, output", info.Input, info.Output)
			}
			got, err := tensor.ReadNPYFile(ypath)
			if err != nil {
				t.Fatal(err)
			}

			opts := dsl.Options{Batch: tc.batch, InputShape: tc.shape[1:]}
			g, err := loadNet("tiny", opts)
			if err != nil {
				t.Fatal(err)
			}
			params, err := loadWeights(g, tc.weights)
			if err != nil {
				t.Fatal(err)
			}
			r, err := interp.Run(g, params, map[string]*tensor.Tensor{"image": x}, interp.Options{})
			if err != nil {
				t.Fatal(err)
			}
			ref := r.Outputs[0]
			diff, err := tensor.MaxAbsDiff(got, ref)
			if err != nil {
				t.Fatalf("ONNX Runtime output vs interpreter: %v", err)
			}
			scale := tensor.MaxAbs(ref)
			t.Logf("ONNX Runtime %s, output %s: max |ort - interp| = %.3g, max |interp| = %.3g, ratio %.3g",
				info.ORT, tensor.ShapeString(got.Shape), diff, scale, diff/scale)
			if !(diff <= 1e-4*scale) || scale == 0 {
				t.Fatalf("ONNX Runtime differs from the interpreter: max |diff| %g > 1e-4 x %g", diff, scale)
			}
		})
	}
}

// TestExportErrors covers kiln export's usage errors and failures: exit
// status 2 or 1, a message naming the problem, and no output file.
func TestExportErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.safetensors")
	if err := os.WriteFile(bad, []byte("\x08\x00\x00\x00\x00\x00\x00\x00{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "m.onnx")
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no format", []string{"export", "tiny", "-o", out}, 2, "--onnx"},
		{"no output", []string{"export", "--onnx", "tiny"}, 2, "-o OUT is required"},
		{"no file", []string{"export", "--onnx", "-o", out}, 2, "missing FILE"},
		{"bad batch", []string{"export", "--onnx", "--batch", "0", "tiny", "-o", out}, 2, "--batch must be positive"},
		{"unknown network", []string{"export", "--onnx", "nonet", "-o", out}, 1, "not a built-in network"},
		{"bad weights", []string{"export", "--onnx", "tiny", "--weights", bad, "-o", out}, 1, "bad.safetensors"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := kiln(t, tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.stderr) {
				t.Fatalf("kiln %v: exit %d, stderr:\n%s\nwant exit %d and %q", tc.args, code, errs, tc.code, tc.stderr)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Fatalf("output file exists after failure")
			}
		})
	}
	code, stdout, _ := kiln(t, "export", "-h")
	if code != 0 || !strings.Contains(stdout, "Usage: kiln export") || !strings.Contains(stdout, "-onnx") {
		t.Fatalf("export -h: exit %d\n%s", code, stdout)
	}
}
