package experiment

import (
	"fmt"
	"math"
	"runtime"
	"sync"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// t64 is a float64 tensor, row-major, logical (plain) layout.
type t64 struct {
	shape []int
	d     []float64
}

func newT64(shape []int) *t64 {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return &t64{shape: append([]int(nil), shape...), d: make([]float64, n)}
}

func fromT32(t *tensor.Tensor) *t64 {
	out := &t64{shape: append([]int(nil), t.Shape...), d: make([]float64, len(t.Data))}
	for i, v := range t.Data {
		out.d[i] = float64(v)
	}
	return out
}

// Eval64 evaluates the nodes of g needed for the nodes in want entirely in
// float64: every input and parameter is widened from float32 once, and
// every op computes and stores float64. It is the float64 reference of the
// precision study (PrecisionStudy), written independently of ir/interp (a
// direct transcription of each op's definition in ir/ops*.go) for the
// forward and backward ops of the training step graphs of the mini
// networks: conv2d (dilation 1), batchnorm_train, relu, add, mul, concat,
// maxpool, avgpool, global_avgpool, flatten, reshape, dense, dropout with
// p = 0, softmax_xent and their gradient ops. Any other op, or an
// unsupported attribute, is an error naming the node. Values are freed
// after their last use.
func Eval64(g *ir.Graph, params, inputs map[string]*tensor.Tensor, want []int) (map[int]*t64, error) {
	return eval64Graph(g, params, inputs, want, nil)
}

// eval64Graph is Eval64 with perturb, when set, applied to every param's
// widened float64 values before use (the precision study's control).
func eval64Graph(g *ir.Graph, params, inputs map[string]*tensor.Tensor, want []int, perturb func(name string, d []float64)) (map[int]*t64, error) {
	need := make([]bool, len(g.Nodes))
	for _, w := range want {
		need[w] = true
	}
	for i := len(g.Nodes) - 1; i >= 0; i-- {
		if need[i] {
			for _, a := range g.Nodes[i].Args {
				need[a] = true
			}
		}
	}
	last := make([]int, len(g.Nodes))
	for i, n := range g.Nodes {
		if need[i] {
			for _, a := range n.Args {
				last[a] = i
			}
		}
	}
	keep := map[int]bool{}
	for _, w := range want {
		keep[w] = true
	}
	vals := make([]*t64, len(g.Nodes))
	multi := map[int][]*t64{}
	for i, n := range g.Nodes {
		if !need[i] {
			continue
		}
		args := make([]*t64, len(n.Args))
		for k, a := range n.Args {
			args[k] = vals[a]
		}
		var err error
		switch n.Op {
		case ir.OpInput, ir.OpParam:
			src := inputs[n.Name]
			if n.Op == ir.OpParam {
				src = params[n.Name]
			}
			if src == nil {
				return nil, fmt.Errorf("%s %s: no value given", n.Op, n.Name)
			}
			vals[i] = fromT32(src)
			if n.Op == ir.OpParam && perturb != nil {
				perturb(n.Name, vals[i].d)
			}
		case ir.OpBatchNormTrain, ir.OpBatchNormTrainGrad:
			multi[i], err = eval64Multi(n, args)
		case ir.OpResult:
			rs := multi[n.Args[0]]
			k := n.Attrs.Int("index")
			if k < 0 || k >= len(rs) {
				return nil, fmt.Errorf("%s: result %d of %d", nodeRef(g, i), k, len(rs))
			}
			vals[i] = rs[k]
		default:
			vals[i], err = eval64(n, args)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", nodeRef(g, i), err)
		}
		for _, a := range n.Args {
			if last[a] == i && !keep[a] {
				vals[a] = nil
				delete(multi, a)
			}
		}
	}
	out := map[int]*t64{}
	for _, w := range want {
		out[w] = vals[w]
	}
	return out, nil
}

func nodeRef(g *ir.Graph, i int) string {
	n := g.Nodes[i]
	s := fmt.Sprintf("%%%d %s", i, n.Op)
	if n.Name != "" {
		s += " " + n.Name
	}
	if n.Pos.Line > 0 {
		s = fmt.Sprintf("%s (%s)", s, n.Pos)
	}
	return s
}

// par runs f(i) for i in [0, n) on GOMAXPROCS goroutines.
func par(n int, f func(i int)) {
	workers := min(n, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := 0
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// win is a pooling or convolution window.
type win struct{ kh, kw, sh, sw, ph, pw int }

func (w win) rows(oy, h int) (int, int) { y := oy*w.sh - w.ph; return max(y, 0), min(y+w.kh, h) }
func (w win) cols(ox, wd int) (int, int) {
	x := ox*w.sw - w.pw
	return max(x, 0), min(x+w.kw, wd)
}

func winOf(n *ir.Node) win {
	k, s, p := n.Attrs.Ints("kernel"), n.Attrs.Ints("stride"), n.Attrs.Ints("pad")
	return win{k[0], k[1], s[0], s[1], p[0], p[1]}
}

// convGeo is a convolution's geometry: input x (b, c, h, w), weight
// (o, cg, kh, kw), output (b, o, ho, wo).
type convGeo struct {
	b, c, h, w, o, ho, wo, cg, og, kh, kw, sh, sw, ph, pw int
}

func convGeoOf(n *ir.Node, x, w, y []int) (convGeo, error) {
	if d, ok := n.Attrs["dilation"]; ok {
		if ds, _ := d.([]int); len(ds) == 2 && (ds[0] != 1 || ds[1] != 1) {
			return convGeo{}, fmt.Errorf("dilation %v: the float64 reference supports 1 only", ds)
		}
	}
	s, p, g := n.Attrs.Ints("stride"), n.Attrs.Ints("pad"), n.Attrs.Int("groups")
	if g <= 0 {
		g = 1
	}
	return convGeo{b: x[0], c: x[1], h: x[2], w: x[3], o: y[1], ho: y[2], wo: y[3], cg: w[1], og: w[0] / g,
		kh: w[2], kw: w[3], sh: s[0], sw: s[1], ph: p[0], pw: p[1]}, nil
}

// each calls item(b, o, c) for every (image, output channel, input
// channel) triple of the convolution's groups, in parallel over (b, o)
// work items when byOut, else over (b, c) items; item must write only to
// its work item's plane.
func (cg convGeo) each(item func(b, o, c int), byOut bool) {
	if byOut {
		par(cg.b*cg.o, func(p int) {
			b, o := p/cg.o, p%cg.o
			grp := o / cg.og
			for cl := 0; cl < cg.cg; cl++ {
				item(b, o, grp*cg.cg+cl)
			}
		})
		return
	}
	par(cg.b*cg.c, func(p int) {
		b, c := p/cg.c, p%cg.c
		grp := c / cg.cg
		for o := grp * cg.og; o < (grp+1)*cg.og; o++ {
			item(b, o, c)
		}
	})
}

// span returns the output positions [lo, hi) whose tap k lands inside an
// input of size in (0 ≤ o·s − p + k < in).
func span(out, in, k, s, p int) (int, int) {
	lo := 0
	if d := p - k; d > 0 {
		lo = (d + s - 1) / s
	}
	hi := 0
	if d := in - 1 + p - k; d >= 0 {
		hi = d/s + 1
	}
	return lo, max(lo, min(hi, out))
}

// taps calls f(oy, iy, ky, kx, ox0, ox1, ix0) for every output row and
// kernel tap that lands inside the input: output columns [ox0, ox1) read
// input columns ix0, ix0+sw, ….
func (cg convGeo) taps(f func(oy, iy, ky, kx, ox0, ox1, ix0 int)) {
	for ky := 0; ky < cg.kh; ky++ {
		oy0, oy1 := span(cg.ho, cg.h, ky, cg.sh, cg.ph)
		for kx := 0; kx < cg.kw; kx++ {
			ox0, ox1 := span(cg.wo, cg.w, kx, cg.sw, cg.pw)
			if ox0 >= ox1 {
				continue
			}
			for oy := oy0; oy < oy1; oy++ {
				f(oy, oy*cg.sh-cg.ph+ky, ky, kx, ox0, ox1, ox0*cg.sw-cg.pw+kx)
			}
		}
	}
}

func eval64(n *ir.Node, a []*t64) (*t64, error) {
	shape := n.Type.Shape
	switch n.Op {
	case ir.OpConv2D:
		out := newT64(shape)
		cg, err := convGeoOf(n, a[0].shape, a[1].shape, shape)
		if err != nil {
			return nil, err
		}
		x, w := a[0].d, a[1].d
		cg.each(func(b, o, c int) {
			dst := out.d[(b*cg.o+o)*cg.ho*cg.wo:]
			src := x[(b*cg.c+c)*cg.h*cg.w:]
			wk := w[(o*cg.cg+c%cg.cg)*cg.kh*cg.kw:]
			cg.taps(func(oy, iy, ky, kx, ox0, ox1, ix int) {
				wv := wk[ky*cg.kw+kx]
				row, in := dst[oy*cg.wo:], src[iy*cg.w:]
				for ox := ox0; ox < ox1; ox++ {
					row[ox] += wv * in[ix]
					ix += cg.sw
				}
			})
		}, true)
		if len(a) > 2 {
			for i := range out.d {
				out.d[i] += a[2].d[i/(cg.ho*cg.wo)%cg.o]
			}
		}
		return out, nil
	case ir.OpConv2DGradInput: // dy, weight → dx
		out := newT64(shape)
		cg, err := convGeoOf(n, shape, a[1].shape, a[0].shape)
		if err != nil {
			return nil, err
		}
		dy, w := a[0].d, a[1].d
		cg.each(func(b, o, c int) {
			dst := out.d[(b*cg.c+c)*cg.h*cg.w:]
			d := dy[(b*cg.o+o)*cg.ho*cg.wo:]
			wk := w[(o*cg.cg+c%cg.cg)*cg.kh*cg.kw:]
			cg.taps(func(oy, iy, ky, kx, ox0, ox1, ix int) {
				wv := wk[ky*cg.kw+kx]
				row, dr := dst[iy*cg.w:], d[oy*cg.wo:]
				for ox := ox0; ox < ox1; ox++ {
					row[ix] += wv * dr[ox]
					ix += cg.sw
				}
			})
		}, false)
		return out, nil
	case ir.OpConv2DGradWeight: // dy, x → dw
		out := newT64(shape)
		cg, err := convGeoOf(n, a[1].shape, shape, a[0].shape)
		if err != nil {
			return nil, err
		}
		dy, x := a[0].d, a[1].d
		par(cg.o, func(o int) {
			grp := o / cg.og
			for cl := 0; cl < cg.cg; cl++ {
				c := grp*cg.cg + cl
				dst := out.d[(o*cg.cg+cl)*cg.kh*cg.kw:]
				for b := 0; b < cg.b; b++ {
					d := dy[(b*cg.o+o)*cg.ho*cg.wo:]
					src := x[(b*cg.c+c)*cg.h*cg.w:]
					cg.taps(func(oy, iy, ky, kx, ox0, ox1, ix int) {
						acc := 0.0
						dr, in := d[oy*cg.wo:], src[iy*cg.w:]
						for ox := ox0; ox < ox1; ox++ {
							acc += dr[ox] * in[ix]
							ix += cg.sw
						}
						dst[ky*cg.kw+kx] += acc
					})
				}
			}
		})
		return out, nil
	case ir.OpBiasGrad:
		out := newT64(shape)
		c := a[0].shape[1]
		inner := len(a[0].d) / (a[0].shape[0] * c)
		for i, v := range a[0].d {
			out.d[i/inner%c] += v
		}
		return out, nil
	case ir.OpReLU:
		out := newT64(shape)
		for i, v := range a[0].d {
			out.d[i] = math.Max(v, 0)
		}
		return out, nil
	case ir.OpReLUGrad: // dy, y
		out := newT64(shape)
		for i, v := range a[0].d {
			if a[1].d[i] > 0 {
				out.d[i] = v
			}
		}
		return out, nil
	case ir.OpAdd:
		out := newT64(shape)
		for i := range out.d {
			out.d[i] = a[0].d[i] + a[1].d[i]
		}
		return out, nil
	case ir.OpMul:
		out := newT64(shape)
		c := n.Attrs.Float("c")
		for i, v := range a[0].d {
			out.d[i] = c * v
		}
		return out, nil
	case ir.OpMul2:
		out := newT64(shape)
		for i := range out.d {
			out.d[i] = a[0].d[i] * a[1].d[i]
		}
		return out, nil
	case ir.OpDropout:
		if p := n.Attrs.Float("p"); p != 0 {
			return nil, fmt.Errorf("dropout p=%v: the float64 reference takes p = 0 only (a seeded mask would have to match the interpreter's)", p)
		}
		return a[0], nil
	case ir.OpFlatten, ir.OpReshape:
		return &t64{shape: append([]int(nil), shape...), d: a[0].d}, nil
	case ir.OpConcat:
		out := newT64(shape)
		ax := n.Attrs.Int("axis")
		outer, inner := 1, 1
		for _, s := range shape[:ax] {
			outer *= s
		}
		for _, s := range shape[ax+1:] {
			inner *= s
		}
		off := 0
		for _, t := range a {
			k := t.shape[ax] * inner
			for o := 0; o < outer; o++ {
				copy(out.d[o*shape[ax]*inner+off:], t.d[o*k:(o+1)*k])
			}
			off += k
		}
		return out, nil
	case ir.OpSlice:
		out := newT64(shape)
		ax, off, size := n.Attrs.Int("axis"), n.Attrs.Int("offset"), n.Attrs.Int("size")
		outer, inner := 1, 1
		for _, s := range shape[:ax] {
			outer *= s
		}
		for _, s := range shape[ax+1:] {
			inner *= s
		}
		full := a[0].shape[ax]
		for o := 0; o < outer; o++ {
			copy(out.d[o*size*inner:(o+1)*size*inner], a[0].d[(o*full+off)*inner:])
		}
		return out, nil
	case ir.OpMaxPool, ir.OpAvgPool, ir.OpMaxPoolGrad, ir.OpAvgPoolGrad:
		return pool64(n, a)
	case ir.OpGlobalAvgPool:
		out := newT64(shape)
		hw := a[0].shape[2] * a[0].shape[3]
		for p := range out.d {
			s := 0.0
			for _, v := range a[0].d[p*hw : (p+1)*hw] {
				s += v
			}
			out.d[p] = s / float64(hw)
		}
		return out, nil
	case ir.OpGlobalAvgPoolGrad:
		out := newT64(shape)
		hw := shape[2] * shape[3]
		for i := range out.d {
			out.d[i] = a[0].d[i/hw] / float64(hw)
		}
		return out, nil
	case ir.OpDense: // x[N,I], w[O,I], b[O]
		out := newT64(shape)
		nb, o, in := shape[0], shape[1], a[0].shape[1]
		for b := 0; b < nb; b++ {
			for j := 0; j < o; j++ {
				s := 0.0
				for k := 0; k < in; k++ {
					s += a[0].d[b*in+k] * a[1].d[j*in+k]
				}
				if len(a) > 2 {
					s += a[2].d[j]
				}
				out.d[b*o+j] = s
			}
		}
		return out, nil
	case ir.OpDenseGradInput: // dy[N,O], w[O,I] → dx[N,I]
		out := newT64(shape)
		nb, in, o := shape[0], shape[1], a[0].shape[1]
		for b := 0; b < nb; b++ {
			for j := 0; j < o; j++ {
				g := a[0].d[b*o+j]
				for k := 0; k < in; k++ {
					out.d[b*in+k] += g * a[1].d[j*in+k]
				}
			}
		}
		return out, nil
	case ir.OpDenseGradWeight: // dy[N,O], x[N,I] → dw[O,I]
		out := newT64(shape)
		o, in := shape[0], shape[1]
		nb := a[0].shape[0]
		for b := 0; b < nb; b++ {
			for j := 0; j < o; j++ {
				g := a[0].d[b*o+j]
				for k := 0; k < in; k++ {
					out.d[j*in+k] += g * a[1].d[b*in+k]
				}
			}
		}
		return out, nil
	case ir.OpSoftmaxXent, ir.OpSoftmaxXentGrad:
		return xent64(n, a)
	}
	return nil, fmt.Errorf("op %s: not supported by the float64 reference", n.Op)
}

// pool64 computes maxpool, avgpool and their gradients per (image,
// channel) plane, with the interpreter's tie rule for maxpool (the first
// maximum in row-major order wins; padding never does).
func pool64(n *ir.Node, a []*t64) (*t64, error) {
	w := winOf(n)
	out := newT64(n.Type.Shape)
	grad := n.Op == ir.OpMaxPoolGrad || n.Op == ir.OpAvgPoolGrad
	var in, o []int // input and output plane shapes
	if grad {
		in, o = n.Type.Shape, a[0].shape
	} else {
		in, o = a[0].shape, n.Type.Shape
	}
	h, wd, ho, wo := in[2], in[3], o[2], o[3]
	include := n.Op != ir.OpMaxPool && n.Op != ir.OpMaxPoolGrad && n.Attrs.Bool("count_include_pad")
	par(in[0]*in[1], func(p int) {
		for oy := 0; oy < ho; oy++ {
			y0, y1 := w.rows(oy, h)
			for ox := 0; ox < wo; ox++ {
				x0, x1 := w.cols(ox, wd)
				count := w.kh * w.kw
				if !include {
					count = (y1 - y0) * (x1 - x0)
				}
				oi := p*ho*wo + oy*wo + ox
				switch n.Op {
				case ir.OpMaxPool, ir.OpMaxPoolGrad:
					src := a[len(a)-1].d[p*h*wd:]
					at := y0*wd + x0
					for y := y0; y < y1; y++ {
						for x := x0; x < x1; x++ {
							if src[y*wd+x] > src[at] {
								at = y*wd + x
							}
						}
					}
					if n.Op == ir.OpMaxPool {
						out.d[oi] = src[at]
					} else {
						out.d[p*h*wd+at] += a[0].d[oi]
					}
				case ir.OpAvgPool:
					s := 0.0
					for y := y0; y < y1; y++ {
						for x := x0; x < x1; x++ {
							s += a[0].d[p*h*wd+y*wd+x]
						}
					}
					out.d[oi] = s / float64(count)
				case ir.OpAvgPoolGrad:
					g := a[0].d[oi] / float64(count)
					for y := y0; y < y1; y++ {
						for x := x0; x < x1; x++ {
							out.d[p*h*wd+y*wd+x] += g
						}
					}
				}
			}
		}
	})
	return out, nil
}

// xent64 is softmax_xent (the mean label-smoothed cross-entropy) and its
// gradient (softmax − t)/N with t = (1−ε)·target + ε/K.
func xent64(n *ir.Node, a []*t64) (*t64, error) {
	rows, k := a[0].shape[0], a[0].shape[1]
	eps := n.Attrs.Float("smoothing")
	out := newT64(n.Type.Shape)
	total := 0.0
	for r := 0; r < rows; r++ {
		xs, ts := a[0].d[r*k:(r+1)*k], a[1].d[r*k:(r+1)*k]
		m := math.Inf(-1)
		for _, v := range xs {
			m = math.Max(m, v)
		}
		s := 0.0
		for _, v := range xs {
			s += math.Exp(v - m)
		}
		lse := m + math.Log(s)
		for j, v := range xs {
			t := (1-eps)*ts[j] + eps/float64(k)
			if n.Op == ir.OpSoftmaxXent {
				total -= t * (v - lse)
			} else {
				out.d[r*k+j] = (math.Exp(v-lse) - t) / float64(rows)
			}
		}
	}
	if n.Op == ir.OpSoftmaxXent {
		out.d[0] = total / float64(rows)
	}
	return out, nil
}

// eval64Multi is batchnorm_train (y, batch mean, biased batch variance)
// and batchnorm_train_grad (dx, dweight, dbias), per channel over the
// N·H·W values (Ioffe and Szegedy 2015, Algorithm 1 and its backward).
func eval64Multi(n *ir.Node, a []*t64) ([]*t64, error) {
	eps := n.Attrs.Float("eps")
	x := a[0]
	if n.Op == ir.OpBatchNormTrainGrad {
		x = a[1]
	}
	b, c := x.shape[0], x.shape[1]
	inner := len(x.d) / (b * c)
	m := float64(b * inner)
	if n.Op == ir.OpBatchNormTrain {
		y, mean, vr := newT64(x.shape), newT64([]int{c}), newT64([]int{c})
		par(c, func(ch int) {
			s := 0.0
			for o := 0; o < b; o++ {
				for _, v := range x.d[(o*c+ch)*inner : (o*c+ch+1)*inner] {
					s += v
				}
			}
			mu := s / m
			ss := 0.0
			for o := 0; o < b; o++ {
				for _, v := range x.d[(o*c+ch)*inner : (o*c+ch+1)*inner] {
					ss += (v - mu) * (v - mu)
				}
			}
			v := ss / m
			mean.d[ch], vr.d[ch] = mu, v
			inv := 1 / math.Sqrt(v+eps)
			for o := 0; o < b; o++ {
				for i := (o*c + ch) * inner; i < (o*c+ch+1)*inner; i++ {
					y.d[i] = (x.d[i]-mu)*inv*a[1].d[ch] + a[2].d[ch]
				}
			}
		})
		return []*t64{y, mean, vr}, nil
	}
	dy, wt, mean, vr := a[0], a[2], a[3], a[4]
	dx, dw, db := newT64(x.shape), newT64([]int{c}), newT64([]int{c})
	par(c, func(ch int) {
		inv := 1 / math.Sqrt(vr.d[ch]+eps)
		mu := mean.d[ch]
		sdy, sdx := 0.0, 0.0
		for o := 0; o < b; o++ {
			for i := (o*c + ch) * inner; i < (o*c+ch+1)*inner; i++ {
				sdy += dy.d[i]
				sdx += dy.d[i] * (x.d[i] - mu) * inv
			}
		}
		dw.d[ch], db.d[ch] = sdx, sdy
		k := wt.d[ch] * inv / m
		for o := 0; o < b; o++ {
			for i := (o*c + ch) * inner; i < (o*c+ch+1)*inner; i++ {
				xhat := (x.d[i] - mu) * inv
				dx.d[i] = k * (m*dy.d[i] - sdy - xhat*sdx)
			}
		}
	})
	return []*t64{dx, dw, db}, nil
}
