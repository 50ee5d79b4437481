package tests

import (
	"encoding/csv"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train/data"
	"github.com/kiln-dev/kiln/train/trainer"
)

// deployTieTol is how close (relative to the row's max|logit|) an image's
// two best interpreter logits must be for the compiled binary to be allowed
// to rank them the other way round: compiled kernels sum in another order
// than the interpreter, and agree with it to about 1e-6 of max|logit|
// (TestCorpusCompiled's corpusTol bounds it), so only a near-tie can flip.
const deployTieTol = 1e-4

// TestTrainThenDeploy is issue 9's "train then deploy in two commands":
// kiln train mini_inception on Fashion-MNIST (a tiny run in the
// interpreter: 64 training images, batch 16, one epoch, with an EMA so that
// what is evaluated differs from the raw parameters), then kiln build
// --weights RUN/final.safetensors, and the built executable, run on the very
// test images the trainer evaluated (the first 48 of the test set, as .npy
// through --input), must reproduce the trainer's reported test top-1.
//
// Tolerance: the same number of correct predictions (the trainer's rule:
// an image is correct when no class scores above its label, ties going to
// the lower class index). The compiled kernels' logits differ from the
// interpreter's by float32 rounding, so an image may flip only where its two
// best logits are within deployTieTol·max|logit| of each other; at most one
// such image may then differ, and the count by at most one. To tell flips
// from wrong weights, the same images also go through kiln run --weights
// (the interpreter, which computes what the trainer's evaluation computed):
// its count must equal the trainer's exactly, and the binary's per-image
// decisions must equal it except at such near-ties.
//
// It also checks that final.safetensors is what the evaluation used: with
// --ema, every tensor of it equals the checkpoint's ema.NAME bit for bit,
// and differs from the raw parameter somewhere.
func TestTrainThenDeploy(t *testing.T) {
	if testing.Short() {
		t.Skip("trains, builds kiln and compiles a network")
	}
	_, err := codegen.FindLLVM()
	testenv.Check(t, err)
	if _, err := os.Stat(data.FashionMNISTDir); err != nil {
		testenv.Missing(t, "Fashion-MNIST not installed at %s (%s; .ci/install-deps installs it)", data.FashionMNISTDir, data.FashionMNISTInstall)
	}
	const nTest = 48
	bin, work := t.TempDir(), t.TempDir()
	kiln := buildKiln(t, bin)
	run := filepath.Join(work, "run")

	// Command 1: train.
	out, err := exec.Command(kiln, "train", "mini_inception", "--data", "fashion-mnist", "--limit-train", "64",
		"--limit-test", strconv.Itoa(nTest), "--batch", "16", "--epochs", "1", "--ema", "0.5", "--seed", "2",
		"--progress", "none", "--out", run).CombinedOutput()
	if err != nil {
		t.Fatalf("kiln train: %v\n%s", err, out)
	}
	top1 := lastTop1(t, filepath.Join(run, trainer.MetricsFile))
	want := int(math.Round(top1 * nTest))
	if math.Abs(float64(want)-top1*nTest) > 1e-3 {
		t.Fatalf("metrics top-1 %v is not a count out of %d", top1, nTest)
	}
	checkFinalIsEMA(t, run)

	// Command 2: build.
	weights := filepath.Join(run, trainer.WeightsFile)
	exe := filepath.Join(bin, "fmnist")
	if out, err := exec.Command(kiln, "build", "mini_inception", "--weights", weights, "--batch", strconv.Itoa(nTest), "-o", exe).CombinedOutput(); err != nil {
		t.Fatalf("kiln build: %v\n%s", err, out)
	}

	// The test images the trainer evaluated, in its order.
	_, te, err := data.LoadFashionMNIST(data.FashionMNISTDir, 1, nTest)
	if err != nil {
		t.Fatal(err)
	}
	x := tensor.New(nTest, 1, 28, 28)
	labels := make([]int, nTest)
	for i := range nTest {
		if err := te.Image(i, x.Data[i*784:(i+1)*784]); err != nil {
			t.Fatal(err)
		}
		labels[i] = te.Label(i)
	}
	if err := tensor.WriteNPYFile(filepath.Join(work, "x.npy"), x); err != nil {
		t.Fatal(err)
	}
	r := runIn(t, work, exe, "--input", "x.npy", "--output", "y.npy")
	if r.code != 0 {
		t.Fatalf("built executable: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if out, err := exec.Command(kiln, "run", "mini_inception", "--weights", weights, "--input", filepath.Join(work, "x.npy"),
		"--output", filepath.Join(work, "ref.npy")).CombinedOutput(); err != nil {
		t.Fatalf("kiln run: %v\n%s", err, out)
	}
	y, ref := readNPYPath(t, filepath.Join(work, "y.npy")), readNPYPath(t, filepath.Join(work, "ref.npy"))
	rel := compare(t, "built executable vs interpreter logits", y, ref, 1e-4)

	predY, predRef := top1Preds(y), top1Preds(ref)
	gotY, gotRef, flips := 0, 0, 0
	for i, l := range labels {
		if predY[i] == l {
			gotY++
		}
		if predRef[i] == l {
			gotRef++
		}
		if predY[i] != predRef[i] {
			row := ref.Data[i*10 : (i+1)*10]
			gap := math.Abs(float64(row[predY[i]] - row[predRef[i]]))
			if gap > deployTieTol*tensor.MaxAbs(&tensor.Tensor{Shape: []int{10}, Data: row}) {
				t.Errorf("image %d: the binary predicts %d, the interpreter %d, %.3g apart: not a near-tie", i, predY[i], predRef[i], gap)
			}
			flips++
		}
	}
	t.Logf("trainer top-1 %d/%d; interpreter on final.safetensors %d/%d; built executable %d/%d; logits max|diff| %.2g x max|ref|; near-tie flips %d",
		want, nTest, gotRef, nTest, gotY, nTest, rel, flips)
	if gotRef != want {
		t.Errorf("kiln run --weights %s: %d/%d correct, the trainer reported %d/%d: final.safetensors is not what the evaluation used", weights, gotRef, nTest, want, nTest)
	}
	if flips > 1 || max(gotY-want, want-gotY) > flips {
		t.Errorf("built executable: %d/%d correct, the trainer reported %d/%d (%d near-tie flips, at most 1 allowed)", gotY, nTest, want, nTest, flips)
	}
}

// top1Preds is each row's first largest logit (the trainer's tie rule).
func top1Preds(y *tensor.Tensor) []int {
	k := y.Shape[1]
	out := make([]int, y.Shape[0])
	for i := range out {
		row := y.Data[i*k : (i+1)*k]
		for c, v := range row {
			if v > row[out[i]] {
				out[i] = c
			}
		}
	}
	return out
}

func readNPYPath(t *testing.T, p string) *tensor.Tensor {
	t.Helper()
	v, err := tensor.ReadNPYFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// lastTop1 reads the test top-1 of the last row of a run's metrics.csv.
func lastTop1(t *testing.T, path string) float64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil || len(rows) < 2 || rows[0][2] != "test_top1" {
		t.Fatalf("%s: %v rows %q", path, err, rows)
	}
	v, err := strconv.ParseFloat(rows[len(rows)-1][2], 64)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return v
}

// checkFinalIsEMA checks that RUN/final.safetensors holds the checkpoint's
// EMA tensors bit for bit, and that the EMA differs from the raw
// parameters (so the check can tell them apart).
func checkFinalIsEMA(t *testing.T, run string) {
	t.Helper()
	final, err := tensor.ReadSafetensorsFile(filepath.Join(run, trainer.WeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	ck, err := trainer.ReadCheckpoint(run)
	if err != nil {
		t.Fatal(err)
	}
	differs := false
	for name, w := range final.Tensors {
		e, p := ck.Tensors[trainer.EMAPrefix+name], ck.Tensors[name]
		if e == nil || p == nil {
			t.Fatalf("checkpoint lacks %s or %s%s", name, trainer.EMAPrefix, name)
		}
		for i, v := range w.Data {
			if math.Float32bits(v) != math.Float32bits(e.Data[i]) {
				t.Fatalf("final.safetensors %s[%d] = %v, the EMA's is %v: not what the evaluation used", name, i, v, e.Data[i])
			}
			if v != p.Data[i] {
				differs = true
			}
		}
	}
	if len(final.Tensors) == 0 || !differs {
		t.Fatalf("final.safetensors (%d tensors) equals the raw parameters: the EMA check proves nothing", len(final.Tensors))
	}
}
