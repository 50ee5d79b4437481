package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestGoEmbed builds kiln and its runner, builds tiny for batch 2, runs this
// example's run on 3 samples (one full batch and one padded) and compares
// the output with the interpreter's at the compiled-code bound, 1e-5 ×
// max|ref|.
func TestGoEmbed(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kiln and a network")
	}
	_, err := codegen.FindLLVM()
	testenv.Check(t, err)
	bin, work := t.TempDir(), t.TempDir()
	for _, p := range []struct{ out, pkg string }{{"kiln", "./cmd/kiln"}, {"kiln-runner", "./cmd/kiln-runner"}} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, p.out), p.pkg)
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", p.pkg, err, out)
		}
	}
	kiln := filepath.Join(bin, "kiln")
	exe := filepath.Join(work, "tiny")
	if out, err := exec.Command(kiln, "build", "tiny", "--batch", "2", "-o", exe).CombinedOutput(); err != nil {
		t.Fatalf("kiln build: %v\n%s", err, out)
	}
	x, err := tensor.Generate("input", []int{3, 3, 32, 32})
	if err != nil {
		t.Fatal(err)
	}
	in, out, ref := filepath.Join(work, "x.npy"), filepath.Join(work, "y.npy"), filepath.Join(work, "ref.npy")
	if err := tensor.WriteNPYFile(in, x); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(kiln, "run", "tiny", "--input", in, "--output", ref).CombinedOutput(); err != nil {
		t.Fatalf("kiln run: %v\n%s", err, b)
	}
	if err := run(exe, in, out); err != nil {
		t.Fatal(err)
	}
	got, err := tensor.ReadNPYFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want, err := tensor.ReadNPYFile(ref)
	if err != nil {
		t.Fatal(err)
	}
	if tensor.ShapeString(got.Shape) != tensor.ShapeString(want.Shape) {
		t.Fatalf("output shape %s, want %s", tensor.ShapeString(got.Shape), tensor.ShapeString(want.Shape))
	}
	var maxRef, maxErr float64
	for i, v := range want.Data {
		maxRef = max(maxRef, abs(float64(v)))
		maxErr = max(maxErr, abs(float64(got.Data[i]-v)))
	}
	if maxErr > 1e-5*maxRef {
		t.Errorf("max |got-ref| = %g > 1e-5 × max|ref| = %g", maxErr, 1e-5*maxRef)
	}
	t.Logf("go-embed vs interpreter: max error %.2e (max|ref| %.3g)", maxErr, maxRef)
	if err := run(filepath.Join(bin, "kiln-runner"), in, out); err == nil || !strings.Contains(err.Error(), "carries no network") {
		t.Errorf("the plain runner: %v; want 'carries no network'", err)
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
