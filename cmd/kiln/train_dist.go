package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"time"

	"github.com/kiln-dev/kiln/dist"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
	"github.com/kiln-dev/kiln/train/trainer"
)

// distFlags are kiln train's data-parallel and BatchNorm-statistics flags.
type distFlags struct {
	ghost       int
	syncBN      bool
	bucketMB    float64
	profileDist bool
}

func registerDistFlags(fs *flag.FlagSet) *distFlags {
	f := &distFlags{}
	fs.IntVar(&f.ghost, "ghost-batch", 0, "BatchNorm statistics over each group of `K` images of the batch (a \"ghost batch\"; what mpirun -np N with --batch K computes in one process of batch N·K; 0: the whole batch)")
	fs.BoolVar(&f.syncBN, "sync-bn", false, "under mpirun, all-reduce the BatchNorm batch statistics across the ranks (synchronized BatchNorm: N ranks of --batch B normalize as one batch of N·B); default: per rank")
	fs.Float64Var(&f.bucketMB, "bucket-mb", float64(trainer.DefaultBucketBytes)/(1<<20), "under mpirun, all-reduce the gradients in buckets of about `MB` megabytes, each started as soon as backward has computed it")
	fs.BoolVar(&f.profileDist, "profile-dist", false, "under mpirun, print each epoch's step time split on rank 0: compute, all-reduce wait, update, bytes all-reduced")
	return f
}

// check validates the flags against the per-rank batch.
func (f *distFlags) check(batch int) error {
	switch {
	case f.ghost < 0:
		return usagef("--ghost-batch %d: must not be negative", f.ghost)
	case f.ghost > 0 && f.syncBN:
		return usagef("--ghost-batch and --sync-bn do not combine (ghost batches are what ranks without --sync-bn compute)")
	case f.ghost > 0 && batch > 0 && batch%f.ghost != 0:
		return usagef("--ghost-batch %d does not divide the batch %d", f.ghost, batch)
	case !(f.bucketMB > 0) || math.IsInf(f.bucketMB, 0):
		return usagef("--bucket-mb %v: must be positive", f.bucketMB)
	}
	return nil
}

func (f *distFlags) bucketBytes() int { return max(4, int(f.bucketMB*(1<<20))) }

// openComm returns the communicator of this process: MPI's under mpirun
// (dist.FromEnv, which says what to install when Open MPI is missing), a
// single rank otherwise.
func openComm() (dist.Comm, error) {
	c, err := dist.FromEnv()
	if err != nil {
		return nil, fmt.Errorf("kiln train under mpirun: %w", err)
	}
	return c, nil
}

// runStepsDist is runSteps (the fixture replay) on comm's ranks: rank r
// takes the r-th contiguous slice of B/N images of every batch of B, the
// gradients are averaged across ranks (trainer.Replicas), and rank 0 writes
// the averaged gradients the update used, the params and buffers after
// each step (every rank holds the same) and the losses (each the mean over
// the whole batch): the files one process writes with --ghost-batch B/N.
func runStepsDist(e *env, comm dist.Comm, file string, initW string, so train.StepOptions, xs *tensor.Tensor, ys []int64, steps int, out string, df *distFlags) error {
	k, b := xs.Shape[0], xs.Shape[1]
	size, rank := comm.Size(), comm.Rank()
	if b%size != 0 {
		return fmt.Errorf("batches of %d images do not split over %d ranks", b, size)
	}
	per := b / size
	g, err := loadNet(file, dsl.Options{Batch: per, InputShape: xs.Shape[2:]})
	if err != nil {
		return err
	}
	so.Forward.GhostBatch, so.Forward.SyncBN, so.Forward.Replicas = df.ghost, df.syncBN, size
	ss, err := train.Split(g, so)
	if err != nil {
		return err
	}
	params, err := loadWeights(g, initW)
	if err != nil {
		return err
	}
	for _, s := range ss.State {
		params[s.Name] = s.Initial()
	}
	classes := ss.Grad.Nodes[ss.Grad.Outputs[1]].Type.Shape[1]
	input := g.Inputs()[0].Name
	img := xs.Numel() / (k * b)
	rep := &trainer.Replicas{Comm: comm, BucketBytes: df.bucketBytes()}
	stdout := e.stdout
	if rank != 0 {
		stdout = io.Discard
	}
	var losses []float64
	for s := range steps {
		lo := (s*b + rank*per) * img
		x, err := tensor.FromData(append([]int{per}, xs.Shape[2:]...), xs.Data[lo:lo+per*img])
		if err != nil {
			return err
		}
		target := tensor.New(per, classes)
		for i, l := range ys[s*b+rank*per : s*b+(rank+1)*per] {
			if l < 0 || int(l) >= classes {
				return fmt.Errorf("batch %d item %d: label %d outside [0, %d)", s, rank*per+i, l, classes)
			}
			target.Data[i*classes+int(l)] = 1
		}
		t0 := time.Now()
		dist.SetStep(comm, s+1)
		res, err := rep.Step(ss, params, map[string]*tensor.Tensor{input: x, ss.Target: target}, false)
		if err != nil {
			return fmt.Errorf("rank %d, step %d: %w", rank, s+1, err)
		}
		loss := float64(res.Loss)
		if math.IsNaN(loss) || math.IsInf(loss, 0) {
			return fmt.Errorf("step %d: loss is %v; stopping (the files of step %d are the last good ones)", s+1, loss, s)
		}
		losses = append(losses, loss)
		for n, v := range res.Updates {
			params[n] = v
		}
		if rank == 0 {
			state := map[string]*tensor.Tensor{}
			for _, p := range g.Params() {
				state[p.Name] = params[p.Name]
			}
			if err := tensor.WriteSafetensorsFile(filepath.Join(out, fmt.Sprintf("grads%d.safetensors", s+1)), res.Grads, nil); err != nil {
				return err
			}
			if err := tensor.WriteSafetensorsFile(filepath.Join(out, fmt.Sprintf("step%d.safetensors", s+1)), state, nil); err != nil {
				return err
			}
		}
		fmt.Fprintf(stdout, "step %d/%d: loss %.6f (%.2f s, %d ranks)\n", s+1, steps, loss, time.Since(t0).Seconds(), size)
	}
	if df.profileDist {
		fmt.Fprintf(stdout, "%d ranks, rank 0 %s\n", size, rep.Profile)
	}
	if rank == 0 {
		j, err := json.MarshalIndent(map[string]any{"network": g.Name, "steps": steps, "batch": b, "losses": losses}, "", "  ")
		if err != nil {
			return err
		}
		if err := tensor.WriteFileAtomic(filepath.Join(out, "losses.json"), func(w io.Writer) error {
			_, err := w.Write(append(j, '\n'))
			return err
		}); err != nil {
			return err
		}
	}
	return comm.Barrier()
}
