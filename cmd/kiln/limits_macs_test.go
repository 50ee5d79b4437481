package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMaxMACs checks kiln check's --max-macs (issue 11 item 2): a network
// over the limit is refused at its input declaration, the count is per
// image (so --batch does not change the verdict), and a network whose MAC
// count overflows int64 is refused rather than wrapping around.
func TestMaxMACs(t *testing.T) {
	dir := t.TempDir()
	// 2^23 output channels × 2^23 input channels × 3×3 taps × 128×128 pixels
	// overflows int64 in the op table's product.
	huge := filepath.Join(dir, "huge.kiln")
	src := "network huge(x: f32[N, 8388608, 128, 128]) {\n  return conv2d(x, 8388608, kernel=3, pad=1)\n}\n"
	if err := os.WriteFile(huge, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		// tiny has 810,256 MACs per image.
		{"default limit", []string{"check", "tiny"}, 0, ""},
		{"over the limit", []string{"check", "--max-macs", "1e3", "tiny"}, 1, "tiny.kiln:21:14: network tiny: 810,256 multiply-accumulates per image exceed the limit 1000"},
		{"names the largest node", []string{"check", "--max-macs", "1e3", "tiny"}, 1, "the largest is %10 conv2d at blocks.kiln:10:12 with 518,400"},
		{"at the limit", []string{"check", "--max-macs", "810256", "tiny"}, 0, ""},
		{"per image, not per batch", []string{"check", "--batch", "4", "--max-macs", "810256", "tiny"}, 0, ""},
		{"bad value", []string{"check", "--max-macs", "-5", "tiny"}, 2, "want a positive count"},
		{"overflow", []string{"check", "--max-tensor-bytes", "1000000000000000000", "--max-param-bytes", "1000000000000000000", huge}, 1, "more than 9.2e18 multiply-accumulates"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := kiln(t, tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.stderr) {
				t.Errorf("kiln %v: exit %d, stderr %q; want exit %d and %q", tc.args, code, errs, tc.code, tc.stderr)
			}
		})
	}
}
