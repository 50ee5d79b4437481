package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
)

// TestImportCLI runs kiln export --onnx tiny, then kiln import on the model,
// and checks that kiln check accepts the written .kiln and that kiln run on
// it with the written weights gives the original network's output (both in
// the interpreter, within 1e-5 x max|ref|). Without -short it also compiles
// the imported network (--backend cpu, 1e-5 x max|ref| against the original
// in the interpreter) and runs the ONNX model in ONNX Runtime, which must
// agree with the imported network within the harness's 1e-4 x max|ref|.
func TestImportCLI(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "tiny.onnx")
	net := filepath.Join(dir, "net.kiln")
	weights := filepath.Join(dir, "net.safetensors")
	if code, out, errs := kiln(t, "export", "--onnx", "tiny", "-o", model); code != 0 {
		t.Fatalf("export: exit %d\n%s%s", code, out, errs)
	}
	code, out, errs := kiln(t, "import", model, "-o", net)
	if code != 0 || !strings.Contains(out, "wrote "+net) || !strings.Contains(out, weights+" (91 weights)") {
		t.Fatalf("import: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs := kiln(t, "check", net); code != 0 || !strings.HasPrefix(out, "ok tiny:") {
		t.Fatalf("check of the imported network: exit %d\n%s%s", code, out, errs)
	}
	f, err := tensor.ReadSafetensorsFile(weights)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(f.Metadata["kiln.import.onnx"], `"stem_0_conv.weight":"stem.0.conv.weight"`) {
		t.Errorf("metadata lacks the name mapping: %q", f.Metadata["kiln.import.onnx"])
	}

	x := tensor.New(1, 3, 32, 32)
	for i := range x.Data {
		x.Data[i] = float32(i%17)/8 - 1
	}
	xpath := filepath.Join(dir, "x.npy")
	if err := tensor.WriteNPYFile(xpath, x); err != nil {
		t.Fatal(err)
	}
	runNet := func(name string, args ...string) *tensor.Tensor {
		t.Helper()
		y := filepath.Join(dir, name+".npy")
		args = append([]string{"run", "--input", xpath, "--output", y}, args...)
		if code, out, errs := kiln(t, args...); code != 0 {
			t.Fatalf("kiln %v: exit %d\n%s%s", args, code, out, errs)
		}
		v, err := tensor.ReadNPYFile(y)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	compare := func(what string, ref, got *tensor.Tensor, tol float64) {
		t.Helper()
		d, err := tensor.MaxAbsDiff(ref, got)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if bound := tol * tensor.MaxAbs(ref); !(d <= bound) {
			t.Fatalf("%s: max |diff| %g > %g", what, d, bound)
		}
		t.Logf("%s: max |diff| %g", what, d)
	}
	ref := runNet("ref", "tiny")
	imported := runNet("imported", net, "--weights", weights)
	compare("imported vs original (interpreter)", ref, imported, 1e-5)

	if testing.Short() {
		t.Skip("compiling and ONNX Runtime skipped with -short")
	}
	_, llvmErr := codegen.FindLLVM()
	testenv.Check(t, llvmErr)
	if len(rt.HostISAs()) == 0 {
		testenv.Missing(t, "this CPU runs none of Kiln's ISAs (AVX-512, AVX2+FMA, NEON); CI's machine has AVX-512")
	}
	compare("imported compiled vs original (interpreter)", ref, runNet("compiled", net, "--weights", weights, "--backend", "cpu"), 1e-5)

	node := ensureORT(t)
	ypath := filepath.Join(dir, "ort.npy")
	cmd := exec.Command(node, filepath.Join(peersDir, "ort_run.js"), model, xpath, ypath, "--threads", "1")
	if res, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ort_run.js: %v\n%s", err, res)
	}
	ort, err := tensor.ReadNPYFile(ypath)
	if err != nil {
		t.Fatal(err)
	}
	compare("ONNX Runtime vs imported (interpreter)", ort, imported, 1e-4)
}

// TestImportCLIErrors covers kiln import's usage errors and failures: exit
// status 2 or 1, a message naming the problem, and no file written.
func TestImportCLIErrors(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.onnx")
	if err := os.WriteFile(junk, []byte("\x0a\xff\xff\xff\xff\x0f"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "n.kiln")
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no output", []string{"import", junk}, 2, "-o NET.kiln is required"},
		{"not kiln", []string{"import", junk, "-o", filepath.Join(dir, "n.txt")}, 2, "must end in .kiln"},
		{"no file", []string{"import", "-o", out}, 2, "missing FILE"},
		{"missing model", []string{"import", filepath.Join(dir, "none.onnx"), "-o", out}, 1, "none.onnx"},
		{"directory", []string{"import", dir, "-o", out}, 1, "not a regular file"},
		{"junk", []string{"import", junk, "-o", out}, 1, "junk.onnx: model: byte 1: field 1: unexpected EOF"},
		{"bad input shape", []string{"import", junk, "-o", out, "--input", "3xx"}, 2, "--input"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := kiln(t, tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.stderr) {
				t.Fatalf("kiln %v: exit %d, stderr:\n%s\nwant exit %d and %q", tc.args, code, errs, tc.code, tc.stderr)
			}
			for _, p := range []string{out, filepath.Join(dir, "n.safetensors")} {
				if _, err := os.Stat(p); !os.IsNotExist(err) {
					t.Fatalf("%s exists after a failure", p)
				}
			}
		})
	}
}
