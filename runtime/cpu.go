package rt

import (
	"fmt"
	"os"
	goruntime "runtime"
	"slices"
	"strings"

	"github.com/kiln-dev/kiln/target"
)

// cpuFeatures is what ISA selection needs to know about the CPU: its
// architecture and the target-table features it has (by name). Tests inject
// fake ones through Options.cpu.
type cpuFeatures struct {
	arch string          // GOARCH
	has  map[string]bool // feature name (target table) -> present
}

// hostCPU reports the features of the CPU this process runs on, evaluating
// the target table's predicate (an x/sys/cpu check) of every feature.
func hostCPU() cpuFeatures {
	return cpuFeatures{arch: goruntime.GOARCH, has: target.HostFeatures()}
}

// checkFeatures checks the features a manifest declares for isa (of arch):
// present, every name known to the target table and of that architecture.
func checkFeatures(isa, arch string, names []string) error {
	if len(names) == 0 {
		return fmt.Errorf("ISA %s: no CPU features declared (features[%q] is empty)", isa, isa)
	}
	for _, n := range names {
		f, ok := target.LookupFeature(n)
		if !ok {
			return fmt.Errorf("ISA %s: unknown CPU feature %q (this runtime cannot check it)", isa, n)
		}
		if f.Arch != arch {
			return fmt.Errorf("ISA %s: CPU feature %s is for %s, not %s", isa, n, f.Arch, arch)
		}
	}
	return nil
}

// tableFeatures is what the target table says isa's kernels use.
func tableFeatures(isa string) []string {
	t, err := target.Lookup(isa)
	if err != nil {
		return nil
	}
	return t.Features
}

// lacks returns why the CPU cannot run isa compiled with features, or "" if
// it can. Missing features are named as the target table and codegen name
// them ("avx512vl"), with the vendor's name in parentheses.
func (c cpuFeatures) lacks(isa string, features []string) string {
	if arch := isaArch[isa]; arch != c.arch {
		return fmt.Sprintf("%s is an %s ISA, this machine is %s", isa, arch, c.arch)
	}
	missing := target.Missing(features, c.has)
	if len(missing) == 0 {
		return ""
	}
	var names []string
	for _, n := range missing {
		if f, ok := target.LookupFeature(n); ok && f.Display != "" && !strings.EqualFold(f.Display, n) {
			n += " (" + f.Display + ")"
		}
		names = append(names, n)
	}
	return fmt.Sprintf("this CPU lacks %s", strings.Join(names, ", "))
}

// selectISA picks the ISA to run m with. want is Options.ISA; when it is
// empty the KILN_ISA environment variable is used, and when that is empty
// too (or either says "auto") the best ISA that both the CPU and the
// artifact support is chosen. An ISA is supported when the CPU has every
// feature the manifest declares for it.
func selectISA(m *Manifest, want string, c cpuFeatures) (string, error) {
	source := "--isa " + want
	if want == "" {
		if env := os.Getenv("KILN_ISA"); env != "" {
			want, source = env, "KILN_ISA="+env
		}
	}
	want = strings.ToLower(strings.TrimSpace(want))
	if m.Arch != c.arch {
		return "", fmt.Errorf("artifact %q was compiled for %s; this machine is %s", m.Network, m.Arch, c.arch)
	}
	if want != "" && want != "auto" {
		if _, ok := isaArch[want]; !ok {
			return "", fmt.Errorf("%s: unknown ISA (known: %s)", source, strings.Join(knownISAs, ", "))
		}
		if !slices.Contains(m.ISAs, want) {
			if why := c.lacks(want, tableFeatures(want)); why != "" {
				return "", fmt.Errorf("%s: %s", source, why)
			}
			return "", fmt.Errorf("%s: artifact %q was not compiled for %s (it has: %s)",
				source, m.Network, want, strings.Join(m.ISAs, ", "))
		}
		if why := c.lacks(want, m.Features[want]); why != "" {
			return "", fmt.Errorf("%s: %s", source, why)
		}
		return want, nil
	}
	var whys []string
	for _, isa := range knownISAs {
		if !slices.Contains(m.ISAs, isa) {
			continue
		}
		why := c.lacks(isa, m.Features[isa])
		if why == "" {
			return isa, nil
		}
		whys = append(whys, isa+": "+why)
	}
	return "", fmt.Errorf("no ISA of artifact %q runs on this CPU (%s)", m.Network, strings.Join(whys, "; "))
}
