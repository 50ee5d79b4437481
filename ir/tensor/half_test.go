package tensor

import (
	"math"
	"testing"
)

// TestHalfRoundTrip checks the float32 → half conversions against the exact
// half → float32 decoders: every half value converts back to itself, and
// values between two halves round to the nearer one (ties to even).
func TestHalfRoundTrip(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f16 := F16ToF32(uint16(h))
		if got := F32ToF16(f16); got != uint16(h) && !(f16 != f16 && got&0x7c00 == 0x7c00 && got&0x3ff != 0) {
			t.Fatalf("F32ToF16(F16ToF32(%#04x) = %g) = %#04x", h, f16, got)
		}
		bf := BF16ToF32(uint16(h))
		if got := F32ToBF16(bf); got != uint16(h) && !(bf != bf && got&0x7f80 == 0x7f80 && got&0x7f != 0) {
			t.Fatalf("F32ToBF16(BF16ToF32(%#04x) = %g) = %#04x", h, bf, got)
		}
	}
	cases := []struct {
		f        float32
		f16, b16 uint16
	}{
		{1 + 0x1p-11, 0x3c00, 0x3f80},           // tie: to even (1.0)
		{1 + 3*0x1p-11, 0x3c02, 0x3f80},         // tie: to even (1 + 2^-9)
		{1 + 0x1p-11 + 0x1p-20, 0x3c01, 0x3f80}, // above the tie
		{65504, 0x7bff, 0x477f + 1},             // largest half; bf16 rounds up
		{65520, 0x7c00, 0x4780},                 // rounds to infinity in half
		{0x1p-24, 0x0001, 0x3380},               // smallest subnormal half
		{0x1p-26, 0x0000, 0x3280},               // below half of it: zero
		{float32(math.Inf(-1)), 0xfc00, 0xff80},
	}
	for _, c := range cases {
		if got := F32ToF16(c.f); got != c.f16 {
			t.Errorf("F32ToF16(%g) = %#04x, want %#04x", c.f, got, c.f16)
		}
		if got := F32ToBF16(c.f); got != c.b16 {
			t.Errorf("F32ToBF16(%g) = %#04x, want %#04x", c.f, got, c.b16)
		}
	}
}
