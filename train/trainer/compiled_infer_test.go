package trainer

import (
	"context"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train/data"
)

// compiledInferTol bounds max|compiled − interpreter| / max|interpreter| of
// compiled evaluation's logits and kept values. The inference kernels are
// checked against the interpreter at 1e-5 of max|ref| on the three
// Inception networks (codegen/lower TestNetworksCompiled); folding
// BatchNorm into the convolutions changes the rounding only.
const compiledInferTol = 1e-5

// TestCompiledInferMatchesInterpreter evaluates both mini networks at batch
// 8 with Compiled.Infer on AVX-512 and AVX2 against the interpreter's
// Infer: the logits within compiledInferTol, the same top-1 class for
// every image whose two best interpreter scores are not within that
// tolerance of each other. It then changes the weights in place (a
// caller such as the EMA may reuse tensors) and passes new tensors, and
// checks that each change reaches the compiled model while the graph is
// compiled once; and it checks InferKeep's kept values (the value before
// global_avgpool, experiment's dead-unit probe).
func TestCompiledInferMatchesInterpreter(t *testing.T) {
	if _, err := codegen.FindLLVM(); err != nil {
		testenv.Check(t, err)
	}
	for _, net := range []string{"mini_inception", "mini_inception_resnet"} {
		for _, isa := range testenv.HostISAs(t, "avx512", "avx2") {
			t.Run(net+"/"+isa, func(t *testing.T) {
				const batch = 8
				g, err := dsl.LoadFile(net+".kiln", dsl.Options{FS: archs.FS, Batch: batch})
				if err != nil {
					t.Fatal(err)
				}
				params, err := g.GeneratedParams()
				if err != nil {
					t.Fatal(err)
				}
				in := g.Inputs()[0]
				x := tensor.New(in.Type.Shape...)
				for i := range x.Data {
					x.Data[i] = float32(data.Hash(3, uint64(i))%2001)/1000 - 1
				}
				inputs := map[string]*tensor.Tensor{in.Name: x}
				ce := &Compiled{Threads: 2, ISA: isa}
				defer ce.Close()
				check := func(what string) {
					t.Helper()
					want, err := Interpreter{}.Infer(g, params, inputs)
					if err != nil {
						t.Fatal(err)
					}
					got, err := ce.Infer(g, params, inputs)
					if err != nil {
						t.Fatal(err)
					}
					compareLogits(t, what, got, want)
				}
				check("procedural weights")
				// In place: the same tensors, new values.
				for _, p := range g.Params() {
					d := params[p.Name].Data
					for i := range d {
						d[i] = d[i]*0.9 + 0.01
					}
				}
				check("weights changed in place")
				// New tensors.
				fresh := map[string]*tensor.Tensor{}
				for name, v := range params {
					c := &tensor.Tensor{Shape: v.Shape, Data: append([]float32(nil), v.Data...)}
					for i := range c.Data {
						c.Data[i] *= 1.1
					}
					fresh[name] = c
				}
				params = fresh
				check("new weight tensors")
				if len(ce.infer) != 1 {
					t.Errorf("the inference graph was compiled %d times, want once", len(ce.infer))
				}
				// Kept values.
				pre := -1
				for _, n := range g.Nodes {
					if n.Op == ir.OpGlobalAvgPool {
						pre = n.Args[0]
					}
				}
				res, err := interp.Run(g, params, inputs, interp.Options{Keep: []int{pre}})
				if err != nil {
					t.Fatal(err)
				}
				got, vals, err := ce.InferKeep(g, params, inputs, []int{pre})
				if err != nil {
					t.Fatal(err)
				}
				compareLogits(t, "InferKeep", got, res.Outputs[0])
				v, ok := vals[pre]
				if !ok {
					t.Fatalf("InferKeep returned no value for %%%d", pre)
				}
				if d, m := maxRel(v.Data, res.Values[pre].Data); d > compiledInferTol {
					t.Errorf("kept %%%d: max|d|/max|ref| %.3g (max|ref| %g)", pre, d, m)
				}
			})
		}
	}
}

// compareLogits checks got against want (N, classes): every value within
// compiledInferTol of max|want|, and the same top-1 wherever the
// interpreter's best class wins by more than that.
func compareLogits(t *testing.T, what string, got, want *tensor.Tensor) {
	t.Helper()
	if !ir.ShapeEqual(got.Shape, want.Shape) {
		t.Fatalf("%s: compiled logits %v, interpreter %v", what, got.Shape, want.Shape)
	}
	d, m := maxRel(got.Data, want.Data)
	n, c := want.Shape[0], want.Shape[1]
	same, clear := 0, 0
	for b := range n {
		gw, ww := got.Data[b*c:(b+1)*c], want.Data[b*c:(b+1)*c]
		bi, second := argmax(ww), math.Inf(-1)
		for k, v := range ww {
			if k != bi {
				second = max(second, float64(v))
			}
		}
		if float64(ww[bi])-second > compiledInferTol*m {
			clear++
			if argmax(gw) == bi {
				same++
			}
		}
	}
	t.Logf("%s: logits max|d|/max|ref| %.3g; top-1 equal on %d of %d clearly ranked images", what, d, same, clear)
	if d > compiledInferTol {
		t.Errorf("%s: logits differ: max|d|/max|ref| %.3g > %g", what, d, compiledInferTol)
	}
	if same != clear {
		t.Errorf("%s: top-1 differs on %d of %d images", what, clear-same, clear)
	}
}

func argmax(v []float32) int {
	bi := 0
	for k, x := range v {
		if x > v[bi] {
			bi = k
		}
	}
	return bi
}

// maxRel returns max|got−want|/max|want| and max|want|.
func maxRel(got, want []float32) (float64, float64) {
	var dm, rm float64
	for i, w := range want {
		dm = max(dm, math.Abs(float64(got[i])-float64(w)))
		rm = max(rm, math.Abs(float64(w)))
	}
	if rm == 0 {
		return dm, rm
	}
	return dm / rm, rm
}

// interpStepCompiledInfer trains in the interpreter and evaluates with
// Compiled.Infer, so that a run's test accuracy can be compared with the
// interpreter's on bit-identical parameters.
type interpStepCompiledInfer struct {
	Interpreter
	c *Compiled
}

func (e interpStepCompiledInfer) Infer(g *ir.Graph, params, inputs map[string]*tensor.Tensor) (*tensor.Tensor, error) {
	return e.c.Infer(g, params, inputs)
}

// TestRunEvaluatesCompiled trains the small network for 3 epochs (with the
// EMA, whose tensors change every step) twice, evaluating in the
// interpreter and with Compiled.Infer: the per-epoch test top-1 and top-5
// must be equal.
func TestRunEvaluatesCompiled(t *testing.T) {
	if _, err := codegen.FindLLVM(); err != nil {
		testenv.Check(t, err)
	}
	ctx := context.Background()
	ref := t.TempDir()
	if err := newRun(t, ref, settings(), 3, nil).Do(ctx); err != nil {
		t.Fatal(err)
	}
	ce := &Compiled{Threads: 2}
	defer ce.Close()
	dir := t.TempDir()
	if err := newRun(t, dir, settings(), 3, interpStepCompiledInfer{c: ce}).Do(ctx); err != nil {
		t.Fatal(err)
	}
	acc := func(d string) []string {
		var out []string
		for _, line := range strings.Split(strings.TrimSpace(string(readFile(t, filepath.Join(d, MetricsFile)))), "\n")[1:] {
			f := strings.Split(line, ",")
			out = append(out, strings.Join(f[:4], ","))
		}
		return out
	}
	want, got := acc(ref), acc(dir)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("epoch,train_loss,top1,top5 evaluated compiled:\n%s\ninterpreter:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(ce.infer) != 1 {
		t.Errorf("the inference graph was compiled %d times, want once", len(ce.infer))
	}
}
