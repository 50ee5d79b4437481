package ir

import (
	"strings"
	"testing"
)

// TestFusedConvClipBounds checks fused_conv's clip attributes: a clip whose
// range contains 0 (relu6, clip(-1, 1)) verifies, one that does not is
// refused with the bounds named (it would make the padding lanes of a
// blocked result nonzero).
func TestFusedConvClipBounds(t *testing.T) {
	for _, c := range []struct {
		lo, hi float64
		want   string // "" for no error
	}{
		{0, 6, ""},
		{-1, 1, ""},
		{0.5, 1.5, "clip_lo <= 0 <= clip_hi"},
		{-2, -1, "clip_lo <= 0 <= clip_hi"},
	} {
		g := &Graph{Name: "fc"}
		x, err := g.Add(&Node{Op: OpInput, Name: "x", Type: Type{DType: F32, Shape: []int{1, 16, 4, 4}}})
		if err != nil {
			t.Fatal(err)
		}
		w, err := g.Add(&Node{Op: OpParam, Name: "w", Type: Type{DType: F32, Shape: []int{16, 16, 1, 1}}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = g.Add(&Node{Op: OpFusedConv, Args: []int{x, w}, Attrs: Attrs{"clip": true, "clip_lo": c.lo, "clip_hi": c.hi}})
		if c.want == "" && err != nil {
			t.Errorf("clip [%v, %v]: %v", c.lo, c.hi, err)
		}
		if c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("clip [%v, %v]: error %v, want one mentioning %q", c.lo, c.hi, err, c.want)
		}
	}
}
