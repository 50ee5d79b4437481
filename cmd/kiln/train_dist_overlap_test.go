package main

import (
	"math"
	"os"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/train/data"
)

// TestTrainMPICompiledOverlap trains mini_inception_resnet for 3 steps
// (2 images per rank, global batch 4) under mpirun -np 2 on the compiled
// backend, whose gradient buckets (64 KB) start all-reducing while the
// native backward runs (trainer.Replicas, rt.Model.RunProgress), and on
// the interpreter: the weights and checkpoints written agree within 1e-4
// relative per tensor (the compiled kernels' agreement with the
// interpreter), which needs both ranks to issue their buckets'
// MPI_Iallreduce calls in the same order whatever the timing of their
// progress polls; the compiled run's profile reports gradient bytes
// all-reduced during backward.
func TestTrainMPICompiledOverlap(t *testing.T) {
	testenv.MPI(t)
	if _, err := codegen.FindLLVM(); err != nil {
		testenv.Check(t, err)
	}
	if _, err := os.Stat(data.FashionMNISTDir); err != nil {
		testenv.Missing(t, "Fashion-MNIST not installed at %s (%s; .ci/install-deps installs it)", data.FashionMNISTDir, data.FashionMNISTInstall)
	}
	bin := buildKiln(t)
	dirs := map[string]string{}
	for _, backend := range []string{"interp", "compiled"} {
		dirs[backend] = t.TempDir()
		out := mpirun(t, 2, bin, "train", "mini_inception_resnet", "--data", "fashion-mnist", "--batch", "2", "--limit-train", "12",
			"--limit-test", "4", "--epochs", "1", "--progress", "line", "--bucket-mb", "0.0625", "--profile-dist",
			"--backend", backend, "--out", dirs[backend])
		profiled := false
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "per step: compute") {
				profiled = true
				t.Logf("%s: %s", backend, l)
				if backend == "compiled" && strings.Contains(l, " 0.00 MB started during backward") {
					t.Errorf("compiled: no gradient bytes all-reduced during backward: %s", l)
				}
			}
		}
		if !profiled {
			t.Errorf("%s: no --profile-dist line in the output:\n%s", backend, out)
		}
	}
	worst := 0.0
	for k, d := range dirDiffs(t, dirs["interp"], dirs["compiled"]) {
		worst = math.Max(worst, d)
		if d > 1e-4 {
			t.Errorf("%s: compiled differs from the interpreter by %.3g relative, more than 1e-4", k, d)
		}
	}
	t.Logf("worst relative difference %.2e", worst)
}
