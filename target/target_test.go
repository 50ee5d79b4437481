package target

import (
	"strings"
	"testing"
)

// TestTableConsistent runs Validate: unique names, block a multiple of the
// lanes, every feature known with a runtime predicate on CPU targets, lists
// closed under LLVM's implications, builds consistent.
func TestTableConsistent(t *testing.T) {
	if err := Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestValidateRejects mutates one entry at a time and checks that Validate
// (Target.validate) names the problem.
func TestValidateRejects(t *testing.T) {
	cases := []struct {
		name string
		edit func(t *Target)
		want string
	}{
		{"block not a multiple of lanes", func(t *Target) { t.Block = 12 }, "block 12 must be a positive multiple of the vector lanes 8"},
		{"unknown feature", func(t *Target) { t.Features = append(t.Features, "avx10.1") }, `unknown feature "avx10.1"`},
		{"feature of another arch", func(t *Target) { t.Features = append(t.Features, "neon") }, "feature neon is for arm64"},
		{"implied feature missing", func(t *Target) {
			t.Features = []string{"avx2", "fma", "f16c", "sse4.2", "sse4.1", "ssse3", "sse3"}
		}, "feature avx2 implies avx in LLVM, which is not listed"},
		{"duplicate feature", func(t *Target) { t.Features = append(t.Features, "avx2") }, "feature avx2 listed twice"},
		{"GPU feature without predicate on a CPU", func(t *Target) { t.Arch = "nvptx64"; t.Features = []string{"ptx78"} }, "feature ptx78 has no runtime predicate"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tg := AVX2
			tg.Features = append([]string(nil), AVX2.Features...)
			c.edit(&tg)
			err := tg.validate()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("validate() = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// TestFeaturePredicates checks that every CPU feature has a predicate and
// that every feature a CPU target lists is of the target's architecture.
func TestFeaturePredicates(t *testing.T) {
	for _, f := range Features() {
		if f.Arch != "nvptx64" && f.has == nil {
			t.Errorf("CPU feature %s has no runtime predicate", f.Name)
		}
		for _, imp := range f.Implies {
			if g, ok := features[imp]; !ok || g.Arch != f.Arch {
				t.Errorf("feature %s implies %s, unknown or of another architecture", f.Name, imp)
			}
		}
	}
}

// TestBuilds checks the build targets the CLI names: the ones Kiln has
// always accepted, the x86-64 artifact carrying both x86 ISAs on one block,
// and GPU entries listed but not buildable.
func TestBuilds(t *testing.T) {
	cases := []struct {
		name   string
		isas   string
		block  int
		arch   string
		notImp bool
	}{
		{"x86-64", "avx512,avx2", 16, "amd64", false},
		{"avx512", "avx512", 16, "amd64", false},
		{"avx2", "avx2", 16, "amd64", false},
		{"arm64-neon", "neon", 4, "arm64", false},
		{"cuda-sm80", "cuda-sm80", 32, "nvptx64", true},
		{"cuda-sm90", "cuda-sm90", 32, "nvptx64", true},
	}
	for _, c := range cases {
		b, err := LookupBuild(c.name)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(b.ISAs, ","); got != c.isas || b.Block() != c.block || b.Arch() != c.arch {
			t.Errorf("%s: ISAs %s block %d arch %s, want %s %d %s", c.name, got, b.Block(), b.Arch(), c.isas, c.block, c.arch)
		}
		why := b.NotImplemented()
		if (why != "") != c.notImp {
			t.Errorf("%s: NotImplemented() = %q", c.name, why)
		}
		if c.notImp && !strings.Contains(why, "not implemented yet (issue 12)") {
			t.Errorf("%s: NotImplemented() = %q, want it to cite issue 12", c.name, why)
		}
	}
	if _, err := LookupBuild("riscv64"); err == nil || !strings.Contains(err.Error(), "known: x86-64, avx512") {
		t.Errorf("LookupBuild(riscv64) = %v", err)
	}
	if got := len(Builds()); got != len(cases) {
		t.Errorf("%d build targets, test covers %d", got, len(cases))
	}
}

// TestFeatureString checks the target-features attribute form.
func TestFeatureString(t *testing.T) {
	if got := NEON.FeatureString(); got != "+neon,+fp-armv8" {
		t.Errorf("NEON.FeatureString() = %q", got)
	}
	if !AVX512.HasFeature("avx512vl") || AVX2.HasFeature("avx512f") {
		t.Error("HasFeature wrong")
	}
}
