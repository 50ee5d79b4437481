package imageprep

import (
	"bytes"
	"image"
	"image/png"
	"strings"
	"testing"
)

// TestImageSizeLimits: images whose decoded or resized size is huge are
// refused before the memory is allocated (issue 11: a 3 KB PNG of
// 1,000,000×1 pixels took 6.2 GB through --image).
func TestImageSizeLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		w, h int
		want string // "" for success
	}{
		{"side over the limit", 1_000_000, 1, "a side over the limit of 32768"},
		{"extreme aspect ratio", 20000, 2, "over the limit of 64 Mpixel (aspect ratio too extreme)"},
		{"ordinary", 400, 300, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := png.Encode(&buf, image.NewGray(image.Rect(0, 0, tc.w, tc.h))); err != nil {
				t.Fatal(err)
			}
			x, err := Load(&buf, Inception)
			if tc.want == "" {
				if err != nil || len(x) != 3*299*299 {
					t.Fatalf("Load: %d values, %v", len(x), err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if err := CheckSize(MaxSide, MaxPixels/MaxSide); err != nil {
		t.Errorf("CheckSize at the limits: %v", err)
	}
	if err := CheckSize(MaxSide/2, 2*MaxPixels/MaxSide+2); err == nil {
		t.Error("CheckSize: over MaxPixels accepted")
	}
}
