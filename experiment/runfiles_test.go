package experiment

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSplitAndSummarize runs one network of quick rq1 (Options.Nets), as
// one of several processes sharing a directory would, then rebuilds the
// experiment's outputs from the run files (Options.Summarize): the run,
// with its accuracy, dead-unit fraction and status, must be read back, and
// the network not trained yet left out; Options.FirstSeed adds a seed
// without retraining the others.
func TestSplitAndSummarize(t *testing.T) {
	needFashionMNIST(t)
	out := t.TempDir()
	var trained []*Result
	for _, net := range []string{"resnet"} {
		rs, err := Run(context.Background(), "rq1", Options{Out: out, Quick: true, LimitTrain: 32, LimitTest: 32, Nets: []string{net}})
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 1 || rs[0].Net != net {
			t.Fatalf("--nets %s trained %d runs", net, len(rs))
		}
		trained = append(trained, rs...)
	}
	got, err := Run(context.Background(), "rq1", Options{Out: out, Quick: true, LimitTrain: 32, LimitTest: 32, Summarize: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Net != "resnet" {
		t.Fatalf("summarize read %d runs", len(got))
	}
	for _, g := range got {
		var w *Result
		for _, r := range trained {
			if r.Net == g.Net {
				w = r
			}
		}
		ge, we := g.Epochs[0], w.Epochs[0]
		if g.Status != w.Status || ge.Top1 != we.Top1 || ge.DeadFrac != we.DeadFrac || math.Abs(g.Seconds-w.Seconds) > 1e-3 {
			t.Errorf("%s: read back %q %+v, trained %q %+v", g.Net, g.Status, ge, w.Status, we)
		}
	}
	if lines := readLines(t, filepath.Join(out, "curves.csv")); len(lines) != 2 {
		t.Errorf("curves.csv: %d rows, want 1", len(lines)-1)
	}
	if _, err := Run(context.Background(), "rq1", Options{Out: out, Quick: true, Nets: []string{"nope"}}); err == nil || !strings.Contains(err.Error(), "have inception, resnet") {
		t.Errorf("unknown network: %v", err)
	}
	// FirstSeed 2 trains seed 2 only and reads seed 1 back unchanged.
	m1 := filepath.Join(out, "resnet", "seed1", "metrics.csv")
	before, err := os.ReadFile(m1)
	if err != nil {
		t.Fatal(err)
	}
	both, err := Run(context.Background(), "rq1", Options{Out: out, Quick: true, LimitTrain: 32, LimitTest: 32, Nets: []string{"resnet"}, Seeds: 2, FirstSeed: 2})
	if err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(m1)
	if err != nil {
		t.Fatal(err)
	}
	if len(both) != 2 || both[0].Seed != 1 || both[1].Seed != 2 || both[0].Epochs[0].Top1 != trained[0].Epochs[0].Top1 || string(after) != string(before) {
		t.Errorf("FirstSeed 2: %d runs, seed 1 file changed %v", len(both), string(after) != string(before))
	}
	if _, err := os.Stat(filepath.Join(out, "resnet", "seed2", StatusFile)); err != nil {
		t.Errorf("FirstSeed 2 did not train seed 2: %v", err)
	}
	// A run stopped before it ended has metrics but no status file.
	if err := os.Remove(filepath.Join(out, "resnet", "seed1", StatusFile)); err != nil {
		t.Fatal(err)
	}
	r, err := readResult(out, "resnet", 1)
	if err != nil || r == nil || !strings.HasPrefix(r.Status, "partial") {
		t.Errorf("run without a status file: %+v, %v", r, err)
	}
}

// TestWriteSignificance checks the Welch comparison written for
// Experiment.Compare from synthetic final accuracies.
func TestWriteSignificance(t *testing.T) {
	out := t.TempDir()
	if err := os.WriteFile(filepath.Join(out, "summary.md"), []byte("table\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mk := func(net string, seed uint64, top1 float64) *Result {
		return &Result{Net: net, Seed: seed, Status: "ok", Epochs: []Epoch{{Epoch: 1, Top1: 0.5}, {Epoch: 2, Top1: top1}}}
	}
	results := []*Result{mk("a", 1, 0.912), mk("a", 2, 0.918), mk("a", 3, 0.925), mk("b", 1, 0.921), mk("b", 2, 0.929), mk("b", 3, 0.930), mk("c", 1, 0.9)}
	ex := &Experiment{Name: "t", Compare: [][2]string{{"a", "b"}, {"a", "c"}}}
	if err := WriteSignificance(out, ex, results); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, filepath.Join(out, "significance.csv"))
	if len(lines) != 2 || lines[0] != SignificanceHeader || !strings.HasPrefix(lines[1], "a,b,3,3,") {
		t.Fatalf("significance.csv: %q", lines)
	}
	f := strings.Split(lines[1], ",")
	if p := f[len(f)-1]; !strings.HasPrefix(p, "0.157038") {
		t.Errorf("p = %s, want 0.157038… (TestWelchTTest's three-seed case)", p)
	}
	md := strings.Join(readLines(t, filepath.Join(out, "summary.md")), "\n")
	for _, want := range []string{"table", "a (91.83 ± 0.65 %, n = 3) vs b (92.67 ± 0.49 %, n = 3)", "not significant", "a vs c: no test"} {
		if !strings.Contains(md, want) {
			t.Errorf("summary.md lacks %q:\n%s", want, md)
		}
	}
}
