package codegen

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/kiln-dev/kiln/codegen/internal/ktest"
	"github.com/kiln-dev/kiln/internal/testenv"
)

// Test infrastructure: build kernels into modules, compile them with
// clang-19 (objects cached by content hash), link one shared library, dlopen
// it, and run kernels on Go-allocated arenas.

var (
	tcOnce sync.Once
	tc     *Toolchain
	tcErr  error
)

// toolchain returns the LLVM toolchain, or stops the test through
// testenv.Check (a skip, a failure under KILN_REQUIRE_TOOLS=1).
func toolchain(t testing.TB) *Toolchain {
	t.Helper()
	tcOnce.Do(func() { tc, tcErr = FindLLVM() })
	testenv.Check(t, tcErr)
	return tc
}

// needAVX2 stops the test through testenv.Missing when the CPU cannot run
// AVX2 code (or this test binary was built without cgo, which ktest needs to
// ask the CPU). A CPU feature cannot be installed, but CI's machine has
// AVX-512, so under KILN_REQUIRE_TOOLS=1 this is a failure like a missing
// tool.
func needAVX2(t testing.TB) {
	t.Helper()
	if !ktest.HasAVX2() {
		testenv.Missing(t, "CPU lacks AVX2, or the tests were built without cgo (CI's machine has AVX-512 and cgo)")
	}
}

// x86Targets returns the x86 targets this CPU can execute.
func x86Targets(t testing.TB) []Target {
	var ts []Target
	if ktest.HasAVX512() {
		ts = append(ts, AVX512)
	}
	if ktest.HasAVX2() {
		ts = append(ts, AVX2)
	}
	if len(ts) == 0 {
		testenv.Missing(t, "CPU has neither AVX-512 nor AVX2, or the tests were built without cgo (CI's machine has AVX-512 and cgo)")
	}
	return ts
}

// x86Block4 is a test target running the Block 4, 4-lane code paths that
// NEON uses (its planning parameters: 32 registers, no embedded broadcast)
// on x86, so that they are executed and checked here; NEON itself is
// compile-only until tests run under qemu.
var x86Block4 = func() Target {
	t := AVX2
	t.Name, t.VectorLanes, t.Registers, t.Block = "x86b4", 4, 32, 4
	return t
}()

// trainTargets returns the x86 targets the CPU runs (x86Targets) and, with
// AVX2, x86Block4 (NEON's 4-lane vectors): the targets of the training
// kernel tests.
func trainTargets(t testing.TB) []Target {
	ts := x86Targets(t)
	if ktest.HasAVX2() {
		ts = append(ts, x86Block4)
	}
	return ts
}

// targetSet is a group of targets sharing a block size, compiled into one
// module; run lists those this CPU executes.
type targetSet struct {
	b       int
	targets []Target
	run     []Target
}

// targetSets returns the x86 Block 16 set (AVX512, AVX2) and the Block 4
// set, or skips the test when the CPU has no AVX2.
func targetSets(t testing.TB) []targetSet {
	run := x86Targets(t)
	needAVX2(t)
	return []targetSet{
		{b: 16, targets: []Target{AVX512, AVX2}, run: run},
		{b: 4, targets: []Target{x86Block4}, run: []Target{x86Block4}},
	}
}

// buildLib builds one module per gen for AVX512 and AVX2, compiles them in
// parallel and links them into one shared library.
func buildLib(t testing.TB, gens ...func(m *Module) error) *ktest.Lib {
	return buildLibFor(t, []Target{AVX512, AVX2}, gens...)
}

// buildLibFor is buildLib for the given targets.
func buildLibFor(t testing.TB, targets []Target, gens ...func(m *Module) error) *ktest.Lib {
	t.Helper()
	tc := toolchain(t)
	needAVX2(t)
	var jobs []CompileJob
	for i, gen := range gens {
		m := NewModule(targets...)
		if err := gen(m); err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, CompileJob{Name: fmt.Sprintf("%s#%d", t.Name(), i), IR: m.String(), Target: targets[0]})
	}
	objs, err := tc.CompileAll(context.Background(), jobs, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "kiln-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	so := filepath.Join(dir, "kernels.so")
	if err := tc.SharedLibrary(objs, targets[0], so); err != nil {
		t.Fatal(err)
	}
	lib, err := ktest.Open(so)
	if err != nil {
		t.Fatal(err)
	}
	return lib
}

func kernel(t testing.TB, lib *ktest.Lib, name string, tgt Target) ktest.Kernel {
	t.Helper()
	k, err := lib.Kernel(tgt.Symbol(name))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// runChecked runs k over all tiles on a copy of arena, then again split in
// two ranges on another copy, checks that both agree bit for bit, and
// returns the result.
func runChecked(t *testing.T, k ktest.Kernel, arena, weights []float32, tiles int) []float32 {
	t.Helper()
	a := ktest.Aligned(len(arena))
	copy(a, arena)
	k.Run(a, weights, 0, tiles)
	b := ktest.Aligned(len(arena))
	copy(b, arena)
	mid := tiles / 2
	k.Run(b, weights, mid, tiles)
	k.Run(b, weights, 0, mid)
	k.Run(b, weights, tiles, tiles+5) // out of range: clamped, no work
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			t.Fatalf("%s: tiles [0,%d) and [0,%d)+[%d,%d) differ at arena[%d]: %v vs %v", k.Name, tiles, mid, mid, tiles, i, a[i], b[i])
		}
	}
	return a
}

// withSpecials returns a copy of x with about one value in 16 replaced by
// NaN, +Inf or -Inf (in turn), for the NaN-propagation tests.
func withSpecials(r *rand.Rand, x []float32) []float32 {
	y := append([]float32(nil), x...)
	specials := []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))}
	k := 0
	for i := range y {
		if r.Intn(16) == 0 {
			y[i] = specials[k%len(specials)]
			k++
		}
	}
	return y
}

// sentinel marks arena elements no kernel may write.
const sentinel = float32(-12345.5)

func randn(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}

func fill(s []float32, v float32) {
	for i := range s {
		s[i] = v
	}
}

// compare checks got against ref with tolerance 1e-5 relative to the
// largest finite |ref|. Non-finite references must be matched exactly: NaN
// by any NaN, ±Inf by the same infinity; a non-finite value where ref is
// finite is an error.
func compare(t *testing.T, what string, got []float32, ref []float64) {
	t.Helper()
	m := 0.0
	for _, v := range ref {
		if !math.IsInf(v, 0) && !math.IsNaN(v) {
			m = max(m, math.Abs(v))
		}
	}
	tol := 1e-5 * max(m, 1e-30)
	bad := 0
	for i := range ref {
		g := float64(got[i])
		ok := false
		switch {
		case math.IsNaN(ref[i]):
			ok = math.IsNaN(g)
		case math.IsInf(ref[i], 0):
			ok = g == ref[i]
		default:
			ok = math.Abs(g-ref[i]) <= tol
		}
		if !ok {
			if bad < 5 {
				t.Errorf("%s: element %d: got %v, want %v (tolerance %.3g)", what, i, got[i], ref[i], tol)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Fatalf("%s: %d of %d elements differ", what, bad, len(ref))
	}
}

// checkUnchanged checks that arena equals orig outside the [lo, hi) ranges
// of written.
func checkUnchanged(t *testing.T, what string, got, orig []float32, written func(i int) bool) {
	t.Helper()
	for i := range got {
		if !written(i) && math.Float32bits(got[i]) != math.Float32bits(orig[i]) {
			t.Fatalf("%s: arena[%d] changed from %v to %v outside the output", what, i, orig[i], got[i])
		}
	}
}
