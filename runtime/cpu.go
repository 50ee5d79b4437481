package rt

import (
	"fmt"
	"os"
	goruntime "runtime"
	"slices"
	"strings"

	"golang.org/x/sys/cpu"
)

// cpuFeatures is what ISA selection needs to know about the CPU. Tests inject
// fake ones through Options.cpu.
type cpuFeatures struct {
	arch                         string // GOARCH
	avx512f, avx512vl, avx2, fma bool   // amd64
	asimd                        bool   // arm64 Advanced SIMD (NEON)
}

// hostCPU reports the features of the CPU this process runs on. x/sys/cpu
// only reports AVX and AVX-512 when the OS also saves their register state.
func hostCPU() cpuFeatures {
	return cpuFeatures{
		arch:     goruntime.GOARCH,
		avx512f:  cpu.X86.HasAVX512F,
		avx512vl: cpu.X86.HasAVX512VL,
		avx2:     cpu.X86.HasAVX2,
		fma:      cpu.X86.HasFMA,
		// Advanced SIMD is mandatory in ARMv8-A; trust the architecture
		// when the OS does not report it.
		asimd: cpu.ARM64.HasASIMD || goruntime.GOARCH == "arm64",
	}
}

type feature struct {
	name, display string
	has           func(c cpuFeatures) bool
}

var (
	featAVX512F  = feature{"avx512f", "AVX-512F", func(c cpuFeatures) bool { return c.avx512f }}
	featAVX512VL = feature{"avx512vl", "AVX-512VL", func(c cpuFeatures) bool { return c.avx512vl }}
	featAVX2     = feature{"avx2", "AVX2", func(c cpuFeatures) bool { return c.avx2 }}
	featFMA      = feature{"fma", "FMA", func(c cpuFeatures) bool { return c.fma }}
	featASIMD    = feature{"neon", "NEON (Advanced SIMD)", func(c cpuFeatures) bool { return c.asimd }}
)

// isaNeeds lists the CPU features each ISA requires, in the order they are
// reported missing.
var isaNeeds = map[string][]feature{
	ISAAVX512: {featAVX512F, featAVX512VL, featAVX2, featFMA},
	ISAAVX2:   {featAVX2, featFMA},
	ISANEON:   {featASIMD},
}

// has lists the relevant features the CPU has, e.g. "avx2, fma".
func (c cpuFeatures) has() string {
	var fs []feature
	switch c.arch {
	case "amd64":
		fs = []feature{featAVX512F, featAVX512VL, featAVX2, featFMA}
	case "arm64":
		fs = []feature{featASIMD}
	}
	var names []string
	for _, f := range fs {
		if f.has(c) {
			names = append(names, f.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// lacks returns why the CPU cannot run isa, or "" if it can.
func (c cpuFeatures) lacks(isa string) string {
	if arch := isaArch[isa]; arch != c.arch {
		return fmt.Sprintf("%s is an %s ISA, this machine is %s", isa, arch, c.arch)
	}
	for _, f := range isaNeeds[isa] {
		if !f.has(c) {
			return fmt.Sprintf("this CPU lacks %s (has: %s)", f.display, c.has())
		}
	}
	return ""
}

// selectISA picks the ISA to run m with. want is Options.ISA; when it is
// empty the KILN_ISA environment variable is used, and when that is empty
// too (or either says "auto") the best ISA that both the CPU and the
// artifact support is chosen.
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
		if why := c.lacks(want); why != "" {
			return "", fmt.Errorf("%s: %s", source, why)
		}
		if !slices.Contains(m.ISAs, want) {
			return "", fmt.Errorf("%s: artifact %q was not compiled for %s (it has: %s)",
				source, m.Network, want, strings.Join(m.ISAs, ", "))
		}
		return want, nil
	}
	var whys []string
	for _, isa := range knownISAs {
		if !slices.Contains(m.ISAs, isa) {
			continue
		}
		why := c.lacks(isa)
		if why == "" {
			return isa, nil
		}
		whys = append(whys, isa+": "+why)
	}
	return "", fmt.Errorf("no ISA of artifact %q runs on this CPU (%s)", m.Network, strings.Join(whys, "; "))
}
