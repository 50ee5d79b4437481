package tensor

import (
	"fmt"
	"math"
	"strings"
)

// Kind strings returned by [Kind], as used in the fixtures' tensors.json and
// generator_vectors.json.
const (
	KindConvWeight    = "conv_weight"
	KindLinearWeight  = "linear_weight"
	KindBias          = "bias"
	KindBNWeight      = "bn_weight"
	KindBNRunningMean = "bn_running_mean"
	KindBNRunningVar  = "bn_running_var"
	KindInput         = "input"
)

// Kind classifies a tensor for the procedural generator by its name and rank,
// following the table in section 1 of the fixtures README
// (shared/fixtures/README.md):
//
//	name exactly "input"               -> "input"
//	last dot-component "weight", rank 4 -> "conv_weight"    [O, I, kh, kw]
//	last dot-component "weight", rank 2 -> "linear_weight"  [O, I]
//	last dot-component "weight", rank 1 -> "bn_weight"
//	last dot-component "bias"           -> "bias" (conv, linear and BN alike)
//	last dot-component "running_mean"   -> "bn_running_mean"
//	last dot-component "running_var"    -> "bn_running_var"
//
// Anything else, including "num_batches_tracked" and a "weight" of another
// rank, is an error: an unknown key is never guessed.
func Kind(name string, rank int) (string, error) {
	if name == "input" {
		return KindInput, nil
	}
	last := name[strings.LastIndexByte(name, '.')+1:]
	switch last {
	case "weight":
		switch rank {
		case 4:
			return KindConvWeight, nil
		case 2:
			return KindLinearWeight, nil
		case 1:
			return KindBNWeight, nil
		}
		return "", fmt.Errorf("procgen: %q: no rule for a weight of rank %d (want 4 conv, 2 linear or 1 batch-norm)", name, rank)
	case "bias":
		return KindBias, nil
	case "running_mean":
		return KindBNRunningMean, nil
	case "running_var":
		return KindBNRunningVar, nil
	case "num_batches_tracked":
		return "", fmt.Errorf("procgen: %q: num_batches_tracked is not generated and not part of the weights", name)
	}
	return "", fmt.Errorf("procgen: %q: unknown tensor kind %q (want weight, bias, running_mean, running_var or the name \"input\")", name, last)
}

// Generate returns the procedural tensor for name and shape, bit for bit as
// defined in section 1 of the fixtures README (shared/fixtures/README.md),
// which the reference weights, inputs and tensors.json hashes were made with.
//
// All integer arithmetic is on uint64 modulo 2^64 and all floating-point
// arithmetic in float64; each value is rounded to float32 once, at the end,
// to nearest-even (Go's float32 conversion):
//
//	fnv1a64(s):    h = 0xcbf29ce484222325; for each byte b of s: h = (h ^ b) * 0x100000001b3
//	splitmix64(x): x += 0x9E3779B97F4A7C15
//	               z = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
//	               z = (z ^ (z >> 27)) * 0x94D049BB133111EB
//	               return z ^ (z >> 31)
//	u(i) = float64(splitmix64(fnv1a64(name) ^ i) >> 40) / 2^24   (exact, in [0, 1))
//	r(i) = 2*u(i) - 1                                            (exact, in [-1, 1))
//
// where i is the row-major element index. By [Kind]:
//
//	conv_weight, linear_weight: r * scale, scale = sqrt(3.0/fan_in) * sqrt(2)
//	    (fan_in = I*kh*kw or I; scale computed once per tensor, in this order,
//	    with g = math.Sqrt2)
//	bn_weight, bn_running_var:  0.75 + 0.5*u
//	bias, bn_running_mean:      0.1 * r
//	input:                      r
//
// The shape affects the values only through fan_in. Names are full timm
// state_dict keys for whole networks and block-relative keys for blocks;
// every input tensor is named "input". Unknown kinds, negative dimensions and
// overflowing shapes are errors.
func Generate(name string, shape []int) (*Tensor, error) {
	n, err := NumelOf(shape)
	if err != nil {
		return nil, fmt.Errorf("procgen: %q: %v", name, err)
	}
	value, _, err := generator(name, shape)
	if err != nil {
		return nil, err
	}
	t := &Tensor{Shape: append([]int{}, shape...), Data: make([]float32, n)}
	for i := range t.Data {
		t.Data[i] = float32(value(uint64(i)))
	}
	return t, nil
}

// generator returns the float64 value of element i of the procedural tensor
// name (before the single rounding to float32) and, for conv and linear
// weights, the scale (0 otherwise). shape must be valid.
func generator(name string, shape []int) (value func(i uint64) float64, scale float64, err error) {
	kind, err := Kind(name, len(shape))
	if err != nil {
		return nil, 0, err
	}
	h := fnv1a64(name)
	switch kind {
	case KindConvWeight, KindLinearWeight:
		fanIn := 1
		for _, d := range shape[1:] {
			if d == 0 {
				return func(uint64) float64 { return 0 }, 0, nil // no elements
			}
			if fanIn > math.MaxInt/d {
				return nil, 0, fmt.Errorf("procgen: %q: fan_in of shape %s overflows", name, ShapeString(shape))
			}
			fanIn *= d
		}
		// Once per tensor, in this order: sqrt(3/fan_in), then * g.
		scale = math.Sqrt(3.0/float64(fanIn)) * math.Sqrt2
		// The explicit float64 conversions forbid fusing operations (Go spec,
		// "Floating-point operators"); all but r*scale are exact anyway.
		return func(i uint64) float64 { return float64(r64(h, i) * scale) }, scale, nil
	case KindBNWeight, KindBNRunningVar:
		return func(i uint64) float64 { return 0.75 + float64(0.5*u64(h, i)) }, 0, nil
	case KindBias, KindBNRunningMean:
		return func(i uint64) float64 { return float64(0.1 * r64(h, i)) }, 0, nil
	default: // KindInput
		return func(i uint64) float64 { return r64(h, i) }, 0, nil
	}
}

// fnv1a64 is 64-bit FNV-1a over the bytes of s.
func fnv1a64(s string) uint64 {
	h := uint64(0xcbf29ce484222325)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * 0x100000001b3
	}
	return h
}

// splitmix64 is one step of the SplitMix64 generator applied to x.
func splitmix64(x uint64) uint64 {
	x += 0x9E3779B97F4A7C15
	z := x
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// u64 is u(name, i) with h = fnv1a64(name): a multiple of 2^-24 in [0, 1).
func u64(h, i uint64) float64 {
	return float64(splitmix64(h^i)>>40) / (1 << 24)
}

// r64 is r(name, i) = 2u - 1, exact.
func r64(h, i uint64) float64 {
	return float64(2*u64(h, i)) - 1
}
