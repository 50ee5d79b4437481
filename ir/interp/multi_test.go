package interp

import (
	"math"
	"testing"

	"github.com/kiln-dev/kiln/ir"
)

// TestBatchNormTrain checks the multi-result training BatchNorm against a
// float64 reference of PyTorch's training forward (biased variance), and the
// graph's running-mean update 0.9·old + 0.1·batch mean through
// Result.Updates, for several thread counts.
func TestBatchNormTrain(t *testing.T) {
	const n, c, h, w, eps = 3, 5, 4, 6, 1e-3
	b := newBuilder(t, 7)
	x := b.input("x", n, c, h, w)
	gamma, beta := b.param("bn.weight", 0.5, 1.5, c), b.param("bn.bias", -1, 1, c)
	rm := b.param("bn.running_mean", -1, 1, c)
	bn := b.op(ir.OpBatchNormTrain, ir.Attrs{"eps": eps}, x, gamma, beta)
	y := b.op(ir.OpResult, ir.Attrs{"index": 0}, bn)
	mean := b.op(ir.OpResult, ir.Attrs{"index": 1}, bn)
	vr := b.op(ir.OpResult, ir.Attrs{"index": 2}, bn)
	upd := b.op(ir.OpAdd, nil, b.op(ir.OpMul, ir.Attrs{"c": 0.9}, rm), b.op(ir.OpMul, ir.Attrs{"c": 0.1}, mean))
	b.g.Updates = []ir.Update{{Param: rm, Value: upd}}

	xv, gv, bv, rmv := b.val(x).Data, b.val(gamma).Data, b.val(beta).Data, b.val(rm).Data
	wantY, wantMean, wantVar, wantRM := newRef(n, c, h, w), newRef(c), newRef(c), newRef(c)
	for ch := range c {
		var s, ss float64
		for i := range n {
			for _, v := range xv[(i*c+ch)*h*w : (i*c+ch+1)*h*w] {
				s += float64(v)
			}
		}
		mu := s / float64(n*h*w)
		for i := range n {
			for _, v := range xv[(i*c+ch)*h*w : (i*c+ch+1)*h*w] {
				ss += (float64(v) - mu) * (float64(v) - mu)
			}
		}
		v := ss / float64(n*h*w)
		wantMean.data[ch], wantVar.data[ch] = mu, v
		wantRM.data[ch] = 0.9*float64(rmv[ch]) + 0.1*mu
		for i := range n {
			for k := range h * w {
				at := (i*c+ch)*h*w + k
				wantY.data[at] = (float64(xv[at])-mu)/math.Sqrt(v+eps)*float64(gv[ch]) + float64(bv[ch])
			}
		}
	}
	for _, threads := range []int{1, 3} {
		res := b.run(threads, y, mean, vr)
		checkClose(t, "y", res.Outputs[0], wantY, tol)
		checkClose(t, "batch mean", res.Outputs[1], wantMean, tol)
		checkClose(t, "batch variance", res.Outputs[2], wantVar, tol)
		got, ok := res.Updates["bn.running_mean"]
		if !ok || len(res.Updates) != 1 {
			t.Fatalf("Result.Updates = %v, want bn.running_mean only", res.Updates)
		}
		checkClose(t, "updated running mean", got, wantRM, tol)
		if rmv[0] != b.val(rm).Data[0] {
			t.Fatal("Run modified the param it updates")
		}
	}
}
