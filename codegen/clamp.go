package codegen

import (
	"fmt"

	"github.com/llir/llvm/ir/value"
)

// A clip fused into a convolution's epilogue (ConvSpec.Clip,
// DepthwiseSpec.Clip; passes' fuse-epilogue absorbs a relu6 or clip that
// follows a conv) is min(max(x, Lo), Hi) on the registers before the store,
// the same two selects as the standalone clip kernel (ElementwiseSpec with
// EltClip), so the fused and unfused results are bit for bit the same; a
// NaN stays NaN, as in the interpreter's evalClip. Lo <= 0 <= Hi is
// required: a convolution writes its blocked output's padding lanes as
// zero, and clip(0) must stay 0.

// clamp returns min(max(x, lo), hi), NaN propagating.
func (g *builder) clamp(x value.Value, lo, hi float32) value.Value {
	return g.fmin(g.fmax(x, g.like(x, float64(lo))), g.like(x, float64(hi)))
}

// checkClip validates a fused clip's bounds.
func checkClip(kernel string, clip bool, lo, hi float32) error {
	if clip && !(lo <= 0 && 0 <= hi) {
		return fmt.Errorf("%s: fused clip [%v, %v] must contain 0 (padding lanes stay zero)", kernel, lo, hi)
	}
	return nil
}
