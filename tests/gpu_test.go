package tests

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/runtime/cuda"
)

// TestGPUExecutable builds tiny with kiln build --target cuda-sm90 and runs
// the executable with no Go or LLVM on PATH: --info describes the program;
// on a machine without the NVIDIA driver (CI) --bench and --input fail
// with exit status 1 and say so, and on one with a GPU --bench runs. The
// GPU path itself runs on the fake driver in cmd/kiln-runner and cmd/kiln.
func TestGPUExecutable(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kiln and a network")
	}
	_, err := codegen.FindLLVM()
	testenv.Check(t, err)
	bin, work := t.TempDir(), t.TempDir()
	kiln := buildKiln(t, bin)
	exe := filepath.Join(bin, "tiny_gpu")
	out, err := exec.Command(kiln, "build", "tiny", "--target", "cuda-sm90", "--precision", "bf16", "-o", exe).CombinedOutput()
	if err != nil {
		t.Fatalf("kiln build: %v\n%s", err, out)
	}
	r := runIn(t, work, exe, "--info")
	if r.code != 0 || !strings.Contains(r.stdout, "target:       cuda-sm90 (sm_90), precision bf16") {
		t.Errorf("--info: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	_, noDriver := cuda.LoadDriver()
	r = runIn(t, work, exe, "--bench", "--iters", "5")
	switch {
	case noDriver != nil:
		if r.code != 1 || !strings.Contains(r.stderr, "no NVIDIA driver (libcuda.so.1 not found)") {
			t.Errorf("--bench without a driver: exit %d, stderr %q", r.code, r.stderr)
		}
	case r.code != 0 && !strings.Contains(r.stderr, "no CUDA device"):
		t.Errorf("--bench: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
