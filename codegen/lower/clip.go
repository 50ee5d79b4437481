package lower

import "github.com/kiln-dev/kiln/ir"

// fusedClip returns the clip a fused_conv applies after its ReLU (passes'
// fuse-epilogue absorbs a relu6 or a clip with lo <= 0 <= hi that follows
// a conv): whether there is one and its bounds, for ConvSpec and
// DepthwiseSpec.
func fusedClip(n *ir.Node) (clip bool, lo, hi float32) {
	if !n.Attrs.Bool("clip") {
		return false, 0, 0
	}
	return true, float32(n.Attrs.Float("clip_lo")), float32(n.Attrs.Float("clip_hi"))
}
