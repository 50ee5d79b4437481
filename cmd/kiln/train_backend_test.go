package main

import (
	"encoding/csv"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/internal/testenv"
)

// smallDropNet is smallFashionNet with a dropout, so that the compiled
// backend's run-time dropout seed is exercised by kiln train.
const smallDropNet = `network small(x: f32[N, 1, 28, 28]) -> f32[N, 10] {
    conv = conv2d(x, 8, kernel=3, stride=2, pad=1, bias=false)
    bn = batchnorm(conv, eps=0.001)
    pool = maxpool(relu(bn), 3, stride=2)
    fc = dense(dropout(flatten(global_avgpool(pool)), p=0.2), 10)
    return fc
}
`

// TestTrainBackendCompiled trains the same small network with dropout on
// Fashion-MNIST for two epochs with --backend interp and --backend
// compiled: each epoch's training loss must agree to 1e-3 (float32 sums in
// another order; the learning rate decays between the epochs, a run-time
// value of the compiled step) and the test accuracy to one image in 16; an
// unknown backend is a usage error.
func TestTrainBackendCompiled(t *testing.T) {
	fashionMNIST(t)
	if _, err := codegen.FindLLVM(); err != nil {
		testenv.Check(t, err)
	}
	net := filepath.Join(t.TempDir(), "small.kiln")
	if err := os.WriteFile(net, []byte(smallDropNet), 0o644); err != nil {
		t.Fatal(err)
	}
	common := []string{"train", net, "--data", "fashion-mnist", "--batch", "8", "--limit-train", "64", "--limit-test", "16",
		"--seed", "5", "--epochs", "2", "--lr-decay-epochs", "1", "--progress", "none"}
	rows := map[string][][]string{}
	for _, b := range []string{"interp", "compiled"} {
		dir := t.TempDir()
		if code, out, errs := kiln(t, append(common, "--backend", b, "--out", dir)...); code != 0 {
			t.Fatalf("--backend %s: exit %d\n%s%s", b, code, out, errs)
		}
		f, err := os.Open(filepath.Join(dir, "metrics.csv"))
		if err != nil {
			t.Fatal(err)
		}
		rows[b], err = csv.NewReader(f).ReadAll()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	num := func(b string, r int, col string) float64 {
		hdr := rows[b][0]
		for i, h := range hdr {
			if h == col {
				v, err := strconv.ParseFloat(rows[b][r][i], 64)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
		}
		t.Fatalf("metrics.csv has no column %s", col)
		return 0
	}
	if len(rows["interp"]) != 3 || len(rows["compiled"]) != 3 {
		t.Fatalf("metrics rows: %d and %d, want a header and 2 epochs", len(rows["interp"]), len(rows["compiled"]))
	}
	for r := 1; r <= 2; r++ {
		li, lc := num("interp", r, "train_loss"), num("compiled", r, "train_loss")
		t.Logf("epoch %d: train loss %v compiled, %v interpreted", r, lc, li)
		if math.Abs(li-lc) > 1e-3*math.Abs(li) {
			t.Errorf("epoch %d: train loss %v compiled, %v interpreted", r, lc, li)
		}
		if ti, tc := num("interp", r, "test_top1"), num("compiled", r, "test_top1"); math.Abs(ti-tc) > 1.0/16+1e-9 {
			t.Errorf("epoch %d: test top-1 %v compiled, %v interpreted", r, tc, ti)
		}
	}
	code, _, errs := kiln(t, append(common, "--backend", "gpu", "--out", t.TempDir())...)
	if code != 2 || !strings.Contains(errs, `--backend "gpu": interp or compiled`) {
		t.Errorf("--backend gpu: exit %d, stderr %q", code, errs)
	}
}
