package codegen

import (
	"testing"

	"github.com/kiln-dev/kiln/target"
)

// TestCacheKeyCoversTarget checks that every target attribute that changes
// generated code changes the object cache key, for the same IR text.
func TestCacheKeyCoversTarget(t *testing.T) {
	tc := &Toolchain{Version: "clang version 19.1.0"}
	const ll = "define void @f() { ret void }"
	base := tc.CacheKey(ll, AVX2)
	edits := map[string]func(t *Target){
		"cpu":      func(t *Target) { t.CPU = "x86-64-v3" },
		"tune-cpu": func(t *Target) { t.TuneCPU = "skylake" },
		"features": func(t *Target) { t.Features = append(append([]string(nil), t.Features...), "avx512f") },
		"lanes":    func(t *Target) { t.VectorLanes = 4 },
		"block":    func(t *Target) { t.Block = 8 },
		"name":     func(t *Target) { t.Name = "avx2b" },
	}
	for name, edit := range edits {
		tg := AVX2
		tg.Features = append([]string(nil), AVX2.Features...)
		edit(&tg)
		if tc.CacheKey(ll, tg) == base {
			t.Errorf("changing %s leaves the cache key unchanged", name)
		}
	}
	if tc.CacheKey(ll, AVX2) != base {
		t.Error("cache key not deterministic")
	}
}

// TestTargetsFromTable checks that codegen's targets are the table's and
// that GPU entries are refused with the table's reason.
func TestTargetsFromTable(t *testing.T) {
	for _, tg := range Targets() {
		if err := tg.validate(); err != nil {
			t.Error(err)
		}
	}
	if _, err := TargetByName("cuda-sm90"); err == nil {
		t.Error("TargetByName(cuda-sm90) succeeded")
	}
	b, _ := target.LookupBuild("x86-64")
	ts, err := TargetsOf(b)
	if err != nil || len(ts) != 2 || ts[0].Name != "avx512" || ts[1].Name != "avx2" {
		t.Errorf("TargetsOf(x86-64) = %v, %v", ts, err)
	}
	if !AVX512.embeddedBroadcast() || AVX2.embeddedBroadcast() || NEON.embeddedBroadcast() {
		t.Error("embeddedBroadcast wrong")
	}
}
