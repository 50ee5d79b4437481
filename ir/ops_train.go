package ir

import "fmt"

// Training ops: the backward (gradient) ops of the forward ops, training-mode
// forward ops, the loss, and the optimizer updates (issue 9).
//
// Every training op works on plain layouts (allPlain) and float dtypes; the
// layout pass leaves them alone. The gradient ops take the gradient of the
// forward op's result, dy, first, then whatever forward values the gradient
// needs, and return the gradient of one forward operand (the _grad_input and
// _grad_weight pairs) or of all of them (batchnorm_train_grad, a multi-result
// op). Attributes that a gradient cannot recover from its operands' shapes
// (input_hw, kernel) are explicit, because the forward output size floors:
// several input sizes give the same output size.
//
// The optimizer updates are multi-result ops returning the new parameter and
// the new optimizer state; a training graph feeds them with params and writes
// the results back through Graph.Updates. With g the gradient, p the param,
// wd the weight decay (L2, added to the gradient: g ← g + wd·p in every
// form):
//
//	rmsprop_update    PyTorch torch.optim.RMSprop, centered=False:
//	                  v ← α·v + (1−α)·g²;  b ← μ·b + g/(√v + ε);  p ← p − lr·b.
//	                  With μ = 0 this is PyTorch's p ← p − lr·g/(√v + ε) (b is
//	                  then just g/(√v+ε) and carries nothing across steps).
//	                  PyTorch starts v and b at zero.
//	rmsprop_tf_update TensorFlow's ApplyRMSProp kernel (tf.compat.v1.train.
//	                  RMSPropOptimizer, Keras RMSprop with momentum):
//	                  v ← α·v + (1−α)·g²;  b ← μ·b + lr·g/√(v + ε);  p ← p − b.
//	                  ε sits inside the square root and b holds lr-scaled
//	                  steps, so a learning-rate change acts on new steps only.
//	                  TensorFlow starts v at one (v at zero would divide the
//	                  first step by √ε); initialising the state is the
//	                  caller's business, as is the choice of wd (TensorFlow
//	                  has none in the optimizer).
//	sgd_update        PyTorch torch.optim.SGD, dampening 0, not Nesterov:
//	                  b ← μ·b + g;  p ← p − lr·b. PyTorch sets b = g on the
//	                  first step; a buffer starting at zero gives exactly
//	                  that (μ·0 + g), so callers start b at zero. With μ = 0,
//	                  p ← p − lr·g.
const (
	// OpReLUGrad is ReLU's backward on its output: dx = dy where y > 0.
	OpReLUGrad = "relu_grad"
	// OpConv2DGradInput is conv2d's gradient with respect to its input.
	OpConv2DGradInput = "conv2d_grad_input"
	// OpConv2DGradWeight is conv2d's gradient with respect to its weight.
	OpConv2DGradWeight = "conv2d_grad_weight"
	// OpBiasGrad is a bias's gradient: dy summed over every axis but 1.
	OpBiasGrad = "bias_grad"
	// OpBatchNormTrainGrad is batchnorm_train's backward: dx, dweight, dbias.
	OpBatchNormTrainGrad = "batchnorm_train_grad"
	// OpMaxPoolGrad routes each dy to its window's maximum.
	OpMaxPoolGrad = "maxpool_grad"
	// OpAvgPoolGrad spreads each dy evenly over its window.
	OpAvgPoolGrad = "avgpool_grad"
	// OpGlobalAvgPoolGrad broadcasts dy/(H·W) over each plane.
	OpGlobalAvgPoolGrad = "global_avgpool_grad"
	// OpDenseGradInput is dense's gradient with respect to its input.
	OpDenseGradInput = "dense_grad_input"
	// OpDenseGradWeight is dense's gradient with respect to its weight.
	OpDenseGradWeight = "dense_grad_weight"
	// OpSlice takes a contiguous range along one axis (concat's backward).
	OpSlice = "slice"
	// OpReshape gives a value a new shape with the same elements.
	OpReshape = "reshape"
	// OpMul2 is the elementwise product of two tensors of one shape.
	OpMul2 = "mul2"
	// OpDropoutTrain is training-mode dropout: results y and the 0/1 mask.
	OpDropoutTrain = "dropout_train"
	// OpSoftmaxXent is label-smoothed softmax cross-entropy, a scalar loss.
	OpSoftmaxXent = "softmax_xent"
	// OpSoftmaxXentGrad is softmax_xent's gradient with respect to the logits.
	OpSoftmaxXentGrad = "softmax_xent_grad"
	// OpRMSPropUpdate is one step of PyTorch's RMSprop.
	OpRMSPropUpdate = "rmsprop_update"
	// OpRMSPropTFUpdate is one step of TensorFlow's RMSProp.
	OpRMSPropTFUpdate = "rmsprop_tf_update"
	// OpSGDUpdate is one step of PyTorch's SGD with momentum.
	OpSGDUpdate = "sgd_update"
)

// convAttrsTrain are conv2d's attributes, shared by its gradients.
func convAttrsTrain(extra AttrDef) []AttrDef {
	return []AttrDef{
		{Name: "stride", Kind: AttrInts, Len: 2, Default: []int{1, 1}, Check: positive},
		{Name: "pad", Kind: AttrInts, Len: 2, Default: []int{0, 0}, Check: nonNegative},
		{Name: "groups", Kind: AttrInt, Default: 1, Check: positive},
		extra,
	}
}

// checkWindowOut checks that a window (kernel k, stride s, pad p) over an
// input of spatial size in gives the output size out, as conv2d and the pools
// compute it (ConvOut).
func checkWindowOut(what string, in, k, s, p []int, out []int) error {
	got := []int{ConvOut(in[0], k[0], s[0], p[0]), ConvOut(in[1], k[1], s[1], p[1])}
	if !ShapeEqual(got, out) {
		return fmt.Errorf("input %s with %s %s, stride %v, pad %v gives output %s, but dy is %s",
			ShapeString(in), what, ShapeString(k), s, p, ShapeString(got), ShapeString(out))
	}
	return nil
}

func sameShapes(names []string, a []Type) error {
	for i := 1; i < len(a); i++ {
		if !ShapeEqual(a[i].Shape, a[0].Shape) {
			return fmt.Errorf("%s shape %s differs from %s shape %s", names[i], ShapeString(a[i].Shape), names[0], ShapeString(a[0].Shape))
		}
	}
	return nil
}

func inRange(lo, hi float64, hiOpen bool) func(v any) error {
	return func(v any) error {
		f := v.(float64)
		if f < lo || f > hi || (hiOpen && f == hi) {
			closer := "]"
			if hiOpen {
				closer = ")"
			}
			return fmt.Errorf("must be in [%v, %v%s, got %v", lo, hi, closer, f)
		}
		return nil
	}
}

func nonNegativeFloat(v any) error {
	if f := v.(float64); f < 0 {
		return fmt.Errorf("must not be negative, got %v", f)
	}
	return nil
}

// optimizerInfer is the shape rule of the optimizer updates: every operand
// has the param's shape; the results are the new param and the new state
// (one result per state operand).
func optimizerInfer(n *Node, a []Type) ([]Type, error) {
	if err := sameShapes(n.opDef().Operands, a); err != nil {
		return nil, err
	}
	out := make([]Type, 1, len(a))
	out[0] = same(a[0])
	for range a[2:] {
		out = append(out, same(a[0]))
	}
	return out, nil
}

func init() {
	register(&OpDef{Name: OpReLUGrad, Operands: []string{"dy", "y"}, MinArgs: 2, MaxArgs: 2,
		Doc:     "ReLU backward on its output: dy where y > 0, else 0 (PyTorch threshold_backward)",
		Layouts: allPlain, DTypes: floatDTypes,
		Infer: func(n *Node, a []Type) (Type, error) {
			if err := sameShapes([]string{"dy", "y"}, a); err != nil {
				return Type{}, err
			}
			return same(a[0]), nil
		}})
	register(&OpDef{Name: OpConv2DGradInput, Operands: []string{"dy", "weight"}, MinArgs: 2, MaxArgs: 2,
		Doc:     "conv2d's input gradient (transposed convolution of dy with weight) onto an input of size input_hw",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: convAttrsTrain(AttrDef{Name: "input_hw", Kind: AttrInts, Len: 2, Check: positive}),
		Infer: func(n *Node, a []Type) (Type, error) {
			dy, w := a[0], a[1]
			if err := rankIs(dy, 4, "dy"); err != nil {
				return Type{}, err
			}
			if err := rankIs(w, 4, "weight"); err != nil {
				return Type{}, err
			}
			g, o := n.Attrs.Int("groups"), w.Shape[0]
			if dy.Shape[1] != o {
				return Type{}, fmt.Errorf("dy has %d channels, weight %s has %d output channels", dy.Shape[1], ShapeString(w.Shape), o)
			}
			if o%g != 0 {
				return Type{}, fmt.Errorf("groups %d must divide output channels %d", g, o)
			}
			hw := n.Attrs.Ints("input_hw")
			if err := checkWindowOut("kernel", hw, w.Shape[2:], n.Attrs.Ints("stride"), n.Attrs.Ints("pad"), dy.Shape[2:]); err != nil {
				return Type{}, err
			}
			return Type{DType: dy.DType, Shape: []int{dy.Shape[0], w.Shape[1] * g, hw[0], hw[1]}}, nil
		},
		MACs: func(n *Node, a []Type) int64 {
			w := a[1].Shape
			return int64(a[0].Numel()) * int64(w[1]*w[2]*w[3])
		}})
	register(&OpDef{Name: OpConv2DGradWeight, Operands: []string{"dy", "x"}, MinArgs: 2, MaxArgs: 2,
		Doc:     "conv2d's weight gradient: dy correlated with the input x, summed over the batch",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: convAttrsTrain(AttrDef{Name: "kernel", Kind: AttrInts, Len: 2, Check: positive}),
		Infer: func(n *Node, a []Type) (Type, error) {
			dy, x := a[0], a[1]
			if err := rankIs(dy, 4, "dy"); err != nil {
				return Type{}, err
			}
			if err := rankIs(x, 4, "input"); err != nil {
				return Type{}, err
			}
			if dy.Shape[0] != x.Shape[0] {
				return Type{}, fmt.Errorf("dy has batch %d, input has %d", dy.Shape[0], x.Shape[0])
			}
			g, c, o := n.Attrs.Int("groups"), x.Shape[1], dy.Shape[1]
			if c%g != 0 || o%g != 0 {
				return Type{}, fmt.Errorf("groups %d must divide input channels %d and output channels %d", g, c, o)
			}
			k := n.Attrs.Ints("kernel")
			if err := checkWindowOut("kernel", x.Shape[2:], k, n.Attrs.Ints("stride"), n.Attrs.Ints("pad"), dy.Shape[2:]); err != nil {
				return Type{}, err
			}
			return Type{DType: dy.DType, Shape: []int{o, c / g, k[0], k[1]}}, nil
		},
		MACs: func(n *Node, a []Type) int64 {
			return int64(a[0].Numel()) * int64(n.Type.Numel()/n.Type.Shape[0])
		}})
	register(&OpDef{Name: OpBiasGrad, Operands: []string{"dy"}, MinArgs: 1, MaxArgs: 1,
		Doc:     "a per-channel bias's gradient: dy summed over every axis but 1, [N,C,...] -> [C]",
		Layouts: allPlain, DTypes: floatDTypes,
		Infer: func(n *Node, a []Type) (Type, error) {
			if a[0].Rank() < 2 {
				return Type{}, fmt.Errorf("dy must have rank >= 2, got %s", a[0])
			}
			return Type{DType: a[0].DType, Shape: []int{a[0].Shape[1]}}, nil
		}})
	register(&OpDef{Name: OpBatchNormTrainGrad, Operands: []string{"dy", "x", "weight", "mean", "var"}, MinArgs: 5, MaxArgs: 5,
		Doc: "batchnorm_train backward with the batch mean and biased variance: results dx, dweight, dbias " +
			"(Ioffe and Szegedy 2015; PyTorch's batch_norm_backward)",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: append([]AttrDef(nil), table[OpBatchNormTrain].Attrs...), // eps, ghost, sync
		InferResults: func(n *Node, a []Type) ([]Type, error) {
			if a[1].Rank() < 2 {
				return nil, fmt.Errorf("input must have rank >= 2, got %s", a[1])
			}
			if k := n.Attrs.Int("ghost"); k > 0 && a[1].Shape[0]%k != 0 {
				return nil, fmt.Errorf("ghost batch %d does not divide the batch %d", k, a[1].Shape[0])
			}
			if err := sameShapes([]string{"dy", "x"}, a[:2]); err != nil {
				return nil, err
			}
			c := a[1].Shape[1]
			for i, p := range a[2:] {
				if p.Rank() != 1 || p.Shape[0] != c {
					return nil, fmt.Errorf("%s shape %s, want %d", n.opDef().Operands[i+2], ShapeString(p.Shape), c)
				}
			}
			vec := Type{DType: a[1].DType, Shape: []int{c}}
			return []Type{same(a[1]), vec, same(vec)}, nil
		}})
	register(&OpDef{Name: OpMaxPoolGrad, Operands: []string{"dy", "x"}, MinArgs: 2, MaxArgs: 2,
		Doc: "maxpool backward: each dy is added at its window's first maximum in x (row-major; padding never wins), " +
			"as PyTorch's CPU max_pool2d_with_indices_backward",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: append([]AttrDef(nil), windowAttrs...),
		Infer: func(n *Node, a []Type) (Type, error) {
			out, err := poolInfer(n, a[1:])
			if err != nil {
				return Type{}, err
			}
			if !ShapeEqual(out.Shape, a[0].Shape) {
				return Type{}, fmt.Errorf("maxpool of input %s gives %s, but dy is %s", ShapeString(a[1].Shape), ShapeString(out.Shape), ShapeString(a[0].Shape))
			}
			return same(a[1]), nil
		}})
	register(&OpDef{Name: OpAvgPoolGrad, Operands: []string{"dy"}, MinArgs: 1, MaxArgs: 1,
		Doc:     "avgpool backward onto an input of size input_hw: each dy divided by its window's divisor, added over the window",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: append(append([]AttrDef(nil), windowAttrs...),
			AttrDef{Name: "count_include_pad", Kind: AttrBool, Default: true},
			AttrDef{Name: "input_hw", Kind: AttrInts, Len: 2, Check: positive}),
		Infer: func(n *Node, a []Type) (Type, error) {
			dy := a[0]
			if err := rankIs(dy, 4, "dy"); err != nil {
				return Type{}, err
			}
			hw := n.Attrs.Ints("input_hw")
			x := Type{DType: dy.DType, Shape: []int{dy.Shape[0], dy.Shape[1], hw[0], hw[1]}}
			out, err := poolInfer(n, []Type{x})
			if err != nil {
				return Type{}, err
			}
			if !ShapeEqual(out.Shape, dy.Shape) {
				return Type{}, fmt.Errorf("avgpool of input %s gives %s, but dy is %s", ShapeString(x.Shape), ShapeString(out.Shape), ShapeString(dy.Shape))
			}
			return x, nil
		}})
	register(&OpDef{Name: OpGlobalAvgPoolGrad, Operands: []string{"dy"}, MinArgs: 1, MaxArgs: 1,
		Doc:     "global_avgpool backward: dy [N,C,1,1] / (H·W) broadcast to [N,C,H,W], H,W = input_hw",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: []AttrDef{{Name: "input_hw", Kind: AttrInts, Len: 2, Check: positive}},
		Infer: func(n *Node, a []Type) (Type, error) {
			dy := a[0]
			if dy.Rank() != 4 || dy.Shape[2] != 1 || dy.Shape[3] != 1 {
				return Type{}, fmt.Errorf("dy must be [N,C,1,1], got %s", dy)
			}
			hw := n.Attrs.Ints("input_hw")
			return Type{DType: dy.DType, Shape: []int{dy.Shape[0], dy.Shape[1], hw[0], hw[1]}}, nil
		}})
	register(&OpDef{Name: OpDenseGradInput, Operands: []string{"dy", "weight"}, MinArgs: 2, MaxArgs: 2,
		Doc:     "dense's input gradient: dx[N,I] = dy[N,O] · weight[O,I]",
		Layouts: allPlain, DTypes: floatDTypes,
		Infer: func(n *Node, a []Type) (Type, error) {
			dy, w := a[0], a[1]
			if err := rankIs(dy, 2, "dy"); err != nil {
				return Type{}, err
			}
			if err := rankIs(w, 2, "weight"); err != nil {
				return Type{}, err
			}
			if dy.Shape[1] != w.Shape[0] {
				return Type{}, fmt.Errorf("dy has %d outputs, weight %s has %d", dy.Shape[1], ShapeString(w.Shape), w.Shape[0])
			}
			return Type{DType: dy.DType, Shape: []int{dy.Shape[0], w.Shape[1]}}, nil
		},
		MACs: func(n *Node, a []Type) int64 { return int64(n.Type.Numel()) * int64(a[0].Shape[1]) }})
	register(&OpDef{Name: OpDenseGradWeight, Operands: []string{"dy", "x"}, MinArgs: 2, MaxArgs: 2,
		Doc:     "dense's weight gradient: dweight[O,I] = dy[N,O]ᵀ · x[N,I]",
		Layouts: allPlain, DTypes: floatDTypes,
		Infer: func(n *Node, a []Type) (Type, error) {
			dy, x := a[0], a[1]
			if err := rankIs(dy, 2, "dy"); err != nil {
				return Type{}, err
			}
			if err := rankIs(x, 2, "input"); err != nil {
				return Type{}, err
			}
			if dy.Shape[0] != x.Shape[0] {
				return Type{}, fmt.Errorf("dy has batch %d, input has %d", dy.Shape[0], x.Shape[0])
			}
			return Type{DType: dy.DType, Shape: []int{dy.Shape[1], x.Shape[1]}}, nil
		},
		MACs: func(n *Node, a []Type) int64 { return int64(n.Type.Numel()) * int64(a[0].Shape[0]) }})
	register(&OpDef{Name: OpSlice, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1,
		Doc:     "elements [offset, offset+size) along axis (concat's backward)",
		Layouts: allPlain,
		Attrs: []AttrDef{
			{Name: "axis", Kind: AttrInt, Default: 1, Check: nonNegative},
			{Name: "offset", Kind: AttrInt, Default: 0, Check: nonNegative},
			{Name: "size", Kind: AttrInt, Check: positive},
		},
		Infer: func(n *Node, a []Type) (Type, error) {
			ax, off, size := n.Attrs.Int("axis"), n.Attrs.Int("offset"), n.Attrs.Int("size")
			if ax >= a[0].Rank() {
				return Type{}, fmt.Errorf("axis %d out of range for %s", ax, a[0])
			}
			if off+size > a[0].Shape[ax] {
				return Type{}, fmt.Errorf("range [%d, %d) exceeds axis %d of %s (size %d)", off, off+size, ax, ShapeString(a[0].Shape), a[0].Shape[ax])
			}
			t := same(a[0])
			t.Shape[ax] = size
			return t, nil
		}})
	register(&OpDef{Name: OpReshape, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1,
		Doc:     "the same elements in row-major order with a new shape (flatten's backward)",
		Layouts: allPlain,
		Attrs:   []AttrDef{{Name: "shape", Kind: AttrInts, Check: positive}},
		Infer: func(n *Node, a []Type) (Type, error) {
			s := n.Attrs.Ints("shape")
			if len(s) == 0 {
				return Type{}, fmt.Errorf("shape must have at least one dimension")
			}
			t := Type{DType: a[0].DType, Shape: append([]int(nil), s...)}
			if t.Numel() != a[0].Numel() {
				return Type{}, fmt.Errorf("shape %s has %d elements, input %s has %d", ShapeString(s), t.Numel(), ShapeString(a[0].Shape), a[0].Numel())
			}
			return t, nil
		}})
	register(&OpDef{Name: OpMul2, Operands: []string{"a", "b"}, MinArgs: 2, MaxArgs: 2,
		Doc:     "elementwise a * b (equal shapes)",
		Layouts: allPlain, DTypes: floatDTypes,
		Infer: func(n *Node, a []Type) (Type, error) {
			if err := sameShapes([]string{"a", "b"}, a); err != nil {
				return Type{}, err
			}
			return same(a[0]), nil
		}})
	register(&OpDef{Name: OpDropoutTrain, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1,
		Doc: "training dropout: results y = x*mask/(1-p) and the 0/1 mask, element i kept when " +
			"SplitMix64(seed, i) as a uniform [0,1) number is >= p",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: []AttrDef{
			{Name: "p", Kind: AttrFloat, Default: 0.0, Check: inRange(0, 1, true)},
			{Name: "seed", Kind: AttrInt, Default: 0},
		},
		InferResults: func(n *Node, a []Type) ([]Type, error) {
			return []Type{same(a[0]), same(a[0])}, nil
		}})
	xentAttrs := []AttrDef{{Name: "smoothing", Kind: AttrFloat, Default: 0.0, Check: inRange(0, 1, false)}}
	xentCheck := func(a []Type) error {
		if err := rankIs(a[0], 2, "logits"); err != nil {
			return err
		}
		return sameShapes([]string{"logits", "target"}, a)
	}
	register(&OpDef{Name: OpSoftmaxXent, Operands: []string{"logits", "target"}, MinArgs: 2, MaxArgs: 2,
		Doc: "mean over the batch of -sum_k t_k log softmax(logits)_k, t = (1-smoothing)*target + smoothing/K " +
			"(PyTorch CrossEntropyLoss(label_smoothing)); a rank-0 result",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: xentAttrs,
		Infer: func(n *Node, a []Type) (Type, error) {
			if err := xentCheck(a); err != nil {
				return Type{}, err
			}
			return Type{DType: a[0].DType, Shape: []int{}}, nil
		}})
	register(&OpDef{Name: OpSoftmaxXentGrad, Operands: []string{"logits", "target"}, MinArgs: 2, MaxArgs: 2,
		Doc:     "softmax_xent's gradient: (softmax(logits) - t) / N",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: xentAttrs,
		Infer: func(n *Node, a []Type) (Type, error) {
			if err := xentCheck(a); err != nil {
				return Type{}, err
			}
			return same(a[0]), nil
		}})
	rmsAttrs := []AttrDef{
		{Name: "lr", Kind: AttrFloat, Check: nonNegativeFloat},
		{Name: "alpha", Kind: AttrFloat, Default: 0.99, Check: inRange(0, 1, false)},
		{Name: "eps", Kind: AttrFloat, Default: 1e-8, Check: nonNegativeFloat},
		{Name: "momentum", Kind: AttrFloat, Default: 0.0, Check: nonNegativeFloat},
		{Name: "weight_decay", Kind: AttrFloat, Default: 0.0, Check: nonNegativeFloat},
	}
	rmsOperands := []string{"param", "grad", "square_avg", "momentum_buf"}
	register(&OpDef{Name: OpRMSPropUpdate, Operands: rmsOperands, MinArgs: 4, MaxArgs: 4,
		Doc: "PyTorch RMSprop step (centered=False): g += wd*p; v = alpha*v + (1-alpha)*g²; " +
			"b = momentum*b + g/(sqrt(v)+eps); p -= lr*b; results p, v, b",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: rmsAttrs, InferResults: optimizerInfer})
	register(&OpDef{Name: OpRMSPropTFUpdate, Operands: rmsOperands, MinArgs: 4, MaxArgs: 4,
		Doc: "TensorFlow RMSProp step (ApplyRMSProp): g += wd*p; v = alpha*v + (1-alpha)*g²; " +
			"b = momentum*b + lr*g/sqrt(v+eps); p -= b; results p, v, b",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: rmsAttrs, InferResults: optimizerInfer})
	register(&OpDef{Name: OpSGDUpdate, Operands: []string{"param", "grad", "momentum_buf"}, MinArgs: 3, MaxArgs: 3,
		Doc:     "PyTorch SGD step (dampening 0, not Nesterov): g += wd*p; b = momentum*b + g; p -= lr*b; results p, b",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: []AttrDef{
			{Name: "lr", Kind: AttrFloat, Check: nonNegativeFloat},
			{Name: "momentum", Kind: AttrFloat, Default: 0.0, Check: nonNegativeFloat},
			{Name: "weight_decay", Kind: AttrFloat, Default: 0.0, Check: nonNegativeFloat},
		},
		InferResults: optimizerInfer})
}
