package onnx

import "github.com/kiln-dev/kiln/ir"

// convertExt exports the ops of ir/ops_ext.go at opset 13 (Opset):
//
//	sigmoid, tanh, sub, global_maxpool   Sigmoid, Tanh, Sub, GlobalMaxPool
//	channel_mul                          Mul (ONNX broadcasts [N,C,1,1] over H, W)
//	clip                                 Clip with min and max initializers
//	silu                                 Sigmoid, then Mul with the input
//	hardswish                            HardSigmoid (alpha 1/6, beta 0.5), then
//	                                     Mul with the input (HardSwish is opset 14)
//
// It returns the op, inputs and attributes of the node that writes out
// (emitting any helper node itself), or ok false for an op it does not know.
func (x *exporter) convertExt(i int, n *ir.Node, in []string, out string) (op string, ins []string, attrs [][]byte, ok bool, err error) {
	switch n.Op {
	case ir.OpSigmoid:
		return "Sigmoid", in, nil, true, nil
	case ir.OpTanh:
		return "Tanh", in, nil, true, nil
	case ir.OpSub:
		return "Sub", in, nil, true, nil
	case ir.OpGlobalMaxPool:
		return "GlobalMaxPool", in, nil, true, nil
	case ir.OpUpsample, ir.OpReshape:
		return x.convertShape(i, n, in, out) // resize.go
	case ir.OpChannelMul:
		return "Mul", in, nil, true, nil
	case ir.OpClip:
		lo, hi := out+"/min", out+"/max"
		for _, c := range []string{lo, hi} {
			if err := x.claim(i, c); err != nil {
				return "", nil, nil, false, err
			}
		}
		x.inits = appendInitializer(x.inits, lo, nil, []float32{float32(n.Attrs.Float("lo"))})
		x.inits = appendInitializer(x.inits, hi, nil, []float32{float32(n.Attrs.Float("hi"))})
		return "Clip", append(in, lo, hi), nil, true, nil
	case ir.OpSiLU, ir.OpHardSwish:
		gate := out + "/gate"
		if err := x.claim(i, gate); err != nil {
			return "", nil, nil, false, err
		}
		if n.Op == ir.OpSiLU {
			x.addNode("Sigmoid", gate, n.Pos, in, gate, nil)
		} else {
			x.addNode("HardSigmoid", gate, n.Pos, in, gate, [][]byte{floatAttr("alpha", 1.0/6), floatAttr("beta", 0.5)})
		}
		return "Mul", []string{in[0], gate}, nil, true, nil
	}
	return "", nil, nil, false, nil
}
