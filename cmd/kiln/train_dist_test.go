package main

import (
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/dist"
	"github.com/kiln-dev/kiln/internal/fixtures"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train/data"
	"github.com/kiln-dev/kiln/train/trainer"
)

// buildKiln builds this command into a temporary directory for mpirun.
func buildKiln(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kiln")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// mpirun runs np copies of kiln with args under mpirun (dist.MpirunCommand)
// with a collective timeout, failing the test on a non-zero exit.
func mpirun(t *testing.T, np int, kiln string, args ...string) string {
	t.Helper()
	argv, err := dist.MpirunCommand(np, kiln, args...)
	testenv.Check(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), dist.TimeoutEnv+"=120s")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// compareDirs checks that every tensor of every safetensors file of want
// is in got within tol·max|ref|, and that both have the same files.
func compareDirs(t *testing.T, want, got string, tol float64) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(want, "*.safetensors"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no safetensors in %s (%v)", want, err)
	}
	for _, f := range files {
		a, err := tensor.ReadSafetensorsFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b, err := tensor.ReadSafetensorsFile(filepath.Join(got, filepath.Base(f)))
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Tensors) != len(b.Tensors) {
			t.Errorf("%s: %d tensors, want %d", filepath.Base(f), len(b.Tensors), len(a.Tensors))
		}
		for name, r := range a.Tensors {
			g, ok := b.Tensors[name]
			if !ok || len(g.Data) != len(r.Data) {
				t.Errorf("%s: %s missing or of another shape", filepath.Base(f), name)
				continue
			}
			m, d := 0.0, 0.0
			for i, v := range r.Data {
				m = math.Max(m, math.Abs(float64(v)))
				d = math.Max(d, math.Abs(float64(v)-float64(g.Data[i])))
			}
			if d > tol*math.Max(m, 1e-30) {
				t.Errorf("%s: %s differs by %.3g (max|ref| %.3g)", filepath.Base(f), name, d, m)
			}
		}
	}
}

// TestTrainMPI runs kiln train under mpirun (issue 14): the fixture replay
// of the residual mini network on 2 ranks writes the files of one process
// with ghost batches of 4 (the ranks' 4 images each) within 1e-5 relative
// per tensor and the same losses; a 2-rank training run's checkpoint
// resumes on 1 rank and on 3 ranks.
func TestTrainMPI(t *testing.T) {
	testenv.MPI(t)
	fx := func(name string) string { return fixtures.Path(t, "fixtures", "training", name) }
	bin := buildKiln(t)
	replay := []string{"train", "mini_inception_resnet", "--init", fx("res.init.safetensors"),
		"--batches-x", fx("batches_x.npy"), "--batches-y", fx("batches_y.npy"), "--steps", "3", "--progress", "none"}

	one := t.TempDir()
	if code, stdout, errs := kiln(t, append(replay, "--out", one, "--ghost-batch", "4")...); code != 0 {
		t.Fatalf("kiln train --ghost-batch 4: exit %d\n%s%s", code, stdout, errs)
	}
	two := t.TempDir()
	out := mpirun(t, 2, bin, append(replay, "--out", two, "--bucket-mb", "0.25", "--profile-dist")...)
	if !strings.Contains(out, "2 ranks, rank 0 per step: compute") || strings.Count(out, "step 1/3") != 1 {
		t.Errorf("mpirun -np 2 output (want one progress line per step, from rank 0, and the profile):\n%s", out)
	}
	compareDirs(t, one, two, 1e-5)
	var l1, l2 struct{ Losses []float64 }
	readJSON(t, filepath.Join(one, "losses.json"), &l1)
	readJSON(t, filepath.Join(two, "losses.json"), &l2)
	for i := range l1.Losses {
		if math.Abs(l1.Losses[i]-l2.Losses[i]) > 1e-6*l1.Losses[i] {
			t.Errorf("loss %d: %v on 2 ranks, %v in one process", i+1, l2.Losses[i], l1.Losses[i])
		}
	}

	if _, err := os.Stat(data.FashionMNISTDir); err != nil {
		testenv.Missing(t, "Fashion-MNIST not installed at %s (%s; .ci/install-deps installs it)", data.FashionMNISTDir, data.FashionMNISTInstall)
	}
	run := filepath.Join(t.TempDir(), "run")
	mpirun(t, 2, bin, "train", "mini_inception_resnet", "--data", "fashion-mnist", "--batch", "4", "--limit-train", "24",
		"--limit-test", "8", "--epochs", "1", "--progress", "line", "--out", run)
	for _, tc := range []struct {
		ranks, steps int
	}{{1, 3 + 6}, {3, 3 + 2}} {
		dir := filepath.Join(t.TempDir(), "run")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{trainer.CheckpointFile, trainer.MetricsFile} {
			b := readFileT(t, filepath.Join(run, f))
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		args := []string{"train", "mini_inception_resnet", "--resume", dir, "--epochs", "2", "--progress", "none"}
		if tc.ranks == 1 {
			if code, stdout, errs := kiln(t, args...); code != 0 {
				t.Fatalf("resume on 1 rank: exit %d\n%s%s", code, stdout, errs)
			}
		} else {
			mpirun(t, tc.ranks, bin, args...)
		}
		c, err := trainer.ReadCheckpoint(dir)
		if err != nil {
			t.Fatal(err)
		}
		if c.Pos.Epoch != 2 || c.Pos.GlobalStep != tc.steps {
			t.Errorf("resumed on %d ranks: position %+v, want epoch 2 after %d global steps", tc.ranks, c.Pos, tc.steps)
		}
		if m := string(readFileT(t, filepath.Join(dir, trainer.MetricsFile))); strings.Count(m, "\n") != 3 {
			t.Errorf("resumed on %d ranks: metrics\n%s", tc.ranks, m)
		}
	}
}

func readFileT(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
