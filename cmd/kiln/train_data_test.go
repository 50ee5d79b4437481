package main

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train/data"
	"github.com/kiln-dev/kiln/train/trainer"
)

// smallFashionNet trains on Fashion-MNIST at thousands of images per second
// in the interpreter.
const smallFashionNet = `network small(x: f32[N, 1, 28, 28]) -> f32[N, 10] {
    conv = conv2d(x, 8, kernel=3, stride=2, pad=1, bias=false)
    bn = batchnorm(conv, eps=0.001)
    pool = maxpool(relu(bn), 3, stride=2)
    fc = dense(flatten(global_avgpool(pool)), 10)
    return fc
}
`

func fashionMNIST(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(data.FashionMNISTDir); err != nil {
		testenv.Missing(t, "Fashion-MNIST not installed at %s (%s; .ci/install-deps installs it)", data.FashionMNISTDir, data.FashionMNISTInstall)
	}
}

func writeSmallNet(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "small.kiln")
	if err := os.WriteFile(p, []byte(smallFashionNet), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTrainFashionMNIST trains on the real Fashion-MNIST files for two
// epochs, then checks that one epoch plus --resume gives the same
// checkpoint and weights byte for byte, and that the weights deploy: kiln
// run --weights RUN/final.safetensors on the test images gives the top-1
// accuracy the run's last metrics row reports.
func TestTrainFashionMNIST(t *testing.T) {
	fashionMNIST(t)
	net := writeSmallNet(t)
	common := []string{"train", net, "--data", "fashion-mnist", "--batch", "8", "--limit-train", "32", "--limit-test", "16", "--seed", "3", "--progress", "line"}
	straight, split := t.TempDir(), t.TempDir()
	if code, out, errs := kiln(t, append(common, "--epochs", "2", "--out", straight)...); code != 0 {
		t.Fatalf("kiln train: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs := kiln(t, append(common, "--epochs", "1", "--out", split)...); code != 0 {
		t.Fatalf("kiln train --epochs 1: exit %d\n%s%s", code, out, errs)
	}
	code, out, errs := kiln(t, "train", net, "--resume", split, "--epochs", "2")
	if code != 0 {
		t.Fatalf("kiln train --resume: exit %d\n%s%s", code, out, errs)
	}
	if !strings.Contains(out, "epoch 2/2: train loss") || strings.Contains(out, "epoch 1/2:") {
		t.Errorf("resumed run's output:\n%s", out)
	}
	for _, f := range []string{trainer.CheckpointFile, trainer.WeightsFile} {
		a, _ := os.ReadFile(filepath.Join(straight, f))
		b, _ := os.ReadFile(filepath.Join(split, f))
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s: the resumed run's differs from the uninterrupted run's", f)
		}
	}
	rows := strings.Split(strings.TrimSpace(string(readAll(t, filepath.Join(straight, trainer.MetricsFile)))), "\n")
	if len(rows) != 3 || rows[0] != trainer.MetricsHeader {
		t.Fatalf("metrics:\n%s", strings.Join(rows, "\n"))
	}
	top1, err := strconv.ParseFloat(strings.Split(rows[2], ",")[2], 64)
	if err != nil {
		t.Fatal(err)
	}
	// Deploy: the same 16 test images through kiln run with the weights.
	_, te, err := data.LoadFashionMNIST(data.FashionMNISTDir, 1, 16)
	if err != nil {
		t.Fatal(err)
	}
	x := tensor.New(16, 1, 28, 28)
	for i := range 16 {
		if err := te.Image(i, x.Data[i*784:(i+1)*784]); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	xp, yp := filepath.Join(dir, "x.npy"), filepath.Join(dir, "y.npy")
	if err := tensor.WriteNPYFile(xp, x); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := kiln(t, "run", net, "--weights", filepath.Join(straight, trainer.WeightsFile), "--input", xp, "--output", yp); code != 0 {
		t.Fatalf("kiln run: exit %d\n%s%s", code, out, errs)
	}
	y, err := tensor.ReadNPYFile(yp)
	if err != nil {
		t.Fatal(err)
	}
	right := 0
	for i := range 16 {
		best := 0
		for c := range 10 {
			if y.Data[i*10+c] > y.Data[i*10+best] {
				best = c
			}
		}
		if best == te.Label(i) {
			right++
		}
	}
	if got := float64(right) / 16; got != top1 {
		t.Errorf("kiln run with %s: top-1 %v, the run's metrics say %v", trainer.WeightsFile, got, top1)
	}
}

// TestTrainInterrupt sends SIGINT to a training run (as Ctrl-C does): it
// writes a checkpoint and exits with status 130, and the run resumes from it.
func TestTrainInterrupt(t *testing.T) {
	fashionMNIST(t)
	net := writeSmallNet(t)
	run := t.TempDir()
	done := make(chan struct{})
	var code int
	var errs string
	go func() {
		defer close(done)
		code, _, errs = kiln(t, "train", net, "--data", "fashion-mnist", "--batch", "8", "--limit-train", "64", "--limit-test", "8",
			"--epochs", "100000", "--progress", "none", "--out", run)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(run, trainer.MetricsFile)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no epoch finished within 60 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	<-done
	if code != 130 || !strings.Contains(errs, "interrupted at epoch") || !strings.Contains(errs, "--resume "+run) {
		t.Fatalf("exit %d, stderr %q; want 130 and the resume hint", code, errs)
	}
	c, err := trainer.ReadCheckpoint(run)
	if err != nil {
		t.Fatal(err)
	}
	if c.Pos.GlobalStep < 8 {
		t.Errorf("checkpoint at step %d, after a complete epoch of 8", c.Pos.GlobalStep)
	}
	if code, out, errs := kiln(t, "train", net, "--resume", run, "--epochs", strconv.Itoa(c.Pos.Epoch+1)); code != 0 {
		t.Fatalf("resume: exit %d\n%s%s", code, out, errs)
	}
}

func readAll(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTrainDataErrors: hostile IDX files, mismatched networks and misuse of
// --resume are errors naming the problem.
func TestTrainDataErrors(t *testing.T) {
	net := writeSmallNet(t)
	idxDir := func(magic byte, truncate int) string {
		dir := t.TempDir()
		w := func(name string, b []byte) { os.WriteFile(filepath.Join(dir, name), b, 0o644) }
		var img bytes.Buffer
		img.Write([]byte{0, 0, 8, magic})
		for _, d := range []uint32{8, 28, 28} {
			binary.Write(&img, binary.BigEndian, d)
		}
		img.Write(make([]byte, 8*784-truncate))
		lab := append([]byte{0, 0, 8, 1, 0, 0, 0, 8}, make([]byte, 8)...)
		for _, s := range []string{"train", "t10k"} {
			w(s+"-images-idx3-ubyte", img.Bytes())
			w(s+"-labels-idx1-ubyte", lab)
		}
		return dir
	}
	good := idxDir(3, 0)
	run := t.TempDir()
	if code, out, errs := kiln(t, "train", net, "--data", good, "--batch", "4", "--epochs", "1", "--progress", "none", "--out", run); code != 0 {
		t.Fatalf("synthetic IDX files: exit %d\n%s%s", code, out, errs)
	}
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"bad magic", []string{net, "--data", idxDir(2, 0), "--out", t.TempDir()}, 1, "train-images-idx3-ubyte: IDX file has 2 dimensions, want 3"},
		{"truncated", []string{net, "--data", idxDir(3, 5), "--out", t.TempDir()}, 1, "truncated IDX file: the header announces 8×28×28 = 6272 bytes of data, the file holds 6267"},
		{"no data", []string{net, "--data", filepath.Join(t.TempDir(), "none"), "--out", t.TempDir()}, 1, "no such file"},
		{"shape", []string{"tiny", "--data", good, "--out", t.TempDir()}, 1, "tiny takes 3x32x32 images, the data has 1x28x28"},
		{"batch too large", []string{net, "--data", good, "--batch", "16", "--out", t.TempDir()}, 1, "fewer than one batch of 16"},
		{"run exists", []string{net, "--data", good, "--out", run}, 1, "already holds a run"},
		{"resume with settings", []string{net, "--resume", run, "--lr", "0.1"}, 2, "--lr: a resumed run keeps the settings"},
		{"resume nothing", []string{net, "--resume", t.TempDir()}, 1, "no checkpoint"},
		{"resume other net", []string{"mini_inception", "--resume", run}, 1, "the checkpoint is of network"},
		{"replay and data", []string{net, "--data", good, "--batches-x", "x.npy", "--out", t.TempDir()}, 2, "do not combine"},
		{"bad optimizer", []string{net, "--data", good, "--optimizer", "adam", "--batch", "4", "--out", t.TempDir()}, 1, `unknown optimizer "adam"`},
	}
	for _, c := range cases {
		code, _, errs := kiln(t, append([]string{"train"}, c.args...)...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want exit %d and %q", c.name, code, errs, c.code, c.want)
		}
	}
}
