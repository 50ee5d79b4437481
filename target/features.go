package target

import (
	goruntime "runtime"

	"golang.org/x/sys/cpu"
)

// Feature is one LLVM target feature a Target may list.
type Feature struct {
	// Name is LLVM's feature name ("avx512f"), also used in manifests and
	// in the runtime's error messages.
	Name string
	// Arch is the architecture it belongs to (amd64, arm64, nvptx64).
	Arch string
	// Display is the vendor's name, for messages ("AVX-512 Foundation").
	Display string
	// Implies lists the features LLVM enables along with this one (beyond
	// the architecture baseline); a target listing this feature must list
	// them too, so the runtime checks everything LLVM may use.
	Implies []string
	// has is the runtime predicate; nil for GPU features, which the device
	// driver checks.
	has func() bool
}

// Host reports whether the CPU this process runs on has f (false for a
// feature of another architecture or without a CPU predicate).
func (f Feature) Host() bool {
	return f.has != nil && f.Arch == goruntime.GOARCH && f.has()
}

// arm64Baseline is true on arm64: Advanced SIMD and floating point are
// mandatory in ARMv8-A (Linux requires them), so they are trusted when the
// OS does not report them (qemu-user may not).
var arm64Baseline = goruntime.GOARCH == "arm64"

// features is every feature name the table may use. The amd64 predicates
// are x/sys/cpu's, which report AVX and AVX-512 only when the OS also saves
// their register state. The x86-64 baseline (SSE2, CMOV, CX8, FXSR, MMX) is
// not listed: every amd64 Go program already requires it, and it is what
// target-cpu=x86-64 means.
var features = map[string]Feature{}

func init() {
	x86 := func(name, display string, has func() bool, implies ...string) {
		features[name] = Feature{Name: name, Arch: "amd64", Display: display, Implies: implies, has: has}
	}
	x86("sse3", "SSE3", func() bool { return cpu.X86.HasSSE3 })
	x86("ssse3", "SSSE3", func() bool { return cpu.X86.HasSSSE3 }, "sse3")
	x86("sse4.1", "SSE4.1", func() bool { return cpu.X86.HasSSE41 }, "ssse3")
	x86("sse4.2", "SSE4.2", func() bool { return cpu.X86.HasSSE42 }, "sse4.1")
	// LLVM splits CRC32 out of SSE4.2; the CPU reports it as SSE4.2.
	x86("crc32", "CRC32 (SSE4.2)", func() bool { return cpu.X86.HasSSE42 })
	x86("popcnt", "POPCNT", func() bool { return cpu.X86.HasPOPCNT })
	x86("cx16", "CMPXCHG16B", func() bool { return cpu.X86.HasCX16 })
	x86("sahf", "LAHF/SAHF in 64-bit mode", func() bool { return cpu.X86.HasLAHF })
	x86("avx", "AVX", func() bool { return cpu.X86.HasAVX }, "sse4.2")
	x86("avx2", "AVX2", func() bool { return cpu.X86.HasAVX2 }, "avx")
	x86("fma", "FMA", func() bool { return cpu.X86.HasFMA }, "avx")
	x86("f16c", "F16C", func() bool { return cpu.X86.HasF16C }, "avx")
	x86("bmi", "BMI1", func() bool { return cpu.X86.HasBMI1 })
	x86("bmi2", "BMI2", func() bool { return cpu.X86.HasBMI2 })
	x86("lzcnt", "LZCNT", func() bool { return cpu.X86.HasLZCNT })
	x86("movbe", "MOVBE", func() bool { return cpu.X86.HasMOVBE })
	x86("xsave", "XSAVE", func() bool { return cpu.X86.HasXSAVE })
	x86("avx512f", "AVX-512F", func() bool { return cpu.X86.HasAVX512F }, "avx2", "fma", "f16c")
	x86("avx512vl", "AVX-512VL", func() bool { return cpu.X86.HasAVX512VL }, "avx512f")
	x86("avx512bw", "AVX-512BW", func() bool { return cpu.X86.HasAVX512BW }, "avx512f")
	x86("avx512dq", "AVX-512DQ", func() bool { return cpu.X86.HasAVX512DQ }, "avx512f")
	x86("avx512cd", "AVX-512CD", func() bool { return cpu.X86.HasAVX512CD }, "avx512f")
	// 512-bit EVEX encodings (LLVM 18+, for AVX10/256): part of AVX-512F.
	x86("evex512", "512-bit AVX-512 vectors", func() bool { return cpu.X86.HasAVX512F })

	features["fp-armv8"] = Feature{Name: "fp-armv8", Arch: "arm64", Display: "FP (ARMv8 floating point)",
		has: func() bool { return cpu.ARM64.HasFP || arm64Baseline }}
	features["neon"] = Feature{Name: "neon", Arch: "arm64", Display: "NEON (Advanced SIMD)", Implies: []string{"fp-armv8"},
		has: func() bool { return cpu.ARM64.HasASIMD || arm64Baseline }}

	features["ptx78"] = Feature{Name: "ptx78", Arch: "nvptx64", Display: "PTX ISA 7.8"}
}

// LookupFeature returns the feature called name.
func LookupFeature(name string) (Feature, bool) {
	f, ok := features[name]
	return f, ok
}

// Features returns every known feature, sorted by name.
func Features() []Feature {
	var out []Feature
	for _, k := range sortedKeys(features) {
		out = append(out, features[k])
	}
	return out
}

// HostFeatures returns the names of the features this CPU has, evaluating
// each feature's predicate (features of other architectures are absent).
func HostFeatures() map[string]bool {
	out := map[string]bool{}
	for name, f := range features {
		if f.Host() {
			out[name] = true
		}
	}
	return out
}

// Missing returns the features of names that have is false for, in order.
func Missing(names []string, have map[string]bool) []string {
	var out []string
	for _, n := range names {
		if !have[n] {
			out = append(out, n)
		}
	}
	return out
}
