package tests

import (
	"encoding/binary"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// clibC is a C program using kiln.h: it runs the network carried by the
// library it is linked with on IN.bin (raw float32) and writes OUT.bin, then
// runs it from 4 threads at once, then checks the error paths: wrong sizes, NULL buffers, a closed handle, a bad
// path, the plain runtime library. Each check prints a line the test reads;
// any crash or abort fails the test.
const clibC = `#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kiln.h"

static int fail(const char *what) { printf("FAIL %s: %s\n", what, kiln_last_error()); return 1; }

// Concurrent kiln_run on one model: each thread runs 20 inferences and
// compares every output with the first run's, bit for bit.
struct job { kiln_model m; const float *x, *want; size_t nin, nout; int bad; };

static void *worker(void *p) {
	struct job *j = p;
	float *y = malloc(j->nout * sizeof *y);
	for (int i = 0; i < 20; i++) {
		if (kiln_run(j->m, j->x, j->nin, y, j->nout) != KILN_OK || memcmp(y, j->want, j->nout * sizeof *y) != 0) j->bad++;
	}
	free(y);
	return NULL;
}

int main(int argc, char **argv) {
	if (argc != 4) return 2;
	kiln_model m = kiln_open(NULL);
	if (!m) return fail("open");
	int64_t in[8], out[8];
	int rin = kiln_input_shape(m, in, 8), rout = kiln_output_shape(m, out, 8);
	if (rin < 1 || rout < 1) return fail("shape");
	size_t row_in = 1, row_out = 1;
	for (int i = 1; i < rin; i++) row_in *= (size_t)in[i];
	for (int i = 1; i < rout; i++) row_out *= (size_t)out[i];
	size_t nin = row_in * (size_t)in[0], nout = row_out * (size_t)out[0];
	printf("input rank %d batch %lld, output rank %d\n", rin, (long long)in[0], rout);
	float *x = malloc(nin * sizeof *x), *y = malloc(nout * sizeof *y);
	FILE *f = fopen(argv[1], "rb");
	if (!f || fread(x, sizeof *x, nin, f) != nin) { printf("FAIL reading %s\n", argv[1]); return 1; }
	fclose(f);
	if (kiln_run(m, x, nin, y, nout) != KILN_OK) return fail("run");
	f = fopen(argv[2], "wb");
	if (!f || fwrite(y, sizeof *y, nout, f) != nout) { printf("FAIL writing %s\n", argv[2]); return 1; }
	fclose(f);
	pthread_t th[4];
	struct job jobs[4];
	for (int i = 0; i < 4; i++) {
		jobs[i] = (struct job){m, x, y, nin, nout, 0};
		pthread_create(&th[i], NULL, worker, &jobs[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		if (jobs[i].bad) { printf("FAIL thread %d: %d of 20 runs failed or differed\n", i, jobs[i].bad); return 1; }
	}
	printf("4 threads x 20 concurrent runs: identical\n");
	int rc;
	if ((rc = kiln_run(m, x, nin - 1, y, nout)) != KILN_ERR_SIZE) return fail("short input accepted");
	printf("short input: %d %s\n", rc, kiln_last_error());
	if ((rc = kiln_run(m, x, nin, y, nout + 1)) != KILN_ERR_SIZE) return fail("long output accepted");
	printf("long output: %d %s\n", rc, kiln_last_error());
	if ((rc = kiln_run(m, NULL, nin, y, nout)) != KILN_ERR_ARG) return fail("NULL input accepted");
	printf("NULL input: %d %s\n", rc, kiln_last_error());
	if ((rc = kiln_input_shape(m, in, 1)) != KILN_ERR_ARG) return fail("small dims accepted");
	printf("small dims: %d %s\n", rc, kiln_last_error());
	if (kiln_close(m) != KILN_OK) return fail("close");
	if ((rc = kiln_run(m, x, nin, y, nout)) != KILN_ERR_HANDLE) return fail("closed handle accepted");
	printf("closed handle: %d %s\n", rc, kiln_last_error());
	if ((rc = kiln_close(m)) != KILN_ERR_HANDLE) return fail("double close accepted");
	if (kiln_open("/nonexistent/libnet.so") != 0) return fail("bad path accepted");
	printf("bad path: %s\n", kiln_last_error());
	if (kiln_open(argv[3]) != 0) return fail("plain library accepted");
	printf("plain library: %s\n", kiln_last_error());
	printf("OK\n");
	return 0;
}
`

// clibPy is the same through Python's ctypes (no NumPy): argv is the
// library, IN.bin, OUT.bin.
const clibPy = `import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.kiln_open.restype = ctypes.c_int64
lib.kiln_open.argtypes = [ctypes.c_char_p]
lib.kiln_last_error.restype = ctypes.c_char_p
for fn in (lib.kiln_input_shape, lib.kiln_output_shape):
    fn.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t]
lib.kiln_run.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t]
lib.kiln_close.argtypes = [ctypes.c_int64]
m = lib.kiln_open(None)
if not m:
    sys.exit("open: " + lib.kiln_last_error().decode())
def shape(fn):
    dims = (ctypes.c_int64 * 8)()
    r = fn(m, dims, 8)
    assert r > 0, lib.kiln_last_error()
    return list(dims[:r])
def numel(s):
    n = 1
    for d in s:
        n *= d
    return n
nin, nout = numel(shape(lib.kiln_input_shape)), numel(shape(lib.kiln_output_shape))
x = (ctypes.c_float * nin).from_buffer_copy(open(sys.argv[2], "rb").read())
y = (ctypes.c_float * nout)()
if lib.kiln_run(m, x, nin, y, nout) != 0:
    sys.exit("run: " + lib.kiln_last_error().decode())
open(sys.argv[3], "wb").write(bytes(y))
rc = lib.kiln_run(m, x, nin, y, nout - 1)
print("short output:", rc, lib.kiln_last_error().decode())
assert rc == -3
assert lib.kiln_open(b"/nonexistent") == 0
print("bad path:", lib.kiln_last_error().decode())
assert lib.kiln_close(m) == 0
assert lib.kiln_close(m) == -1
print("OK")
`

// TestCLibrary is issue 11 item 8: kiln build --format lib makes a shared
// library with kiln.h next to it; a C program compiled against kiln.h and a
// Python ctypes script each run tiny through it (batch 2) and must match
// the interpreter's output within the compiled-code bound, 1e-5 × max|ref|;
// every error (wrong sizes, NULL buffers, closed handles, a bad path, the
// plain library without a network) returns its code and text instead of
// aborting.
func TestCLibrary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kiln, the runtime library and a network")
	}
	_, err := codegen.FindLLVM()
	testenv.Check(t, err)
	cc := testenv.LookPath(t, "clang-19")
	py := testenv.LookPath(t, "python3")
	bin, work := t.TempDir(), t.TempDir()
	kiln := buildKiln(t, bin)
	plain := filepath.Join(bin, "libkiln.so")
	if out, err := exec.Command("go", "build", "-buildmode=c-shared", "-o", plain, "github.com/kiln-dev/kiln/cmd/kiln-lib").CombinedOutput(); err != nil {
		t.Fatalf("go build -buildmode=c-shared: %v\n%s", err, out)
	}
	lib := filepath.Join(work, "libtiny.so")
	buildOut, err := exec.Command(kiln, "build", "tiny", "--batch", "2", "--format", "lib", "-o", lib).CombinedOutput()
	if err != nil {
		t.Fatalf("kiln build --format lib: %v\n%s", err, buildOut)
	}
	// Issue 11 item 9: an artifact without --weights says so.
	if !strings.Contains(string(buildOut), "warning: no --weights: "+lib+" carries procedural weights") {
		t.Errorf("kiln build without --weights printed no procedural-weights warning:\n%s", buildOut)
	}
	if _, err := os.Stat(filepath.Join(work, "kiln.h")); err != nil {
		t.Fatalf("kiln build --format lib wrote no kiln.h: %v", err)
	}
	// The input and the interpreter's output, as .npy and raw float32.
	x, err := tensor.Generate("input", []int{2, 3, 32, 32})
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(work, "x.npy")
	if err := tensor.WriteNPYFile(in, x); err != nil {
		t.Fatal(err)
	}
	writeRaw(t, filepath.Join(work, "x.bin"), x.Data)
	ref := filepath.Join(work, "ref.npy")
	if out, err := exec.Command(kiln, "run", "tiny", "--input", in, "--output", ref).CombinedOutput(); err != nil {
		t.Fatalf("kiln run: %v\n%s", err, out)
	}
	want, err := tensor.ReadNPYFile(ref)
	if err != nil {
		t.Fatal(err)
	}

	// C.
	src := filepath.Join(work, "main.c")
	if err := os.WriteFile(src, []byte(clibC), 0o644); err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(work, "main")
	if out, err := exec.Command(cc, "-std=c11", "-Wall", "-Werror", "-o", prog, src, "-I"+work, "-L"+work, "-ltiny", "-lpthread", "-Wl,-rpath,$ORIGIN").CombinedOutput(); err != nil {
		t.Fatalf("compiling against kiln.h: %v\n%s", err, out)
	}
	out, err := exec.Command(prog, filepath.Join(work, "x.bin"), filepath.Join(work, "c.bin"), plain).CombinedOutput()
	t.Logf("C program:\n%s", out)
	if err != nil || !strings.HasSuffix(string(out), "OK\n") {
		t.Fatalf("C program: %v\n%s", err, out)
	}
	compare(t, "C API", &tensor.Tensor{Shape: want.Shape, Data: readRaw(t, filepath.Join(work, "c.bin"))}, want, 1e-5)

	// Python ctypes.
	script := filepath.Join(work, "run.py")
	if err := os.WriteFile(script, []byte(clibPy), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(py, script, lib, filepath.Join(work, "x.bin"), filepath.Join(work, "py.bin")).CombinedOutput()
	t.Logf("Python:\n%s", out)
	if err != nil || !strings.HasSuffix(string(out), "OK\n") {
		t.Fatalf("Python ctypes: %v\n%s", err, out)
	}
	compare(t, "Python ctypes", &tensor.Tensor{Shape: want.Shape, Data: readRaw(t, filepath.Join(work, "py.bin"))}, want, 1e-5)

	// A corrupted weight byte is refused at open, naming the part.
	b, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(work, "libbad.so")
	tr := b[len(b)-96:] // payload format 2's trailer (integrity_test.go)
	wOff := int(binary.LittleEndian.Uint64(tr[8+8*2:]))
	b[wOff+1001] ^= 1
	if err := os.WriteFile(bad, b, 0o755); err != nil {
		t.Fatal(err)
	}
	chk := "import ctypes,sys\nl=ctypes.CDLL(sys.argv[1]);l.kiln_open.restype=ctypes.c_int64;l.kiln_last_error.restype=ctypes.c_char_p\n" +
		"m=l.kiln_open(None)\nprint(m, l.kiln_last_error().decode())\n"
	out, err = exec.Command(py, "-c", chk, bad).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "0 kiln_open: ") || !strings.Contains(string(out), "the weights are damaged") {
		t.Errorf("a library with a flipped byte: %v\n%s; want kiln_open to fail with a message", err, out)
	}
	t.Logf("flipped byte: %s", out)
}

func writeRaw(t *testing.T, path string, v []float32) {
	t.Helper()
	b := make([]byte, 0, 4*len(v))
	for _, f := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readRaw(t *testing.T, path string) []float32 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}
