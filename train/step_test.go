package train_test

import (
	"encoding/json"
	"math"
	"os"
	"sort"
	"testing"

	"github.com/kiln-dev/kiln/internal/fixtures"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
)

// oneHot turns int64 class labels into f32 one-hot rows of k classes.
func oneHot(t *testing.T, labels []int64, k int) *tensor.Tensor {
	t.Helper()
	out := tensor.New(len(labels), k)
	for i, l := range labels {
		if l < 0 || int(l) >= k {
			t.Fatalf("label %d out of range [0, %d)", l, k)
		}
		out.Data[i*k+int(l)] = 1
	}
	return out
}

// TestStepFixture runs the fixtures' training recipe (README section 2:
// label smoothing 0.1, PyTorch's RMSProp lr 0.045, α 0.9, ε 1.0, momentum
// 0.9, BatchNorm momentum 0.1) as Kiln training-step graphs in the
// interpreter, and compares with PyTorch's float64 reference by the README's
// section 4 rule, tensor by tensor: the loss and logits of step 1, every
// parameter gradient of step 1 (m.grads_f64), every parameter and buffer
// after step 1 (m.step1_f64) and after three steps on batches 0, 1, 2
// (m.step3_f64).
func TestStepFixture(t *testing.T) {
	xs := readNPY(t, "batches_x.npy") // (3, 8, 1, 28, 28)
	ysFile := readLabels(t, "batches_y.npy")
	steps, batch := xs.Shape[0], xs.Shape[1]
	per := xs.Numel() / steps
	for _, tc := range fixtureNets {
		t.Run(tc.net, func(t *testing.T) {
			errs := readIndex(t, tc.fixture)
			losses := readLosses(t, tc.fixture)
			sg, err := train.Step(loadMini(t, tc.net, batch), train.StepOptions{Smoothing: 0.1, Optimizer: train.PaperRMSProp})
			if err != nil {
				t.Fatal(err)
			}
			g := sg.Graph
			// Round trip: the step graph prints and parses back.
			if _, err := ir.Parse("step.ir", g.String()); err != nil {
				t.Fatalf("step graph does not parse back: %v", err)
			}
			params := readST(t, tc.fixture+".init.safetensors")
			for _, s := range sg.State {
				params[s.Name] = s.Initial()
			}
			var keep []int
			var gradNames []string
			for name := range sg.Grads {
				gradNames = append(gradNames, name)
			}
			sort.Strings(gradNames)
			for _, name := range gradNames {
				keep = append(keep, sg.Grads[name])
			}
			for step := range steps {
				x, err := tensor.FromData(xs.Shape[1:], xs.Data[step*per:(step+1)*per])
				if err != nil {
					t.Fatal(err)
				}
				target := oneHot(t, ysFile[step*batch:(step+1)*batch], 10)
				res, err := interp.Run(g, params, map[string]*tensor.Tensor{"x": x, sg.Target: target}, interp.Options{Keep: keep})
				if err != nil {
					t.Fatal(err)
				}
				// The loss of every step against PyTorch float64's, with
				// the rule's bound scaled by PyTorch float32's own distance.
				loss, ref := float64(res.Outputs[0].Data[0]), losses.F64[step]
				errTorch := math.Abs(losses.F32[step]-ref) / math.Abs(ref)
				if tol := math.Max(4*errTorch, 1e-5); !(math.Abs(loss-ref)/math.Abs(ref) <= tol) {
					t.Errorf("step %d loss %.7f, PyTorch float64 %.7f (float32 %.7f)", step+1, loss, ref, losses.F32[step])
				}
				if step == 0 {
					e := checkRule(t, "training logits", res.Outputs[1], readNPY(t, tc.fixture+".train_logits_f64.npy"), errs.TrainLogits)
					t.Logf("step 1 loss %.6f, logits err %.3g", res.Outputs[0].Data[0], e)
					ref := readST(t, tc.fixture+".grads_f64.safetensors")
					if len(ref) != len(gradNames) {
						t.Errorf("%d gradients, the fixture has %d", len(gradNames), len(ref))
					}
					worst, worstName := 0.0, ""
					for k, name := range gradNames {
						e := checkRule(t, "gradient of "+name, res.Values[keep[k]], ref[name], errs.Grads[name])
						if r := e / math.Max(4*errs.Grads[name], 1e-5); r > worst {
							worst, worstName = r, name
						}
					}
					t.Logf("%d gradients, worst err/bound %.3g (%s)", len(gradNames), worst, worstName)
				}
				for name, v := range res.Updates {
					params[name] = v
				}
				if step == 0 || step == steps-1 {
					file, errT := tc.fixture+".step1_f64.safetensors", errs.Step1
					if step > 0 {
						file, errT = tc.fixture+".step3_f64.safetensors", errs.Step3
					}
					ref := readST(t, file)
					worst, worstName := 0.0, ""
					for name, r := range ref {
						et, ok := errT[name]
						if !ok {
							t.Errorf("index.json has no error for %s in %s", name, file)
							continue
						}
						e := checkRule(t, name+" after step "+file, params[name], r, et)
						if q := e / math.Max(4*et, 1e-5); q > worst {
							worst, worstName = q, name
						}
					}
					t.Logf("%s: %d tensors, worst err/bound %.3g (%s)", file, len(ref), worst, worstName)
				}
			}
		})
	}
}

// readLabels reads an int64 label file of the training fixtures.
func readLabels(t *testing.T, file string) []int64 {
	t.Helper()
	y, err := tensor.ReadNPYInt64File(fixtures.Path(t, "fixtures", "training", file))
	if err != nil {
		t.Fatal(err)
	}
	return y.Data
}

// stepLosses are index.json's per-step losses of PyTorch's float32 and
// float64 runs.
type stepLosses struct {
	F32 []float64 `json:"losses"`
	F64 []float64 `json:"losses_f64"`
}

func readLosses(t *testing.T, fixture string) stepLosses {
	t.Helper()
	b, err := os.ReadFile(fixtures.Path(t, "fixtures", "training", "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Models map[string]stepLosses `json:"models"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	l := idx.Models[fixture]
	if len(l.F32) != 3 || len(l.F64) != 3 {
		t.Fatalf("index.json: %s has losses %v / %v, want 3 each", fixture, l.F32, l.F64)
	}
	return l
}
