package tests

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
	"github.com/kiln-dev/kiln/train/trainer"
)

// Full-network training tolerances: per updated tensor (parameters,
// BatchNorm running statistics, RMSProp's square_avg and momentum_buffer,
// the last two functions of the gradient alone after one step from zero
// state) ‖compiled − interpreter‖₂/‖interpreter‖₂ within fullTrainTol, as
// trainer's compiledTol for the mini networks: where a ReLU input or a
// max-pooling window is within rounding of a tie the two route one
// gradient element differently and the difference reaches every earlier
// layer. The loss must agree within fullTrainLossTol; the median tensor
// must be within fullTrainMedianTol, so that a wrong kernel, which is O(1)
// wherever it is used (the lowering bugs found on the mini networks were
// 0.2 to 2.8), cannot hide under the tie bound. Measured on
// Inception-ResNet-v1 at 2×3×107×107: loss 2.4e-7 apart, median 2.1e-4,
// worst 4.4e-2 (a BatchNorm bias's momentum buffer in the first C block,
// block8, whose 2×2 maps give each BatchNorm 8 values per channel).
const (
	fullTrainTol       = 6e-2
	fullTrainMedianTol = 1e-3
	fullTrainLossTol   = 1e-4
)

// fullTrainCase is one network's training-step check.
type fullTrainCase struct {
	net   string
	batch int
	input []int // C, H, W (nil: the network's)
	// ref checks against a PyTorch float64 step (train_full_ref.py)
	// instead of the interpreter alone (checkRef).
	ref bool
}

// fullTrainCases are the networks `make train-full-check` runs
// (KILN_TRAIN_FULL=1): one RMSProp step of Inception-v4 and
// Inception-ResNet-v2 at batch 2, 299×299, as issue 9 asks. Each compiles
// the whole step graph (thousands of kernels: many minutes with a cold
// object cache) and needs up to 6 GiB (Inception-ResNet-v2: 5,991 MiB
// peak RSS), and the float64 reference runs PyTorch twice (minutes each);
// the small variant below runs in make test.
var fullTrainCases = []fullTrainCase{
	{"inception_v4", 2, nil, true},
	{"inception_resnet_v2", 2, nil, true},
}

// smallFullTrainCases run in make test: Inception-ResNet-v1 (every block
// type of the three networks: stem, A/B/C residual blocks with their
// scales, reductions with max pooling, global average pooling, dense) at
// batch 2 and 107×107, where the C blocks are 2×2. At 75×75, the smallest
// input the stem and reductions accept, the C blocks are 1×1 and each
// training-mode BatchNorm there normalizes two values, one per image:
// the forward is then ±d/√(d²+ε) of a half-difference d of two nearly
// equal sums (cancellation), and the input gradient is exactly zero in
// real arithmetic, so both sides compute rounding noise (measured: loss
// 3.6e-4 apart, median tensor 0.27).
var smallFullTrainCases = []fullTrainCase{
	{"inception_resnet_v1", 2, []int{3, 107, 107}, false},
}

// TestFullNetworkTrainStepCompiled runs one compiled training step
// (trainer.Compiled: passes.RunTraining, lower.LowerTraining, LLVM) of a
// full Inception network from procedural weights and zero optimizer state,
// and the interpreter's step on the same batch. With KILN_TRAIN_FULL=1 it
// runs fullTrainCases (make train-full-check), otherwise
// smallFullTrainCases. KILN_TRAIN_FULL_NETS=a,b restricts the full cases
// to those networks.
//
// The small case must agree with the interpreter (bounds above). The full
// cases cannot be held to that: at 299×299 and batch 2, float32 itself does
// not determine Inception-v4's step to better than about 10%. Against a
// float64 step (PyTorch float64, train_full_ref.py, the same weights and
// batch widened exactly), the float32 interpreter's median updated tensor
// is 11.4% off (‖Δ−Δref‖/‖Δref‖, Δ the change the step made; worst 41%),
// the compiled step's 12.1% (worst 30%) and PyTorch's own float32 step's
// 10.7% (worst 33%): the compiled step is no worse than the interpreter
// (median per-tensor error ratio 1.07), so the 10.6%
// compiled-vs-interpreter distance is the conditioning of ~150
// training-mode BatchNorms in a deep non-residual stack at batch 2 (the
// training fixtures' README §4 finds the same on their non-residual mini
// network), not a kernel. Inception-ResNet-v2 is better conditioned:
// median interpreter 0.95%, PyTorch float32 1.17%, compiled 1.42%; its
// block8.conv2d.bias (and that bias's optimizer state) is zero in real
// arithmetic (BatchNorm after conv2d_7b removes any per-channel shift), so
// every implementation computes rounding noise there (relative errors
// ~1e16) and the rule below must not divide by it.
//
// The full cases therefore use the README §4 rule with a float64
// reference (checkRef): per updated tensor, with c, i, p the compiled,
// interpreter and PyTorch float32 distances ‖Δ−Δref‖₂ and m the larger of
// the interpreter's and PyTorch float32's median relative distance,
//
//	c ≤ 4·max(i, p, m·‖Δref‖₂) + 1e-6·√n·rms(kind)
//
// where rms(kind) is the median RMS element of Δref over the tensors of the
// same kind (weight, bias, running_mean, running_var, square_avg,
// momentum_buffer): a tensor may be as far from float64 as 4× what two
// independent float32 implementations get there, or 4× the network's
// typical float32 error, and a tensor zero in real arithmetic is bounded
// absolutely, never relatively. The compiled median must be within 2× m
// and each loss within 1e-3 of float64's (and 1e-4 of the interpreter's).
// A wrong kernel is O(1) on the tensors upstream of it (the lowering bugs
// found on the mini networks were 0.2 to 2.8 relative): it fails the
// per-tensor bound wherever float32 determines the step well (most of
// Inception-ResNet-v2, Inception-v4's last blocks), and the median bound
// if it reaches most of the network.
//
// Measured by make train-full-check (13 min, 2 cores shared with other
// work, load 5–7; the float64 figures of the rule above). Inception-v4:
// loss compiled 7.3561511, interpreter 7.3561268, PyTorch float32
// 7.3560166, float64 7.3558474; largest c/bound 0.41
// (features.3.conv.bn.bias: compiled 24%, interpreter 13%, PyTorch float32
// 15%); interpreter step 53 s, compiled first step 25 s with a warm object
// cache, compiled step 1.3 s, PyTorch float32/float64 55/183 s; peak RSS
// 4,521 MiB. Inception-ResNet-v2: loss compiled 6.6373491, interpreter
// 6.6373487, PyTorch float32 6.6373472, float64 6.6373480; largest c/bound
// 0.62 (repeat_2.7.branch1.1.bn.bias: compiled 3.0%, interpreter 0.88%,
// PyTorch float32 1.2%); interpreter step 78 s, compiled first step 82 s,
// compiled step 3.9 s, PyTorch float32/float64 46/162 s; peak RSS
// 5,991 MiB. The PyTorch runs need python3-torch (a missing-tool skip
// otherwise, through internal/testenv).
func TestFullNetworkTrainStepCompiled(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping whole-network training steps")
	}
	if _, err := codegen.FindLLVM(); err != nil {
		testenv.Check(t, err)
	}
	cases := smallFullTrainCases
	if os.Getenv("KILN_TRAIN_FULL") == "1" {
		cases = fullTrainCases
		if only := os.Getenv("KILN_TRAIN_FULL_NETS"); only != "" {
			var sel []fullTrainCase
			for _, c := range fullTrainCases {
				for _, n := range strings.Split(only, ",") {
					if n == c.net {
						sel = append(sel, c)
					}
				}
			}
			cases = sel
		}
	}
	for _, tc := range cases {
		name := fmt.Sprintf("%s/batch%d", tc.net, tc.batch)
		if tc.input != nil {
			name += fmt.Sprintf("/%dx%d", tc.input[1], tc.input[2])
		}
		t.Run(name, func(t *testing.T) {
			if tc.ref {
				// The full cases hold the params, the reference, two
				// steps' updates and the interpreter's activations:
				// a lower GC target and returning the previous case's
				// memory keep the process near 6 GiB.
				defer debug.SetGCPercent(debug.SetGCPercent(50))
				debug.FreeOSMemory()
			}
			fullTrainStep(t, tc)
		})
	}
}

func fullTrainStep(t *testing.T, tc fullTrainCase) {
	g, err := dsl.LoadFile(tc.net+".kiln", dsl.Options{FS: archs.FS, Batch: tc.batch, InputShape: tc.input})
	if err != nil {
		t.Fatal(err)
	}
	sg, err := train.Step(g, train.StepOptions{Smoothing: 0.1, Optimizer: train.PaperRMSProp})
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
	x, err := tensor.Generate("input", in.Type.Shape)
	if err != nil {
		t.Fatal(err)
	}
	classes := g.Nodes[g.Outputs[0]].Type.Shape[1]
	target := tensor.New(tc.batch, classes)
	for b := range tc.batch {
		target.Data[b*classes+(317*b+11)%classes] = 1
	}
	inputs := map[string]*tensor.Tensor{in.Name: x, sg.Target: target}
	var ref *refResult
	if tc.ref {
		ref = refStep(t, tc.net, params, x, target)
	}

	t0 := time.Now()
	wantLoss, want, err := trainer.Interpreter{}.Step(sg, params, inputs)
	if err != nil {
		t.Fatal(err)
	}
	tInterp := time.Since(t0)
	ce := &trainer.Compiled{Threads: 2}
	defer ce.Close()
	t0 = time.Now()
	loss, got, err := ce.Step(sg, params, inputs)
	if err != nil {
		t.Fatal(err)
	}
	tFirst := time.Since(t0)
	// The compiled step's results alias its model's state, which the next
	// Step overwrites: keep a copy.
	for name, v := range got {
		got[name] = &tensor.Tensor{Shape: v.Shape, Data: append([]float32(nil), v.Data...)}
	}
	// A second step from the same state times the compiled step alone
	// (the model keeps no state the caller does not pass back: it is
	// given the same params again).
	t0 = time.Now()
	if _, _, err := ce.Step(sg, params, inputs); err != nil {
		t.Fatal(err)
	}
	tStep := time.Since(t0)

	if tc.ref {
		checkRef(t, params, want, got, ref, float64(loss), float64(wantLoss))
	}
	if d := math.Abs(float64(loss-wantLoss)) / max(math.Abs(float64(wantLoss)), 1e-6); d > fullTrainLossTol {
		t.Errorf("loss %v, interpreter %v (rel %.2g)", loss, wantLoss, d)
	}
	// KILN_TRAIN_FULL_LOG=S logs the error of every tensor whose name
	// contains S, and compares a 1-thread compiled step with the 2-thread
	// one (a difference beyond rounding is a race).
	logMatch := os.Getenv("KILN_TRAIN_FULL_LOG")
	if logMatch != "" {
		c1 := &trainer.Compiled{Threads: 1}
		_, got1, err := c1.Step(sg, params, inputs)
		c1.Close()
		if err != nil {
			t.Fatal(err)
		}
		worst1 := 0.0
		for name, v := range got {
			worst1 = max(worst1, relL2(got1[name].Data, v.Data))
		}
		t.Logf("1 thread vs 2 threads: worst ‖d‖/‖ref‖ %.3g", worst1)
	}
	var rels []float64
	worst, wname := 0.0, ""
	for name, w := range want {
		v, ok := got[name]
		if !ok {
			t.Errorf("the compiled step did not update %s", name)
			continue
		}
		rel := relL2(v.Data, w.Data)
		rels = append(rels, rel)
		if logMatch != "" && strings.Contains(name, logMatch) {
			t.Logf("%s: ‖d‖/‖ref‖ %.3g", name, rel)
		}
		if rel > worst {
			worst, wname = rel, name
		}
		if rel > fullTrainTol && !tc.ref {
			t.Errorf("%s differs: ‖d‖/‖ref‖ %.3g", name, rel)
		}
	}
	med := median(rels)
	if med > fullTrainMedianTol && !tc.ref {
		t.Errorf("median ‖d‖/‖ref‖ over %d tensors %.3g > %g", len(rels), med, fullTrainMedianTol)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("%s batch %d input %s: loss %v (interpreter %v); %d updated tensors, median ‖d‖/‖ref‖ %.3g, worst %s %.3g; interpreter step %.1f s, compiled first step (compile+load+run) %.1f s, compiled step %.1f s; Go heap peak-ish %s, RSS %s",
		tc.net, tc.batch, tensor.ShapeString(in.Type.Shape), loss, wantLoss, len(rels), med, wname, worst,
		tInterp.Seconds(), tFirst.Seconds(), tStep.Seconds(), mib(ms.Sys), rss())
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s[len(s)/2]
}

func mib(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// rss is the process's peak resident set (VmHWM), or "?".
func rss() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				if kb, err := strconv.Atoi(f[0]); err == nil {
					return mib(uint64(kb) << 10)
				}
			}
		}
	}
	return "?"
}
