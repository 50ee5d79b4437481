package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
)

// TestRunTapCompiled checks kiln run --tap with --backend cpu: the module
// output compiled in as a tap equals the interpreter's within 1e-5 ×
// max|ref|, for a stem, a block and a head module; an unknown name lists
// the valid ones.
func TestRunTapCompiled(t *testing.T) {
	_, llvmErr := codegen.FindLLVM()
	testenv.Check(t, llvmErr)
	if len(rt.HostISAs()) == 0 {
		testenv.Missing(t, "this CPU runs none of Kiln's ISAs (AVX-512, AVX2+FMA, NEON); CI's machine has AVX-512")
	}
	dir := t.TempDir()
	x, err := tensor.Generate("input", []int{2, 3, 32, 32})
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(dir, "x.npy")
	if err := tensor.WriteNPYFile(in, x); err != nil {
		t.Fatal(err)
	}
	for _, tap := range []string{"stem", "blocks.0", "fc"} {
		out := map[string]string{}
		for _, backend := range []string{"interp", "cpu"} {
			out[backend] = filepath.Join(dir, backend+"-"+tap+".npy")
			code, _, errs := kiln(t, "run", "tiny", "--input", in, "--output", out[backend], "--tap", tap, "--backend", backend)
			if code != 0 {
				t.Fatalf("run --tap %s --backend %s: exit %d\n%s", tap, backend, code, errs)
			}
		}
		got, err := tensor.ReadNPYFile(out["cpu"])
		if err != nil {
			t.Fatal(err)
		}
		want, err := tensor.ReadNPYFile(out["interp"])
		if err != nil {
			t.Fatal(err)
		}
		d, err := tensor.MaxAbsDiff(got, want)
		if err != nil {
			t.Fatalf("--tap %s: %v", tap, err)
		}
		if rel := d / tensor.MaxAbs(want); !(rel <= 1e-5) {
			t.Errorf("--tap %s: compiled differs from the interpreter by %.3g x max|ref|", tap, rel)
		}
	}
	code, _, errs := kiln(t, "run", "tiny", "--input", in, "--output", filepath.Join(dir, "u.npy"), "--tap", "nowhere", "--backend", "cpu")
	if code != 1 || !strings.Contains(errs, `no module "nowhere" (modules: blocks, blocks.0,`) {
		t.Errorf("unknown tap: exit %d\n%s", code, errs)
	}
}
