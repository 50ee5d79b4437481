package rt

import (
	"slices"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/target"
)

// fakeCPU returns a CPU of arch with exactly the named features.
func fakeCPU(arch string, features ...string) cpuFeatures {
	c := cpuFeatures{arch: arch, has: map[string]bool{}}
	for _, f := range features {
		c.has[f] = true
	}
	return c
}

// tableISAFeatures is what a build for isas declares: the target table's
// features of each.
func tableISAFeatures(isas []string) map[string][]string {
	m := map[string][]string{}
	for _, isa := range isas {
		m[isa] = tableFeatures(isa)
	}
	return m
}

// allFeatures names every feature of the table.
func allFeatures() []string {
	var out []string
	for _, f := range target.Features() {
		out = append(out, f.Name)
	}
	return out
}

func without(fs []string, drop string) []string {
	return slices.DeleteFunc(slices.Clone(fs), func(f string) bool { return f == drop })
}

// TestManifestFeatures checks Validate's rules for the declared features.
func TestManifestFeatures(t *testing.T) {
	cases := []struct {
		name string
		edit func(m *Manifest)
		err  string // "" for valid
	}{
		{"table features", func(m *Manifest) {}, ""},
		{"missing entry", func(m *Manifest) { delete(m.Features, ISAAVX2) }, "ISA avx2: no CPU features declared"},
		{"no features at all", func(m *Manifest) { m.Features = nil }, "ISA avx512: no CPU features declared"},
		{"unknown name", func(m *Manifest) { m.Features[ISAAVX2] = append(m.Features[ISAAVX2], "avx10.2") },
			`ISA avx2: unknown CPU feature "avx10.2" (this runtime cannot check it)`},
		{"other arch", func(m *Manifest) { m.Features[ISAAVX2] = append(m.Features[ISAAVX2], "neon") },
			"ISA avx2: CPU feature neon is for arm64, not amd64"},
		{"GPU feature", func(m *Manifest) { m.Features[ISAAVX512] = []string{"ptx78"} },
			"ISA avx512: CPU feature ptx78 is for nvptx64, not amd64"},
		{"ISA not listed", func(m *Manifest) { m.ISAs = []string{ISAAVX2} },
			"features listed for ISA avx512, which is not in isas"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := testManifest(ISAAVX512, ISAAVX2)
			m.Arch = "amd64"
			c.edit(&m)
			err := m.Validate()
			if c.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, c.err)
			}
		})
	}
}

// TestDeclaredFeaturesRefused checks that the runtime refuses an ISA whose
// declared features a (fake) CPU lacks, naming the missing feature with the
// table's (and codegen's) name, whether the ISA is chosen automatically or
// forced, and that it checks what the manifest declares, not what it
// assumes an ISA needs.
func TestDeclaredFeaturesRefused(t *testing.T) {
	t.Setenv("KILN_ISA", "")
	avx2 := tableFeatures(ISAAVX2)
	cases := []struct {
		name     string
		cpu      cpuFeatures
		declared []string // features declared for avx2
		want     string   // forced avx2
		isa      string   // chosen ISA, or "!" + error substring
	}{
		{"all present", fakeCPU("amd64", avx2...), avx2, "", "avx2"},
		{"cpu lacks movbe", fakeCPU("amd64", without(avx2, "movbe")...), avx2, "",
			`!no ISA of artifact "tiny" runs on this CPU (avx2: this CPU lacks movbe)`},
		{"forced, cpu lacks bmi2", fakeCPU("amd64", without(avx2, "bmi2")...), avx2, "avx2",
			"!--isa avx2: this CPU lacks bmi2"},
		{"declared fewer: runs", fakeCPU("amd64", "avx2", "avx", "fma"), []string{"avx2", "avx", "fma"}, "", "avx2"},
		{"declared more: refused", fakeCPU("amd64", avx2...), append(slices.Clone(avx2), "avx512bw"), "",
			"!avx2: this CPU lacks avx512bw (AVX-512BW)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := testManifest(ISAAVX2)
			m.Arch = "amd64"
			m.Features[ISAAVX2] = c.declared
			if err := m.Validate(); err != nil {
				t.Fatal(err)
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

// TestHostCPUFeatureNames checks that the host CPU reports features by the
// table's names, for this architecture only.
func TestHostCPUFeatureNames(t *testing.T) {
	c := hostCPU()
	for name := range c.has {
		f, ok := target.LookupFeature(name)
		if !ok {
			t.Errorf("host reports unknown feature %q", name)
			continue
		}
		if f.Arch != c.arch {
			t.Errorf("host (%s) reports %s, a feature of %s", c.arch, name, f.Arch)
		}
	}
}
