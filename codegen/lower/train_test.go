package lower

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
	"github.com/kiln-dev/kiln/train"
)

// trainTol bounds max|compiled − interpreter| / max|interpreter| per value
// of a compiled training step (float32 sums in vectorized order against the
// interpreter's float64 ones).
const trainTol = 1e-4

var trainExtra = flag.Bool("trainextra", true, "TestTrainStepValuesCompiled: make every value an output")

var trainBatch = flag.Int("trainbatch", 2, "batch of TestTrainStepValuesCompiled")

var trainNet = flag.String("trainnet", "", "network of TestTrainStepValuesCompiled (default: the tiny ones; e.g. mini_inception)")

// trainNets are small networks for the kernel-by-kernel tests.
var trainNets = map[string]string{
	"tiny_bn": `network tiny_bn(x: f32[N, 1, 12, 12]) -> f32[N, 10] {
    conv = conv2d(x, 4, kernel=3, stride=2, pad=1, bias=false)
    bn = batchnorm(conv, eps=0.001)
    pool = maxpool(relu(bn), 3, stride=2)
    fc = dense(flatten(global_avgpool(pool)), 10)
    return fc
}
`,
	// Dropout, both average-pooling divisors, concat and slice, a residual
	// add with a scale, strided and factorized convolutions with bias.
	"tiny_mix": `network tiny_mix(x: f32[N, 1, 12, 12]) -> f32[N, 10] {
    a = relu(conv2d(x, 3, kernel=3, stride=2, pad=1))
    b = avgpool(a, 3, stride=1, pad=1)
    c = avgpool(a, 3, stride=1, pad=1, count_include_pad=false)
    d1 = conv2d(a, 2, kernel=1x3, pad=(0, 1))
    d = conv2d(d1, 3, kernel=3x1, pad=(1, 0))
    e = concat(b, c, relu(d + 0.5 * a))
    f = maxpool(e, 3, stride=2, pad=1)
    fc = dense(dropout(flatten(global_avgpool(f)), p=0.3), 10)
    return fc
}
`,
	// Sibling 1x1 convolutions of one input (passes.ConvSiblings) with
	// and without a BatchNorm, of 4, 6 and 3 channels: one forward kernel,
	// one summed input gradient, one weight-gradient kernel
	// (passes.WgradSiblings).
	"tiny_sib": `network tiny_sib(x: f32[N, 1, 12, 12]) -> f32[N, 10] {
    c0 = conv2d(x, 8, kernel=3, pad=1, bias=false)
    n0 = batchnorm(c0, eps=0.001)
    a = relu(n0)
    c1 = conv2d(a, 4, kernel=1, bias=false)
    n1 = batchnorm(c1, eps=0.001)
    c2 = conv2d(a, 6, kernel=1, bias=false)
    c3 = conv2d(a, 3, kernel=1, bias=false)
    e = concat(relu(n1), relu(c2), relu(c3))
    fc = dense(flatten(global_avgpool(e)), 10)
    return fc
}
`,
	// Sibling 1x1 convolutions of more summed channels (120 + 100 + 90)
	// than an input-gradient group's kernel takes (passes.
	// GradInputChannels): two gradients form the group, the third is its
	// addend (Other); and weights of more than 16 K floats, which the step
	// packs (codegen.PackWeightSpec): a 1x1 310→64 forward and input
	// gradient, and an unpadded 3x3 64→32 whose input gradient is the
	// im2col kernel's.
	"tiny_wide": `network tiny_wide(x: f32[N, 1, 12, 12]) -> f32[N, 10] {
    c0 = conv2d(x, 8, kernel=3, pad=1, bias=false)
    n0 = batchnorm(c0, eps=0.001)
    a = relu(n0)
    c1 = conv2d(a, 120, kernel=1, bias=false)
    c2 = conv2d(a, 100, kernel=1, bias=false)
    c3 = conv2d(a, 90, kernel=1, bias=false)
    e = concat(relu(c1), relu(c2), relu(c3))
    c4 = conv2d(e, 64, kernel=1, bias=false)
    c5 = conv2d(relu(c4), 32, kernel=3, bias=false)
    fc = dense(flatten(global_avgpool(relu(c5))), 10)
    return fc
}
`,
	// A reduction block's shape: one value read by a strided convolution
	// and a max pooling whose outputs are concatenated, so that its
	// gradient is the sum of an input gradient and a pooling gradient
	// (accumulated by the later kernel, TrainPoolGradSpec.Acc).
	"tiny_red": `network tiny_red(x: f32[N, 1, 12, 12]) -> f32[N, 10] {
    ca = conv2d(x, 4, kernel=3, pad=1)
    a = relu(ca)
    cb = conv2d(a, 4, kernel=3, stride=2, pad=1)
    b = relu(cb)
    p = maxpool(a, 3, stride=2, pad=1)
    e = concat(b, p)
    fc = dense(flatten(global_avgpool(e)), 10)
    return fc
}
`,
}

// stepFixture returns a training step graph of the built-in network net at
// batch, procedural params and optimizer state, and inputs.
func stepFixture(t *testing.T, net string, batch int, opt train.Optimizer) (*train.StepGraph, map[string]*tensor.Tensor, map[string]*tensor.Tensor) {
	t.Helper()
	var g *ir.Graph
	var err error
	if src, ok := trainNets[net]; ok {
		g, err = dsl.Load(net+".kiln", []byte(src), dsl.Options{Batch: batch})
	} else {
		g, err = dsl.LoadFile(net+".kiln", dsl.Options{FS: archs.FS, Batch: batch})
	}
	if err != nil {
		t.Fatal(err)
	}
	sg, err := train.Step(g, train.StepOptions{Smoothing: 0.1, Optimizer: opt})
	if err != nil {
		t.Fatal(err)
	}
	params, err := g.GeneratedParams()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sg.State {
		params[s.Name] = s.Initial()
	}
	in := g.Inputs()[0]
	x := tensor.New(in.Type.Shape...)
	for i := range x.Data {
		x.Data[i] = float32((i*7919)%2001)/1000 - 1
	}
	y := tensor.New(batch, 10)
	for b := 0; b < batch; b++ {
		y.Data[b*10+(3*b+1)%10] = 1
	}
	return sg, params, map[string]*tensor.Tensor{in.Name: x, sg.Target: y}
}

// runStep runs one step of the loaded step graph g on inputs: the ones
// other than the network input in (the target) as state, then in.
func runStep(t *testing.T, m *rt.Model, g *ir.Graph, inputs map[string]*tensor.Tensor, in string) {
	t.Helper()
	for name, v := range inputs {
		if name != in {
			if err := m.SetState(name, v.Data); err != nil {
				t.Fatal(err)
			}
		}
	}
	out := make([]float32, g.Nodes[g.Outputs[1]].Type.Numel())
	if err := m.Run(inputs[in].Data, out); err != nil {
		t.Fatal(err)
	}
}

// stepSpecs runs the training pipeline on step graph g and returns its
// graph after the passes and the kernel specs the lowering builds.
func stepSpecs(t *testing.T, g *ir.Graph) (*ir.Graph, []kernelSpec) {
	t.Helper()
	st, err := passes.RunTraining(g, passes.Options{})
	if err != nil {
		t.Fatal(err)
	}
	specs, _, err := lowerTrainNodes(st.Graph, st.Plan, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	return st.Graph, specs
}

// compileStep plans, lowers, compiles and loads graph g (a step graph,
// possibly with extra outputs) for targets, forcing isa.
func compileStep(t *testing.T, g *ir.Graph, params map[string]*tensor.Tensor, input string, isa string) *rt.Model {
	t.Helper()
	st, err := passes.RunTraining(g, passes.Options{})
	if err != nil {
		t.Fatal(err)
	}
	lr := 0.0
	for _, n := range g.Nodes {
		if n.Op == ir.OpRMSPropUpdate || n.Op == ir.OpRMSPropTFUpdate || n.Op == ir.OpSGDUpdate {
			lr = n.Attrs.Float("lr")
		}
	}
	p, err := LowerTraining(st, params, []codegen.Target{codegen.AVX512, codegen.AVX2}, TrainOptions{Input: input, LR: float32(lr)})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := codegen.FindLLVM()
	testenv.Check(t, err)
	so := filepath.Join(t.TempDir(), "step.so")
	if err := p.Compile(context.Background(), tc, so, nil); err != nil {
		t.Fatal(err)
	}
	m, err := rt.Open(rt.Artifact{Manifest: p.Manifest, SharedObjectPath: so, Weights: p.Weights}, rt.Options{Threads: 2, ISA: isa})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestTrainStepValuesCompiled compiles one training step of the small mini
// network with every value of the step as an extra output and compares
// each with the interpreter's, in schedule order, so that a wrong kernel is
// named by the first node it breaks.
func TestTrainStepValuesCompiled(t *testing.T) {
	clip := train.PaperRMSProp
	clip.ClipGradNorm, clip.ClipGradValue = 0.5, 0.05
	cases := []struct {
		net, name string
		opt       train.Optimizer
	}{
		{"tiny_bn", "rmsprop", train.PaperRMSProp},
		{"tiny_mix", "rmsprop", train.PaperRMSProp},
		{"tiny_bn", "clip", clip},
		{"tiny_mix", "rmsprop-tf", train.Optimizer{Kind: "rmsprop-tf", LR: 0.01, Alpha: 0.9, Eps: 1e-3, Momentum: 0.9, WeightDecay: 4e-5}},
		{"tiny_mix", "sgd", train.Optimizer{Kind: "sgd", LR: 0.1, Momentum: 0.9, WeightDecay: 1e-4}},
		{"tiny_sib", "rmsprop", train.PaperRMSProp},
		{"tiny_wide", "rmsprop", train.PaperRMSProp},
	}
	if *trainNet != "" {
		cases = cases[:1]
		cases[0].net = *trainNet
	}
	for _, c := range cases {
		t.Run(c.net+"/"+c.name, func(t *testing.T) { checkStepValues(t, c.net, c.opt, *trainBatch, *trainExtra) })
	}
}

// TestResidualFusionCompiled checks a step of mini_inception_resnet at
// batch 8 against the interpreter (every update within trainTol of its
// max|ref|) with its residual connections fused as TestFuseTrainReLU
// counts them: the up projections' residual epilogues and the scaled
// gradients read unscaled, here with each weight's update scheduled
// between the backward kernels of its convolution (from batch 8 on), so
// the unscaled gradient must outlive the update, and the grouped input
// gradients apply the relu masks of the blocks' outputs. No value is made
// an extra output (that would keep the fused values visible and unfused).
func TestResidualFusionCompiled(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles a mini network's training step")
	}
	checkStepValues(t, "mini_inception_resnet", train.PaperRMSProp, 8, false)
}

// TestPoolAccCompiled checks a step of tiny_red against the interpreter
// (every update within trainTol of its max|ref|), whose max-pooling
// gradient accumulates onto the input gradient it is added to
// (TrainPoolGradSpec.Acc), which the lowering must choose.
func TestPoolAccCompiled(t *testing.T) {
	sg, _, _ := stepFixture(t, "tiny_red", 2, train.PaperRMSProp)
	_, specs := stepSpecs(t, sg.Graph)
	accs := 0
	for _, k := range specs {
		if s, ok := k.spec.(codegen.TrainPoolGradSpec); ok && s.Acc >= 0 {
			accs++
		}
	}
	if accs != 1 {
		t.Fatalf("%d max-pooling gradients accumulate, want 1", accs)
	}
	checkStepValues(t, "tiny_red", train.PaperRMSProp, 2, false)
}

func checkStepValues(t *testing.T, net string, opt train.Optimizer, batch int, extra bool) {
	sg, params, inputs := stepFixture(t, net, batch, opt)
	g := *sg.Graph
	g.Outputs = append([]int(nil), sg.Graph.Outputs...)
	seen := map[int]bool{g.Outputs[0]: true, g.Outputs[1]: true}
	for i, n := range g.Nodes {
		if !extra || n.IsMulti() || n.Op == ir.OpParam || n.Op == ir.OpInput || seen[i] || n.Type.Rank() == 0 {
			continue
		}
		g.Outputs = append(g.Outputs, i)
	}
	in := g.Inputs()[0].Name
	if in == sg.Target {
		in = g.Inputs()[1].Name
	}
	m := compileStep(t, &g, params, in, "")
	offs := map[string]int64{}
	for _, st := range m.Manifest().State {
		offs[st.Name] = st.Offset
	}
	t.Logf("arena %d bytes", m.Manifest().ArenaBytes)
	defer m.Close()
	runStep(t, m, &g, inputs, in)
	ref, err := interp.Run(&g, params, inputs, interp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	bad := 0
	for k, o := range g.Outputs[2:] {
		got, _ := m.State(OutputState(k + 2))
		want := ref.Outputs[k+2]
		d, err := tensor.MaxAbsDiff(&tensor.Tensor{Shape: want.Shape, Data: got}, want)
		if err != nil {
			t.Fatal(err)
		}
		mx := tensor.MaxAbs(want)
		if d > trainTol*max(mx, 1e-6) {
			n := g.Nodes[o]
			src := n.Op
			if len(n.Args) > 0 {
				src += " of " + g.Nodes[n.Args[0]].Op
			}
			t.Errorf("%%%d %s (%s) %s: max|d| %.3g, max|ref| %.3g; got %v want %v at %d", o, n.Name, src, n.Type, d, mx, got[:4], want.Data[:4], offs[OutputState(k+2)])
			if bad++; bad > 12 {
				t.Fatal("too many")
			}
		}
	}
	for name, want := range ref.Updates {
		got, ok := m.State(name)
		if !ok {
			t.Fatalf("no state %s", name)
		}
		d, err := tensor.MaxAbsDiff(&tensor.Tensor{Shape: want.Shape, Data: got}, want)
		if err != nil {
			t.Fatal(err)
		}
		if mx := tensor.MaxAbs(want); d > trainTol*max(mx, 1e-6) {
			t.Errorf("update %s: max|d| %.3g, max|ref| %.3g", name, d, mx)
			if bad++; bad > 12 {
				t.Fatal("too many")
			}
		}
	}
}

// TestFuseTrainReLU checks that in the mini networks' training steps the
// BatchNorm kernels compute their ReLU (forward) and relu_grad (backward)
// wherever the graph has such a pair (the plan makes room: fuseTrainReLU),
// that input-gradient kernels compute most sums of
// gradients (fuseTrainAcc), and that a value the caller reads is never
// fused away.
func TestFuseTrainReLU(t *testing.T) {
	// Batch 128 schedules each weight's update right after its gradient,
	// between the backward kernels of one convolution.
	for _, c := range []struct {
		net   string
		batch int
	}{{"mini_inception", 4}, {"mini_inception_resnet", 4}, {"mini_inception_resnet", 128}} {
		net := c.net
		t.Run(fmt.Sprintf("%s/%d", net, c.batch), func(t *testing.T) {
			g, err := dsl.LoadFile(net+".kiln", dsl.Options{FS: archs.FS, Batch: c.batch})
			if err != nil {
				t.Fatal(err)
			}
			sg, err := train.Step(g, train.StepOptions{Smoothing: 0.1, Optimizer: train.PaperRMSProp})
			if err != nil {
				t.Fatal(err)
			}
			st, err := passes.RunTraining(sg.Graph, passes.Options{})
			if err != nil {
				t.Fatal(err)
			}
			specs, scratchFloats, err := lowerTrainNodes(st.Graph, st.Plan, 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			var bnStats, convStats int
			var bn, bnReLU, bnGrad, bnGradReLU, bnGradMaskX, dyViews, slices, yViews, concatCopies, relu, reluGrad, adds, accs int
			var resFwd, scales, resConv, scaledDgrad, scaledSmall, poolAccs, masked, sums, biasFromSums int
			for _, k := range specs {
				switch s := k.spec.(type) {
				case codegen.TrainConvGradInputSpec:
					if s.Scale != 0 {
						scaledDgrad++
					}
					if s.Mask.On {
						masked++
					}
					if s.Stats.On {
						sums++
					}
					// Each sibling's gradient and the addend are sums the
					// kernel does.
					accs += len(s.Siblings)
					if s.Acc >= 0 {
						accs++
					}
				case codegen.TrainPoolGradSpec:
					if s.Acc >= 0 {
						poolAccs++
					}
				case codegen.TrainConvSpec:
					if s.Residual.On {
						resConv++
					}
					for _, on := range append([]bool{s.Stats.On}, func() (o []bool) {
						for _, sb := range s.Siblings {
							o = append(o, sb.Stats.On)
						}
						return
					}()...) {
						if on {
							convStats++
						}
					}
				case codegen.BatchNormTrainSpec:
					bn++
					if s.Stats.On {
						bnStats++
						if s.Stats.At < lrSlots {
							t.Errorf("BatchNorm statistics at %d, inside the learning-rate slots", s.Stats.At)
						}
					}
					if s.YStride > 0 {
						yViews++
					}
					if s.ReLU {
						bnReLU++
					}
				case codegen.BatchNormTrainGradSpec:
					bnGrad++
					if s.ReLU {
						bnGradReLU++
					}
					if s.ReLU && s.R < 0 {
						bnGradMaskX++
					}
					if s.DYStride > 0 {
						dyViews++
					}
				case codegen.CopySpec:
					switch st.Graph.Nodes[k.node].Op {
					case ir.OpSlice:
						slices++
					case ir.OpConcat:
						concatCopies++
					}
				case codegen.ElementwiseSpec:
					switch s.Op {
					case codegen.EltReLU:
						relu++
					case codegen.EltAdd:
						if st.Graph.Nodes[k.node].Type.Rank() == 4 { // not a running statistic's
							adds++
						}
					}
				case codegen.EltTrainSpec:
					if s.Op == codegen.EltReLUGrad {
						reluGrad++
					}
					if s.Op == codegen.EltResidual {
						resFwd++
					}
				}
				if s, ok := k.spec.(codegen.ElementwiseSpec); ok && s.Op == codegen.EltScale {
					switch st.Graph.Nodes[k.node].Op {
					case ir.OpMul:
						if st.Graph.Nodes[k.node].Type.Rank() == 4 {
							scales++
						}
					case ir.OpConv2DGradWeight, ir.OpBiasGrad:
						scaledSmall++
					}
				}
			}
			// Every scaled residual connection relu(x + c·up) is the
			// epilogue of its up projection (passes.ResidualConvs): 3 A
			// and 3 B blocks in the residual net, none in the other, and
			// no residual kernel is left. Backward, the up projection's
			// input gradient reads the unscaled gradient and scales what
			// it writes (passes.ScaledGrads), its weight and bias
			// gradients are scaled in place, and no activation-sized scale
			// is left.
			wantRes := map[string]int{"mini_inception": 0, "mini_inception_resnet": 6}[net]
			t.Logf("%s: %d residual epilogues, %d residual kernels, %d scaled input gradients, %d activation scales left",
				net, resConv, resFwd, scaledDgrad, scales)
			if resConv != wantRes || resFwd != 0 || scaledDgrad != wantRes || scaledSmall != 2*wantRes || scales != 0 {
				t.Errorf("%d residual epilogues (want %d), %d residual kernels (want 0), %d scaled input gradients (want %d), %d scaled weight and bias gradients (want %d), %d activation scales (want 0)",
					resConv, wantRes, resFwd, scaledDgrad, wantRes, scaledSmall, 2*wantRes, scales)
			}
			// Every BatchNorm of a convolution reads the statistics the
			// convolution wrote (codegen.BNStats); the others (after the
			// pooling branches' average pools, which the passes move past
			// their 1x1 convolutions) read their input twice.
			afterConv := 0
			for _, n := range st.Graph.Nodes {
				if n.Op == ir.OpBatchNormTrain && st.Graph.Nodes[n.Args[0]].Op == ir.OpConv2D {
					afterConv++
				}
			}
			t.Logf("%s: %d of %d batchnorm_train kernels read their statistics from their convolution (scratch %d floats)", net, bnStats, bn, scratchFloats)
			if bnStats != afterConv || convStats != afterConv || afterConv < bn/2 || scratchFloats <= 0 {
				t.Errorf("%d of %d BatchNorms (%d of convolutions) read statistics, %d convolutions write them (scratch %d floats)", bnStats, bn, afterConv, convStats, scratchFloats)
			}
			t.Logf("%s: %d of %d batchnorm_train kernels compute their relu (%d relu kernels left), %d of %d gradients their relu_grad (%d left)",
				net, bnReLU, bn, relu, bnGradReLU, bnGrad, reluGrad)
			t.Logf("%s: %d adds of gradients computed by input-gradient kernels, %d by max-pooling gradients, %d adds of activation gradients left", net, accs, poolAccs, adds)
			// At batch 128 every sum of activation gradients of the residual
			// net is accumulated by a kernel (TestPoolAccCompiled covers the
			// max-pooling gradient's accumulation).
			if c.batch == 128 && adds > 0 {
				t.Errorf("%d adds of activation gradients left at batch 128, want none", adds)
			}
			// The gradient at the output relu of each residual block but the
			// last of a stage is the sum its next block's branches' grouped
			// input gradient computes; that kernel applies the relu's mask
			// (passes.MaskedGrads): 4 relu_grads in the residual net.
			wantMasked := map[string]int{"mini_inception": 0, "mini_inception_resnet": 4}[net]
			t.Logf("%s: %d relu masks applied by input-gradient groups, %d relu_grad kernels left", net, masked, reluGrad)
			if masked != wantMasked {
				t.Errorf("%d relu masks applied by input-gradient groups, want %d", masked, wantMasked)
			}
			// The up projections' bias gradients of those sums add the
			// partial sums their input-gradient kernel wrote
			// (codegen.ChannelSumSpec.Stats), and no other kernel writes
			// any.
			for _, k := range specs {
				if s, ok := k.spec.(codegen.ChannelSumSpec); ok && s.Stats.On {
					biasFromSums++
				}
			}
			t.Logf("%s: %d bias gradients from partial sums, %d input-gradient kernels write them", net, biasFromSums, sums)
			if biasFromSums != wantMasked || sums != wantMasked {
				t.Errorf("%d bias gradients from partial sums and %d input-gradient kernels writing them, want %d", biasFromSums, sums, wantMasked)
			}
			// Every relu_grad whose only user is a BatchNorm gradient is
			// fused (the plan keeps its operands live to that gradient).
			// Likewise every relu of a BatchNorm output used only by it
			// (the plan keeps the relu's buffer live from the BatchNorm).
			users := st.Graph.Users()
			pairs, fwdPairs := 0, 0
			for j, n := range st.Graph.Nodes {
				if n.Op == ir.OpReLUGrad && len(users[j]) == 1 {
					if u := st.Graph.Nodes[users[j][0]]; u.Op == ir.OpBatchNormTrainGrad && u.Args[0] == j {
						pairs++
					}
				}
				if n.Op == ir.OpReLU && len(users[n.Args[0]]) == 1 {
					if y := st.Graph.Nodes[n.Args[0]]; y.Op == ir.OpResult && st.Graph.Nodes[y.Args[0]].Op == ir.OpBatchNormTrain {
						fwdPairs++
					}
				}
			}
			if bnGradReLU != pairs || bnReLU != fwdPairs {
				t.Errorf("%d of %d relu_grad + BatchNorm gradient pairs fused, %d of %d BatchNorm + relu pairs", bnGradReLU, pairs, bnReLU, fwdPairs)
			}
			// In these nets every such relu is the BatchNorm's own (CBR
			// units), so every fused gradient recomputes its mask from x.
			if bnGradMaskX != bnGradReLU {
				t.Errorf("%d of %d fused BatchNorm gradients recompute the ReLU mask from x", bnGradMaskX, bnGradReLU)
			}
			// Every branch of a concat that ends in a CBR unit reads its
			// gradient in place from the concat's gradient: the slices
			// left are those of the pooling branches of the reductions.
			t.Logf("%s: %d BatchNorm gradients read a concat's gradient in place, %d slice copies left", net, dyViews, slices)
			if want := len(passes.SliceViews(st.Graph, users)); dyViews != want || dyViews == 0 {
				t.Errorf("%d of %d slices read in place", dyViews, want)
			}
			// Likewise the forward: every CBR branch of a concat is written
			// into it by its BatchNorm kernel.
			t.Logf("%s: %d BatchNorm kernels write into a concat in place, %d concat copies left", net, yViews, concatCopies)
			if want := len(passes.ConcatWrites(st.Graph, users)); yViews != want || yViews == 0 {
				t.Errorf("%d of %d concat branches written in place", yViews, want)
			}
			// Their relus' own buffers are never touched, so the plan
			// leaves them out.
			virtual := passes.VirtualReLUs(st.Graph, users)
			for j := range virtual {
				if st.Plan.BufferOf[j] >= 0 {
					t.Errorf("%%%d relu written into its concat has buffer %d", j, st.Plan.BufferOf[j])
				}
			}
			if len(virtual) != yViews {
				t.Errorf("%d relus without a buffer, %d written into concats", len(virtual), yViews)
			}
			// Each Inception block's branches start with 1x1 convolutions
			// of the block input (three or four): their input gradients
			// sum into the input's gradient inside the kernels.
			if accs < 2*adds {
				t.Errorf("only %d of %d gradient sums accumulated by input-gradient kernels", accs, accs+adds)
			}
			// With every value an output, nothing may be fused.
			sg2 := *st.Graph
			for i, n := range sg2.Nodes {
				if !n.IsMulti() && n.Type.Rank() > 0 {
					sg2.Outputs = append(sg2.Outputs, i)
				}
			}
			virtual2 := passes.VirtualReLUs(&sg2, sg2.Users())
			fwd, bwd := fuseTrainReLU(&sg2, st.Plan, sg2.Users(), trainResults(&sg2, st.Plan), virtual2)
			if len(fwd)+len(bwd) != 0 {
				t.Errorf("%d + %d fusions of values the caller reads", len(fwd), len(bwd))
			}
			if v := sliceViews(&sg2, st.Plan, sg2.Users(), trainResults(&sg2, st.Plan), bwd); len(v) != 0 {
				t.Errorf("%d slices that the caller reads read in place", len(v))
			}
			if v, err := concatWrites(&sg2, st.Plan, sg2.Users(), trainResults(&sg2, st.Plan), fwd, bwd, virtual2); err != nil || len(v) != 0 {
				t.Errorf("%d relu outputs that the caller reads written into concats (%v)", len(v), err)
			}
			if acc, _ := fuseTrainAcc(&sg2, st.Plan); len(acc) != 0 {
				t.Errorf("%d input gradients that the caller reads accumulated into sums", len(acc))
			}
		})
	}
}

// TestWgradSplit compiles mini_inception's training step at batch 32 with
// the weight gradients split by runs of images (wgradSplit) and without,
// with every weight gradient as an output: the split changes only the
// order of each gradient's float32 sums (partial sums per run, added in
// float64), so the two must agree to rounding (1e-5 of max|dW|), and at
// this batch most weight gradients must be split.
func TestWgradSplit(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles a mini network's training step twice")
	}
	const batch = 32
	sg, params, inputs := stepFixture(t, "mini_inception", batch, train.PaperRMSProp)
	g := *sg.Graph
	g.Outputs = append([]int(nil), sg.Graph.Outputs...)
	wg := 0
	for i, n := range g.Nodes {
		if n.Op == ir.OpConv2DGradWeight {
			g.Outputs = append(g.Outputs, i)
			wg++
		}
	}
	in := g.Inputs()[0].Name
	if in == sg.Target {
		in = g.Inputs()[1].Name
	}
	run := func(split bool) (outs [][]float32, sums int) {
		wgradSplit = split
		defer func() { wgradSplit = true }()
		_, specs := stepSpecs(t, &g)
		for _, k := range specs {
			if strings.HasSuffix(k.name, "_sum") {
				sums++
			}
		}
		m := compileStep(t, &g, params, in, "")
		defer m.Close()
		runStep(t, m, &g, inputs, in)
		for k := 2; k < len(g.Outputs); k++ {
			v, _ := m.State(OutputState(k))
			outs = append(outs, slices.Clone(v))
		}
		return outs, sums
	}
	split, nSplit := run(true)
	whole, nWhole := run(false)
	t.Logf("%d of %d weight gradients split at batch %d", nSplit, wg, batch)
	if nWhole != 0 || 2*nSplit < wg {
		t.Errorf("%d of %d weight gradients split (%d with the split off)", nSplit, wg, nWhole)
	}
	for k := range split {
		o := g.Outputs[k+2]
		ref := &tensor.Tensor{Shape: g.Nodes[o].Type.Shape, Data: whole[k]}
		d, err := tensor.MaxAbsDiff(&tensor.Tensor{Shape: ref.Shape, Data: split[k]}, ref)
		if err != nil {
			t.Fatal(err)
		}
		if mx := tensor.MaxAbs(ref); d > 1e-5*max(mx, 1e-6) {
			t.Errorf("%%%d %s: split max|d| %.3g, max|dW| %.3g", o, g.Nodes[o].Type, d, mx)
		}
	}
}

// TestPackedCompiled checks a step of tiny_wide against the interpreter
// (every update within trainTol of its max|ref|) after checking that its
// lowering packs weights in all three layouts (codegen.PackWeightSpec: the
// 1x1 310→64's forward and flipped input-gradient weights, the unpadded
// 3x3's transposed one for the im2col input gradient), each read by a
// kernel with Packed set, and that the input gradients of its three 1x1
// siblings (310 summed channels) run as two kernels: a group of two, and
// the third accumulated onto it (or taking it as its addend).
func TestPackedCompiled(t *testing.T) {
	sg, _, _ := stepFixture(t, "tiny_wide", 2, train.PaperRMSProp)
	_, specs := stepSpecs(t, sg.Graph)
	layouts := map[codegen.PackLayout]int{}
	packedFwd, packedGrad, capped := 0, 0, 0
	for _, k := range specs {
		switch s := k.spec.(type) {
		case codegen.PackWeightSpec:
			layouts[s.Layout]++
		case codegen.TrainConvSpec:
			if s.Packed {
				packedFwd++
			}
		case codegen.TrainConvGradInputSpec:
			if s.Packed {
				packedGrad++
			}
			if s.C == 8 {
				capped += 1 + len(s.Siblings)
				if len(s.Siblings) == 0 && s.Acc < 0 {
					t.Errorf("the ungrouped sibling gradient %s is not added to the group's", k.name)
				}
			}
		}
	}
	for _, l := range []codegen.PackLayout{codegen.PackForward, codegen.PackFlipped, codegen.PackTransposed} {
		if layouts[l] == 0 {
			t.Errorf("no weight packed in layout %d (packed: %v)", l, layouts)
		}
	}
	if packedFwd != 1 || packedGrad != 2 {
		t.Errorf("%d forward and %d input-gradient kernels read packed weights, want 1 and 2", packedFwd, packedGrad)
	}
	if capped != 3 {
		t.Errorf("the kernels of a's input gradient compute %d convolutions' gradients, want 3", capped)
	}
	checkStepValues(t, "tiny_wide", train.PaperRMSProp, 2, false)
}
