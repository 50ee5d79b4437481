package rt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// testN is the length of the test network's input; the output has one more
// value, which reports the entry point that ran (isaID) or -1 if a pointer
// the runtime passed was misaligned.
const testN = 1000

// testLibC implements the artifact ABI with two "kernels" over an arena laid
// out as [in: N][tmp: N][out: N+1] and N float32 weights:
//
//	kernel 0: tmp[i] = 2*in[i]
//	kernel 1: out[i] = tmp[N-1-i] + w[i]; out[N] = ISA id
//
// Kernel 1 reads what other threads wrote in kernel 0, so a broken barrier
// shows up as wrong output. Tiles are 64 elements, dealt round-robin.
const testLibC = `
#include <stdint.h>
#include <stdatomic.h>
#include <sched.h>
#include <time.h>

#ifndef SPINS
#define SPINS 64
#endif
#define N 1000
#define TILE 64
#define TILES ((N + TILE - 1) / TILE)

typedef struct {
	_Atomic int32_t count;
	char pad[60];
	_Atomic int32_t sense;
} barrier_t;

/* Sense-reversing barrier: the last thread to arrive resets the count and
   flips the sense; the others spin (yielding, as threads may outnumber
   cores) until the sense flips to their local value. The sense cannot flip
   before this thread arrives, so reading it on entry is safe. */
static void barrier_wait(void *b, int32_t n) {
	barrier_t *bar = b;
	int32_t my = !atomic_load_explicit(&bar->sense, memory_order_acquire);
	if (atomic_fetch_add_explicit(&bar->count, 1, memory_order_acq_rel) == n - 1) {
		atomic_store_explicit(&bar->count, 0, memory_order_relaxed);
		atomic_store_explicit(&bar->sense, my, memory_order_release);
		return;
	}
	for (int spins = 0; atomic_load_explicit(&bar->sense, memory_order_acquire) != my; spins++)
		if (spins > SPINS)
			sched_yield();
}

static int64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void run(float *arena, const float *w, int32_t tid, int32_t n, void *barrier,
                int64_t *timings, float id) {
	float *in = arena, *tmp = arena + N, *out = arena + 2 * N;
	int64_t t0 = now_ns();
	for (int t = tid; t < TILES; t += n)
		for (int i = t * TILE; i < N && i < (t + 1) * TILE; i++)
			tmp[i] = 2 * in[i];
	barrier_wait(barrier, n);
	int64_t t1 = now_ns();
	if (timings && tid == 0)
		timings[0] += t1 - t0;
	for (int t = tid; t < TILES; t += n)
		for (int i = t * TILE; i < N && i < (t + 1) * TILE; i++)
			out[i] = tmp[N - 1 - i] + w[i];
	if (tid == 0) {
		int aligned = (uintptr_t)arena % 64 == 0 && (uintptr_t)w % 64 == 0 &&
		              (uintptr_t)barrier % 64 == 0;
		out[N] = aligned ? id : -1;
	}
	barrier_wait(barrier, n);
	if (timings && tid == 0)
		timings[1] += now_ns() - t1 + 1;
}

/* KILN_ABI is rt.ABIVersion, passed by buildLib; ABI overrides it. The
   sizes are those of testManifest unless overridden. */
#ifndef ABI
#define ABI KILN_ABI
#endif
#ifndef ARENA_BYTES
#define ARENA_BYTES (4 * (3 * N + 1))
#endif
#ifndef WEIGHTS_BYTES
#define WEIGHTS_BYTES (4 * N)
#endif
#ifndef NO_ABI
int32_t kiln_abi_version(void) { return ABI; }
#endif
#ifndef NO_SIZES
int64_t kiln_arena_bytes(void) { return ARENA_BYTES; }
int64_t kiln_weights_bytes(void) { return WEIGHTS_BYTES; }
#endif
#ifndef NO_AVX512
void kiln_run_avx512(float *a, const float *w, int32_t tid, int32_t n, void *b, int64_t *t) {
	run(a, w, tid, n, b, t, 512);
}
#endif
void kiln_run_avx2(float *a, const float *w, int32_t tid, int32_t n, void *b, int64_t *t) {
	run(a, w, tid, n, b, t, 2);
}
void kiln_run_neon(float *a, const float *w, int32_t tid, int32_t n, void *b, int64_t *t) {
	run(a, w, tid, n, b, t, 1);
}
`

var isaID = map[string]float32{ISAAVX512: 512, ISAAVX2: 2, ISANEON: 1}

func TestMain(m *testing.M) {
	if os.Getenv("KILN_RT_PAYLOAD_CHILD") == "1" {
		os.Exit(payloadChild())
	}
	dir, err := os.MkdirTemp("", "kiln-rt-test-")
	if err != nil {
		panic(err)
	}
	libDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	libDir string                // temporary directory for the test libraries
	libMu  sync.Mutex            // guards libs
	libs   = map[string]string{} // gcc flags -> compiled shared object
	libSeq int
)

// buildLib compiles testLibC with extra gcc flags (once per set of flags)
// with gcc -shared -fPIC -O2 and returns the shared object's path.
func buildLib(t testing.TB, flags ...string) string {
	t.Helper()
	libMu.Lock()
	defer libMu.Unlock()
	key := strings.Join(flags, " ")
	if so, ok := libs[key]; ok {
		return so
	}
	libSeq++
	src := filepath.Join(libDir, fmt.Sprintf("kernels%d.c", libSeq))
	if err := os.WriteFile(src, []byte(testLibC), 0o644); err != nil {
		t.Fatal(err)
	}
	so := filepath.Join(libDir, fmt.Sprintf("kernels%d.so", libSeq))
	args := append([]string{"-shared", "-fPIC", "-O2", "-Wall", "-Werror", fmt.Sprintf("-DKILN_ABI=%d", ABIVersion), "-o", so, src}, flags...)
	if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	libs[key] = so
	return so
}

func testManifest(isas ...string) Manifest {
	arch := goruntime.GOARCH
	if len(isas) == 0 {
		if arch == "arm64" {
			isas = []string{ISANEON}
		} else {
			isas = []string{ISAAVX512, ISAAVX2}
		}
	}
	return Manifest{
		Version:      ManifestVersion,
		Network:      "tiny",
		Batch:        1,
		Arch:         arch,
		ISAs:         isas,
		Features:     tableISAFeatures(isas),
		ArenaBytes:   4 * (3*testN + 1),
		WeightsBytes: 4 * testN,
		Input:        TensorInfo{Name: "x", Shape: []int{1, testN}, Offset: 0},
		Output:       TensorInfo{Name: "y", Shape: []int{1, testN + 1}, Offset: 2 * testN},
		Kernels: []KernelInfo{
			{Name: "k0", Label: "double", Op: "mul", Tiles: 16, MACs: testN},
			{Name: "k1", Label: "reverse_add", Op: "add", Tiles: 16, MACs: testN},
		},
	}
}

func testWeights() []byte {
	b := make([]byte, 4*testN)
	for i := range testN {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(0.5*float32(i)))
	}
	return b
}

func testInput(seed int) []float32 {
	in := make([]float32, testN)
	for i := range in {
		in[i] = float32((i*7+seed*13)%101) - 50
	}
	return in
}

// checkOutput verifies out against the reference computation.
func checkOutput(t testing.TB, in, out []float32, isa string) {
	t.Helper()
	for i := range testN {
		if want := 2*in[testN-1-i] + 0.5*float32(i); out[i] != want {
			t.Fatalf("out[%d] = %v, want %v", i, out[i], want)
		}
	}
	if out[testN] != isaID[isa] {
		t.Fatalf("out[N] = %v, want %v (isa %s; -1 means a misaligned pointer)", out[testN], isaID[isa], isa)
	}
}

func expectedISA(t testing.TB) string {
	t.Helper()
	m := testManifest()
	isa, err := selectISA(&m, "auto", hostCPU())
	if err != nil {
		t.Fatal(err)
	}
	return isa
}

func mustOpen(t testing.TB, a Artifact, o Options) *Model {
	t.Helper()
	m, err := Open(a, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m
}

func runOnce(t testing.TB, m *Model, seed int) {
	t.Helper()
	in, out := testInput(seed), make([]float32, testN+1)
	if err := m.Run(in, out); err != nil {
		t.Fatal(err)
	}
	checkOutput(t, in, out, m.ISA())
}

func TestOpenRunFromPath(t *testing.T) {
	so := buildLib(t)
	m := mustOpen(t, Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: testWeights()}, Options{})
	if m.ISA() != expectedISA(t) {
		t.Errorf("ISA = %s, want %s", m.ISA(), expectedISA(t))
	}
	if m.Threads() != goruntime.GOMAXPROCS(0) {
		t.Errorf("Threads = %d, want GOMAXPROCS = %d", m.Threads(), goruntime.GOMAXPROCS(0))
	}
	for seed := range 5 {
		runOnce(t, m, seed)
	}
}

func TestOpenRunFromBytes(t *testing.T) {
	so, err := os.ReadFile(buildLib(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, memfd := range []bool{true, false} {
		t.Run(fmt.Sprintf("memfd=%v", memfd), func(t *testing.T) {
			noMemfd = !memfd
			defer func() { noMemfd = false }()
			m := mustOpen(t, Artifact{Manifest: testManifest(), SharedObject: so, Weights: testWeights()}, Options{Threads: 2})
			runOnce(t, m, 1)
		})
	}
	// Two models from the same bytes are independent copies.
	a := Artifact{Manifest: testManifest(), SharedObject: so, Weights: testWeights()}
	m1, m2 := mustOpen(t, a, Options{}), mustOpen(t, a, Options{})
	runOnce(t, m1, 2)
	m1.Close()
	runOnce(t, m2, 3)
}

func TestThreadCounts(t *testing.T) {
	so := buildLib(t)
	for _, threads := range []int{1, 2, 3, 7, 16} {
		t.Run(fmt.Sprint(threads), func(t *testing.T) {
			m := mustOpen(t, Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: testWeights()}, Options{Threads: threads})
			if m.Threads() != threads {
				t.Fatalf("Threads = %d", m.Threads())
			}
			for seed := range 3 {
				runOnce(t, m, seed)
			}
		})
	}
}

func TestMisalignedWeightsAreCopied(t *testing.T) {
	so := buildLib(t)
	buf := make([]byte, 4*testN+64)
	off := 4
	if uintptr(unsafe.Pointer(&buf[off]))%64 == 0 {
		off = 8
	}
	w := buf[off : off+4*testN]
	copy(w, testWeights())
	m := mustOpen(t, Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: w}, Options{})
	if m.ownWeights == nil {
		t.Fatal("misaligned weights were not copied")
	}
	runOnce(t, m, 4) // the kernels report misaligned pointers as -1
}

// TestCopyWeights checks that CopyWeights makes the model independent of the
// caller's weights: they may be overwritten (released) right after Open.
func TestCopyWeights(t *testing.T) {
	so := buildLib(t)
	w := testWeights()
	m := mustOpen(t, Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: w}, Options{CopyWeights: true})
	if m.ownWeights == nil {
		t.Fatal("CopyWeights did not copy")
	}
	for i := range w {
		w[i] = 0xff
	}
	runOnce(t, m, 5)
}

func TestProfile(t *testing.T) {
	so := buildLib(t)
	m := mustOpen(t, Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: testWeights()}, Options{Threads: 2})
	in, out := testInput(5), make([]float32, testN+1)
	for range 3 { // timings restart from zero each call
		d, err := m.Profile(in, out)
		if err != nil {
			t.Fatal(err)
		}
		checkOutput(t, in, out, m.ISA())
		if len(d) != 2 {
			t.Fatalf("%d durations, want 2", len(d))
		}
		for i, x := range d {
			if x <= 0 || x > 1e9 {
				t.Errorf("kernel %d: duration %v", i, x)
			}
		}
	}
	// A plain Run afterwards passes NULL timings.
	runOnce(t, m, 6)
}

func TestISASelection(t *testing.T) {
	full := fakeCPU("amd64", tableFeatures(ISAAVX512)...)
	avx2 := fakeCPU("amd64", tableFeatures(ISAAVX2)...)
	noVL := fakeCPU("amd64", without(tableFeatures(ISAAVX512), "avx512vl")...)
	none := fakeCPU("amd64")
	arm := fakeCPU("arm64", "neon", "fp-armv8")
	both := []string{ISAAVX512, ISAAVX2}
	cases := []struct {
		name string
		cpu  cpuFeatures
		isas []string
		arch string // manifest arch; default amd64
		want string
		env  string
		isa  string // want, or (after "!") a substring of the error
	}{
		{"auto full", full, both, "", "", "", "avx512"},
		{"auto avx2 cpu", avx2, both, "", "", "", "avx2"},
		{"auto no VL", noVL, both, "", "", "", "avx2"},
		{"auto artifact avx2 only", full, []string{ISAAVX2}, "", "", "", "avx2"},
		{"auto artifact avx512 only", avx2, []string{ISAAVX512}, "", "", "",
			`!no ISA of artifact "tiny" runs on this CPU (avx512: this CPU lacks avx512f (AVX-512F), avx512vl (AVX-512VL), avx512bw (AVX-512BW), avx512dq (AVX-512DQ), avx512cd (AVX-512CD), evex512 (512-bit AVX-512 vectors))`},
		{"auto nothing", none, both, "", "", "", "!avx2: this CPU lacks avx2, avx, fma, f16c"},
		{"explicit auto", avx2, both, "", "auto", "", "avx2"},
		{"forced avx2", full, both, "", "avx2", "", "avx2"},
		{"forced avx512 refused", avx2, both, "", "avx512", "", "!--isa avx512: this CPU lacks avx512f (AVX-512F), avx512vl"},
		{"forced avx512 no VL", noVL, both, "", "avx512", "", "!--isa avx512: this CPU lacks avx512vl (AVX-512VL)"},
		{"forced, artifact lacks", full, []string{ISAAVX2}, "", "avx512", "",
			`!--isa avx512: artifact "tiny" was not compiled for avx512 (it has: avx2)`},
		{"forced unknown", full, both, "", "sse4", "", "!--isa sse4: unknown ISA (known: avx512, avx2, neon)"},
		{"forced other arch", full, both, "", "neon", "", "!--isa neon: neon is an arm64 ISA, this machine is amd64"},
		{"env", full, both, "", "", "avx2", "avx2"},
		{"env refused", avx2, both, "", "", "avx512", "!KILN_ISA=avx512: this CPU lacks avx512f (AVX-512F)"},
		{"option beats env", full, both, "", "avx512", "avx2", "avx512"},
		{"env auto", avx2, both, "", "", "auto", "avx2"},
		{"arch mismatch", full, []string{ISANEON}, "arm64", "", "", `!artifact "tiny" was compiled for arm64; this machine is amd64`},
		{"arm64", arm, []string{ISANEON}, "arm64", "", "", "neon"},
		{"arm64 forced avx2", arm, []string{ISANEON}, "arm64", "avx2", "", "!--isa avx2: avx2 is an amd64 ISA, this machine is arm64"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("KILN_ISA", c.env)
			m := testManifest(c.isas...)
			m.Arch = "amd64"
			if c.arch != "" {
				m.Arch = c.arch
			}
			got, err := selectISA(&m, c.want, c.cpu)
			if strings.HasPrefix(c.isa, "!") {
				if err == nil || !strings.Contains(err.Error(), c.isa[1:]) {
					t.Fatalf("got %q, %v; want error %q", got, err, c.isa[1:])
				}
				return
			}
			if err != nil || got != c.isa {
				t.Fatalf("got %q, %v; want %q", got, err, c.isa)
			}
		})
	}
}

func TestOpenISA(t *testing.T) {
	so := buildLib(t)
	t.Setenv("KILN_ISA", "")
	if goruntime.GOARCH == "arm64" {
		art := Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: testWeights()}
		runOnce(t, mustOpen(t, art, Options{ISA: "neon"}), 7)
		_, err := Open(art, Options{ISA: "avx2"})
		wantErr(t, err, "--isa avx2: avx2 is an amd64 ISA, this machine is arm64")
		return
	}
	fullCPU, avx2CPU := fakeCPU("amd64", tableFeatures(ISAAVX512)...), fakeCPU("amd64", tableFeatures(ISAAVX2)...)
	full, avx2 := &fullCPU, &avx2CPU
	art := Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: testWeights()}

	// Each ISA runs its own entry point (the kernels write their ISA id).
	for _, isa := range []string{ISAAVX512, ISAAVX2} {
		m := mustOpen(t, art, Options{ISA: isa, cpu: full})
		runOnce(t, m, 7)
	}
	m := mustOpen(t, art, Options{cpu: avx2})
	if m.ISA() != ISAAVX2 {
		t.Fatalf("ISA = %s on an AVX2-only CPU", m.ISA())
	}
	runOnce(t, m, 8)

	t.Setenv("KILN_ISA", "avx2")
	m = mustOpen(t, art, Options{cpu: full})
	if m.ISA() != ISAAVX2 {
		t.Fatalf("KILN_ISA=avx2 gave %s", m.ISA())
	}
	t.Setenv("KILN_ISA", "")

	// Refusals.
	_, err := Open(art, Options{ISA: "avx512", cpu: avx2})
	wantErr(t, err, "--isa avx512: this CPU lacks avx512f (AVX-512F)")
	only2 := art
	only2.Manifest = testManifest(ISAAVX2)
	_, err = Open(only2, Options{ISA: "avx512", cpu: full})
	wantErr(t, err, `--isa avx512: artifact "tiny" was not compiled for avx512 (it has: avx2)`)
	// On the real CPU, the auto choice runs.
	m = mustOpen(t, only2, Options{})
	runOnce(t, m, 9)
}

func wantErr(t testing.TB, err error, substr string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), substr) {
		t.Fatalf("error = %v, want one containing %q", err, substr)
	}
}

func TestOpenErrors(t *testing.T) {
	so := buildLib(t)
	t.Setenv("KILN_ISA", "")
	good := func() Artifact {
		return Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: testWeights()}
	}
	allCPU := fakeCPU(goruntime.GOARCH, allFeatures()...)
	full := &allCPU
	cases := []struct {
		name string
		edit func(a *Artifact)
		want string
	}{
		{"missing avx512 symbol", func(a *Artifact) { a.SharedObjectPath = buildLib(t, "-DNO_AVX512") },
			"lacks symbol kiln_run_avx512 (the manifest lists ISA avx512)"},
		{"abi version", func(a *Artifact) { a.SharedObjectPath = buildLib(t, fmt.Sprintf("-DABI=%d", ABIVersion+1)) },
			fmt.Sprintf("has kernel ABI version %d (kiln_abi_version); this runtime implements kernel ABI version %d", ABIVersion+1, ABIVersion)},
		{"abi version is not the manifest version", func(a *Artifact) {
			// Version 1 artifacts returned the manifest version, which
			// this runtime still reads; their ABI is refused all the same.
			a.SharedObjectPath = buildLib(t, "-DABI=1", "-DNO_SIZES")
		}, fmt.Sprintf("has kernel ABI version 1 (kiln_abi_version); this runtime implements kernel ABI version %d", ABIVersion)},
		{"no abi symbol", func(a *Artifact) { a.SharedObjectPath = buildLib(t, "-DNO_ABI") },
			"does not export kiln_abi_version: not a kiln artifact"},
		{"no size symbols", func(a *Artifact) { a.SharedObjectPath = buildLib(t, "-DNO_SIZES") },
			fmt.Sprintf("does not export kiln_arena_bytes (required by kernel ABI version %d)", ABIVersion)},
		// A manifest whose arena is smaller than the kernels were compiled
		// for (they would write past its end) yet still holds the input
		// and output, so that Validate passes: here the kernels were
		// compiled for a larger arena than testManifest's.
		{"arena_bytes lowered", func(a *Artifact) { a.SharedObjectPath = buildLib(t, "-DARENA_BYTES=16384") },
			"manifest arena_bytes is 12004 but shared object "},
		{"arena_bytes raised", func(a *Artifact) { a.Manifest.ArenaBytes += 4096 },
			"was compiled for 12004 (kiln_arena_bytes)"},
		{"weights_bytes and weights changed together", func(a *Artifact) {
			a.Manifest.WeightsBytes -= 400
			a.Weights = a.Weights[:len(a.Weights)-400]
		}, "manifest weights_bytes is 3600 but shared object "},
		{"compiled for other weights", func(a *Artifact) { a.SharedObjectPath = buildLib(t, "-DWEIGHTS_BYTES=8000") },
			"manifest weights_bytes is 4000 but shared object"},
		{"weights short", func(a *Artifact) { a.Weights = a.Weights[:100] },
			`open artifact "tiny": weights are 100 bytes, the manifest says 4000`},
		{"manifest version", func(a *Artifact) { a.Manifest.Version = ManifestVersion + 1 },
			fmt.Sprintf("manifest: version %d unsupported (this runtime reads version %d)", ManifestVersion+1, ManifestVersion)},
		{"output outside arena", func(a *Artifact) { a.Manifest.ArenaBytes = 4 * 3 * testN },
			`manifest: output "y" (1x1001 at float offset 2000) does not fit in the 12000-byte arena`},
		{"no shared object", func(a *Artifact) { a.SharedObjectPath = "" },
			"set exactly one of SharedObject and SharedObjectPath"},
		{"both shared objects", func(a *Artifact) { a.SharedObject = []byte("x") },
			"set exactly one of SharedObject and SharedObjectPath"},
		{"missing file", func(a *Artifact) { a.SharedObjectPath = filepath.Join(t.TempDir(), "nope.so") },
			"nope.so: cannot open shared object file"},
		{"bytes not ELF", func(a *Artifact) { a.SharedObjectPath, a.SharedObject = "", []byte("not a library") },
			"load in-memory shared object"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := good()
			c.edit(&a)
			m, err := Open(a, Options{cpu: full})
			if err == nil {
				m.Close()
			}
			wantErr(t, err, c.want)
		})
	}
	_, err := Open(good(), Options{}, Options{})
	wantErr(t, err, "at most one Options")
}

func TestRunErrorsAndClose(t *testing.T) {
	so := buildLib(t)
	m, err := Open(Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: testWeights()})
	if err != nil {
		t.Fatal(err)
	}
	in, out := testInput(0), make([]float32, testN+1)
	wantErr(t, m.Run(in[:10], out), `Run "tiny": input has 10 values, the model expects 1x1000 = 1000`)
	wantErr(t, m.Run(in, out[:testN]), `Run "tiny": output has room for 1000 values, the model produces 1x1001 = 1001`)
	_, err = m.Profile(nil, out)
	wantErr(t, err, `Profile "tiny": input has 0 values`)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := m.Run(in, out); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: %v", err)
	}
	if _, err := m.Profile(in, out); !errors.Is(err, ErrClosed) {
		t.Fatalf("Profile after Close: %v", err)
	}
}

func TestConcurrentRun(t *testing.T) {
	// Spinning only, parking only, and a spin short enough to exercise both.
	for _, spin := range []time.Duration{0, -1, time.Microsecond} {
		t.Run(fmt.Sprintf("spin=%v", spin), func(t *testing.T) { testConcurrentRun(t, spin) })
	}
}

func testConcurrentRun(t *testing.T, spin time.Duration) {
	so := buildLib(t)
	const maxSessions = 4
	m := mustOpen(t, Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: testWeights()},
		Options{Threads: 3, MaxSessions: maxSessions, SpinWait: spin})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Go(func() {
			in, out := testInput(g), make([]float32, testN+1)
			for i := range 40 {
				var err error
				if i%10 == 0 {
					_, err = m.Profile(in, out)
				} else {
					err = m.Run(in, out)
				}
				if err != nil {
					errs <- err
					return
				}
				for j := range testN {
					if want := 2*in[testN-1-j] + 0.5*float32(j); out[j] != want {
						errs <- fmt.Errorf("goroutine %d run %d: out[%d] = %v, want %v", g, i, j, out[j], want)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	m.mu.Lock()
	n := m.nSessions
	m.mu.Unlock()
	if n < 1 || n > maxSessions {
		t.Errorf("%d sessions, want 1..%d", n, maxSessions)
	}
	t.Logf("%d sessions served 16 goroutines", n)
}

func TestCloseWhileRunning(t *testing.T) {
	so := buildLib(t)
	m, err := Open(Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: testWeights()},
		Options{Threads: 2, MaxSessions: 2})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := range 8 {
		wg.Go(func() {
			in, out := testInput(g), make([]float32, testN+1)
			<-start
			for {
				err := m.Run(in, out)
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				checkOutput(t, in, out, m.ISA())
			}
		})
	}
	close(start)
	runOnce(t, m, 1)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

func TestRunAllocs(t *testing.T) {
	so := buildLib(t)
	for _, c := range []struct {
		threads int
		spin    time.Duration
	}{{1, 0}, {2, 0}, {4, 0}, {2, -1}, {4, -1}} {
		threads := c.threads
		m := mustOpen(t, Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: testWeights()}, Options{Threads: threads, SpinWait: c.spin})
		in, out := testInput(1), make([]float32, testN+1)
		allocs := testing.AllocsPerRun(200, func() {
			if err := m.Run(in, out); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("threads=%d spin=%v: %v allocations per Run, want 0", threads, c.spin, allocs)
		}
		checkOutput(t, in, out, m.ISA())
	}
}

func TestMaxSessionsDefault(t *testing.T) {
	so := buildLib(t)
	a := Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: testWeights()}
	procs := goruntime.GOMAXPROCS(0)
	for _, threads := range []int{1, procs, procs + 1} {
		m := mustOpen(t, a, Options{Threads: threads})
		if want := max(1, procs/threads); m.MaxSessions() != want {
			t.Errorf("threads=%d: MaxSessions = %d, want %d", threads, m.MaxSessions(), want)
		}
	}
}

func TestManifestValidate(t *testing.T) {
	cases := []struct {
		edit func(m *Manifest)
		want string
	}{
		{func(m *Manifest) { m.Batch = 0 }, "batch 0: want at least 1"},
		{func(m *Manifest) { m.Arch = "riscv64" }, `arch "riscv64": want amd64 or arm64`},
		{func(m *Manifest) { m.ISAs = nil }, "no ISAs listed"},
		{func(m *Manifest) { m.ISAs = []string{"sse2"} }, `unknown ISA "sse2"`},
		{func(m *Manifest) { m.Arch, m.ISAs = "amd64", []string{"neon"} }, "ISA neon is for arm64, but arch is amd64"},
		{func(m *Manifest) { m.ISAs = append(m.ISAs, m.ISAs[0]) }, "listed twice"},
		{func(m *Manifest) { m.ArenaBytes = 0 }, "arena_bytes 0"},
		{func(m *Manifest) { m.Input.Shape = []int{2, testN} }, `input "x" shape 2x1000 does not start with batch 1`},
		{func(m *Manifest) { m.Input.Shape = nil }, `input "x" has no shape`},
		{func(m *Manifest) { m.Input.Offset = -1 }, `input "x" (1x1000 at float offset -1) does not fit`},
		{func(m *Manifest) { m.Kernels[1].Name = "" }, "kernel 1 has no name"},
		{func(m *Manifest) { m.Preprocess = &Preprocess{Size: 299, CropPct: 0.875, Std: [3]float64{0.5, 0, 0.5}} }, "preprocess std[1] = 0"},
		{func(m *Manifest) { m.Labels = []string{"a"} }, "1 labels, but the output 1x1001 has 1001 values per batch item"},
	}
	for _, c := range cases {
		m := testManifest()
		c.edit(&m)
		wantErr(t, m.Validate(), c.want)
	}
	m := testManifest()
	m.Preprocess = &Preprocess{Size: 299, CropPct: 0.875, Mean: [3]float64{0.5, 0.5, 0.5}, Std: [3]float64{0.5, 0.5, 0.5}, Interpolation: "bicubic"}
	m.Labels = make([]string, testN+1)
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	_, err := ParseManifest([]byte(`{"version":1,"arena":5}`))
	wantErr(t, err, `unknown field "arena"`)
	_, err = ParseManifest([]byte(`{"version":1} {}`))
	wantErr(t, err, "trailing data")
}

// BenchmarkRun measures the per-inference overhead of the runtime: the test
// kernels do about a microsecond of work.
func BenchmarkRun(b *testing.B) {
	so := buildLib(b)
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			m := mustOpen(b, Artifact{Manifest: testManifest(), SharedObjectPath: so, Weights: testWeights()}, Options{Threads: threads})
			in, out := testInput(1), make([]float32, testN+1)
			b.ReportAllocs()
			for b.Loop() {
				if err := m.Run(in, out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
