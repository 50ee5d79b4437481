package train_test

import (
	"math"
	"math/rand"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
)

// clipStep is one training step of mini_inception at batch 2 on fixed
// random images, with procedural initial weights.
type clipStep struct {
	g      *ir.Graph
	params map[string]*tensor.Tensor
	inputs map[string]*tensor.Tensor
}

func newClipStep(t *testing.T) *clipStep {
	t.Helper()
	const batch = 2
	g := loadMini(t, "mini_inception", batch)
	cs := &clipStep{g: g, params: generatedParams(t, g), inputs: map[string]*tensor.Tensor{}}
	r := rand.New(rand.NewSource(9))
	in := g.Inputs()[0]
	x := tensor.New(in.Type.Shape...)
	for i := range x.Data {
		x.Data[i] = float32(2*r.Float64() - 1)
	}
	cs.inputs[in.Name] = x
	classes := g.Nodes[g.Outputs[0]].Type.Shape[1]
	labels := make([]int64, batch)
	for i := range labels {
		labels[i] = int64(r.Intn(classes))
	}
	cs.inputs[train.TargetInput] = oneHot(t, labels, classes)
	return cs
}

// run builds the step graph for opt, runs it once with fresh optimizer
// state and returns the loss, the gradients the update used (by param
// name) and every updated tensor.
func (cs *clipStep) run(t *testing.T, opt train.Optimizer) (float32, map[string]*tensor.Tensor, map[string]*tensor.Tensor) {
	t.Helper()
	sg, err := train.Step(cs.g, train.StepOptions{Smoothing: 0.1, Optimizer: opt})
	if err != nil {
		t.Fatal(err)
	}
	// The clipped step graph prints and parses back.
	if _, err := ir.Parse("step.ir", sg.Graph.String()); err != nil {
		t.Fatalf("step graph does not parse back: %v", err)
	}
	params := map[string]*tensor.Tensor{}
	for n, v := range cs.params {
		params[n] = v
	}
	for _, s := range sg.State {
		params[s.Name] = s.Initial()
	}
	var keep []int
	var names []string
	for n, d := range sg.Grads {
		names = append(names, n)
		keep = append(keep, d)
	}
	res, err := interp.Run(sg.Graph, params, cs.inputs, interp.Options{Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	grads := map[string]*tensor.Tensor{}
	for i, n := range names {
		grads[n] = res.Values[keep[i]]
	}
	return res.Outputs[0].Data[0], grads, res.Updates
}

// TestStepClipGradNorm checks gradient clipping in the step graph against
// PyTorch's formulas computed here in float64 from the unclipped step's
// gradients G (the PyTorch formulas: clip_grad_value_ clamps each element to [−c, c];
// clip_grad_norm_ (norm_type 2) multiplies every gradient by
// coef = min(1, max_norm/(‖G‖ + 1e-6)), ‖G‖ = √(Σ over all gradients of
// Σ g²); then the optimizer adds weight decay and steps (torch.optim.RMSprop
// or SGD with momentum, fresh state)). The forward and backward are the same
// graph nodes with and without clipping, so G is the clipped step's raw
// gradient too. Every updated param must match the float64 reference to
// one float32 ulp of the result (its final rounding) plus 1e-5 of the
// largest update, and differ from the unclipped update by much
// more. With a max_norm far above ‖G‖ the step must be bit for bit the
// unclipped step: coef is exactly 1 and g·1 = g.
func TestStepClipGradNorm(t *testing.T) {
	cs := newClipStep(t)
	rms := train.PaperRMSProp
	sgd := train.Optimizer{Kind: "sgd", LR: 0.1, Momentum: 0.9}
	cases := []struct {
		name string
		opt  train.Optimizer
		// normFrac sets max_norm = normFrac·‖G‖ (0: no norm clipping);
		// valueFrac sets the value clip c = valueFrac·max|G| (0: none).
		normFrac, valueFrac float64
		wd                  float64
	}{
		{"rmsprop norm/2", rms, 0.5, 0, 0},
		{"rmsprop norm/10 with weight decay", rms, 0.1, 0, 1e-2},
		{"sgd norm/4", sgd, 0.25, 0, 0},
		{"rmsprop value", rms, 0, 0.05, 0},
		{"sgd value then norm", sgd, 0.3, 0.1, 1e-3},
	}
	type result struct {
		loss float32
		g, u map[string]*tensor.Tensor
	}
	unclipped := map[train.Optimizer]*result{} // the unclipped steps, run once each
	base := func(t *testing.T, o train.Optimizer) *result {
		r := unclipped[o]
		if r == nil {
			r = &result{}
			r.loss, r.g, r.u = cs.run(t, o)
			unclipped[o] = r
		}
		return r
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base0 := c.opt
			base0.WeightDecay = c.wd
			r0 := base(t, base0)
			loss0, g0, u0 := r0.loss, r0.g, r0.u
			var maxAbs float64
			for _, g := range g0 {
				for _, v := range g.Data {
					maxAbs = math.Max(maxAbs, math.Abs(float64(v)))
				}
			}
			clipV := c.valueFrac * maxAbs
			clamp := func(v float64) float64 {
				if clipV > 0 {
					return math.Max(-clipV, math.Min(clipV, v))
				}
				return v
			}
			var ss float64
			for _, g := range g0 {
				for _, v := range g.Data {
					cv := clamp(float64(v))
					ss += cv * cv
				}
			}
			norm := math.Sqrt(ss)
			opt := base0
			opt.ClipGradValue = clipV
			coef := 1.0
			if c.normFrac > 0 {
				opt.ClipGradNorm = c.normFrac * norm
				coef = math.Min(1, opt.ClipGradNorm/(norm+1e-6))
			}
			loss, _, u := cs.run(t, opt)
			if math.Float32bits(loss) != math.Float32bits(loss0) {
				t.Errorf("loss %v with clipping, %v without: the forward must not change", loss, loss0)
			}
			worst, maxStep, maxDiff := math.Inf(-1), 0.0, 0.0
			worstName := ""
			for name, g := range g0 {
				p, got, unclipped := cs.params[name].Data, u[name].Data, u0[name].Data
				for i, gv := range g.Data {
					d := clamp(float64(gv))*coef + c.wd*float64(p[i])
					var step float64
					if c.opt.Kind == "sgd" {
						step = c.opt.LR * d // b = 0·μ + d
					} else {
						v := (1 - c.opt.Alpha) * d * d
						step = c.opt.LR * d / (math.Sqrt(v) + c.opt.Eps)
					}
					want := float64(p[i]) - step
					maxStep = math.Max(maxStep, math.Abs(step))
					// got is want rounded to float32: allow one float32
					// ulp of the result on top of the relative error.
					ulp := float64(math.Nextafter32(float32(math.Abs(want)), float32(math.Inf(1))) - float32(math.Abs(want)))
					if e := math.Abs(float64(got[i])-want) - ulp; e > worst || e != e {
						worst, worstName = e, name
					}
					maxDiff = math.Max(maxDiff, math.Abs(float64(got[i])-float64(unclipped[i])))
				}
			}
			t.Logf("‖G‖ = %.4g, max|G| = %.3g, coef %.4g, clip value %.3g: max(|got−ref| − ulp(ref)) = %.3g (%s), max|update| = %.3g, max|clipped−unclipped| = %.3g",
				norm, maxAbs, coef, clipV, worst, worstName, maxStep, maxDiff)
			if !(worst <= 1e-5*maxStep) {
				t.Errorf("max(|got−ref| − ulp(ref)) = %.3g (%s) exceeds 1e-5·max|update| = %.3g", worst, worstName, 1e-5*maxStep)
			}
			if !(maxDiff > 1e-2*maxStep) {
				t.Errorf("the clipped update differs from the unclipped one by only %.3g (max|update| %.3g): clipping did nothing", maxDiff, maxStep)
			}
		})
	}
	t.Run("huge max_norm is the unclipped step bit for bit", func(t *testing.T) {
		r0 := base(t, rms)
		loss0, u0 := r0.loss, r0.u
		opt := rms
		opt.ClipGradNorm = 1e30
		loss, _, u := cs.run(t, opt)
		if math.Float32bits(loss) != math.Float32bits(loss0) {
			t.Errorf("loss %v, want %v", loss, loss0)
		}
		if len(u) != len(u0) {
			t.Fatalf("%d updates, want %d", len(u), len(u0))
		}
		for name, want := range u0 {
			got := u[name]
			for i := range want.Data {
				if math.Float32bits(got.Data[i]) != math.Float32bits(want.Data[i]) {
					t.Fatalf("%s[%d] = %v, want %v bit for bit", name, i, got.Data[i], want.Data[i])
				}
			}
		}
	})
}

// TestStepClipGraph checks what clipping adds to the step graph: nothing
// when off (the graph prints exactly as without the fields), one
// global_norm_scale over one sum_squares per learnable param and a
// scale_by per param when on; and that a bad threshold is refused.
func TestStepClipGraph(t *testing.T) {
	g := loadMini(t, "mini_inception", 2)
	count := func(opt train.Optimizer) (map[string]int, string) {
		sg, err := train.Step(g, train.StepOptions{Smoothing: 0.1, Optimizer: opt})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]int{}
		for _, n := range sg.Graph.Nodes {
			m[n.Op]++
		}
		return m, sg.Graph.String()
	}
	off, offText := count(train.PaperRMSProp)
	if _, plainText := count(train.Optimizer{}); offText != plainText {
		t.Error("the default optimizer's step graph differs from PaperRMSProp's")
	}
	on, _ := count(train.Optimizer{ClipGradNorm: 1}) // empty Kind: PaperRMSProp, clipped
	learnable := off[ir.OpRMSPropUpdate]
	for op, want := range map[string]int{ir.OpSumSquares: learnable, ir.OpGlobalNormScale: 1, ir.OpScaleBy: learnable, ir.OpClip: 0} {
		if off[op] != 0 {
			t.Errorf("unclipped step graph has %d %s nodes", off[op], op)
		}
		if on[op] != want {
			t.Errorf("clipped step graph has %d %s nodes, want %d", on[op], op, want)
		}
	}
	both, _ := count(train.Optimizer{Kind: "sgd", LR: 0.1, ClipGradNorm: 1, ClipGradValue: 0.5})
	if both[ir.OpClip] != learnable || both[ir.OpGlobalNormScale] != 1 {
		t.Errorf("value and norm clipping: %d clip, %d global_norm_scale nodes, want %d and 1", both[ir.OpClip], both[ir.OpGlobalNormScale], learnable)
	}
	for _, bad := range []train.Optimizer{
		{ClipGradNorm: -1}, {ClipGradNorm: math.NaN()}, {ClipGradValue: math.Inf(1)},
	} {
		_, err := train.Step(g, train.StepOptions{Optimizer: bad})
		if err == nil || !strings.Contains(err.Error(), "must be positive and finite") {
			t.Errorf("Step with %+v: %v, want a threshold error", bad, err)
		}
	}
}
