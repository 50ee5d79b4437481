package trainer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kiln-dev/kiln/dist"
	"github.com/kiln-dev/kiln/dsl"
)

// newDistRun is newRun for the small net without dropout (replicas draw
// their own dropout masks, which no single process reproduces).
func newDistRun(t *testing.T, dir string, s Settings, epochs int, comm dist.Comm) *Run {
	t.Helper()
	p := filepath.Join(t.TempDir(), "small.kiln")
	if err := os.WriteFile(p, []byte(strings.Replace(smallNet, "p=0.25", "p=0.0", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := dsl.LoadFile(p, dsl.Options{Batch: s.Batch})
	if err != nil {
		t.Fatal(err)
	}
	init, err := g.GeneratedParams()
	if err != nil {
		t.Fatal(err)
	}
	return &Run{Settings: s, Net: g, Train: synthetic(32, 1), Test: synthetic(6, 2), Epochs: epochs, Dir: dir,
		Init: init, Exec: Interpreter{Threads: 1}, Log: io.Discard, Comm: comm, BucketBytes: 256}
}

// runRanks runs n loopback ranks of a run (rank r in dirs[r]), resumed from
// c when not nil; cancel, when positive, cancels rank n−1's context after
// that global step. It returns each rank's error.
func runRanks(t *testing.T, n int, dirs []string, s Settings, epochs int, c *Checkpoint, cancel int) []error {
	t.Helper()
	comms := dist.Loopback(n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		run := newDistRun(t, dirs[r], s, epochs, comms[r])
		if c != nil {
			run.Init, run.Resume = nil, c
		}
		ctx, stop := context.WithCancel(context.Background())
		if cancel > 0 && r == n-1 {
			run.AfterStep = func(step int) {
				if step == cancel {
					stop()
				}
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer stop()
			errs[r] = run.Do(ctx)
		}()
	}
	wg.Wait()
	return errs
}

func dirs(t *testing.T, n int) []string {
	d := make([]string, n)
	for i := range d {
		d[i] = t.TempDir()
	}
	return d
}

// TestDistRunEqualsGhost: 2 epochs of 2 loopback ranks × batch 4 write the
// checkpoint (params, buffers, optimizer state, EMA) of one process with
// batch 8 and ghost batches of 4, within 1e-5 relative per tensor; only
// rank 0 writes files.
func TestDistRunEqualsGhost(t *testing.T) {
	ghost := settings()
	ghost.Batch, ghost.GhostBatch = 8, 4
	gdir := t.TempDir()
	if err := newDistRun(t, gdir, ghost, 2, nil).Do(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := settings()
	s.Batch = 4
	ds := dirs(t, 2)
	for r, err := range runRanks(t, 2, ds, s, 2, nil, 0) {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	want, err := ReadCheckpoint(gdir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadCheckpoint(ds[0])
	if err != nil {
		t.Fatal(err)
	}
	if got.Pos != want.Pos {
		t.Errorf("position %+v, want %+v", got.Pos, want.Pos)
	}
	w := compareParams(t, "checkpoint", want.Tensors, got.Tensors, nil, 1e-5)
	t.Logf("worst relative difference %.2e", w)
	if len(got.Tensors) != len(want.Tensors) {
		t.Errorf("%d tensors, want %d", len(got.Tensors), len(want.Tensors))
	}
	if m := readFile(t, filepath.Join(ds[0], MetricsFile)); strings.Count(string(m), "\n") != 3 {
		t.Errorf("metrics:\n%s", m)
	}
	if ents, _ := os.ReadDir(ds[1]); len(ents) != 0 {
		t.Errorf("rank 1 wrote %d files", len(ents))
	}
}

// TestDistResumeOtherRankCount interrupts a 2-rank run (32 images, global
// batch 8) on rank 1 after its first step: the stop is seen at the next
// step's all-reduce, so every rank stops after step 2 and rank 0 writes the
// checkpoint at image 16 of epoch 1. It resumes on 1 rank (the
// single-process loop: 4 more steps in epoch 1, 8 in epoch 2) and on 3
// ranks (global batch 12: 1 more step, then 2).
func TestDistResumeOtherRankCount(t *testing.T) {
	s := settings()
	s.Batch = 4
	ds0 := dirs(t, 2)
	for r, err := range runRanks(t, 2, ds0, s, 2, nil, 1) {
		if !errors.Is(err, ErrInterrupted) {
			t.Fatalf("rank %d: %v, want interrupted", r, err)
		}
	}
	c, err := ReadCheckpoint(ds0[0])
	if err != nil {
		t.Fatal(err)
	}
	if c.Pos.Epoch != 0 || c.Pos.Step != 4 || c.Pos.GlobalStep != 2 {
		t.Fatalf("checkpoint position %+v, want epoch 0, step 4 (16 images), global step 2", c.Pos)
	}
	for _, tc := range []struct {
		ranks, steps int
	}{{1, 2 + 4 + 8}, {3, 2 + 1 + 2}} {
		ds := dirs(t, tc.ranks)
		ck := readFile(t, filepath.Join(ds0[0], CheckpointFile))
		if err := os.WriteFile(filepath.Join(ds[0], CheckpointFile), ck, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := ReadCheckpoint(ds[0])
		if err != nil {
			t.Fatal(err)
		}
		for r, err := range runRanks(t, tc.ranks, ds, c.Settings, 2, c, 0) {
			if err != nil {
				t.Fatalf("%d ranks: rank %d: %v", tc.ranks, r, err)
			}
		}
		end, err := ReadCheckpoint(ds[0])
		if err != nil {
			t.Fatal(err)
		}
		if end.Pos.Epoch != 2 || end.Pos.Step != 0 || end.Pos.GlobalStep != tc.steps {
			t.Errorf("%d ranks: final position %+v, want epoch 2, global step %d", tc.ranks, end.Pos, tc.steps)
		}
		if m := readFile(t, filepath.Join(ds[0], MetricsFile)); strings.Count(string(m), "\n") != 3 {
			t.Errorf("%d ranks: metrics:\n%s", tc.ranks, m)
		}
	}
}

// TestDistLoopOneRankEqualsDo: on one rank the data-parallel loop (taken
// here for --profile-dist) trains exactly as the single-process loop, with
// dropout and EMA: the checkpoints and weights are the same bytes.
func TestDistLoopOneRankEqualsDo(t *testing.T) {
	plain, prof := t.TempDir(), t.TempDir()
	if err := newRun(t, plain, settings(), 2, nil).Do(context.Background()); err != nil {
		t.Fatal(err)
	}
	r := newRun(t, prof, settings(), 2, nil)
	r.ProfileDist = true
	if err := r.Do(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r.Profile.Steps != 8 || r.Profile.Compute <= 0 {
		t.Errorf("profile %+v, want 8 steps of compute", r.Profile)
	}
	for _, f := range []string{CheckpointFile, WeightsFile} {
		if !bytes.Equal(readFile(t, filepath.Join(plain, f)), readFile(t, filepath.Join(prof, f))) {
			t.Errorf("%s differs", f)
		}
	}
}
