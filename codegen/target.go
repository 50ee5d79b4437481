package codegen

import (
	"fmt"
	"strings"
)

// Target describes one code-generation target as plain data: the LLVM triple,
// CPU and feature string put on every function it owns, the f32 vector width
// and register count the kernel generators plan with, and the channel block B
// of the NCHW{B}c activations and OIhw{B}i{B}o weights its kernels expect.
//
// Both x86-64 targets use Block 16, so one artifact holds AVX-512 and AVX2
// variants of every kernel with a single weight layout and arena plan; the
// AVX2 kernels treat a 16-channel block as two ymm vectors. NEON uses Block 4
// (one q register per block).
//
// A GPU target (nvptx64-nvidia-cuda, CPU sm_80/sm_90, features +ptx78) will be
// added as another Target value with its own generators; the fields here
// (triple, CPU, features) are exactly what its functions need too, while
// VectorLanes/Registers would describe a warp rather than a SIMD register.
type Target struct {
	Name        string // short name and symbol suffix: avx512, avx2, neon
	Triple      string // LLVM target triple
	CPU         string // "target-cpu" function attribute
	Features    string // "target-features" function attribute
	VectorLanes int    // f32 lanes per vector register: 16, 8, 4
	Registers   int    // architectural vector registers: 32, 16, 32
	Block       int    // channel block B of NCHW{B}c the kernels expect
}

// The built-in targets.
var (
	// AVX512 is x86-64 with AVX-512F/VL (x86-64-v4): 32 zmm registers of
	// 16 floats; FMAs take the broadcast input as an embedded {1to16} operand.
	AVX512 = Target{
		Name: "avx512", Triple: "x86_64-unknown-linux-gnu", CPU: "x86-64-v4",
		Features:    "+avx512f,+avx512vl,+avx2,+fma,+f16c",
		VectorLanes: 16, Registers: 32, Block: 16,
	}
	// AVX2 is x86-64 with AVX2 and FMA (x86-64-v3): 16 ymm registers of 8
	// floats. Block 16 like AVX512 so both share weights and arena layout.
	AVX2 = Target{
		Name: "avx2", Triple: "x86_64-unknown-linux-gnu", CPU: "x86-64-v3",
		Features:    "+avx2,+fma,+f16c",
		VectorLanes: 8, Registers: 16, Block: 16,
	}
	// NEON is AArch64 Advanced SIMD: 32 q registers of 4 floats.
	NEON = Target{
		Name: "neon", Triple: "aarch64-unknown-linux-gnu", CPU: "generic",
		Features:    "+neon",
		VectorLanes: 4, Registers: 32, Block: 4,
	}
)

// Targets lists the built-in targets.
func Targets() []Target { return []Target{AVX512, AVX2, NEON} }

// TargetByName returns the built-in target with the given name.
func TargetByName(name string) (Target, error) {
	for _, t := range Targets() {
		if t.Name == name {
			return t, nil
		}
	}
	names := make([]string, 0, 3)
	for _, t := range Targets() {
		names = append(names, t.Name)
	}
	return Target{}, fmt.Errorf("unknown target %q (known: %s)", name, strings.Join(names, ", "))
}

// Arch returns the first component of the triple (x86_64, aarch64).
func (t Target) Arch() string {
	a, _, _ := strings.Cut(t.Triple, "-")
	return a
}

// Symbol is the name of the function a Module emits for kernel name on t.
func (t Target) Symbol(name string) string { return name + "_" + t.Name }

// validate checks the target's own consistency.
func (t Target) validate() error {
	switch {
	case !isIdent(t.Name):
		return fmt.Errorf("target name %q is not an identifier", t.Name)
	case t.Triple == "":
		return fmt.Errorf("target %s: empty triple", t.Name)
	case t.VectorLanes <= 0 || t.Block <= 0 || t.Block%t.VectorLanes != 0:
		return fmt.Errorf("target %s: block %d must be a positive multiple of the vector lanes %d", t.Name, t.Block, t.VectorLanes)
	case t.Registers < 8:
		return fmt.Errorf("target %s: %d vector registers is too few", t.Name, t.Registers)
	}
	return nil
}

// embeddedBroadcast reports whether an FMA can take a broadcast scalar as a
// memory operand (AVX-512 {1to16}), so the broadcast needs no register.
func (t Target) embeddedBroadcast() bool {
	return strings.Contains(t.Features, "+avx512f")
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
