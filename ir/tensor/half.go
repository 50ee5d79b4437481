package tensor

import "math"

// F32ToBF16 rounds a float32 to bfloat16 bits (its top 16 bits) with
// round-to-nearest-even, as PyTorch's and oneDNN's conversions do. NaNs stay
// NaNs (a quiet bit is set so the payload cannot round to infinity);
// infinities and signed zeros are exact.
func F32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// F32ToF16 rounds a float32 to IEEE-754 binary16 bits with
// round-to-nearest-even. Values beyond the largest half (65504) round to
// infinity, tiny values to subnormals or signed zero, NaNs stay quiet NaNs.
func F32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	switch {
	case exp == 0xff: // infinity or NaN
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp-127 > 15: // overflow
		return sign | 0x7c00
	case exp-127 >= -14: // normal half
		h := uint32(exp-127+15)<<10 | mant>>13
		rest := mant & 0x1fff
		if rest > 0x1000 || (rest == 0x1000 && h&1 == 1) {
			h++ // may carry into the exponent, up to infinity: correct
		}
		return sign | uint16(h)
	case exp-127 < -25: // below half the smallest subnormal
		return sign
	default: // subnormal half: value = m × 2^-24
		m := mant | 0x800000 // implicit bit
		shift := uint32(-14-(exp-127)) + 13
		h := m >> shift
		rest := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rest > half || (rest == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
}
