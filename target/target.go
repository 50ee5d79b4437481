// Package target is Kiln's one table of code-generation targets. Every part
// of Kiln that depends on the machine reads it: the layout pass and the
// planner (the channel block), the kernel generators (triple, CPU, features,
// vector width, registers), the CLI (the build targets --target names and
// `kiln targets`) and the runtime (which CPU features an ISA needs and how to
// test for them).
//
// The table has three parts:
//
//   - Targets: one entry per instruction set a kernel can be compiled for
//     (avx512, avx2, neon, and the not-yet-buildable cuda-sm80/cuda-sm90).
//     An entry's Name is also the ISA name in the manifest, the suffix of the
//     kernel symbols and the value of --isa/KILN_ISA.
//   - Builds: what `kiln build/plan --target` names; a build compiles one or
//     more Targets of one architecture into one artifact, all on the same
//     channel block (x86-64 = avx512 + avx2).
//   - Features: every CPU feature name a target may list, with the runtime
//     predicate (an x/sys/cpu check) that tells whether this machine has it.
//
// Feature honesty: a CPU target's LLVM "target-cpu" is the architecture's
// baseline (x86-64: what every amd64 Go program already requires; generic on
// AArch64) and Features lists explicitly, as LLVM feature names, everything
// beyond it that the code generator may use, closed under LLVM's feature
// implications (Feature.Implies). Scheduling and tuning come from TuneCPU
// ("tune-cpu"), which enables no instructions. The runtime checks exactly
// Features, so the set LLVM may use and the set the runtime checks are the
// same list. The x86 lists are the features of the psABI levels x86-64-v4
// and x86-64-v3 (LLVM X86.td X86_64V{2,3,4}Features), which the targets
// used to name as target-cpu; with tune-cpu set to that level the generated
// code is instruction for instruction the same.
//
// This package imports only the standard library and golang.org/x/sys/cpu,
// so that the runtime can import it.
package target

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Kind says what executes a target's code.
type Kind string

// Target kinds.
const (
	CPU Kind = "cpu"
	GPU Kind = "gpu"
)

// ISA names (Target.Name) of the built-in CPU targets.
const (
	NameAVX512 = "avx512"
	NameAVX2   = "avx2"
	NameNEON   = "neon"
)

// Target is one instruction set kernels can be compiled for.
type Target struct {
	// Name is the ISA name: manifest ISA, kernel symbol suffix, --isa value.
	Name string
	// Kind is cpu or gpu.
	Kind Kind
	// Arch is the GOARCH the code runs on (amd64, arm64), or nvptx64 for
	// NVIDIA GPUs.
	Arch string
	// Triple is the LLVM target triple.
	Triple string
	// CPU is the "target-cpu" function attribute: the architecture
	// baseline, implying no feature beyond it.
	CPU string
	// TuneCPU is the "tune-cpu" function attribute (scheduling model and
	// tuning only; "" for none).
	TuneCPU string
	// Features lists, as LLVM feature names without '+', every feature the
	// code generator may use beyond CPU's baseline. Each has an entry in
	// Features() and, for CPU targets, a runtime predicate.
	Features []string
	// VectorLanes is the number of f32 lanes per vector register (16, 8, 4).
	VectorLanes int
	// Registers is the number of architectural vector registers.
	Registers int
	// Block is the channel block B of the NCHW{B}c activations and
	// OIhw{B}i{B}o weights the kernels expect (0: not decided yet).
	Block int
	// NotImplemented, when not empty, says why the target cannot be built
	// yet; the entry is listed but refused by build and plan.
	NotImplemented string
}

// FeatureString is the "target-features" attribute: "+a,+b,...".
func (t Target) FeatureString() string {
	var b strings.Builder
	for i, f := range t.Features {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("+" + f)
	}
	return b.String()
}

// HasFeature reports whether t lists feature name.
func (t Target) HasFeature(name string) bool { return slices.Contains(t.Features, name) }

// x86V3 is the x86-64-v3 level above the x86-64 baseline (Haswell): AVX2,
// FMA, F16C, BMI1/2, LZCNT, MOVBE, XSAVE and the x86-64-v2 features.
var x86V3 = []string{
	"avx2", "avx", "fma", "f16c", "bmi", "bmi2", "lzcnt", "movbe", "xsave",
	"sse4.2", "sse4.1", "ssse3", "sse3", "popcnt", "cx16", "sahf", "crc32",
}

// x86V4 is x86-64-v4 (Skylake-SP): x86V3 plus AVX-512 F, VL, BW, DQ, CD and
// 512-bit EVEX encodings. These are exactly the features LLVM's
// target-cpu=x86-64-v4 used to imply, so the generated code is unchanged.
var x86V4 = append([]string{"avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512cd", "evex512"}, x86V3...)

var (
	// AVX512 is x86-64 with AVX-512: 32 zmm registers of 16 floats; FMAs
	// take the broadcast input as an embedded {1to16} operand.
	AVX512 = Target{
		Name: NameAVX512, Kind: CPU, Arch: "amd64", Triple: "x86_64-unknown-linux-gnu",
		CPU: "x86-64", TuneCPU: "x86-64-v4", Features: x86V4,
		VectorLanes: 16, Registers: 32, Block: 16,
	}
	// AVX2 is x86-64 with AVX2 and FMA: 16 ymm registers of 8 floats. Block
	// 16 like AVX512, so both share weights and arena layout; the kernels
	// treat a 16-channel block as two ymm vectors.
	AVX2 = Target{
		Name: NameAVX2, Kind: CPU, Arch: "amd64", Triple: "x86_64-unknown-linux-gnu",
		CPU: "x86-64", TuneCPU: "x86-64-v3", Features: x86V3,
		VectorLanes: 8, Registers: 16, Block: 16,
	}
	// NEON is AArch64 Advanced SIMD: 32 q registers of 4 floats.
	NEON = Target{
		Name: NameNEON, Kind: CPU, Arch: "arm64", Triple: "aarch64-unknown-linux-gnu",
		CPU: "generic", Features: []string{"neon", "fp-armv8"},
		VectorLanes: 4, Registers: 32, Block: 4,
	}
	// CUDASM80 and CUDASM90 are NVIDIA Ampere and Hopper through LLVM's
	// NVPTX back end; codegen/cuda generates their kernels (issue 12).
	// VectorLanes is the warp width. Block 32: activations are NCHW32c, so
	// a pixel's 32-channel chunk is one 128-byte line (a coalesced warp
	// load) and the implicit-GEMM K step of 32 is two mma k16 steps.
	CUDASM80 = Target{
		Name: "cuda-sm80", Kind: GPU, Arch: "nvptx64", Triple: "nvptx64-nvidia-cuda",
		CPU: "sm_80", Features: []string{"ptx78"}, VectorLanes: 32, Registers: 255, Block: 32,
		NotImplemented: "GPU code generation is not implemented yet (issue 12)",
	}
	CUDASM90 = Target{
		Name: "cuda-sm90", Kind: GPU, Arch: "nvptx64", Triple: "nvptx64-nvidia-cuda",
		CPU: "sm_90", Features: []string{"ptx78"}, VectorLanes: 32, Registers: 255, Block: 32,
		NotImplemented: "GPU code generation is not implemented yet (issue 12)",
	}
)

// targets is the table, CPU targets in run-time preference order (best
// first per architecture).
var targets = []Target{AVX512, AVX2, NEON, CUDASM80, CUDASM90}

// Targets returns the table (a copy).
func Targets() []Target {
	out := make([]Target, len(targets))
	for i, t := range targets {
		t.Features = slices.Clone(t.Features)
		out[i] = t
	}
	return out
}

// Lookup returns the target (ISA) called name.
func Lookup(name string) (Target, error) {
	for _, t := range Targets() {
		if t.Name == name {
			return t, nil
		}
	}
	var names []string
	for _, t := range targets {
		names = append(names, t.Name)
	}
	return Target{}, fmt.Errorf("unknown target %q (known: %s)", name, strings.Join(names, ", "))
}

// CPUNames returns the names of the CPU targets in run-time preference
// order: the order the runtime tries ISAs in.
func CPUNames() []string {
	var out []string
	for _, t := range targets {
		if t.Kind == CPU {
			out = append(out, t.Name)
		}
	}
	return out
}

// Build is a build target: what `kiln build --target` and `kiln plan
// --target` name. It compiles ISAs (Target names, best first) of one
// architecture into one artifact; they share Block, so the artifact has one
// arena plan and one weights blob.
type Build struct {
	Name string
	// ISAs are the Targets compiled into the artifact, in preference order.
	ISAs []string
	// Doc is a one-line description.
	Doc string
}

var builds = []Build{
	{"x86-64", []string{NameAVX512, NameAVX2}, "AVX-512 and AVX2 kernels in one artifact, chosen at load time"},
	{"avx512", []string{NameAVX512}, "AVX-512 kernels only"},
	{"avx2", []string{NameAVX2}, "AVX2 kernels only"},
	{"arm64-neon", []string{NameNEON}, "AArch64 Advanced SIMD"},
	{"cuda-sm80", []string{CUDASM80.Name}, "NVIDIA Ampere (sm_80)"},
	{"cuda-sm90", []string{CUDASM90.Name}, "NVIDIA Hopper (sm_90)"},
}

// Builds returns the build targets (a copy).
func Builds() []Build {
	out := make([]Build, len(builds))
	for i, b := range builds {
		b.ISAs = slices.Clone(b.ISAs)
		out[i] = b
	}
	return out
}

// LookupBuild returns the build target called name.
func LookupBuild(name string) (Build, error) {
	for _, b := range Builds() {
		if b.Name == name {
			return b, nil
		}
	}
	var names []string
	for _, b := range builds {
		names = append(names, b.Name)
	}
	return Build{}, fmt.Errorf("unknown target %q (known: %s)", name, strings.Join(names, ", "))
}

// Targets returns b's ISAs as table entries.
func (b Build) Targets() []Target {
	var out []Target
	for _, n := range b.ISAs {
		t, err := Lookup(n)
		if err != nil {
			panic(fmt.Sprintf("target: build %s names %v", b.Name, err)) // table bug, caught by the tests
		}
		out = append(out, t)
	}
	return out
}

// Block is the channel block every ISA of b uses (Validate checks that they
// agree), 0 for a target not implemented yet.
func (b Build) Block() int { return b.Targets()[0].Block }

// Arch is the architecture of b's ISAs.
func (b Build) Arch() string { return b.Targets()[0].Arch }

// Kind is the kind of b's ISAs.
func (b Build) Kind() Kind { return b.Targets()[0].Kind }

// NotImplemented says why b cannot be built yet ("" when it can).
func (b Build) NotImplemented() string {
	for _, t := range b.Targets() {
		if t.NotImplemented != "" {
			return fmt.Sprintf("target %s: %s", b.Name, t.NotImplemented)
		}
	}
	return ""
}

// Host returns the build target for the machine this process runs on:
// arm64-neon on arm64, x86-64 otherwise.
func Host(goarch string) string {
	if goarch == "arm64" {
		return "arm64-neon"
	}
	return "x86-64"
}

// Validate checks the whole table: unique names, positive and consistent
// widths (Block a multiple of VectorLanes), every feature known, for the
// target's architecture, with a runtime predicate on CPU targets, feature
// lists closed under Implies, and builds whose ISAs share architecture,
// triple and block.
func Validate() error {
	seen := map[string]bool{}
	for _, t := range targets {
		if err := t.validate(); err != nil {
			return err
		}
		if seen[t.Name] {
			return fmt.Errorf("target %s listed twice", t.Name)
		}
		seen[t.Name] = true
	}
	seenB := map[string]bool{}
	for _, b := range builds {
		if seenB[b.Name] {
			return fmt.Errorf("build target %s listed twice", b.Name)
		}
		seenB[b.Name] = true
		if len(b.ISAs) == 0 {
			return fmt.Errorf("build target %s has no ISAs", b.Name)
		}
		var first Target
		for i, n := range b.ISAs {
			t, err := Lookup(n)
			if err != nil {
				return fmt.Errorf("build target %s: %w", b.Name, err)
			}
			if i == 0 {
				first = t
				continue
			}
			if t.Arch != first.Arch || t.Triple != first.Triple || t.Block != first.Block {
				return fmt.Errorf("build target %s: ISAs %s and %s differ in arch, triple or block", b.Name, first.Name, t.Name)
			}
		}
	}
	return nil
}

func (t Target) validate() error {
	switch {
	case t.Name == "":
		return fmt.Errorf("target with empty name")
	case t.Kind != CPU && t.Kind != GPU:
		return fmt.Errorf("target %s: kind %q", t.Name, t.Kind)
	case t.Triple == "" || t.CPU == "" || t.Arch == "":
		return fmt.Errorf("target %s: empty triple, cpu or arch", t.Name)
	case t.VectorLanes <= 0 || t.Registers <= 0:
		return fmt.Errorf("target %s: lanes %d, registers %d", t.Name, t.VectorLanes, t.Registers)
	case t.NotImplemented == "" && (t.Block <= 0 || t.Block%t.VectorLanes != 0):
		return fmt.Errorf("target %s: block %d must be a positive multiple of the vector lanes %d", t.Name, t.Block, t.VectorLanes)
	}
	has := map[string]bool{}
	for _, f := range t.Features {
		if has[f] {
			return fmt.Errorf("target %s: feature %s listed twice", t.Name, f)
		}
		has[f] = true
		ft, ok := features[f]
		if !ok {
			return fmt.Errorf("target %s: unknown feature %q", t.Name, f)
		}
		if ft.Arch != t.Arch {
			return fmt.Errorf("target %s (%s): feature %s is for %s", t.Name, t.Arch, f, ft.Arch)
		}
		if t.Kind == CPU && ft.has == nil {
			return fmt.Errorf("target %s: feature %s has no runtime predicate", t.Name, f)
		}
	}
	for _, f := range t.Features {
		for _, imp := range features[f].Implies {
			if !has[imp] {
				return fmt.Errorf("target %s: feature %s implies %s in LLVM, which is not listed (the runtime would not check it)", t.Name, f, imp)
			}
		}
	}
	return nil
}

// sortedKeys returns m's keys sorted.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
