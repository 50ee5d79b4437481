package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/codegen/lower"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	"github.com/kiln-dev/kiln/train"
)

// NEON training tolerances, as trainer's compiledTol, compiledTight and
// compiledLossTol for AVX-512 and AVX2 (train/trainer/compiled_test.go):
// every updated tensor's ‖neon − interpreter‖₂/‖interpreter‖₂ within
// neonTrainTol (a ReLU input or max-pooling window within rounding of a
// tie routes one gradient element differently, which reaches every
// earlier layer), at least one step within neonTrainTight in every
// tensor, the loss within neonTrainLossTol.
const (
	neonTrainTol     = 6e-2
	neonTrainTight   = 1e-4
	neonTrainLossTol = 1e-5
)

// TestTrainStepNEONUnderQEMU compiles the training step of archs/tiny
// (conv+BN+ReLU, max and average pooling, concat, a scaled residual,
// 1×3 and 3×1 convolutions, a dense head; RMSProp as the paper trained) at
// batch 2 for the NEON target, runs three steps of it under
// qemu-aarch64-static through internal/cmd/kiln-trainstep (cross-built for
// arm64 with cgo, linking only the runtime), and runs the interpreter's
// step on the host from the state each NEON step started from: the loss
// and every updated parameter, BatchNorm buffer and optimizer state must
// agree within the bounds above.
func TestTrainStepNEONUnderQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the arm64 cross build and qemu runs")
	}
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skipf("cross-compiles from linux/amd64; host is %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not on PATH: %v", err)
	}
	for _, tool := range []string{aarch64CC, qemuAarch64} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, "%s not found: %s", tool, arm64Hint)
		}
	}
	if _, err := os.Stat(filepath.Join(aarch64Sysroot, "lib", "ld-linux-aarch64.so.1")); err != nil {
		testenv.Missing(t, "no aarch64 libc in %s: %s", aarch64Sysroot, arm64Hint)
	}
	tc, err := codegen.FindLLVM()
	testenv.Check(t, err)

	const batch, steps, classes = 2, 3, 10
	g, err := dsl.LoadFile("tiny.kiln", dsl.Options{FS: archs.FS, Batch: batch})
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
	input := g.Inputs()[0]

	dir := t.TempDir()
	t0 := time.Now()
	helper := filepath.Join(dir, "kiln-trainstep")
	goBuild(t, goTool, helper, "github.com/kiln-dev/kiln/internal/cmd/kiln-trainstep",
		"CGO_ENABLED=1", "GOOS=linux", "GOARCH=arm64", "CC="+aarch64CC)
	tHelper := time.Since(t0)

	t0 = time.Now()
	st, err := passes.RunTraining(sg.Graph, passes.Options{})
	if err != nil {
		t.Fatal(err)
	}
	lr := float32(train.PaperRMSProp.LR)
	p, err := lower.LowerTraining(st, params, []codegen.Target{codegen.NEON}, lower.TrainOptions{Input: input.Name, LR: lr})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Compile(context.Background(), tc, filepath.Join(dir, "step.so"), nil); err != nil {
		t.Fatal(err)
	}
	tBuild := time.Since(t0)
	mb, err := json.Marshal(p.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), mb, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "weights.bin"), p.Weights, 0o644); err != nil {
		t.Fatal(err)
	}
	inputs := make([]map[string]*tensor.Tensor, steps)
	file := map[string]*tensor.Tensor{}
	for k := range steps {
		x := tensor.New(input.Type.Shape...)
		for i := range x.Data {
			x.Data[i] = float32(math.Sin(float64(7*k+1)*0.37*float64(i+1)))*0.9 + 0.05
		}
		target := tensor.New(batch, classes)
		for b := range batch {
			target.Data[b*classes+(3*b+k+1)%classes] = 1
		}
		inputs[k] = map[string]*tensor.Tensor{input.Name: x, sg.Target: target}
		file[fmt.Sprintf("%d/input", k)] = x
		file[fmt.Sprintf("%d/%s", k, sg.Target)] = target
	}
	if err := tensor.WriteSafetensorsFile(filepath.Join(dir, "steps.safetensors"), file, nil); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	mustRunTool(t, qemuAarch64, "-L", aarch64Sysroot, helper, dir)
	tQemu := time.Since(t0)
	t.Logf("cross-built kiln-trainstep in %.1f s, compiled the NEON step in %.1f s, ran %d steps under qemu in %.1f s",
		tHelper.Seconds(), tBuild.Seconds(), steps, tQemu.Seconds())

	state := params // the state NEON step k started from
	clean := 0
	for k := range steps {
		got, err := tensor.ReadSafetensorsFile(filepath.Join(dir, fmt.Sprintf("state%d.safetensors", k)))
		if err != nil {
			t.Fatal(err)
		}
		res, err := interp.Run(sg.Graph, state, inputs[k], interp.Options{})
		if err != nil {
			t.Fatal(err)
		}
		want := res.Outputs[0].Data[0]
		loss := got.Tensors[lower.LossState].Data[0]
		if d := math.Abs(float64(loss-want)) / max(math.Abs(float64(want)), 1e-6); d > neonTrainLossTol {
			t.Errorf("step %d: NEON loss %v, interpreter %v (rel %.2g)", k+1, loss, want, d)
		}
		worst, wname, loose := 0.0, "", 0
		next := map[string]*tensor.Tensor{}
		for name, v := range state {
			next[name] = v
		}
		for name, ref := range res.Updates {
			v, ok := got.Tensors[name]
			if !ok {
				t.Fatalf("step %d: the NEON step returned no %s", k+1, name)
			}
			rel := relL2(v.Data, ref.Data)
			if rel > worst {
				worst, wname = rel, name
			}
			if rel > neonTrainTight {
				loose++
			}
			if rel > neonTrainTol {
				t.Errorf("step %d: %s differs: ‖d‖/‖ref‖ %.3g", k+1, name, rel)
			}
			next[name] = v
		}
		t.Logf("step %d: loss %v (interpreter %v); worst update %s: ‖d‖/‖ref‖ %.3g; %d of %d tensors over %g",
			k+1, loss, want, wname, worst, loose, len(res.Updates), neonTrainTight)
		if loose == 0 {
			clean++
		}
		state = next
	}
	if clean == 0 {
		t.Errorf("no NEON step matched the interpreter to %g in every tensor", neonTrainTight)
	}
}

// relL2 is ‖got−want‖₂/‖want‖₂ (a zero reference counts as 1).
func relL2(got, want []float32) float64 {
	var d2, r2 float64
	for i, w := range want {
		d := float64(got[i]) - float64(w)
		d2 += d * d
		r2 += float64(w) * float64(w)
	}
	if r2 == 0 {
		r2 = 1
	}
	return math.Sqrt(d2 / r2)
}
