package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/dist"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/fixtures"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train/trainer"
)

// writeReplayBatches writes X.npy (steps, batch, 1, 28, 28) and Y.npy
// (steps, batch) into dir from the 40 Fashion-MNIST images of the training
// fixtures (the 3×8 of batches_x.npy, then the 16 of eval_x.npy): step s
// takes images (16·s + i) mod 40, i < batch, so every batch of up to 40
// images holds distinct images and the ghost groups differ between steps.
func writeReplayBatches(t *testing.T, dir string, steps, batch int) (string, string) {
	t.Helper()
	fx := func(name string) string { return fixtures.Path(t, "fixtures", "training", name) }
	var imgs []float32
	var labels []int64
	for _, f := range [][2]string{{"batches_x.npy", "batches_y.npy"}, {"eval_x.npy", "eval_y.npy"}} {
		x, err := tensor.ReadNPYFile(fx(f[0]))
		if err != nil {
			t.Fatal(err)
		}
		y, err := tensor.ReadNPYInt64File(fx(f[1]))
		if err != nil {
			t.Fatal(err)
		}
		imgs, labels = append(imgs, x.Data...), append(labels, y.Data...)
	}
	const per = 28 * 28
	n := len(labels)
	if len(imgs) != n*per || batch > n {
		t.Fatalf("training fixtures: %d values for %d labels, want 28×28 images, at least %d", len(imgs), n, batch)
	}
	xs := tensor.New(steps, batch, 1, 28, 28)
	ys := make([]int64, 0, steps*batch)
	for s := range steps {
		for i := range batch {
			k := (16*s + i) % n
			copy(xs.Data[(s*batch+i)*per:], imgs[k*per:(k+1)*per])
			ys = append(ys, labels[k])
		}
	}
	px, py := filepath.Join(dir, "x.npy"), filepath.Join(dir, "y.npy")
	if err := tensor.WriteNPYFile(px, xs); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(py, npyInt64(ys, steps, batch), 0o644); err != nil {
		t.Fatal(err)
	}
	return px, py
}

// npyInt64 encodes a little-endian int64 array of the given 2-D shape as
// NPY version 1.0 (header padded to a multiple of 64 bytes).
func npyInt64(v []int64, rows, cols int) []byte {
	hdr := fmt.Sprintf("{'descr': '<i8', 'fortran_order': False, 'shape': (%d, %d), }", rows, cols)
	pad := 64 - (10+len(hdr)+1)%64
	hdr += strings.Repeat(" ", pad%64) + "\n"
	var b bytes.Buffer
	b.WriteString("\x93NUMPY\x01\x00")
	binary.Write(&b, binary.LittleEndian, uint16(len(hdr)))
	b.WriteString(hdr)
	binary.Write(&b, binary.LittleEndian, v)
	return b.Bytes()
}

// testMPIBatchNorm is issue 14's check of BatchNorm statistics under
// real mpirun on the residual mini network from the fixtures' initial
// parameters, 3 steps of the fixture replay with 8 images per rank: N
// ranks without --sync-bn (per-rank statistics) write the files of one
// process of batch 8·N with --ghost-batch 8, and N ranks with --sync-bn
// those of one process of batch 8·N with plain BatchNorm (gradients,
// params and BatchNorm buffers of every step), every tensor within
// 1e-5·max|ref| and every loss within 1e-6 relative, for N = 2 and 3.
//
// Even the residual network is chaotic on some batches of these images:
// a few ReLU or max-pool decisions sit within a rounding of a tie, and
// when one flips the step's gradients move by up to 1e-3 relative. Where
// a tensor is beyond 1e-5, the case therefore reruns the reference from
// initial weights moved by one rounding (2⁻²⁴) and accepts the tensor
// within 4× that run's own change (the training fixtures' rule, which
// trainer.TestReplicasEqualGhostBatch uses for mini_inception); a
// data-parallel bug moves tensors far beyond it.
func testMPIBatchNorm(t *testing.T, bin string) {
	const per, steps = 8, 3
	init := fixtures.Path(t, "fixtures", "training", "res.init.safetensors")
	for _, tc := range []struct {
		ranks int
		sync  bool
		extra []string // more flags for the mpirun job
	}{
		{ranks: 2, extra: []string{"--bucket-mb", "0.25", "--profile-dist"}},
		{ranks: 2, sync: true},
		{ranks: 3},
		{ranks: 3, sync: true},
	} {
		t.Run(fmt.Sprintf("np%d/sync=%v", tc.ranks, tc.sync), func(t *testing.T) {
			bx, by := writeReplayBatches(t, t.TempDir(), steps, tc.ranks*per)
			replay := []string{"train", "mini_inception_resnet", "--batches-x", bx, "--batches-y", by,
				"--steps", strconv.Itoa(steps), "--progress", "none"}
			one := t.TempDir()
			ref := append([]string{}, replay...)
			if !tc.sync {
				ref = append(ref, "--ghost-batch", strconv.Itoa(per))
			}
			if code, stdout, errs := kiln(t, append(ref, "--init", init, "--out", one)...); code != 0 {
				t.Fatalf("kiln train %s: exit %d\n%s%s", strings.Join(ref[1:], " "), code, stdout, errs)
			}
			many := t.TempDir()
			args := append(append([]string{}, replay...), tc.extra...)
			if tc.sync {
				args = append(args, "--sync-bn")
			}
			out := mpirun(t, tc.ranks, bin, append(args, "--init", init, "--out", many)...)
			if strings.Count(out, "step 1/3") != 1 {
				t.Errorf("mpirun -np %d output (want one progress line per step, from rank 0):\n%s", tc.ranks, out)
			}
			if tc.extra != nil && !strings.Contains(out, fmt.Sprintf("%d ranks, rank 0 per step: compute", tc.ranks)) {
				t.Errorf("mpirun -np %d --profile-dist: no profile line:\n%s", tc.ranks, out)
			}
			diffs := dirDiffs(t, one, many)
			worst, over := 0.0, 0
			for _, d := range diffs {
				worst = math.Max(worst, d)
				if d > 1e-5 {
					over++
				}
			}
			t.Logf("worst relative difference %.2e over %d tensors of %d files", worst, len(diffs), steps*2)
			if over > 0 {
				// Conditioning, not a bug, where the reference itself moves as
				// much when its initial weights move by one rounding.
				sens := dirDiffs(t, one, replayPerturbed(t, ref, init))
				for k, d := range diffs {
					if lim := math.Max(1e-5, 4*sens[k]); d > lim {
						t.Errorf("%s differs by %.3g relative, more than %.3g (1e-5, or 4× the reference's own change under a perturbation of its initial weights by 2⁻²⁴)", k, d, lim)
					} else if d > 1e-5 {
						t.Logf("%s differs by %.3g relative: within 4× the reference's sensitivity %.3g", k, d, sens[k])
					}
				}
			}
			var l1, ln struct{ Losses []float64 }
			readJSON(t, filepath.Join(one, "losses.json"), &l1)
			readJSON(t, filepath.Join(many, "losses.json"), &ln)
			if len(l1.Losses) != steps || len(ln.Losses) != steps {
				t.Fatalf("losses: %v in one process, %v on %d ranks; want %d each", l1.Losses, ln.Losses, tc.ranks, steps)
			}
			for i := range l1.Losses {
				if math.Abs(l1.Losses[i]-ln.Losses[i]) > 1e-6*l1.Losses[i] {
					t.Errorf("loss %d: %v on %d ranks, %v in one process", i+1, ln.Losses[i], tc.ranks, l1.Losses[i])
				}
			}
		})
	}
}

// dirDiffs returns, for every tensor of every safetensors file of want,
// keyed "file: tensor", its difference to the same tensor of got relative
// to max|want| (max over elements), failing the test when got lacks a file
// or a tensor or has another number of tensors.
func dirDiffs(t *testing.T, want, got string) map[string]float64 {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(want, "*.safetensors"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no safetensors in %s (%v)", want, err)
	}
	diffs := map[string]float64{}
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
			diffs[filepath.Base(f)+": "+name] = d / math.Max(m, 1e-30)
		}
	}
	return diffs
}

// replayPerturbed reruns the single-process replay args (without --init
// and --out) from the initial weights in init multiplied element k by
// 1 + 2⁻²⁴·(k mod 3 − 1) (the training fixtures' conditioning measure,
// as trainer.TestReplicasEqualGhostBatch uses it) and returns its --out.
func replayPerturbed(t *testing.T, args []string, init string) string {
	t.Helper()
	f, err := tensor.ReadSafetensorsFile(init)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range f.Tensors {
		for k, x := range v.Data {
			v.Data[k] = x * (1 + float32(k%3-1)/(1<<24))
		}
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "init.safetensors")
	if err := tensor.WriteSafetensorsFile(p, f.Tensors, nil); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	args = append(append([]string{}, args...), "--init", p, "--out", out)
	if code, stdout, errs := kiln(t, args...); code != 0 {
		t.Fatalf("kiln train %s: exit %d\n%s%s", strings.Join(args[1:], " "), code, stdout, errs)
	}
	return out
}

// syncWriter is an io.Writer safe for the two pipes of an exec.Cmd.
type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// rankPID returns the pid of the process of the given rank of the mpirun
// job whose environment holds marker (mpirun passes its environment to
// the ranks it starts on this machine), or 0.
func rankPID(marker string, rank int) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	want := []byte(fmt.Sprintf("\x00OMPI_COMM_WORLD_RANK=%d\x00", rank))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		env = append(append([]byte{0}, env...), 0)
		if bytes.Contains(env, []byte("\x00"+marker+"\x00")) && bytes.Contains(env, want) {
			return pid
		}
	}
	return 0
}

// testMPISyncBNRankDies checks issue 14's failure handling when the
// collectives happen inside forward and backward (--sync-bn all-reduces
// every BatchNorm's statistics there): a rank killed after the first step
// (SIGKILL: mpirun reports the rank and ends the job) or frozen (SIGSTOP:
// rank 0's heartbeat check aborts the job, naming the rank that did not
// reach the collective or, stopped inside one every rank reached, stopped
// answering rank 0's pings) ends the whole job quickly, with a message
// naming the rank, instead of leaving the others blocked in a BatchNorm.
func testMPISyncBNRankDies(t *testing.T, bin string) {
	if _, err := os.Stat("/proc/self/environ"); err != nil {
		testenv.Missing(t, "no /proc/PID/environ to find a rank's process: %v", err)
	}
	init := fixtures.Path(t, "fixtures", "training", "res.init.safetensors")
	for _, tc := range []struct {
		name        string
		ranks, rank int
		sig         syscall.Signal
		want        []string
	}{
		{"killed", 2, 1, syscall.SIGKILL, []string{"process rank 1 ", "signal 9"}},
		// Frozen between two collectives ("did not reach") or inside one
		// ("has not answered"): rank 0 names it either way.
		{"frozen", 3, 2, syscall.SIGSTOP, []string{"kiln: rank 2 "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bx, by := writeReplayBatches(t, dir, 40, 4*tc.ranks)
			argv, err := dist.MpirunCommand(tc.ranks, bin, "train", "mini_inception_resnet", "--init", init, "--batches-x", bx, "--batches-y", by,
				"--sync-bn", "--progress", "none", "--out", filepath.Join(dir, "out"))
			testenv.Check(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
			marker := "KILN_TEST_JOB=" + dir
			cmd.Env = append(append(os.Environ(), testenv.MPIJobEnv(t)...), dist.TimeoutEnv+"=3s", marker)
			var out syncWriter
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			var hit time.Time
			for hit.IsZero() {
				select {
				case err := <-done:
					t.Fatalf("the job ended before a rank was stopped: %v\n%s", err, out.String())
				case <-time.After(50 * time.Millisecond):
				}
				if !strings.Contains(out.String(), "step 1/40") {
					continue
				}
				if pid := rankPID(marker, tc.rank); pid != 0 {
					if err := syscall.Kill(pid, tc.sig); err != nil {
						t.Fatal(err)
					}
					hit = time.Now()
				}
			}
			err = <-done
			if ctx.Err() != nil {
				t.Fatalf("the job still ran 2 minutes after rank %d got %v:\n%s", tc.rank, tc.sig, out.String())
			}
			if err == nil {
				t.Fatalf("the job succeeded with rank %d stopped by %v:\n%s", tc.rank, tc.sig, out.String())
			}
			for _, l := range strings.Split(out.String(), "\n") {
				if strings.HasPrefix(l, "kiln: ") || strings.Contains(l, "mpirun noticed") {
					t.Logf("%s", l)
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if d := time.Since(hit); d > 30*time.Second {
				t.Errorf("the job took %v to end after rank %d got %v (timeout 3s)", d, tc.rank, tc.sig)
			}
			if strings.Contains(out.String(), "step 40/40") {
				t.Errorf("the job trained to the end:\n%s", out.String())
			}
		})
	}
}

// TestBNBackend checks which backend kiln train runs ghost-batch and
// synchronized BatchNorm on (bnBackend): the interpreter, with one note,
// where the step graph would carry a batchnorm_train the compiled backend
// cannot lower; the compiled backend otherwise.
func TestBNBackend(t *testing.T) {
	dir := t.TempDir()
	bn := filepath.Join(dir, "bn.kiln")
	plain := filepath.Join(dir, "plain.kiln")
	if err := os.WriteFile(bn, []byte(smallFashionNet), 0o644); err != nil {
		t.Fatal(err)
	}
	noBN := strings.Replace(strings.Replace(smallFashionNet, "    bn = batchnorm(conv, eps=0.001)\n", "", 1), "relu(bn)", "relu(conv)", 1)
	if err := os.WriteFile(plain, []byte(noBN), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, net, backend string
		s                  trainer.Settings
		ranks              int
		want, note         string
	}{
		{"interp ghost", bn, "interp", trainer.Settings{Batch: 8, GhostBatch: 4}, 1, "interp", ""},
		{"compiled ghost", bn, "compiled", trainer.Settings{Batch: 8, GhostBatch: 4}, 1, "interp", "--ghost-batch 4 runs on the interpreter"},
		{"compiled ghost under mpirun", bn, "compiled", trainer.Settings{Batch: 8, GhostBatch: 2}, 3, "interp", "--ghost-batch 2 runs on the interpreter"},
		{"compiled ghost = batch", bn, "compiled", trainer.Settings{Batch: 8, GhostBatch: 8}, 2, "compiled", ""},
		{"compiled sync", bn, "compiled", trainer.Settings{Batch: 8, SyncBN: true}, 2, "interp", "--sync-bn runs on the interpreter"},
		{"compiled sync one rank", bn, "compiled", trainer.Settings{Batch: 8, SyncBN: true}, 1, "compiled", ""},
		{"compiled no flags", bn, "compiled", trainer.Settings{Batch: 8}, 2, "compiled", ""},
		{"compiled ghost without BatchNorm", plain, "compiled", trainer.Settings{Batch: 8, GhostBatch: 4}, 1, "compiled", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := loadNet(tc.net, dsl.Options{Batch: tc.s.Batch})
			if err != nil {
				t.Fatal(err)
			}
			got, note := bnBackend(tc.backend, g, tc.s, tc.ranks)
			if got != tc.want || (tc.note == "") != (note == "") || !strings.Contains(note, tc.note) {
				t.Errorf("bnBackend = %q, %q; want %q and a note with %q", got, note, tc.want, tc.note)
			}
		})
	}
}

// TestTrainGhostBatchCompiledFallsBack checks that kiln train --backend
// compiled --ghost-batch trains (on the interpreter, saying so in one
// stderr line) instead of failing with the lowering's error about an
// internal batchnorm_train node, and that the run is the interpreter's:
// the same metrics as --backend interp.
func TestTrainGhostBatchCompiledFallsBack(t *testing.T) {
	fashionMNIST(t)
	net := writeSmallNet(t)
	common := []string{"train", net, "--data", "fashion-mnist", "--batch", "8", "--ghost-batch", "4", "--limit-train", "16",
		"--limit-test", "8", "--epochs", "1", "--progress", "none"}
	loss := map[string]string{}
	for _, b := range []string{"interp", "compiled"} {
		dir := t.TempDir()
		code, stdout, errs := kiln(t, append(common, "--backend", b, "--out", dir)...)
		if code != 0 {
			t.Fatalf("--backend %s --ghost-batch 4: exit %d\n%s%s", b, code, stdout, errs)
		}
		wantErr := ""
		if b == "compiled" {
			wantErr = "kiln train: --ghost-batch 4 runs on the interpreter (the compiled backend has plain BatchNorm only); training with --backend interp\n"
		}
		if errs != wantErr {
			t.Errorf("--backend %s --ghost-batch 4: stderr %q, want %q", b, errs, wantErr)
		}
		rows := strings.Split(strings.TrimSpace(string(readFileT(t, filepath.Join(dir, trainer.MetricsFile)))), "\n")
		if len(rows) != 2 {
			t.Fatalf("--backend %s: metrics\n%s", b, strings.Join(rows, "\n"))
		}
		loss[b] = strings.Split(rows[1], ",")[1] // epoch,train_loss,...
	}
	if loss["interp"] != loss["compiled"] {
		t.Errorf("train loss %s with --backend compiled (fallen back), %s with --backend interp", loss["compiled"], loss["interp"])
	}
}
