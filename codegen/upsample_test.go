package codegen

import (
	"strings"
	"testing"
)

// TestUpsampleSpecValidate checks UpsampleSpec's refusals.
func TestUpsampleSpecValidate(t *testing.T) {
	ok := UpsampleSpec{N: 1, C: 20, H: 3, W: 5, Scale: 2, Bilinear: true, AlignCorners: true, InOff: 0, OutOff: 1 * 32 * 15}
	if err := ok.Validate(16); err != nil {
		t.Fatalf("valid spec refused: %v", err)
	}
	tests := []struct {
		name string
		edit func(s *UpsampleSpec)
		want string
	}{
		{"scale", func(s *UpsampleSpec) { s.Scale = 0 }, "Scale"},
		{"align_corners nearest", func(s *UpsampleSpec) { s.Bilinear = false }, "AlignCorners applies to bilinear only"},
		{"overlap", func(s *UpsampleSpec) { s.OutOff = 16 }, "overlaps"},
		{"negative", func(s *UpsampleSpec) { s.InOff = -1 }, "InOff"},
	}
	for _, tc := range tests {
		s := ok
		tc.edit(&s)
		if err := s.Validate(16); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}
