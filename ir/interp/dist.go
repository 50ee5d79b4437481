package interp

import (
	"fmt"
	"math"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// Reducer sums float64 vectors across the replicas of a data-parallel run:
// AllreduceSum64 replaces buf, on every replica, by the element-wise sum
// over replicas. Every replica calls it in the same order with the same
// length (dist.Comm implements it).
type Reducer interface {
	AllreduceSum64(buf []float64) error
}

// plainBN returns a copy of a batchnorm_train(_grad) node without the ghost
// and sync attributes: the whole-batch, one-replica op.
func plainBN(n *ir.Node) *ir.Node {
	c := *n
	c.Attrs = ir.Attrs{"eps": n.Attrs.Float("eps")}
	return &c
}

// batchView returns images [lo, hi) of x (a view, no copy).
func batchView(x *tensor.Tensor, lo, hi int) *tensor.Tensor {
	per := len(x.Data) / x.Shape[0]
	sh := append([]int{hi - lo}, x.Shape[1:]...)
	return &tensor.Tensor{Shape: sh, Data: x.Data[lo*per : hi*per]}
}

// evalBatchNormTrainDist is batchnorm_train with the ghost or sync
// attribute.
//
// Ghost batch K (Hoffer, Hubara and Soudry 2017, "Train longer, generalize
// better"): the batch is split into N/K groups of K consecutive images and
// each group is normalized with its own statistics, computed exactly as
// evalBatchNormTrain computes a batch of K, so a group's y is bit for bit
// what a replica holding those K images computes. The mean and variance
// results (which feed only the running statistics) are the float64 averages
// of the groups' float32 results, rounded once: what averaging the replicas'
// running-statistics updates gives.
//
// Sync (synchronized BatchNorm, as PyTorch's nn.SyncBatchNorm): the
// per-channel sums and the value count are all-reduced through
// Options.Reducer before the mean is taken, then the sums of squared
// deviations from that mean, so every replica normalizes with the
// statistics of the union of the replicas' batches (the two-pass float64
// algorithm of evalBatchNormTrain over the global batch, summed per replica
// first). Without a Reducer it equals batchnorm_train.
func evalBatchNormTrainDist(e *evaluator, n *ir.Node, args []*tensor.Tensor) ([]*tensor.Tensor, error) {
	x := args[0]
	pn := plainBN(n)
	if n.Attrs.Bool("sync") {
		if n.Attrs.Int("ghost") > 0 {
			return nil, fmt.Errorf("ghost batches and synchronized statistics do not combine")
		}
		return syncBatchNormTrain(e, n, args)
	}
	k := n.Attrs.Int("ghost")
	if x.Shape[0]%k != 0 {
		return nil, fmt.Errorf("ghost batch %d does not divide the batch %d", k, x.Shape[0])
	}
	groups := x.Shape[0] / k
	y := &tensor.Tensor{Shape: append([]int(nil), x.Shape...), Data: make([]float32, len(x.Data))}
	ch := x.Shape[1]
	mean, vr := make([]float64, ch), make([]float64, ch)
	for g := range groups {
		outs, err := evalBatchNormTrain(e, pn, []*tensor.Tensor{batchView(x, g*k, (g+1)*k), args[1], args[2]})
		if err != nil {
			return nil, err
		}
		copy(batchView(y, g*k, (g+1)*k).Data, outs[0].Data)
		for c := range ch {
			mean[c] += float64(outs[1].Data[c])
			vr[c] += float64(outs[2].Data[c])
		}
	}
	m, v := tensor.New(ch), tensor.New(ch)
	for c := range ch {
		m.Data[c], v.Data[c] = float32(mean[c]/float64(groups)), float32(vr[c]/float64(groups))
	}
	return []*tensor.Tensor{y, m, v}, nil
}

// syncBatchNormTrain is batchnorm_train with statistics over every replica
// (see evalBatchNormTrainDist).
func syncBatchNormTrain(e *evaluator, n *ir.Node, args []*tensor.Tensor) ([]*tensor.Tensor, error) {
	x, wt, bs := args[0], args[1].Data, args[2].Data
	eps := n.Attrs.Float("eps")
	outer, ch, inner := channelLayout(x.Shape)
	sums := channelSums(e, x.Shape, func(i int) float64 { return float64(x.Data[i]) })
	buf := append(sums, float64(outer*inner))
	if err := e.reduce(buf); err != nil {
		return nil, err
	}
	count := buf[ch]
	mu := make([]float64, ch)
	for c := range ch {
		mu[c] = buf[c] / count
	}
	ss := channelSums(e, x.Shape, func(i int) float64 {
		d := float64(x.Data[i]) - mu[i/inner%ch]
		return d * d
	})
	if err := e.reduce(ss); err != nil {
		return nil, err
	}
	mean, vr := tensor.New(ch), tensor.New(ch)
	scale, shift := make([]float32, ch), make([]float32, ch)
	for c := range ch {
		v := ss[c] / count
		mean.Data[c], vr.Data[c] = float32(mu[c]), float32(v)
		s := float64(wt[c]) / math.Sqrt(v+eps)
		scale[c], shift[c] = float32(s), float32(float64(bs[c])-mu[c]*s)
	}
	y := &tensor.Tensor{Shape: append([]int(nil), x.Shape...), Data: make([]float32, len(x.Data))}
	parallelRange(e.threads, outer*ch, max(1, elementwiseGrain/inner), func(lo, hi int) {
		for p := lo; p < hi; p++ {
			s, t := scale[p%ch], shift[p%ch]
			src := x.Data[p*inner : (p+1)*inner]
			dst := y.Data[p*inner : (p+1)*inner]
			for i, v := range src {
				dst[i] = v*s + t
			}
		}
	})
	return []*tensor.Tensor{y, mean, vr}, nil
}

// reduce all-reduces buf through the Reducer (a no-op for one replica).
func (e *evaluator) reduce(buf []float64) error {
	if e.reducer == nil {
		return nil
	}
	if err := e.reducer.AllreduceSum64(buf); err != nil {
		return fmt.Errorf("synchronized BatchNorm: %w", err)
	}
	return nil
}

// evalBatchNormTrainGradDist is batchnorm_train_grad with the ghost or sync
// attribute, the backward of evalBatchNormTrainDist.
//
// Ghost: each group's dx is evalBatchNormTrainGrad's over the group, with
// the group's statistics recomputed from x exactly as the forward computed
// them (the mean and variance operands hold only the groups' averages);
// dweight and dbias are the float32 sums of the groups' in group order, as
// an all-reduce over replicas in rank order adds them.
//
// Sync: Σdy and Σdy·x̂ per channel and the value count M are all-reduced,
// and dx = weight·σ⁻¹/M·(M·dy − Σdy − x̂·Σdy·x̂) with the global sums
// (Ioffe and Szegedy 2015, section 3, over the union of the batches; each
// replica's dy is its own loss's gradient, so the formula, linear in dy,
// gives the gradient of the sum of the replicas' losses). dweight and
// dbias are this replica's own sums: the trainer's gradient all-reduce adds
// the replicas' shares, as for every other param.
func evalBatchNormTrainGradDist(e *evaluator, n *ir.Node, args []*tensor.Tensor) ([]*tensor.Tensor, error) {
	pn := plainBN(n)
	if n.Attrs.Bool("sync") {
		if n.Attrs.Int("ghost") > 0 {
			return nil, fmt.Errorf("ghost batches and synchronized statistics do not combine")
		}
		return syncBatchNormTrainGrad(e, n, args)
	}
	dy, x := args[0], args[1]
	k := n.Attrs.Int("ghost")
	if x.Shape[0]%k != 0 {
		return nil, fmt.Errorf("ghost batch %d does not divide the batch %d", k, x.Shape[0])
	}
	ch := x.Shape[1]
	dx := tensor.New(x.Shape...)
	dw, db := tensor.New(ch), tensor.New(ch)
	for g := range x.Shape[0] / k {
		xg := batchView(x, g*k, (g+1)*k)
		// The group's statistics (results 1 and 2 depend on x alone; the
		// weight stands in for the bias operand).
		st, err := evalBatchNormTrain(e, pn, []*tensor.Tensor{xg, args[2], args[2]})
		if err != nil {
			return nil, err
		}
		outs, err := evalBatchNormTrainGrad(e, pn, []*tensor.Tensor{batchView(dy, g*k, (g+1)*k), xg, args[2], st[1], st[2]})
		if err != nil {
			return nil, err
		}
		copy(batchView(dx, g*k, (g+1)*k).Data, outs[0].Data)
		for c := range ch {
			dw.Data[c] += outs[1].Data[c]
			db.Data[c] += outs[2].Data[c]
		}
	}
	return []*tensor.Tensor{dx, dw, db}, nil
}

// syncBatchNormTrainGrad is batchnorm_train_grad over every replica (see
// evalBatchNormTrainGradDist).
func syncBatchNormTrainGrad(e *evaluator, n *ir.Node, args []*tensor.Tensor) ([]*tensor.Tensor, error) {
	dy, x, wt, mean, vr := args[0].Data, args[1].Data, args[2].Data, args[3].Data, args[4].Data
	eps := n.Attrs.Float("eps")
	outer, ch, inner := channelLayout(args[1].Shape)
	inv := make([]float64, ch)
	for c := range inv {
		inv[c] = 1 / math.Sqrt(float64(vr[c])+eps)
	}
	sumDy := channelSums(e, args[1].Shape, func(i int) float64 { return float64(dy[i]) })
	sumDyXhat := channelSums(e, args[1].Shape, func(i int) float64 {
		c := i / inner % ch
		return float64(dy[i]) * (float64(x[i]) - float64(mean[c])) * inv[c]
	})
	dw, db := tensor.New(ch), tensor.New(ch)
	for c := range ch {
		dw.Data[c], db.Data[c] = float32(sumDyXhat[c]), float32(sumDy[c])
	}
	buf := make([]float64, 0, 2*ch+1)
	buf = append(append(append(buf, sumDy...), sumDyXhat...), float64(outer*inner))
	if err := e.reduce(buf); err != nil {
		return nil, err
	}
	gDy, gDyXhat, m := buf[:ch], buf[ch:2*ch], buf[2*ch]
	dx := tensor.New(args[1].Shape...)
	parallelRange(e.threads, outer*ch, max(1, elementwiseGrain/inner), func(lo, hi int) {
		for p := lo; p < hi; p++ {
			c := p % ch
			k := float64(wt[c]) * inv[c] / m
			mu, iv := float64(mean[c]), inv[c]
			for i := p * inner; i < (p+1)*inner; i++ {
				xhat := (float64(x[i]) - mu) * iv
				dx.Data[i] = float32(k * (m*float64(dy[i]) - gDy[c] - xhat*gDyXhat[c]))
			}
		}
	})
	return []*tensor.Tensor{dx, dw, db}, nil
}
