package interp

import (
	"math"
	"strings"
	"sync"
	"testing"

	"github.com/kiln-dev/kiln/dist"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

func bnNode(attrs ir.Attrs) *ir.Node { return &ir.Node{Op: ir.OpBatchNormTrain, Attrs: attrs} }

// maxRel is max|a − b| / max|b|.
func maxRel(a, b []float32) float64 {
	m, d := 0.0, 0.0
	for i, v := range b {
		m = math.Max(m, math.Abs(float64(v)))
		d = math.Max(d, math.Abs(float64(a[i])-float64(v)))
	}
	return d / math.Max(m, 1e-30)
}

// TestBatchNormGhost checks ghost batches against plain batchnorm_train
// and batchnorm_train_grad run on each group: y and dx bit for bit, the
// mean and variance results the groups' averages, dweight and dbias the
// groups' sums.
func TestBatchNormGhost(t *testing.T) {
	b := newBuilder(t, 3)
	x, dy := b.random(-2, 2, 4, 3, 2, 5), b.random(-1, 1, 4, 3, 2, 5)
	w, bias := b.random(0.5, 1.5, 3), b.random(-1, 1, 3)
	e := &evaluator{threads: 2}
	ghost := ir.Attrs{"eps": 1e-3, "ghost": 2}
	plain := bnNode(ir.Attrs{"eps": 1e-3})
	got, err := evalBatchNormTrain(e, bnNode(ghost), []*tensor.Tensor{x, w, bias})
	if err != nil {
		t.Fatal(err)
	}
	gg, err := evalBatchNormTrainGrad(e, &ir.Node{Op: ir.OpBatchNormTrainGrad, Attrs: ghost}, []*tensor.Tensor{dy, x, w, got[1], got[2]})
	if err != nil {
		t.Fatal(err)
	}
	dw, db := make([]float32, 3), make([]float32, 3)
	for g := range 2 {
		xg, dyg := batchView(x, 2*g, 2*g+2), batchView(dy, 2*g, 2*g+2)
		want, err := evalBatchNormTrain(e, plain, []*tensor.Tensor{xg, w, bias})
		if err != nil {
			t.Fatal(err)
		}
		wg, err := evalBatchNormTrainGrad(e, plain, []*tensor.Tensor{dyg, xg, w, want[1], want[2]})
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range want[0].Data {
			if batchView(got[0], 2*g, 2*g+2).Data[i] != v {
				t.Fatalf("group %d: y[%d] = %v, want %v", g, i, batchView(got[0], 2*g, 2*g+2).Data[i], v)
			}
		}
		for i, v := range wg[0].Data {
			if batchView(gg[0], 2*g, 2*g+2).Data[i] != v {
				t.Fatalf("group %d: dx[%d] differs", g, i)
			}
		}
		for c := range 3 {
			dw[c] += wg[1].Data[c]
			db[c] += wg[2].Data[c]
		}
	}
	for c := range 3 {
		if gg[1].Data[c] != dw[c] || gg[2].Data[c] != db[c] {
			t.Errorf("channel %d: dweight, dbias %v, %v; want the groups' sums %v, %v", c, gg[1].Data[c], gg[2].Data[c], dw[c], db[c])
		}
	}
}

// TestBatchNormSync runs synchronized batchnorm_train and its gradient on
// two loopback replicas holding two images each and checks them against
// plain BatchNorm over the four images: y and dx per replica, the common
// mean and variance, and dweight and dbias as the replicas' shares of the
// whole batch's.
func TestBatchNormSync(t *testing.T) {
	b := newBuilder(t, 5)
	x, dy := b.random(-2, 2, 4, 3, 2, 5), b.random(-1, 1, 4, 3, 2, 5)
	w, bias := b.random(0.5, 1.5, 3), b.random(-1, 1, 3)
	e := &evaluator{threads: 1}
	plain := bnNode(ir.Attrs{"eps": 1e-3})
	want, err := evalBatchNormTrain(e, plain, []*tensor.Tensor{x, w, bias})
	if err != nil {
		t.Fatal(err)
	}
	wantG, err := evalBatchNormTrainGrad(e, plain, []*tensor.Tensor{dy, x, w, want[1], want[2]})
	if err != nil {
		t.Fatal(err)
	}
	syncAttrs := ir.Attrs{"eps": 1e-3, "sync": true}
	comms := dist.Loopback(2)
	outs, grads := make([][]*tensor.Tensor, 2), make([][]*tensor.Tensor, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := &evaluator{threads: 1, reducer: comms[r]}
			xr, dyr := batchView(x, 2*r, 2*r+2), batchView(dy, 2*r, 2*r+2)
			if outs[r], errs[r] = evalBatchNormTrain(e, bnNode(syncAttrs), []*tensor.Tensor{xr, w, bias}); errs[r] != nil {
				return
			}
			grads[r], errs[r] = evalBatchNormTrainGrad(e, &ir.Node{Op: ir.OpBatchNormTrainGrad, Attrs: syncAttrs}, []*tensor.Tensor{dyr, xr, w, outs[r][1], outs[r][2]})
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	dw, db := make([]float32, 3), make([]float32, 3)
	for r := range 2 {
		if d := maxRel(outs[r][0].Data, batchView(want[0], 2*r, 2*r+2).Data); d > 1e-6 {
			t.Errorf("rank %d: y differs by %.2g relative", r, d)
		}
		if d := maxRel(grads[r][0].Data, batchView(wantG[0], 2*r, 2*r+2).Data); d > 1e-5 {
			t.Errorf("rank %d: dx differs by %.2g relative", r, d)
		}
		for k := 1; k <= 2; k++ {
			if d := maxRel(outs[r][k].Data, want[k].Data); d > 1e-6 {
				t.Errorf("rank %d: result %d differs by %.2g relative", r, k, d)
			}
		}
		for c := range 3 {
			dw[c] += grads[r][1].Data[c]
			db[c] += grads[r][2].Data[c]
		}
	}
	if d := math.Max(maxRel(dw, wantG[1].Data), maxRel(db, wantG[2].Data)); d > 1e-5 {
		t.Errorf("the replicas' dweight and dbias add up to the whole batch's within %.2g relative", d)
	}
}

// TestBatchNormDistAttrs: the ghost and sync attributes print and parse,
// and a ghost batch that does not divide the batch is refused at the node.
func TestBatchNormDistAttrs(t *testing.T) {
	for _, tc := range []struct {
		attrs ir.Attrs
		err   string
	}{
		{ir.Attrs{"ghost": 2}, ""},
		{ir.Attrs{"sync": true}, ""},
		{ir.Attrs{"ghost": 3}, "ghost batch 3 does not divide the batch 4"},
	} {
		b := newBuilder(t, 1)
		x := b.input("x", 4, 3, 2, 2)
		w, bias := b.param("w", 1, 2, 3), b.param("b", 0, 1, 3)
		_, err := b.g.Add(&ir.Node{Op: ir.OpBatchNormTrain, Args: []int{x, w, bias}, Attrs: tc.attrs})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: error %v, want %q", tc.attrs, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		b.g.Outputs = []int{b.op(ir.OpResult, ir.Attrs{"index": 0}, len(b.g.Nodes)-1)}
		text := b.g.String()
		g, err := ir.Parse("bn.ir", text)
		if err != nil {
			t.Fatalf("%v\n%s", err, text)
		}
		if g.String() != text {
			t.Errorf("round trip:\n%s\nbecame\n%s", text, g.String())
		}
		n := g.Nodes[3]
		if n.Attrs.Int("ghost") != tc.attrs.Int("ghost") || n.Attrs.Bool("sync") != tc.attrs.Bool("sync") {
			t.Errorf("parsed attrs %v, want %v", n.Attrs, tc.attrs)
		}
	}
}
