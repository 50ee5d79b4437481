//go:build linux && cgo

package cuda

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// childEnv marks the re-executed test process that loads the stand-in
// libcuda.so.1 (LD_LIBRARY_PATH is read by the dynamic loader at process
// start, so the parent cannot set it for itself).
const childEnv = "KILN_TEST_FAKE_LIBCUDA"

// TestLibcuda compiles testdata/fakecuda.c into a libcuda.so.1 and runs
// TestLibcudaChild in a new process that finds it: the real dlopen/dlsym
// path and every cgo wrapper's argument marshalling (versioned symbols,
// out-parameters, kernel parameters with a .u32 read from an 8-byte slot,
// the JIT log buffer, cuGetErrorName) without a GPU.
func TestLibcuda(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		return // in the child
	}
	cc := testenv.LookPath(t, "cc")
	dir := t.TempDir()
	lib := filepath.Join(dir, "libcuda.so.1")
	if out, err := exec.Command(cc, "-shared", "-fPIC", "-O1", "-o", lib, filepath.Join("testdata", "fakecuda.c")).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	for _, tc := range []struct{ name, env string }{{"device", "FAKECUDA_NODEVICE=0"}, {"no device", "FAKECUDA_NODEVICE=1"}} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestLibcudaChild$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), childEnv+"=1", "LD_LIBRARY_PATH="+dir, tc.env)
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "--- PASS: TestLibcudaChild") {
				t.Fatalf("child: %v\n%s", err, out)
			}
		})
	}
}

// TestLibcudaChild is TestLibcuda's child; it does nothing unless run by it
// (so it is no skip in the test summary).
func TestLibcudaChild(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		return
	}
	drv, err := LoadDriver()
	if err != nil {
		t.Fatal(err)
	}
	p, w := testProgram(40)
	if os.Getenv("FAKECUDA_NODEVICE") == "1" {
		_, err := Open(drv, p, w, Options{})
		if !errors.Is(err, ErrNoDevice) || !strings.Contains(err.Error(), "no CUDA device: cuInit: CUDA_ERROR_NO_DEVICE (100): no CUDA-capable device is detected") {
			t.Fatalf("Open without a device: %v", err)
		}
		return
	}
	m, err := Open(drv, p, w, Options{Sessions: 2})
	if err != nil {
		t.Fatal(err)
	}
	if d := m.Device(); d.Name != "Fake libcuda" || d.SM != 90 || d.SMs != 132 || d.Driver != 13000 {
		t.Errorf("device %+v", d)
	}
	for run := 0; run < 3; run++ {
		x, y := make([]float32, 40), make([]float32, 40)
		for i := range x {
			x[i] = float32(run*7 + i)
		}
		if err := m.Run(x, y); err != nil {
			t.Fatal(err)
		}
		for i := range y {
			if want := (x[i] + 1) * float32(i+2); y[i] != want {
				t.Fatalf("run %d: y[%d] = %v, want %v", run, i, y[i], want)
			}
		}
	}
	x, y := make([]float32, 40), make([]float32, 40)
	kt, err := m.Profile(x, y)
	if err != nil {
		t.Fatal(err)
	}
	if len(kt) != 2 || kt[0].MS != 0.25 || kt[1].MS != 0.25 || y[39] != 41 {
		t.Errorf("profile %+v, y[39] = %v", kt, y[39])
	}
	ms, err := m.Time(1, 4)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 4 || ms[3] != 0.5 {
		t.Errorf("Time = %v, want 4 x 0.5 ms", ms)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	// A PTX module the JIT rejects: the call, the error name and the log.
	p.PTX = strings.Replace(p.PTX, ".address_size 64", ".address_size 64\nsyntax error", 1)
	_, err = Open(drv, p, w, Options{})
	for _, want := range []string{"cuModuleLoadDataEx: CUDA_ERROR_INVALID_PTX (218): a PTX JIT compilation failed", "PTX JIT log:", "syntax error"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open with bad PTX: %v, want it to contain %q", err, want)
		}
	}
	// A kernel the module lacks.
	p, w = testProgram(8)
	p.PTX += ".visible .entry conv_9(.param .u64 a) { ret; }\n"
	p.Launches[0].Kernel = "conv_9"
	if _, err = Open(drv, p, w, Options{}); err == nil || !strings.Contains(err.Error(), "cuModuleGetFunction: CUDA_ERROR_NOT_FOUND (500)") || !strings.Contains(err.Error(), "kernel conv_9") {
		t.Errorf("Open with a missing kernel: %v", err)
	}
}
