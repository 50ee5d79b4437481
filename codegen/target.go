package codegen

import (
	"fmt"
	"strings"

	"github.com/kiln-dev/kiln/target"
)

// Target is a code-generation target as the kernel generators see it: an
// entry of the target table (package target) — triple, target-cpu,
// tune-cpu, the explicit feature list put on every function, the f32 vector
// width and register count the generators plan with, and the channel block B
// of the NCHW{B}c activations and OIhw{B}i{B}o weights its kernels expect.
// It embeds target.Target so that the generators read t.VectorLanes,
// t.Registers, t.Block, t.Name, t.Triple and t.CPU directly; codegen adds
// only generator-facing methods.
//
// Both x86-64 targets use Block 16, so one artifact holds AVX-512 and AVX2
// variants of every kernel with a single weight layout and arena plan; the
// AVX2 kernels treat a 16-channel block as two ymm vectors. NEON uses Block 4
// (one q register per block).
type Target struct {
	target.Target
}

// The built-in CPU targets, from the target table.
var (
	AVX512 = Target{target.AVX512}
	AVX2   = Target{target.AVX2}
	NEON   = Target{target.NEON}
)

// Targets lists the table's targets that code can be generated for today.
func Targets() []Target {
	var out []Target
	for _, t := range target.Targets() {
		if t.NotImplemented == "" {
			out = append(out, Target{t})
		}
	}
	return out
}

// TargetByName returns the table's target (ISA) called name, or an error
// when it is unknown or cannot be generated yet.
func TargetByName(name string) (Target, error) {
	t, err := target.Lookup(name)
	if err != nil {
		return Target{}, err
	}
	if t.NotImplemented != "" {
		return Target{}, fmt.Errorf("target %s: %s", t.Name, t.NotImplemented)
	}
	return Target{t}, nil
}

// TargetsOf returns the code-generation targets of build target b, or an
// error naming why b cannot be built.
func TargetsOf(b target.Build) ([]Target, error) {
	if why := b.NotImplemented(); why != "" {
		return nil, fmt.Errorf("%s", why)
	}
	var out []Target
	for _, t := range b.Targets() {
		out = append(out, Target{t})
	}
	return out, nil
}

// ISAFeatures maps each target's name to the features its kernels are
// compiled with: what the manifest declares and the runtime checks.
func ISAFeatures(ts []Target) map[string][]string {
	m := map[string][]string{}
	for _, t := range ts {
		m[t.Name] = append([]string(nil), t.Features...)
	}
	return m
}

// Arch returns the first component of the triple (x86_64, aarch64).
func (t Target) Arch() string {
	a, _, _ := strings.Cut(t.Triple, "-")
	return a
}

// Symbol is the name of the function a Module emits for kernel name on t.
func (t Target) Symbol(name string) string { return name + "_" + t.Name }

// cacheKey describes everything about t that affects generated code, for
// the object cache key.
func (t Target) cacheKey() string {
	return fmt.Sprintf("name=%s triple=%s cpu=%s tune=%s features=%s lanes=%d regs=%d block=%d",
		t.Name, t.Triple, t.CPU, t.TuneCPU, t.FeatureString(), t.VectorLanes, t.Registers, t.Block)
}

// validate checks the target's own consistency.
func (t Target) validate() error {
	switch {
	case !isIdent(t.Name):
		return fmt.Errorf("target name %q is not an identifier", t.Name)
	case t.NotImplemented != "":
		return fmt.Errorf("target %s: %s", t.Name, t.NotImplemented)
	case t.Kind != target.CPU:
		return fmt.Errorf("target %s: only CPU targets have kernel generators", t.Name)
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
func (t Target) embeddedBroadcast() bool { return t.HasFeature("avx512f") }

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
