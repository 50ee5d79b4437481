package lower

import (
	"fmt"
	"math"
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

// driverHarness is a C program that runs the generated driver with fake
// kernels on nthreads pthreads for many inferences, with random delays per
// tile and per thread start (so that threads steal from each other and from
// threads that have not reached a kernel yet). Every kernel call checks its
// tile range, that no tile runs twice, and that the previous kernel has
// finished (completion counting); after every inference every tile must have
// run exactly once. The inference number written before each inference, as
// the runtime does, starts at argv[3], so that a start just below 2^40/18
// makes the 40-bit kernel epochs wrap around during the run.
const driverHarness = `
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define MAXT 5000
static int done_[KILN_NKERNELS][MAXT], started_[KILN_NKERNELS][MAXT];
static int run_, errors_;
static __thread unsigned seed_;

static void fail(const char* what, int k, int64_t a, int64_t b) {
	if (__atomic_fetch_add(&errors_, 1, __ATOMIC_RELAXED) < 10)
		fprintf(stderr, "run %d kernel %d: %s (%lld, %lld)\n", run_, k, what, (long long)a, (long long)b);
}

static void tile_run(int k, int64_t lo, int64_t hi) {
	if (lo < 0 || hi > kiln_tiles[k] || lo >= hi) fail("bad range", k, lo, hi);
	if (k > 0)
		for (int64_t t = 0; t < kiln_tiles[k - 1]; t++)
			if (__atomic_load_n(&done_[k - 1][t], __ATOMIC_ACQUIRE) != run_ + 1) fail("previous kernel not finished", k, t, 0);
	for (int64_t t = lo; t < hi && t < MAXT; t++) {
		if (__atomic_fetch_add(&started_[k][t], 1, __ATOMIC_RELAXED) != run_) fail("tile run twice", k, t, 0);
		for (volatile int i = rand_r(&seed_) % 300; i > 0; i--) {
		}
		__atomic_fetch_add(&done_[k][t], 1, __ATOMIC_RELEASE);
	}
}

static void* barrier_;
static int nthreads_;

static void* thread_main(void* arg) {
	int tid = (int)(intptr_t)arg;
	seed_ = tid * 7919 + run_;
	if (rand_r(&seed_) % 4 == 0) usleep(rand_r(&seed_) % 300);
	// A thread that comes very late (descheduled) must pass through kernels
	// the others finished without it.
	if (tid != 0 && rand_r(&seed_) % 16 == 0) usleep(2000);
	kiln_run_avx512(0, 0, tid, nthreads_, barrier_, 0);
	return 0;
}

int main(int argc, char** argv) {
	nthreads_ = atoi(argv[1]);
	int runs = atoi(argv[2]);
	if (posix_memalign(&barrier_, 64, KILN_BARRIER_BYTES)) return 2;
	for (int i = 0; i < KILN_BARRIER_BYTES; i++) ((char*)barrier_)[i] = 0;
	unsigned long long r0 = strtoull(argv[3], 0, 0);
	// A block in use since inference 1 ends each inference at the next
	// one's first epoch, and shares tagged with recent epochs; start there
	// (a fresh block starts at inference 1 with zeros).
	if (r0 > 1) {
		uint64_t ep = (uint64_t)(r0 * KILN_NKERNELS) & KILN_EP_MASK;
		*(uint64_t*)((char*)barrier_ + KILN_DONE_OFF) = ep << KILN_CNT_BITS;
		for (int t = 0; t < KILN_MAX_STEAL; t++) *kiln_share(barrier_, t) = kiln_word((ep - 1 - t) & 0xffffff, 0, 0);
	}
	pthread_t th[64];
	for (run_ = 0; run_ < runs && !errors_; run_++) {
		__atomic_store_n((uint64_t*)((char*)barrier_ + KILN_RUN_OFF), (uint64_t)(r0 + run_), __ATOMIC_RELEASE);
		for (int t = 1; t < nthreads_; t++) pthread_create(&th[t], 0, thread_main, (void*)(intptr_t)t);
		thread_main(0);
		for (int t = 1; t < nthreads_; t++) pthread_join(th[t], 0);
		for (int k = 0; k < KILN_NKERNELS; k++)
			for (int64_t t = 0; t < kiln_tiles[k] && t < MAXT; t++)
				if (done_[k][t] != run_ + 1) fail("tile not run once", k, t, done_[k][t]);
	}
	return errors_ != 0;
}
`

// TestDriverSchedule runs the generated driver (static shares, work
// stealing, completion counting) with fake kernels and checks that every
// tile of every kernel runs exactly once per inference, after the previous
// kernel, also with threads that arrive after the others finished and when
// the kernel epochs wrap around 2^40 during the run.
func TestDriverSchedule(t *testing.T) {
	tc, err := codegen.FindLLVM()
	testenv.Check(t, err)
	tiles := []int64{1, 2, 3, 7, 16, 17, 24, 36, 100, 147, 1, 1088, 2500, 5, 64, 2, 1, 300}
	var kernels []rt.KernelInfo
	var defs strings.Builder
	for i, n := range tiles {
		name := fmt.Sprintf("k%d", i)
		kernels = append(kernels, rt.KernelInfo{Name: name, Tiles: n})
		fmt.Fprintf(&defs, "void %s(float* a, const float* w, int64_t lo, int64_t hi) { tile_run(%d, lo, hi); }\n", codegen.AVX512.Symbol(name), i)
	}
	src := driverSource([]codegen.Target{codegen.AVX512}, kernels, 4096, 0)
	// The harness goes after the driver (it uses kiln_tiles); the fake
	// kernels are declared extern by the driver and defined at the end.
	src = strings.Replace(src, "#include <stdint.h>", "#include <stdint.h>\nstatic void tile_run(int k, int64_t lo, int64_t hi);", 1)
	src += driverHarness + defs.String()
	dir := t.TempDir()
	c := filepath.Join(dir, "drv.c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "drv")
	if out, err := exec.Command(tc.Clang, "-O2", "-pthread", "-o", exe, c).CombinedOutput(); err != nil {
		t.Fatalf("clang: %v\n%s", err, out)
	}
	runs := 100
	if testing.Short() {
		runs = 20
	}
	for _, n := range []int{1, 2, 3, 5, 16, 17} {
		// 18 kernels: epochs r*18+k wrap at 2^40 after inference
		// 61083979320 (2^40/18 = 61083979320.9), 10 inferences in.
		for _, c := range []struct{ runs, gen string }{{fmt.Sprint(runs), "1"}, {"20", "61083979310"}} {
			out, err := exec.Command(exe, fmt.Sprint(n), c.runs, c.gen).CombinedOutput()
			if err != nil {
				t.Errorf("%d threads, inference numbers from %s: %v\n%s", n, c.gen, err, out)
			}
		}
	}
}

// TestDriverExports compiles tiny, then checks what the shared object says
// about itself through the runtime: a manifest whose arena_bytes or
// weights_bytes differ from the sizes the kernels were compiled for is
// refused, naming the field, while the manifest Lower wrote is accepted.
func TestDriverExports(t *testing.T) {
	isas := rt.HostISAs()
	if len(isas) == 0 || (isas[0] != "avx512" && isas[0] != "avx2") {
		testenv.Missing(t, "this CPU runs neither AVX-512 nor AVX2 (CI's machine has AVX-512)")
	}
	good := artifacts[compileNet(t, "tiny", 1, nil, isas[0], false).m]
	if got, want := good.Manifest.WeightsBytes, int64(len(good.Weights)); got != want {
		t.Fatalf("manifest weights_bytes %d, weights blob %d bytes", got, want)
	}
	cases := []struct {
		name string
		edit func(a *rt.Artifact)
		want string
	}{
		{"arena_bytes lowered", func(a *rt.Artifact) { a.Manifest.ArenaBytes -= 64 },
			fmt.Sprintf("manifest arena_bytes is %d but ", good.Manifest.ArenaBytes-64)},
		{"arena_bytes raised", func(a *rt.Artifact) { a.Manifest.ArenaBytes += 64 },
			fmt.Sprintf("was compiled for %d (kiln_arena_bytes)", good.Manifest.ArenaBytes)},
		{"weights_bytes and weights shortened", func(a *rt.Artifact) {
			a.Manifest.WeightsBytes -= 64
			a.Weights = a.Weights[:len(a.Weights)-64]
		}, fmt.Sprintf("was compiled for %d (kiln_weights_bytes)", good.Manifest.WeightsBytes)},
		{"weights shortened", func(a *rt.Artifact) { a.Weights = a.Weights[:len(a.Weights)-64] },
			fmt.Sprintf("weights are %d bytes, the manifest says %d", good.Manifest.WeightsBytes-64, good.Manifest.WeightsBytes)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := good
			a.Manifest.Kernels = append([]rt.KernelInfo(nil), good.Manifest.Kernels...)
			c.edit(&a)
			m2, err := rt.Open(a, rt.Options{Threads: 1})
			if err == nil {
				m2.Close()
				t.Fatalf("opened; want an error containing %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v, want one containing %q", err, c.want)
			}
		})
	}
}

// TestLateWorkersSkipped runs tiny on two threads with workers that park at
// once between inferences (SpinWait < 0), so a worker usually wakes after
// the calling thread has finished the whole inference by work stealing:
// the runtime must then not wait for it (the worker skips that inference),
// and every output must equal the one-thread output bit for bit (each tile
// computes the same values whichever thread runs it).
func TestLateWorkersSkipped(t *testing.T) {
	isas := rt.HostISAs()
	if len(isas) == 0 || (isas[0] != "avx512" && isas[0] != "avx2") {
		testenv.Missing(t, "this CPU runs neither AVX-512 nor AVX2 (CI's machine has AVX-512)")
	}
	c := compileNet(t, "tiny", 2, nil, isas[0], false)
	a := artifacts[c.m]
	one, err := rt.Open(a, rt.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	two, err := rt.Open(a, rt.Options{Threads: 2, SpinWait: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer two.Close()
	man := one.Manifest()
	nin, err := tensor.NumelOf(man.Input.Shape)
	if err != nil {
		t.Fatal(err)
	}
	nout, err := tensor.NumelOf(man.Output.Shape)
	if err != nil {
		t.Fatal(err)
	}
	in := make([]float32, nin)
	want := make([]float32, nout)
	got := make([]float32, len(want))
	for i := 0; i < 300; i++ {
		for j := range in {
			in[j] = float32((i*31+j*7)%97) / 97
		}
		if err := one.Run(in, want); err != nil {
			t.Fatal(err)
		}
		if err := two.Run(in, got); err != nil {
			t.Fatal(err)
		}
		for j := range want {
			if math.Float32bits(got[j]) != math.Float32bits(want[j]) {
				t.Fatalf("inference %d: output %d is %v on two threads, %v on one", i, j, got[j], want[j])
			}
		}
	}
	// A parked worker takes tens of microseconds to wake; tiny runs in a
	// few: out of 300 inferences some must have finished without it.
	if two.SkippedWorkers() == 0 {
		t.Errorf("no inference finished without the parked worker: the caller waited for it every time")
	}
	t.Logf("%d of 300 inferences finished without the worker", two.SkippedWorkers())
}
