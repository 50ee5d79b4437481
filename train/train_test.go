package train_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	"github.com/kiln-dev/kiln/train"
)

func load(t *testing.T, name string, batch int) *ir.Graph {
	t.Helper()
	g, err := dsl.LoadFile(name+".kiln", dsl.Options{FS: archs.FS, Batch: batch})
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return g
}

// generatedParams returns procedural values (tensor.Generate) for every
// param of g.
func generatedParams(t *testing.T, g *ir.Graph) map[string]*tensor.Tensor {
	t.Helper()
	params, err := g.GeneratedParams()
	if err != nil {
		t.Fatal(err)
	}
	return params
}

func loadSrc(t *testing.T, src string, batch int) *ir.Graph {
	t.Helper()
	g, err := dsl.Load("t.kiln", []byte(src), dsl.Options{Batch: batch})
	if err != nil {
		t.Fatalf("load:\n%s\n%v", src, err)
	}
	return g
}

// sig is what Forward must keep of a copied node: op, name and position.
type sig struct {
	op, name string
	pos      ir.Pos
}

// TestForwardStructure checks the rewrite on whole networks: no batchnorm
// left, one batchnorm_train with three result nodes per batchnorm (same
// name, position and eps), running-statistics updates with PyTorch's
// coefficients, every other node kept in order with its name and position,
// params and inputs unchanged (checkpoint order), marks and outputs on values
// of the same shapes; the result verifies, prints and parses back equal, and
// the input graph is not modified.
func TestForwardStructure(t *testing.T) {
	tests := []struct {
		net      string
		batch    int
		momentum float64 // 0: the default
		bns      int
	}{
		{"mini_inception", 8, 0, 57},
		{"mini_inception_resnet", 8, 0, 36},
		{"mini_inception", 2, 0.25, 57},
		{"tiny", 4, 0, 17},
	}
	for _, tt := range tests {
		t.Run(tt.net, func(t *testing.T) {
			g := load(t, tt.net, tt.batch)
			before := g.String()
			// The node-order contract holds without the pool/convolution
			// swap (TestForwardPoolConvSwap covers that).
			tg, err := train.Forward(g, train.Options{Momentum: tt.momentum, KeepPoolConv: true})
			if err != nil {
				t.Fatal(err)
			}
			if g.String() != before {
				t.Error("Forward modified its input graph")
			}
			m := tt.momentum
			if m == 0 {
				m = train.DefaultMomentum
			}
			oc, nc := passes.OpCounts(g), passes.OpCounts(tg)
			if oc[ir.OpBatchNorm] != tt.bns || nc[ir.OpBatchNorm] != 0 || nc[ir.OpBatchNormTrain] != tt.bns || nc[ir.OpResult] != 3*tt.bns {
				t.Errorf("op counts: before %v, after %v", oc, nc)
			}
			if nc[ir.OpMul] != oc[ir.OpMul]+4*tt.bns || nc[ir.OpAdd] != oc[ir.OpAdd]+2*tt.bns || len(tg.Updates) != 2*tt.bns {
				t.Errorf("update arithmetic: mul %d→%d, add %d→%d, %d updates", oc[ir.OpMul], nc[ir.OpMul], oc[ir.OpAdd], nc[ir.OpAdd], len(tg.Updates))
			}

			// Every node but the batchnorms appears in order with its op, name
			// and position; every batchnorm is a batchnorm_train at its place.
			var want []sig
			for _, n := range g.Nodes {
				s := sig{n.Op, n.Name, n.Pos}
				if n.Op == ir.OpBatchNorm {
					s.op = ir.OpBatchNormTrain
				}
				want = append(want, s)
			}
			k := 0
			for _, n := range tg.Nodes {
				if k < len(want) && (sig{n.Op, n.Name, n.Pos}) == want[k] {
					k++
				}
			}
			if k != len(want) {
				t.Errorf("node %d of the input (%v) is missing from the training graph, or out of order", k, want[k])
			}
			if diff := cmp.Diff(paramList(g), paramList(tg)); diff != "" {
				t.Errorf("params and inputs (-inference +training):\n%s", diff)
			}
			if len(tg.Marks) != len(g.Marks) || len(tg.Outputs) != len(g.Outputs) {
				t.Fatalf("marks %d→%d, outputs %d→%d", len(g.Marks), len(tg.Marks), len(g.Outputs), len(tg.Outputs))
			}
			for i, mk := range g.Marks {
				nm := tg.Marks[i]
				if nm.Name != mk.Name || !ir.ShapeEqual(tg.Nodes[nm.Node].Type.Shape, g.Nodes[mk.Node].Type.Shape) {
					t.Errorf("mark %s: %v, want %s of shape %v", mk.Name, nm, mk.Name, g.Nodes[mk.Node].Type.Shape)
				}
			}
			for i, o := range g.Outputs {
				if !tg.Nodes[tg.Outputs[i]].Type.Equal(g.Nodes[o].Type) {
					t.Errorf("output %d type %s, want %s", i, tg.Nodes[tg.Outputs[i]].Type, g.Nodes[o].Type)
				}
			}
			checkUpdates(t, g, tg, m)
			if err := tg.Verify(); err != nil {
				t.Errorf("Verify: %v", err)
			}

			back, err := ir.Parse("train.ir", tg.String())
			if err != nil {
				t.Fatalf("parse the printed training graph: %v", err)
			}
			if diff := cmp.Diff(tg, back); diff != "" {
				t.Errorf("print/parse round trip (-printed +parsed):\n%s", diff)
			}
		})
	}
}

// paramList lists the params and inputs as "op name type", in graph order.
func paramList(g *ir.Graph) []string {
	var out []string
	for _, n := range g.Nodes {
		if n.Op == ir.OpParam || n.Op == ir.OpInput {
			out = append(out, n.Op+" "+n.Name+" "+n.Type.String())
		}
	}
	return out
}

// checkUpdates checks every update of tg against its batchnorm in g:
// running_mean ← add(mul(running_mean){c=1−m}, mul(mean){c=m}) and
// running_var ← add(mul(running_var){c=1−m}, mul(var){c=m·n/(n−1)}), where
// mean and var are results 1 and 2 of the batchnorm_train of the same name
// and n = N·H·W of the batchnorm's input.
func checkUpdates(t *testing.T, g, tg *ir.Graph, m float64) {
	t.Helper()
	perChannel := map[string]int{} // batchnorm name → n
	for _, n := range g.Nodes {
		if n.Op == ir.OpBatchNorm {
			x := g.Nodes[n.Args[0]].Type
			perChannel[n.Name] = x.Numel() / x.Shape[1]
		}
	}
	seen := map[string]bool{}
	for _, u := range tg.Updates {
		p, v := tg.Nodes[u.Param], tg.Nodes[u.Value]
		dot := strings.LastIndex(p.Name, ".")
		bn, stat := p.Name[:max(dot, 0)], p.Name[dot+1:]
		index, c := 1, m
		switch stat {
		case "running_mean":
		case "running_var":
			n := float64(perChannel[bn])
			index, c = 2, m*n/(n-1)
		default:
			t.Errorf("update of %s, not a running statistic", p.Name)
			continue
		}
		seen[p.Name] = true
		if v.Op != ir.OpAdd || len(v.Args) != 2 {
			t.Errorf("%s ← %s, want add", p.Name, v.Op)
			continue
		}
		old, batch := tg.Nodes[v.Args[0]], tg.Nodes[v.Args[1]]
		if old.Op != ir.OpMul || old.Args[0] != u.Param || old.Attrs.Float("c") != 1-m {
			t.Errorf("%s: first term %s(%v) %v, want mul(running){c=%v}", p.Name, old.Op, old.Args, old.Attrs, 1-m)
		}
		if batch.Op != ir.OpMul || batch.Attrs.Float("c") != c {
			t.Errorf("%s: second term %s %v, want mul{c=%v}", p.Name, batch.Op, batch.Attrs, c)
			continue
		}
		r := tg.Nodes[batch.Args[0]]
		if r.Op != ir.OpResult || r.Attrs.Int("index") != index || tg.Nodes[r.Args[0]].Op != ir.OpBatchNormTrain || tg.Nodes[r.Args[0]].Name != bn {
			t.Errorf("%s: batch statistic %s %v of %s, want result %d of batchnorm_train %q", p.Name, r.Op, r.Attrs, tg.Nodes[r.Args[0]].Name, index, bn)
		}
	}
	if len(seen) != 2*len(perChannel) {
		t.Errorf("%d running statistics updated, want %d", len(seen), 2*len(perChannel))
	}
}

// TestForwardNumerics runs a small training graph and compares it with a
// float64 computation written out here from PyTorch's training-mode
// BatchNorm formulas: y = relu((x−μ)/√(σ²+eps)·γ+β) with the batch mean and
// biased variance, running_mean' = (1−m)·rm + m·μ, running_var' =
// (1−m)·rv + m·σ²·n/(n−1), at momentum 0.25.
func TestForwardNumerics(t *testing.T) {
	const src = `network bn(x: f32[N, 3, 2, 5]) {
    bn = batchnorm(x, eps=0.001)
    return relu(bn)
}
`
	const batch, ch, hw, eps, m = 2, 3, 10, 0.001, 0.25
	g := loadSrc(t, src, batch)
	tg, err := train.Forward(g, train.Options{Momentum: m})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	vec := func(n int, lo, hi float64) *tensor.Tensor {
		x := tensor.New(n)
		for i := range x.Data {
			x.Data[i] = float32(lo + (hi-lo)*rng.Float64())
		}
		return x
	}
	x := vec(batch*ch*hw, -2, 3)
	x.Shape = []int{batch, ch, 2, 5}
	params := map[string]*tensor.Tensor{
		"bn.weight": vec(ch, 0.5, 1.5), "bn.bias": vec(ch, -0.5, 0.5),
		"bn.running_mean": vec(ch, -1, 1), "bn.running_var": vec(ch, 0.5, 2),
	}
	res, err := interp.Run(tg, params, map[string]*tensor.Tensor{"x": x}, interp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const n = batch * hw
	y := make([]float64, len(x.Data))
	newMean, newVar := make([]float64, ch), make([]float64, ch)
	for c := range ch {
		idx := func(b, i int) int { return (b*ch+c)*hw + i }
		var sum, ss float64
		for b := range batch {
			for i := range hw {
				sum += float64(x.Data[idx(b, i)])
			}
		}
		mu := sum / n
		for b := range batch {
			for i := range hw {
				d := float64(x.Data[idx(b, i)]) - mu
				ss += d * d
			}
		}
		v := ss / n
		for b := range batch {
			for i := range hw {
				z := (float64(x.Data[idx(b, i)])-mu)/math.Sqrt(v+eps)*float64(params["bn.weight"].Data[c]) + float64(params["bn.bias"].Data[c])
				y[idx(b, i)] = math.Max(z, 0)
			}
		}
		newMean[c] = (1-m)*float64(params["bn.running_mean"].Data[c]) + m*mu
		newVar[c] = (1-m)*float64(params["bn.running_var"].Data[c]) + m*v*n/(n-1)
	}
	for _, c := range []struct {
		what string
		got  *tensor.Tensor
		want []float64
	}{
		{"y", res.Outputs[0], y},
		{"running_mean", res.Updates["bn.running_mean"], newMean},
		{"running_var", res.Updates["bn.running_var"], newVar},
	} {
		if c.got == nil || len(c.got.Data) != len(c.want) {
			t.Fatalf("%s: got %v, want %d values", c.what, c.got, len(c.want))
		}
		for i, w := range c.want {
			if d := math.Abs(float64(c.got.Data[i]) - w); d > 1e-6*math.Max(1, math.Abs(w)) {
				t.Errorf("%s[%d] = %v, want %v", c.what, i, c.got.Data[i], w)
			}
		}
	}
	if len(res.Updates) != 2 {
		t.Errorf("updates %v, want the two running statistics", res.Updates)
	}
}

// TestForwardIdempotent applies Forward to a training graph: there is no
// batchnorm left, so the graph (multi-result nodes and updates included)
// must come back unchanged.
func TestForwardIdempotent(t *testing.T) {
	tg, err := train.Forward(load(t, "mini_inception_resnet", 2), train.Options{})
	if err != nil {
		t.Fatal(err)
	}
	again, err := train.Forward(tg, train.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tg, again); diff != "" {
		t.Errorf("Forward of a training graph (-first +second):\n%s", diff)
	}
}

// TestForwardErrors checks each refusal and its position.
func TestForwardErrors(t *testing.T) {
	bnSrc := func(shape, body string) string {
		return "network e(x: f32[" + shape + "]) {\n" + body + "\n}\n"
	}
	tests := []struct {
		name  string
		graph func(t *testing.T) *ir.Graph
		opt   train.Options
		want  string
		line  int // 0: no position expected
	}{
		{
			name:  "momentum above 1",
			graph: func(t *testing.T) *ir.Graph { return load(t, "tiny", 2) },
			opt:   train.Options{Momentum: 1.5},
			want:  "momentum 1.5 outside (0, 1]",
		},
		{
			name:  "negative momentum",
			graph: func(t *testing.T) *ir.Graph { return load(t, "tiny", 2) },
			opt:   train.Options{Momentum: -0.1},
			want:  "momentum -0.1 outside (0, 1]",
		},
		{
			name: "one value per channel",
			graph: func(t *testing.T) *ir.Graph {
				return loadSrc(t, bnSrc("N, 4, 1, 1", "    y = relu(x)\n    return batchnorm(y)"), 1)
			},
			want: "1 value per channel (input f32[1,4,1,1])",
			line: 3,
		},
		{
			name: "folded BatchNorm",
			graph: func(t *testing.T) *ir.Graph {
				s, err := passes.Run(load(t, "tiny", 2), passes.Options{StopAfter: "fold-bn"})
				if err != nil {
					t.Fatal(err)
				}
				return s.Graph
			},
			want: "BatchNorm is already folded",
			line: 11, // blocks.kiln's batchnorm call in conv_bn, where fold-bn places fold_bn_weight
		},
		{
			name:  "running statistics already updated",
			graph: sharedStats(false),
			want:  `running statistic "bn.running_mean" is already updated`,
			line:  7,
		},
		{
			name:  "running statistics shared by two batchnorms",
			graph: sharedStats(true),
			want:  `running statistic "bn.running_mean" is already updated`,
			line:  9,
		},
		{
			name: "running statistic that is not a param",
			graph: func(t *testing.T) *ir.Graph {
				g := &ir.Graph{Name: "e"}
				x := g.MustAdd(&ir.Node{Op: ir.OpInput, Name: "x", Type: ir.Type{DType: ir.F32, Shape: []int{2, 3}}})
				w := g.MustAdd(&ir.Node{Op: ir.OpParam, Name: "w", Type: ir.Type{DType: ir.F32, Shape: []int{3}}})
				rm := g.MustAdd(&ir.Node{Op: ir.OpMul, Args: []int{w}, Attrs: ir.Attrs{"c": 0.0}})
				bn := g.MustAdd(&ir.Node{Op: ir.OpBatchNorm, Name: "bn", Args: []int{x, w, w, rm, w}, Pos: ir.Pos{File: "e.ir", Line: 4, Col: 1}})
				g.Outputs = []int{bn}
				return g
			},
			want: "running statistic %2 is a mul, not a param",
			line: 4,
		},
		{
			name:  "invalid input graph",
			graph: func(t *testing.T) *ir.Graph { return &ir.Graph{Name: "empty"} },
			want:  "input graph: graph empty has no outputs",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := train.Forward(tt.graph(t), tt.opt)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Forward = %v, want an error containing %q", err, tt.want)
			}
			var pe *ir.Error
			if tt.line > 0 && (!errors.As(err, &pe) || pe.Pos.Line != tt.line) {
				t.Errorf("error %v: want position line %d", err, tt.line)
			}
		})
	}
	if _, err := train.Forward(nil, train.Options{}); err == nil {
		t.Error("Forward(nil) succeeded")
	}
}

// sharedStats builds x → batchnorm "bn" (line 7) and either a second
// batchnorm "bn2" (line 9) reading the same running statistics (shared) or an
// existing update of bn.running_mean.
func sharedStats(shared bool) func(t *testing.T) *ir.Graph {
	return func(t *testing.T) *ir.Graph {
		g := &ir.Graph{Name: "e"}
		pos := func(l int) ir.Pos { return ir.Pos{File: "e.ir", Line: l, Col: 1} }
		x := g.MustAdd(&ir.Node{Op: ir.OpInput, Name: "x", Type: ir.Type{DType: ir.F32, Shape: []int{2, 3}}, Pos: pos(1)})
		p := func(name string) int {
			return g.MustAdd(&ir.Node{Op: ir.OpParam, Name: name, Type: ir.Type{DType: ir.F32, Shape: []int{3}}, Pos: pos(2)})
		}
		w, b, rm, rv := p("bn.weight"), p("bn.bias"), p("bn.running_mean"), p("bn.running_var")
		out := g.MustAdd(&ir.Node{Op: ir.OpBatchNorm, Name: "bn", Args: []int{x, w, b, rm, rv}, Pos: pos(7)})
		if shared {
			out = g.MustAdd(&ir.Node{Op: ir.OpBatchNorm, Name: "bn2", Args: []int{out, w, b, rm, rv}, Pos: pos(9)})
		} else {
			g.Updates = []ir.Update{{Param: rm, Value: g.MustAdd(&ir.Node{Op: ir.OpMul, Args: []int{rm}, Attrs: ir.Attrs{"c": 0.5}, Pos: pos(8)})}}
		}
		g.Outputs = []int{out}
		return g
	}
}

// TestForwardDropout checks the dropout rewrite: p = 0 stays an inference
// dropout (the identity), each p > 0 becomes dropout_train (result 0 used)
// with its p, name and position and seeds Seed, Seed+1, … in graph order;
// running it keeps each element scaled by 1/(1−p) or zeroes it, about p of
// them zeroed, with different masks for different seeds.
func TestForwardDropout(t *testing.T) {
	const src = `network d(x: f32[N, 4096]) {
    a = dropout(x, p=0.5)
    b = dropout(x, p=0.0)
    c = dropout(x, p=0.5)
    return concat(a, b, c)
}
`
	g := loadSrc(t, src, 1)
	tg, err := train.Forward(g, train.Options{Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range tg.Nodes {
		switch n.Op {
		case ir.OpDropout, ir.OpDropoutTrain:
			got = append(got, fmt.Sprintf("%s %s p=%v seed=%v line %d", n.Op, n.Name, n.Attrs["p"], n.Attrs["seed"], n.Pos.Line))
		}
	}
	want := []string{
		"dropout_train a p=0.5 seed=7 line 2",
		"dropout b p=0 seed=<nil> line 3",
		"dropout_train c p=0.5 seed=8 line 4",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("dropout nodes (-want +got):\n%s", diff)
	}
	back, err := ir.Parse("d.ir", tg.String())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tg, back); diff != "" {
		t.Errorf("print/parse round trip (-printed +parsed):\n%s", diff)
	}

	x := tensor.New(1, 4096)
	for i := range x.Data {
		x.Data[i] = float32(i%7) + 1
	}
	res, err := interp.Run(tg, nil, map[string]*tensor.Tensor{"x": x}, interp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	y := res.Outputs[0].Data
	same := 0
	for part := range 3 {
		zeros := 0
		for i, v := range x.Data {
			o := y[part*4096+i]
			switch {
			case part == 1 && o != v:
				t.Fatalf("p=0 dropout changed element %d: %v → %v", i, v, o)
			case part != 1 && o != 0 && o != 2*v:
				t.Fatalf("dropout %d element %d: %v → %v, want 0 or %v", part, i, v, o, 2*v)
			case o == 0:
				zeros++
			}
			if part == 2 && (o == 0) == (y[i] == 0) {
				same++
			}
		}
		if part != 1 && (zeros < 1848 || zeros > 2248) { // 2048 ± 6.2σ
			t.Errorf("dropout %d zeroed %d of 4096 elements, want about half", part, zeros)
		}
	}
	if same > 2248 {
		t.Errorf("seeds 7 and 8 agree on %d of 4096 elements: the masks look equal", same)
	}
}

// TestForwardPoolConvSwap checks Forward's swap of an average pool and the
// 1x1 convolution it feeds: in the mini net every pooling branch's pool
// follows its convolution and pools its 16 or 32 channels instead of 64 or
// 176, the training forward's logits equal those without the swap
// (Options.KeepPoolConv) to float rounding, the input graph is unchanged,
// and that a convolution with a bias is swapped only past a pool that
// divides by the real pixels, one with as many outputs as inputs or more
// not at all, nor a pool that is marked (a named value).
func TestForwardPoolConvSwap(t *testing.T) {
	g := load(t, "mini_inception", 4)
	before := g.String()
	keep, err := train.Forward(g, train.Options{KeepPoolConv: true})
	if err != nil {
		t.Fatal(err)
	}
	swap, err := train.Forward(g, train.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if g.String() != before {
		t.Error("Forward modified its input graph")
	}
	pools := func(tg *ir.Graph) (afterConv, channels int) {
		for _, n := range tg.Nodes {
			if n.Op == ir.OpAvgPool {
				channels += n.Type.Shape[1]
				if tg.Nodes[n.Args[0]].Op == ir.OpConv2D {
					afterConv++
				}
			}
		}
		return
	}
	if a, c := pools(keep); a != 0 || c != 3*64+3*176 {
		t.Errorf("KeepPoolConv: %d pools after a convolution, %d pooled channels", a, c)
	}
	if a, c := pools(swap); a != 6 || c != 3*16+3*32 {
		t.Errorf("swapped: %d pools after a convolution (want 6), %d pooled channels (want %d)", a, c, 3*16+3*32)
	}
	if diff := cmp.Diff(paramList(keep), paramList(swap)); diff != "" {
		t.Errorf("params and inputs differ:\n%s", diff)
	}
	params := generatedParams(t, g)
	rng := rand.New(rand.NewSource(3))
	x := tensor.New(g.Inputs()[0].Type.Shape...)
	for i := range x.Data {
		x.Data[i] = float32(rng.NormFloat64())
	}
	in := map[string]*tensor.Tensor{g.Inputs()[0].Name: x}
	rk, err := interp.Run(keep, params, in, interp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rs, err := interp.Run(swap, params, in, interp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := tensor.MaxAbsDiff(rs.Outputs[0], rk.Outputs[0])
	if err != nil {
		t.Fatal(err)
	}
	if mx := tensor.MaxAbs(rk.Outputs[0]); !(d <= 1e-5*mx) {
		t.Errorf("logits differ by %.3g (max|ref| %.3g)", d, mx)
	}
	for _, tc := range []struct {
		body string
		swap bool
	}{
		{"return conv2d(avgpool(x, 3, stride=1, pad=1), 2, kernel=1)", false},
		{"return conv2d(avgpool(x, 3, stride=1, pad=1, count_include_pad=true), 2, kernel=1)", false},
		{"return conv2d(avgpool(x, 3, stride=1, pad=1, count_include_pad=false), 2, kernel=1)", true},
		{"return conv2d(avgpool(x, 3, stride=1, pad=1), 2, kernel=1, bias=false)", true},
		{"p = avgpool(x, 3, stride=1, pad=1, count_include_pad=false)\n    return conv2d(p, 2, kernel=1)", false},
		{"return conv2d(avgpool(x, 3, stride=1, pad=1), 8, kernel=1, bias=false)", false},
	} {
		src := "network t(x: f32[N, 4, 6, 6]) {\n    " + tc.body + "\n}\n"
		tg, err := train.Forward(loadSrc(t, src, 2), train.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if a, _ := pools(tg); (a == 1) != tc.swap {
			t.Errorf("%s: swapped %v, want %v", tc.body, a == 1, tc.swap)
		}
	}
}
