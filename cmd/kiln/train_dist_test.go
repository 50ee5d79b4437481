package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/dist"
	"github.com/kiln-dev/kiln/internal/testenv"
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
	cmd.Env = append(append(os.Environ(), testenv.MPIJobEnv(t)...), dist.TimeoutEnv+"=120s")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// TestTrainMPI runs kiln train under mpirun (issue 14), one build of kiln
// for all: the fixture replay on 2 and 3 ranks against one process, with
// per-rank and with synchronized BatchNorm (testMPIBatchNorm); a rank
// killed or frozen under --sync-bn ends the job naming the rank
// (testMPISyncBNRankDies); and a 2-rank training run with synchronized
// BatchNorm, asked for on the compiled backend (which falls back to the
// interpreter, saying so once, on rank 0), writes a checkpoint that
// resumes on 1 rank and on 3 ranks.
func TestTrainMPI(t *testing.T) {
	testenv.MPI(t)
	bin := buildKiln(t)
	t.Run("batchnorm", func(t *testing.T) { testMPIBatchNorm(t, bin) })
	t.Run("sync-bn rank dies", func(t *testing.T) { testMPISyncBNRankDies(t, bin) })

	t.Run("resume", func(t *testing.T) {
		if _, err := os.Stat(data.FashionMNISTDir); err != nil {
			testenv.Missing(t, "Fashion-MNIST not installed at %s (%s; .ci/install-deps installs it)", data.FashionMNISTDir, data.FashionMNISTInstall)
		}
		run := filepath.Join(t.TempDir(), "run")
		out := mpirun(t, 2, bin, "train", "mini_inception_resnet", "--data", "fashion-mnist", "--batch", "4", "--limit-train", "24",
			"--limit-test", "8", "--epochs", "1", "--progress", "line", "--sync-bn", "--backend", "compiled", "--out", run)
		if strings.Count(out, "kiln train: --sync-bn runs on the interpreter") != 1 || strings.Contains(out, "batchnorm_train") {
			t.Errorf("mpirun -np 2 --sync-bn --backend compiled: want one fallback note (rank 0) and no lowering error:\n%s", out)
		}
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
	})
}

func readFileT(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
