package experiment

import (
	"context"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train/data"
	"github.com/kiln-dev/kiln/train/trainer"
)

func needFashionMNIST(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(data.FashionMNISTDir); err != nil {
		testenv.Missing(t, "Fashion-MNIST (%s): %s", data.FashionMNISTInstall, err)
	}
}

// TestQuickRQ1 runs `kiln experiment rq1 --quick` end to end (with 32
// training and test images, one step and one evaluation per network, to
// stay fast) and checks its outputs: the per-run
// metrics, curves.csv's header and rows, the summary's header and one row
// per network, and that every plot is a valid, non-empty PNG.
func TestQuickRQ1(t *testing.T) {
	needFashionMNIST(t)
	out := t.TempDir()
	var log strings.Builder
	results, err := Run(context.Background(), "rq1", Options{Out: out, Quick: true, LimitTrain: 32, LimitTest: 32, Log: &log})
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if len(results) != 2 {
		t.Fatalf("%d runs, want 2 (two networks, one seed)", len(results))
	}
	for _, r := range results {
		if r.Status != "ok" || len(r.Epochs) != 1 {
			t.Errorf("%s seed %d: status %q, %d epochs", r.Net, r.Seed, r.Status, len(r.Epochs))
		}
		if _, err := os.Stat(filepath.Join(r.Dir, trainer.MetricsFile)); err != nil {
			t.Error(err)
		}
		if e := r.Epochs[0]; math.IsNaN(e.DeadFrac) || e.DeadFrac < 0 || e.DeadFrac > 1 {
			t.Errorf("%s: dead-unit fraction %v, want one in [0, 1]", r.Net, e.DeadFrac)
		}
	}
	lines := readLines(t, filepath.Join(out, "curves.csv"))
	if lines[0] != CurvesHeader || len(lines) != 3 {
		t.Errorf("curves.csv: header %q and %d rows, want %q and 2", lines[0], len(lines)-1, CurvesHeader)
	}
	ex := Experiments()["rq1"]
	lines = readLines(t, filepath.Join(out, "summary.csv"))
	if lines[0] != SummaryHeader(ex.Thresholds) || len(lines) != 3 {
		t.Errorf("summary.csv: header %q and %d rows", lines[0], len(lines)-1)
	}
	for i, want := range []string{"inception,1,", "resnet,1,"} {
		if i+1 < len(lines) && !strings.HasPrefix(lines[i+1], want) {
			t.Errorf("summary.csv row %d: %q, want it to start with %q", i+1, lines[i+1], want)
		}
	}
	md := strings.Join(readLines(t, filepath.Join(out, "summary.md")), "\n")
	if !strings.Contains(md, "| resnet | 1 |") {
		t.Errorf("summary.md has no resnet row:\n%s", md)
	}
	for _, f := range PlotFiles {
		path := filepath.Join(out, f)
		fh, err := os.Open(path)
		if err != nil {
			t.Error(err)
			continue
		}
		cfg, err := png.DecodeConfig(fh)
		fh.Close()
		if err != nil || cfg.Width == 0 || cfg.Height == 0 {
			t.Errorf("%s: not a valid PNG (%v, %dx%d)", f, err, cfg.Width, cfg.Height)
		}
	}
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

// TestInitWeightsSeeded checks PyTorch's default initialisation: the
// bounds ±1/√fan_in, BatchNorm weight 1 and bias 0, running variance 1,
// determinism for a seed and different values for another seed.
func TestInitWeightsSeeded(t *testing.T) {
	g, err := Net{Label: "res", File: "mini_inception_resnet.kiln"}.Load(1)
	if err != nil {
		t.Fatal(err)
	}
	a, err := InitWeights(g, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := InitWeights(g, 1)
	c, _ := InitWeights(g, 2)
	for _, tc := range []struct {
		name   string
		bound  float64 // |v| ≤ bound; 0: exact value
		value  float32
		random bool
	}{
		{"stem.c1.0.weight", 1 / math.Sqrt(9), 0, true},
		{"stem.c1.1.weight", 0, 1, false},
		{"stem.c1.1.bias", 0, 0, false},
		{"stem.c1.1.running_var", 0, 1, false},
		{"A.0.up.bias", 1 / math.Sqrt(64), 0, true},
		{"fc.weight", 1 / math.Sqrt(176), 0, true},
	} {
		ta, ok := a[tc.name]
		if !ok {
			t.Errorf("no tensor %s", tc.name)
			continue
		}
		for i, v := range ta.Data {
			if tc.random && math.Abs(float64(v)) > tc.bound {
				t.Errorf("%s[%d] = %v outside ±%v", tc.name, i, v, tc.bound)
				break
			}
			if !tc.random && v != tc.value {
				t.Errorf("%s[%d] = %v, want %v", tc.name, i, v, tc.value)
				break
			}
		}
		if !equalT(ta, b[tc.name]) {
			t.Errorf("%s: seed 1 twice gives different values", tc.name)
		}
		if tc.random && equalT(ta, c[tc.name]) {
			t.Errorf("%s: seeds 1 and 2 give the same values", tc.name)
		}
	}
}

func equalT(a, b *tensor.Tensor) bool {
	if len(a.Data) != len(b.Data) {
		return false
	}
	for i := range a.Data {
		if a.Data[i] != b.Data[i] {
			return false
		}
	}
	return true
}

// TestSummarizeThresholds checks the summary statistics on hand-made
// runs: epochs and seconds to a threshold over the runs that reach it,
// mean ± sample sd of the final accuracy, and the status of a diverged run.
func TestSummarizeThresholds(t *testing.T) {
	ex := &Experiment{Name: "t", Thresholds: []float64{0.5, 0.9}}
	mk := func(seed uint64, status string, top1 ...float64) *Result {
		r := &Result{Net: "n", Seed: seed, Status: status}
		for i, v := range top1 {
			r.Epochs = append(r.Epochs, Epoch{Epoch: i + 1, Top1: v, ElapsedS: 10 * float64(i+1), DeadFrac: nan})
		}
		return r
	}
	rows := Summarize(ex, []*Result{mk(1, "ok", 0.4, 0.6, 0.8), mk(2, "ok", 0.5, 0.7, 0.9), mk(3, "diverged at epoch 2 step 1", 0.3)})
	if len(rows) != 1 {
		t.Fatalf("%d rows", len(rows))
	}
	r := rows[0]
	check := func(what string, s Stat, mean, sd float64, n int) {
		t.Helper()
		if math.Abs(s.Mean-mean) > 1e-9 || (math.IsNaN(sd) != math.IsNaN(s.SD)) || (!math.IsNaN(sd) && math.Abs(s.SD-sd) > 1e-9) || s.N != n {
			t.Errorf("%s: %+v, want mean %v sd %v n %d", what, s, mean, sd, n)
		}
	}
	check("final", r.Final, (80+90+30)/3.0, math.Sqrt(((80-200/3.0)*(80-200/3.0)+(90-200/3.0)*(90-200/3.0)+(30-200/3.0)*(30-200/3.0))/2), 3)
	check("epochs to 50%", r.ToEpochs[0], 1.5, math.Sqrt(0.5), 2)
	check("seconds to 50%", r.ToSeconds[0], 15, math.Sqrt(50), 2)
	check("epochs to 90%", r.ToEpochs[1], 3, nan, 1)
	if got := r.ToEpochs[1].format(1); got != "3.0 (1/3)" {
		t.Errorf("epochs to 90%% formats as %q, want %q", got, "3.0 (1/3)")
	}
	if !strings.Contains(r.Status, "seed 3 diverged") {
		t.Errorf("status %q does not name the diverged seed", r.Status)
	}
}

// TestPlotsBands renders the plots of synthetic runs (two networks, three
// seeds, five epochs, one seed diverged after two) and checks that every
// PNG decodes; KILN_PLOT_DIR keeps them for inspection.
func TestPlotsBands(t *testing.T) {
	out := os.Getenv("KILN_PLOT_DIR")
	if out == "" {
		out = t.TempDir()
	}
	var results []*Result
	for ni, net := range []string{"a", "b"} {
		for s := 1; s <= 3; s++ {
			r := &Result{Net: net, Seed: uint64(s), Status: "ok"}
			n := 5
			if ni == 1 && s == 3 {
				n, r.Status = 2, "diverged at epoch 3 step 1"
			}
			for e := 1; e <= n; e++ {
				f := float64(e) + 0.3*float64(s) + float64(ni)
				r.Epochs = append(r.Epochs, Epoch{Epoch: e, Top1: 1 - 0.5/f, TrainLoss: 2 / f, ElapsedS: 30 * float64(e) * (1 + 0.1*float64(ni)), DeadFrac: 0.05 * float64(s)})
			}
			results = append(results, r)
		}
	}
	if err := Plots(out, &Experiment{Name: "synthetic"}, results); err != nil {
		t.Fatal(err)
	}
	for _, f := range PlotFiles {
		fh, err := os.Open(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(fh); err != nil {
			t.Errorf("%s: %v", f, err)
		}
		fh.Close()
	}
}

// TestDeadUnitsCount checks the dead-unit bookkeeping: a channel is dead
// for an evaluation when it is zero at every position of every real test
// item; items past the test set's end (the trainer's zero padding of the
// last batch) do not count, and each training step closes an evaluation.
func TestDeadUnitsCount(t *testing.T) {
	d := &deadExec{testLen: 3}
	batch := func(vals ...[]float32) *tensor.Tensor { // per item: 3 channels × 2 positions
		x := tensor.New(len(vals), 3, 1, 2)
		for i, v := range vals {
			copy(x.Data[i*6:], v)
		}
		return x
	}
	// Evaluation 1: channel 0 fires on item 0, channel 1 on item 2 (in
	// the second batch), channel 2 only on the padding item 3.
	d.observe(batch([]float32{1, 0, 0, 0, 0, 0}, []float32{0, 0, 0, 0, 0, 0}))
	d.observe(batch([]float32{0, 0, 0, 2, 0, 0}, []float32{0, 0, 0, 0, 5, 5}))
	d.finish() // what a training step does
	// Evaluation 2: everything dead.
	d.observe(batch(make([]float32, 6), make([]float32, 6)))
	d.observe(batch(make([]float32, 6), make([]float32, 6)))
	got := d.fractions()
	if len(got) != 2 || math.Abs(got[0]-1.0/3) > 1e-12 || got[1] != 1 {
		t.Errorf("fractions %v, want [1/3 1]", got)
	}
}

// keepExec is a KeepInferer that returns fixed values.
type keepExec struct {
	trainer.Interpreter
	calls int
}

func (k *keepExec) InferKeep(g *ir.Graph, params, inputs map[string]*tensor.Tensor, keep []int) (*tensor.Tensor, map[int]*tensor.Tensor, error) {
	k.calls++
	v := tensor.New(g.Nodes[keep[0]].Type.Shape...)
	v.Data[0] = 1 // channel 0 of item 0 fires; the other 3 channels are dead
	return tensor.New(2, 10), map[int]*tensor.Tensor{keep[0]: v}, nil
}

// TestDeadUnitsKeepInferer checks that an executor other than the
// interpreter feeds the dead-unit measure through KeepInferer.
func TestDeadUnitsKeepInferer(t *testing.T) {
	g, err := dsl.Load("n.kiln", []byte(`network n(x: f32[N, 1, 4, 4]) -> f32[N, 10] {
    conv = conv2d(x, 4, 3, pad=1)
    fc = dense(flatten(global_avgpool(relu(conv))), 10)
    return fc
}
`), dsl.Options{Batch: 2})
	if err != nil {
		t.Fatal(err)
	}
	k := &keepExec{}
	d, err := newDeadExec(k, g, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Infer(g, nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := d.fractions(); k.calls != 1 || len(got) != 1 || got[0] != 0.75 {
		t.Errorf("%d InferKeep calls, fractions %v; want 1 and [0.75]", k.calls, got)
	}
}

// TestQuickExperiments runs the quick mode of every other training
// experiment end to end (`kiln experiment NAME --quick`, here on 32 training
// and test images: one step and one evaluation per network) so that each
// experiment's path stays working: one run per network, a summary row per
// network (and the ensemble that quick mode's single seed can form), and
// the plots.
func TestQuickExperiments(t *testing.T) {
	needFashionMNIST(t)
	for _, tc := range []struct {
		name     string
		ensemble string // a summary row that must exist, if any
	}{
		{"depth", ""},
		{"scaling", ""},
		{"size", ""},
		{"ensemble", "ensemble: 3 resnet + 1 inception,"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			var log strings.Builder
			results, err := Run(context.Background(), tc.name, Options{Out: out, Quick: true, LimitTrain: 32, LimitTest: 32, Log: &log})
			if err != nil {
				t.Fatalf("%v\n%s", err, log.String())
			}
			ex := Experiments()[tc.name]
			if len(results) != len(ex.Nets) {
				t.Fatalf("%d runs, want %d (one per network, one seed)", len(results), len(ex.Nets))
			}
			for _, r := range results {
				if r.Status != "ok" || len(r.Epochs) != 1 {
					t.Errorf("%s seed %d: status %q, %d epochs", r.Net, r.Seed, r.Status, len(r.Epochs))
				}
			}
			lines := readLines(t, filepath.Join(out, "summary.csv"))
			for _, n := range ex.Nets {
				found := false
				for _, l := range lines[1:] {
					found = found || strings.HasPrefix(l, n.Label+",1,")
				}
				if !found {
					t.Errorf("summary.csv has no row for %s:\n%s", n.Label, strings.Join(lines, "\n"))
				}
			}
			if tc.ensemble != "" && !strings.Contains(strings.Join(lines, "\n"), tc.ensemble) {
				t.Errorf("summary.csv has no row %q:\n%s", tc.ensemble, strings.Join(lines, "\n"))
			}
			for _, f := range PlotFiles {
				if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
					t.Errorf("plot %s missing or empty (%v)", f, err)
				}
			}
		})
	}
}
