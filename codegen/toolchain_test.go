package codegen

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

func TestVersionLine(t *testing.T) {
	for _, c := range []struct {
		out  string
		ok   bool
		line string
	}{
		{"Debian clang version 19.1.7 (3+b1)\nTarget: x86_64-pc-linux-gnu\n", true, "Debian clang version 19.1.7 (3+b1)"},
		{"Debian LLVM version 19.1.7\n  Optimized build.\n", true, "Debian LLVM version 19.1.7"},
		{"Ubuntu clang version 18.1.3\n", false, ""},
		{"clang version 190.0.0\n", false, ""},
		{"no version here\n", false, ""},
	} {
		line, ok := versionLine(c.out)
		if ok != c.ok || line != c.line {
			t.Errorf("versionLine(%q) = %q, %v; want %q, %v", c.out, line, ok, c.line, c.ok)
		}
	}
}

func TestFindLLVMMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	saved := llvmBinDirs
	llvmBinDirs = nil
	defer func() { llvmBinDirs = saved }()
	_, err := FindLLVM()
	if err == nil || !strings.Contains(err.Error(), "clang-19 not found: install it with `apt-get install llvm-19 clang-19`") {
		t.Fatalf("error %v", err)
	}
}

func TestToolchainCache(t *testing.T) {
	toolchain(t) // skip without LLVM
	dir := t.TempDir()
	t.Setenv("KILN_CACHE_DIR", dir)
	tc, err := FindLLVM()
	if err != nil {
		t.Fatal(err)
	}
	if tc.CacheDir != dir || !strings.Contains(tc.Version, "19.") {
		t.Fatalf("toolchain %+v", tc)
	}
	var ms []string
	for _, n := range []int{100, 200, 300} {
		m := NewModule(AVX512, AVX2)
		if _, _, err := m.Copy("copy", CopySpec{Elems: n, OutOff: n}); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m.String())
	}
	o1, err := tc.CompileObject(ms[0], AVX512)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(o1, dir) {
		t.Fatalf("object %s outside the cache %s", o1, dir)
	}
	st1, _ := os.Stat(o1)
	o2, err := tc.CompileObject(ms[0], AVX512)
	if err != nil || o2 != o1 {
		t.Fatalf("second compile: %s, %v; want the cached %s", o2, err, o1)
	}
	if st2, _ := os.Stat(o2); !st2.ModTime().Equal(st1.ModTime()) {
		t.Fatalf("cached object was rewritten")
	}
	if tc.CacheKey(ms[0], AVX512) == tc.CacheKey(ms[0], AVX2) || tc.CacheKey(ms[0], AVX512) == tc.CacheKey(ms[1], AVX512) {
		t.Fatalf("cache keys collide")
	}
	// No temporary files are left behind.
	leftovers, _ := filepath.Glob(filepath.Join(dir, "*", "tmp-*"))
	if len(leftovers) > 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}
	// CompileAll: progress once per job, the first one cached.
	var jobs []CompileJob
	for i, m := range ms {
		jobs = append(jobs, CompileJob{Name: []string{"a", "b", "c"}[i], IR: m, Target: AVX512})
	}
	var calls, cached atomic.Int32
	objs, err := tc.CompileAll(context.Background(), jobs, func(done, total int, j CompileJob, c bool) {
		calls.Add(1)
		if c {
			cached.Add(1)
		}
		if total != 3 || done < 1 || done > 3 {
			t.Errorf("progress %d/%d", done, total)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 3 || cached.Load() != 1 || objs[0] != o1 || objs[1] == objs[2] {
		t.Fatalf("CompileAll: %d progress calls, %d cached, objects %v", calls.Load(), cached.Load(), objs)
	}
	so := filepath.Join(t.TempDir(), "k.so")
	if err := tc.SharedLibrary(objs[:1], AVX512, so); err != nil {
		t.Fatal(err)
	}
	// Errors name the job and carry clang's message.
	jobs = append(jobs, CompileJob{Name: "broken", IR: "define void @f( {", Target: AVX512})
	if _, err := tc.CompileAll(context.Background(), jobs, nil); err == nil || !strings.Contains(err.Error(), "compiling broken for avx512") || !strings.Contains(err.Error(), "error:") {
		t.Fatalf("broken IR: error %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := tc.CompileAll(ctx, jobs[:1], nil); err == nil {
		t.Fatalf("canceled context: no error")
	}
}

// TestModuleText checks that the IR text is deterministic (the cache key
// depends on it) and carries the ABI: attributes, noalias, loop metadata.
func TestModuleText(t *testing.T) {
	gen := func() string {
		m := NewModule(AVX512, AVX2)
		s := with(cv(1, 16, 9, 9, 32, 3, 3, 1, 1, 1, 1), allEpi)
		s.ResidualOff, s.OutOff = 10000, 20000
		if _, _, err := m.Conv("conv", s); err != nil {
			t.Fatal(err)
		}
		if _, _, err := m.Softmax("softmax", SoftmaxSpec{N: 1, K: 10, OutOff: 10}); err != nil {
			t.Fatal(err)
		}
		return m.String()
	}
	a := gen()
	if b := gen(); a != b {
		t.Fatal("module text differs between two identical builds")
	}
	err := Check(a, `
CHECK: target triple = "x86_64-unknown-linux-gnu"
CHECK-LABEL: define void @conv_avx512(float* noalias %arena, float* noalias readonly %weights, i64 %tile_begin, i64 %tile_end)
CHECK-SAME: "target-cpu"="x86-64" "target-features"="`+AVX512.FeatureString()+`"
CHECK-SAME: "tune-cpu"="x86-64-v4"
CHECK: call <16 x float> @llvm.fma.v16f32
CHECK: br i1 {{%[0-9]+}}, label {{%[0-9]+}}, label {{%[0-9]+}}, !llvm.loop !{{[0-9]+}}
CHECK-LABEL: define void @conv_avx2(
CHECK-SAME: "target-cpu"="x86-64" "target-features"="`+AVX2.FeatureString()+`"
CHECK-SAME: "tune-cpu"="x86-64-v3"
CHECK: call <8 x float> @llvm.fma.v8f32
CHECK-NOT: <16 x float>
CHECK-LABEL: define void @softmax_avx512(
CHECK-LABEL: define void @softmax_avx2(
CHECK: !{{[0-9]+}} = !{!"llvm.loop.unroll.disable"}
CHECK: !{{[0-9]+}} = distinct !{!{{[0-9]+}}, !{{[0-9]+}}}
`)
	if err != nil {
		t.Fatal(err)
	}
}
