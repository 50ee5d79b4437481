package interp

import (
	"fmt"
	"math"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// evaluator carries the per-run settings that ops need.
type evaluator struct {
	threads int
	// reuse[j] reports that the storage of operand j of the node being
	// evaluated is referenced by nothing else (Run's reference count), so an
	// op that writes into it (the "into" destination) may do so in place. Run
	// sets it before each node.
	reuse []bool
	// reducer is Options.Reducer (nil: one replica).
	reducer Reducer
}

// evalFunc computes the value of node n from its operand values, all in the
// plain layout (Run converts blocked values around the call; see evalNode).
// The graph has been verified, so operand shapes and attributes are
// consistent with the op table. evalFuncs must not modify their operands,
// except an operand j with e.reuse[j] set, which may become the result.
type evalFunc func(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error)

// evaluators maps every op the interpreter supports (other than input and
// param, which Run feeds) to its implementation.
var evaluators map[string]evalFunc

func init() {
	evaluators = map[string]evalFunc{
		ir.OpConv2D:        evalConv2D,
		ir.OpBatchNorm:     evalBatchNorm,
		ir.OpReLU:          evalReLU,
		ir.OpAdd:           evalAdd,
		ir.OpMul:           evalMul,
		ir.OpConcat:        evalConcat,
		ir.OpMaxPool:       evalMaxPool,
		ir.OpAvgPool:       evalAvgPool,
		ir.OpGlobalAvgPool: evalGlobalAvgPool,
		ir.OpFlatten:       evalView,
		ir.OpDropout:       evalView,
		ir.OpDense:         evalDense,
		ir.OpSoftmax:       evalSoftmax,
		ir.OpFusedConv:     evalFusedConv,
		ir.OpFoldBNWeight:  evalFoldBNWeight,
		ir.OpFoldBNBias:    evalFoldBNBias,
		ir.OpFoldScale:     evalMul,
		ir.OpPackWeight:    evalView,
		ir.OpReorder:       evalView,
		ir.OpEmpty:         evalEmpty,
	}
	// The activation and elementwise ops of ir/ops_ext.go (ext.go).
	for op, f := range extEvaluators {
		evaluators[op] = f
	}
	// The training ops (train.go).
	for op, f := range trainEvaluators {
		evaluators[op] = f
	}
	for op, f := range trainMultiEvaluators {
		multiEvaluators[op] = f
	}
	// The gradient clipping ops (clip.go).
	for op, f := range clipEvaluators {
		evaluators[op] = f
	}
}

// newOut allocates the (zeroed) result tensor of n.
func newOut(n *ir.Node) *tensor.Tensor {
	return &tensor.Tensor{Shape: append([]int(nil), n.Type.Shape...), Data: make([]float32, n.Type.Numel())}
}

// elementwiseGrain is the smallest chunk of elements worth a goroutine.
const elementwiseGrain = 1 << 15

// evalConv2D computes a grouped 2-D convolution with an optional bias; see
// conv.
func evalConv2D(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	out := newOut(n)
	var ep epilogue
	if len(args) == 3 {
		ep.bias = args[2].Data
	}
	conv(e, n, args[0], args[1], out, 0, ep)
	return out, nil
}

// epilogue is what a convolution applies to each output after the GEMM sum,
// in this order of float32 operations: + bias[o], + residual, ReLU, then
// clip to [lo, hi] (as evalClip). Absent parts (nil, false) are skipped.
type epilogue struct {
	bias     []float32 // per output channel
	residual []float32 // N×O×Ho×Wo, the shape of the convolution's value
	relu     bool
	clip     bool
	lo, hi   float32
}

func (ep epilogue) empty() bool { return ep.bias == nil && ep.residual == nil && !ep.relu && !ep.clip }

// conv computes a grouped 2-D cross-correlation with symmetric zero padding
// (attributes stride, pad, groups, dilation of n) of x (NCHW) with w (OIHW) and writes
// its value, followed by the epilogue, to channels [off, off+O) of dst, an
// N×D×Ho×Wo tensor (D = O and off = 0 when the convolution has dst to
// itself). It runs one GEMM per image and group:
//
//	out[n, g*Og:(g+1)*Og, :] (Og × Ho·Wo) = W_g (Og × Cg·KH·KW) · B_{n,g} (Cg·KH·KW × Ho·Wo)
//
// where W_g is the group's rows of the OIHW weight (already row-major in the
// right order) and B_{n,g} the im2col matrix of the group's input channels,
// packed on the fly; for 1×1, stride-1, unpadded convolutions B_{n,g} is the
// input itself (Cg × H·W). The GEMM writes straight into dst's channel slice;
// the epilogue then runs over the same planes.
func conv(e *evaluator, n *ir.Node, x, w, dst *tensor.Tensor, off int, ep epilogue) {
	stride, pad, groups := n.Attrs.Ints("stride"), n.Attrs.Ints("pad"), n.Attrs.Int("groups")
	dil := n.Attrs.Ints("dilation")
	batch, c, h, wd := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	o, cg, kh, kw := w.Shape[0], w.Shape[1], w.Shape[2], w.Shape[3]
	d, ho, wo := dst.Shape[1], dst.Shape[2], dst.Shape[3]
	og := o / groups
	k := cg * kh * kw
	pix := ho * wo

	as := make([]*packedA, groups)
	for g := range as {
		as[g] = packA(w.Data[g*og*k:(g+1)*og*k], og, k, k)
	}
	direct := kh == 1 && kw == 1 && stride[0] == 1 && stride[1] == 1 && pad[0] == 0 && pad[1] == 0
	var tasks []gemmTask
	for b := 0; b < batch; b++ {
		for g := 0; g < groups; g++ {
			xs := x.Data[(b*c+g*cg)*h*wd : (b*c+(g+1)*cg)*h*wd]
			var src bSource
			if direct {
				src = matB{data: xs, ld: h * wd}
			} else {
				src = &im2colB{x: xs, h: h, w: wd, kh: kh, kw: kw,
					sh: stride[0], sw: stride[1], ph: pad[0], pw: pad[1], dh: dil[0], dw: dil[1], wo: wo}
			}
			c0 := b*d + off + g*og // first output channel of this task in dst
			tasks = append(tasks, gemmTask{a: as[g], b: src, n: pix,
				c: dst.Data[c0*pix : (c0+og)*pix], ldc: pix})
		}
	}
	gemm(tasks, e.threads)
	if ep.empty() {
		return
	}
	parallelRange(e.threads, batch*o, max(1, elementwiseGrain/pix), func(lo, hi int) {
		for p := lo; p < hi; p++ {
			b, oc := p/o, p%o
			plane := dst.Data[(b*d+off+oc)*pix : (b*d+off+oc+1)*pix]
			var bv float32
			if ep.bias != nil {
				bv = ep.bias[oc]
			}
			var res []float32
			if ep.residual != nil {
				res = ep.residual[p*pix : (p+1)*pix]
			}
			for i, v := range plane {
				if ep.bias != nil {
					v += bv
				}
				if res != nil {
					v += res[i]
				}
				if ep.relu && v < 0 {
					v = 0 // NaN stays NaN, as in evalReLU
				}
				if ep.clip {
					if v < ep.lo {
						v = ep.lo
					}
					if v > ep.hi {
						v = ep.hi
					}
				}
				plane[i] = v
			}
		}
	})
}

// evalDense computes out[N,O] = x[N,I] · W[O,I]ᵀ + bias as one GEMM with
// A = x and B = Wᵀ.
func evalDense(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x, w := args[0], args[1]
	batch, in := x.Shape[0], x.Shape[1]
	o := w.Shape[0]
	out := newOut(n)
	gemm([]gemmTask{{a: packA(x.Data, batch, in, in), b: transB{data: w.Data, ld: in}, n: o, c: out.Data, ldc: o}}, e.threads)
	if len(args) == 3 {
		bias := args[2].Data
		for b := 0; b < batch; b++ {
			row := out.Data[b*o : (b+1)*o]
			for j := range row {
				row[j] += bias[j]
			}
		}
	}
	return out, nil
}

// channelLayout returns (outer, channels, inner) for a tensor whose channel
// axis is 1: outer = shape[0], inner = prod(shape[2:]).
func channelLayout(shape []int) (outer, ch, inner int) {
	inner = 1
	for _, d := range shape[2:] {
		inner *= d
	}
	return shape[0], shape[1], inner
}

// evalBatchNorm applies inference batch normalization over axis 1. Per
// channel, scale = weight/sqrt(running_var+eps) and
// shift = bias - running_mean*scale are computed in float64 from the float32
// parameters and rounded to float32; then y = x*scale + shift in float32.
func evalBatchNorm(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x, wt, bs, mean, vr := args[0], args[1].Data, args[2].Data, args[3].Data, args[4].Data
	eps := n.Attrs.Float("eps")
	outer, ch, inner := channelLayout(x.Shape)
	scale := make([]float32, ch)
	shift := make([]float32, ch)
	for c := range ch {
		s := float64(wt[c]) / math.Sqrt(float64(vr[c])+eps)
		scale[c] = float32(s)
		shift[c] = float32(float64(bs[c]) - float64(mean[c])*s)
	}
	out := newOut(n)
	relu := n.Attrs.Bool("relu")
	parallelRange(e.threads, outer*ch, max(1, elementwiseGrain/inner), func(lo, hi int) {
		for p := lo; p < hi; p++ {
			s, t := scale[p%ch], shift[p%ch]
			src := x.Data[p*inner : (p+1)*inner]
			dst := out.Data[p*inner : (p+1)*inner]
			for i, v := range src {
				dst[i] = v*s + t
			}
			if relu {
				for i, v := range dst {
					if v < 0 {
						dst[i] = 0 // NaN stays NaN, as in evalReLU
					}
				}
			}
		}
	})
	return out, nil
}

// elementwise computes out[i] = f(i) for every element in parallel chunks.
func elementwise(e *evaluator, n *ir.Node, f func(dst []float32, lo, hi int)) *tensor.Tensor {
	out := newOut(n)
	parallelRange(e.threads, len(out.Data), elementwiseGrain, func(lo, hi int) {
		f(out.Data[lo:hi], lo, hi)
	})
	return out
}

// evalReLU computes max(x, 0); NaN stays NaN, as in PyTorch.
func evalReLU(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x := args[0].Data
	return elementwise(e, n, func(dst []float32, lo, hi int) {
		for i, v := range x[lo:hi] {
			if v < 0 {
				v = 0
			}
			dst[i] = v
		}
	}), nil
}

// evalAdd computes x + y for operands of equal shape.
func evalAdd(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x, y := args[0].Data, args[1].Data
	return elementwise(e, n, func(dst []float32, lo, hi int) {
		ys := y[lo:hi]
		for i, v := range x[lo:hi] {
			dst[i] = v + ys[i]
		}
	}), nil
}

// evalMul computes float32(c) * x; it implements mul and fold_scale.
func evalMul(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x := args[0].Data
	c := float32(n.Attrs.Float("c"))
	return elementwise(e, n, func(dst []float32, lo, hi int) {
		for i, v := range x[lo:hi] {
			dst[i] = c * v
		}
	}), nil
}

// evalView implements flatten, dropout (identity at inference), and reorder
// and pack_weight, which are the identity on logical values (Run converts the
// layouts around them): the result shares the operand's data and takes the
// node's logical shape.
func evalView(_ *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	return &tensor.Tensor{Shape: append([]int(nil), n.Type.Shape...), Data: args[0].Data}, nil
}

// evalConcat concatenates along any axis: for every index of the axes before
// it, the operands' contiguous chunks are copied one after another.
func evalConcat(_ *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	ax := n.Attrs.Int("axis")
	out := newOut(n)
	outer := 1
	for _, d := range out.Shape[:ax] {
		outer *= d
	}
	chunk := make([]int, len(args)) // elements per outer index, per operand
	total := 0
	for i, a := range args {
		chunk[i] = len(a.Data) / outer
		total += chunk[i]
	}
	for o := 0; o < outer; o++ {
		dst := out.Data[o*total : (o+1)*total]
		for i, a := range args {
			dst = dst[copy(dst, a.Data[o*chunk[i]:(o+1)*chunk[i]]):]
		}
	}
	return out, nil
}

// window describes a pooling window: kernel, stride and symmetric padding.
type window struct{ kh, kw, sh, sw, ph, pw int }

func windowOf(n *ir.Node) window {
	k, s, p := n.Attrs.Ints("kernel"), n.Attrs.Ints("stride"), n.Attrs.Ints("pad")
	return window{k[0], k[1], s[0], s[1], p[0], p[1]}
}

// rows returns the in-bounds input rows [y0, y1) of output row oy of an input
// of height h; cols likewise for columns.
func (w window) rows(oy, h int) (int, int) {
	y := oy*w.sh - w.ph
	return max(y, 0), min(y+w.kh, h)
}

func (w window) cols(ox, wd int) (int, int) {
	x := ox*w.sw - w.pw
	return max(x, 0), min(x+w.kw, wd)
}

// pool runs f on every (image, channel) plane of args[0] in parallel; f gets
// the input plane (h×w) and the output plane (ho×wo). The result is written
// to the node's destination (see evaluator.destination): a new tensor, or
// channels [offset, offset+C) of the into operand.
func pool(e *evaluator, n *ir.Node, args []*tensor.Tensor, f func(src, dst []float32)) *tensor.Tensor {
	x := args[0]
	out, off := e.destination(n, args)
	c, h, wd := x.Shape[1], x.Shape[2], x.Shape[3]
	d, ho, wo := out.Shape[1], out.Shape[2], out.Shape[3]
	planes := x.Shape[0] * c
	parallelRange(e.threads, planes, max(1, elementwiseGrain/(ho*wo*4)), func(lo, hi int) {
		for p := lo; p < hi; p++ {
			q := p/c*d + off + p%c // the plane's index in out
			f(x.Data[p*h*wd:(p+1)*h*wd], out.Data[q*ho*wo:(q+1)*ho*wo])
		}
	})
	return out
}

// evalMaxPool takes the maximum over the in-bounds pixels of each window, so
// padding never wins (PyTorch semantics); a NaN in the window gives NaN.
func evalMaxPool(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x, w := args[0], windowOf(n)
	h, wd := x.Shape[2], x.Shape[3]
	ho, wo := n.Type.Shape[2], n.Type.Shape[3]
	return pool(e, n, args, func(src, dst []float32) {
		for oy := 0; oy < ho; oy++ {
			y0, y1 := w.rows(oy, h)
			for ox := 0; ox < wo; ox++ {
				x0, x1 := w.cols(ox, wd)
				m := float32(math.Inf(-1))
				for y := y0; y < y1; y++ {
					for _, v := range src[y*wd+x0 : y*wd+x1] {
						if v > m || v != v {
							m = v
						}
						if m != m {
							break
						}
					}
				}
				dst[oy*wo+ox] = m
			}
		}
	}), nil
}

// evalAvgPool averages each window: the float32 sum of its in-bounds pixels
// (row-major order) divided by kh*kw when count_include_pad is set, else by
// the number of in-bounds pixels (PyTorch semantics with ceil_mode=False,
// where a window never extends past the padded input).
func evalAvgPool(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x, w := args[0], windowOf(n)
	includePad := n.Attrs.Bool("count_include_pad")
	h, wd := x.Shape[2], x.Shape[3]
	ho, wo := n.Type.Shape[2], n.Type.Shape[3]
	return pool(e, n, args, func(src, dst []float32) {
		for oy := 0; oy < ho; oy++ {
			y0, y1 := w.rows(oy, h)
			for ox := 0; ox < wo; ox++ {
				x0, x1 := w.cols(ox, wd)
				var s float32
				for y := y0; y < y1; y++ {
					for _, v := range src[y*wd+x0 : y*wd+x1] {
						s += v
					}
				}
				count := w.kh * w.kw
				if !includePad {
					count = (y1 - y0) * (x1 - x0)
				}
				dst[oy*wo+ox] = s / float32(count)
			}
		}
	}), nil
}

// evalGlobalAvgPool averages each (image, channel) plane: NCHW → NC11.
func evalGlobalAvgPool(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x := args[0]
	hw := x.Shape[2] * x.Shape[3]
	out := newOut(n)
	parallelRange(e.threads, len(out.Data), max(1, elementwiseGrain/hw), func(lo, hi int) {
		for p := lo; p < hi; p++ {
			out.Data[p] = sum32(x.Data[p*hw:(p+1)*hw]) / float32(hw)
		}
	})
	return out, nil
}

// sum32 returns the float32 sum of xs computed as 8 interleaved partial sums
// (lane l adds xs[l], xs[l+8], …, as a vectorised loop would) that are then
// combined pairwise. Its error grows far more slowly with len(xs) than that of
// one sequential sum.
func sum32(xs []float32) float32 {
	var p [8]float32
	i := 0
	for ; i+8 <= len(xs); i += 8 {
		v := xs[i : i+8 : i+8]
		p[0] += v[0]
		p[1] += v[1]
		p[2] += v[2]
		p[3] += v[3]
		p[4] += v[4]
		p[5] += v[5]
		p[6] += v[6]
		p[7] += v[7]
	}
	for l := 0; i < len(xs); i, l = i+1, l+1 {
		p[l] += xs[i]
	}
	return ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]))
}

// evalSoftmax computes a numerically stable softmax along the axis attribute:
// y_i = exp(x_i - max) / Σ_j exp(x_j - max), with exp and the sum in float64.
func evalSoftmax(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x := args[0]
	ax := n.Attrs.Int("axis")
	if ax >= len(x.Shape) {
		return nil, fmt.Errorf("axis %d out of range for shape %s", ax, ir.ShapeString(x.Shape))
	}
	outer, inner := 1, 1
	for _, d := range x.Shape[:ax] {
		outer *= d
	}
	for _, d := range x.Shape[ax+1:] {
		inner *= d
	}
	size := x.Shape[ax]
	out := newOut(n)
	parallelRange(e.threads, outer*inner, max(1, elementwiseGrain/size), func(lo, hi int) {
		ex := make([]float64, size)
		for r := lo; r < hi; r++ {
			o, in := r/inner, r%inner
			base := o*size*inner + in
			m := math.Inf(-1)
			for i := 0; i < size; i++ {
				if v := float64(x.Data[base+i*inner]); v > m || v != v {
					m = v
				}
			}
			var s float64
			for i := range ex {
				ex[i] = math.Exp(float64(x.Data[base+i*inner]) - m)
				s += ex[i]
			}
			for i, v := range ex {
				out.Data[base+i*inner] = float32(v / s)
			}
		}
	})
	return out, nil
}
