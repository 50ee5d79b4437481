package ir

import (
	"fmt"
	"strconv"
	"strings"
)

// Physical layouts. The logical shape of a value never changes; its layout
// says how the elements are laid out in memory.
//
//	""            plain row-major (NCHW for activations, OIHW for conv weights)
//	"NCHW{c}c"    activations blocked by c channels: [N][ceil(C/c)][H][W][c]
//	"OIhw{c}i{c}o" conv weights: [ceil(O/c)][ceil(I/c)][kh][kw][c in][c out]
//
// Channels past C (or O, I) in the last block are zero padding.

// ActivationBlock returns c for a layout NCHW{c}c.
func ActivationBlock(layout string) (int, bool) {
	if !strings.HasPrefix(layout, "NCHW") || !strings.HasSuffix(layout, "c") {
		return 0, false
	}
	c, err := strconv.Atoi(layout[4 : len(layout)-1])
	return c, err == nil && c > 0
}

// WeightBlock returns c for a layout OIhw{c}i{c}o.
func WeightBlock(layout string) (int, bool) {
	var ci, co int
	if _, err := fmt.Sscanf(layout, "OIhw%di%do", &ci, &co); err != nil || ci != co || ci <= 0 {
		return 0, false
	}
	if layout != fmt.Sprintf("OIhw%di%do", ci, co) {
		return 0, false
	}
	return ci, true
}

func ceilTo(x, c int) int { return (x + c - 1) / c * c }

// PhysicalNumel is the number of elements the value occupies in memory,
// padding included.
func PhysicalNumel(t Type) (int, error) {
	if t.Layout == "" {
		return t.Numel(), nil
	}
	if c, ok := ActivationBlock(t.Layout); ok && t.Rank() == 4 {
		s := t.Shape
		return s[0] * ceilTo(s[1], c) * s[2] * s[3], nil
	}
	if c, ok := WeightBlock(t.Layout); ok && t.Rank() == 4 {
		s := t.Shape
		return ceilTo(s[0], c) * ceilTo(s[1], c) * s[2] * s[3], nil
	}
	return 0, fmt.Errorf("layout %q does not apply to %s", t.Layout, t)
}
