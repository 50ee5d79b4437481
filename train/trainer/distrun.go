package trainer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"github.com/kiln-dev/kiln/dist"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
	"github.com/kiln-dev/kiln/train/data"
)

// doDist is Do for a data-parallel run (Run.Comm with several ranks) and
// for ghost-batch or synchronized BatchNorm (Settings.GhostBatch,
// Settings.SyncBN) or a profile (Run.ProfileDist), on any number of ranks.
//
// Data: the epoch's seeded permutation (data.Order) is one global stream;
// each step takes the next N·Batch images of it (N ranks), rank r the
// r-th contiguous Batch of them, each augmented by its global position, so
// the images, augmentations and gradients of a step do not depend on how
// the global batch is split: N ranks of batch B compute what one process
// of batch N·B with ghost batches of B computes (TestDistRunEqualsGhost).
// A partial last global batch is dropped.
//
// Position: a checkpoint counts the images of the epoch done as
// Position.Step batches of Settings.Batch (what the single-process loop
// counts), and the epoch's loss sum in the same unit (each step's global
// loss counts N times), so a checkpoint is independent of the rank count:
// resuming on another number of ranks continues from the same image of
// the same epoch with the same parameters and optimizer state (every rank
// holds the same; rank 0 writes them).
//
// Rank 0 alone writes the run directory (checkpoints, final weights,
// metrics), prints progress and evaluates the test set after each epoch
// (the other ranks wait for it at the next step's all-reduce); an
// interrupt on any rank stops every rank after the same step (Replicas'
// stop flag), and rank 0 writes the checkpoint.
func (r *Run) doDist(ctx context.Context) error {
	s := &r.Settings
	comm := r.Comm
	if comm == nil {
		comm = dist.Local()
	}
	size, rank := comm.Size(), comm.Rank()
	lead := rank == 0
	switch {
	case s.GhostBatch < 0:
		return fmt.Errorf("ghost batch %d: must not be negative", s.GhostBatch)
	case s.GhostBatch > 0 && s.SyncBN:
		return fmt.Errorf("ghost batches and synchronized BatchNorm do not combine")
	case s.GhostBatch > 0 && s.Batch%s.GhostBatch != 0:
		return fmt.Errorf("ghost batch %d does not divide the batch %d", s.GhostBatch, s.Batch)
	}
	var threads int
	var compiled *Compiled
	if size > 1 {
		switch ex := r.Exec.(type) {
		case Interpreter:
			threads = ex.Threads
		case *Compiled:
			compiled = ex
		default:
			return fmt.Errorf("data-parallel training runs on the interpreter or the compiled backend, not on %T", r.Exec)
		}
	}
	gb := size * s.Batch
	n := r.Train.Len() / gb
	if n == 0 {
		return fmt.Errorf("the training set has %d images, fewer than one global batch of %d (%d ranks × batch %d)", r.Train.Len(), gb, size, s.Batch)
	}
	if r.Test != nil && r.Test.Len() == 0 {
		r.Test = nil
	}
	st, err := r.initState()
	if err != nil {
		return err
	}
	log := r.Log
	if lead {
		if err := os.MkdirAll(r.Dir, 0o755); err != nil {
			return err
		}
		if err := trimMetrics(r.Dir, st.pos.Epoch); err != nil {
			return err
		}
	} else {
		log = io.Discard
	}
	dropout := hasDropout(r.Net)
	input := r.Net.Inputs()[0].Name
	classes := r.Train.Classes()
	shape := r.Train.Shape()
	per := shape[0] * shape[1] * shape[2]
	x := tensor.New(s.Batch, shape[0], shape[1], shape[2])
	target := tensor.New(s.Batch, classes)
	img := make([]float32, per)
	prog := &progress{w: log, tty: r.TTY, epochs: r.Epochs, steps: n, batch: gb, start: time.Now(), done0: st.pos.GlobalStep}
	rep := &Replicas{Comm: comm, BucketBytes: r.BucketBytes, Threads: threads, Compiled: compiled}
	r.Profile = DistProfile{}
	var sg *train.StepGraph
	var ss *train.SplitStep
	sgLR, sgSeed := math.NaN(), -1
	for e := st.pos.Epoch; e < r.Epochs; e++ {
		wall := time.Now()
		lr := s.StepLR(e, 0, n)
		order := data.Order(s.Seed, e, r.Train.Len())
		lossSum, trainSec := 0.0, 0.0
		off := 0 // images of the epoch done
		if e == st.pos.Epoch {
			off, lossSum, trainSec = st.pos.Step*s.Batch, st.pos.LossSum, st.pos.TrainSeconds
		}
		trained := 0
		for k := off / gb; off+gb <= r.Train.Len(); k++ {
			stop := ctx.Err() != nil
			if size == 1 && stop {
				st.pos = Position{Epoch: e, Step: off / s.Batch, GlobalStep: st.pos.GlobalStep, LossSum: lossSum, TrainSeconds: trainSec}
				return r.interrupted(st)
			}
			dist.SetStep(comm, st.pos.GlobalStep+1)
			t0 := time.Now()
			seed := 0
			if dropout {
				h := data.Hash(s.Seed, 3, uint64(st.pos.GlobalStep))
				if rank > 0 { // each replica draws its own masks
					h = data.Hash(s.Seed, 3, uint64(st.pos.GlobalStep), uint64(rank))
				}
				seed = int(h >> 33)
			}
			stepLR := s.StepLR(e, k, n)
			if sg != nil && (stepLR != sgLR || seed != sgSeed) {
				sg.SetRun(stepLR, seed) // one rank: as Run.Do
				sgLR, sgSeed = stepLR, seed
			}
			if (sg == nil && ss == nil) || stepLR != sgLR || seed != sgSeed {
				o := s.Optimizer
				o.LR = stepLR
				so := train.StepOptions{Forward: train.Options{Momentum: s.BNMomentum, Seed: seed, GhostBatch: s.GhostBatch, SyncBN: s.SyncBN, Replicas: size},
					Smoothing: s.Smoothing, Optimizer: o}
				if size == 1 {
					sg, err = train.Step(r.Net, so)
				} else {
					ss, err = train.Split(r.Net, so)
				}
				if err != nil {
					return err
				}
				sgLR, sgSeed = stepLR, seed
			}
			for i := range target.Data {
				target.Data[i] = 0
			}
			for b := range s.Batch {
				pos := off + rank*s.Batch + b
				item := order[pos]
				if err := r.Train.Image(item, img); err != nil {
					return err
				}
				s.Augment.Apply(s.Seed, e, pos, shape[0], shape[1], shape[2], r.Train.Fill, img, x.Data[b*per:(b+1)*per])
				target.Data[b*classes+r.Train.Label(item)] = 1
			}
			inputs := map[string]*tensor.Tensor{input: x}
			var loss float32
			var ups map[string]*tensor.Tensor
			if size == 1 {
				inputs[sg.Target] = target
				if loss, ups, err = r.Exec.Step(sg, st.params, inputs); err != nil {
					return err
				}
				rep.Profile.Steps++
				rep.Profile.Compute += time.Since(t0) // one rank: all of the step is compute
			} else {
				inputs[ss.Target] = target
				res, err := rep.Step(ss, st.params, inputs, stop)
				if err != nil {
					return fmt.Errorf("rank %d, step %d: %w", rank, st.pos.GlobalStep+1, err)
				}
				loss, ups, stop = res.Loss, res.Updates, res.Stop
			}
			if math.IsNaN(float64(loss)) || math.IsInf(float64(loss), 0) {
				prog.end()
				return &NonFiniteError{Epoch: e, Step: k, GlobalStep: st.pos.GlobalStep + 1, Loss: loss, Checkpoint: st.lastCk}
			}
			for name, v := range ups {
				st.params[name] = v
			}
			if st.ema != nil {
				updateEMA(st.ema, st.params, float32(s.EMA))
			}
			lossSum += float64(loss) * float64(size)
			trainSec += time.Since(t0).Seconds()
			off += gb
			trained += gb
			st.pos.GlobalStep++
			prog.step(e, k, float64(loss))
			if r.AfterStep != nil {
				r.AfterStep(st.pos.GlobalStep)
			}
			if stop {
				prog.end()
				st.pos = Position{Epoch: e, Step: off / s.Batch, GlobalStep: st.pos.GlobalStep, LossSum: lossSum, TrainSeconds: trainSec}
				return r.distInterrupted(st, lead)
			}
		}
		prog.end()
		row := metricsRow{Epoch: e + 1, Test: r.Test != nil, TrainLoss: lossSum / float64(off/s.Batch), LR: lr, ImgPerSec: float64(trained) / trainSec}
		if trained == 0 {
			row.ImgPerSec = math.NaN() // interrupted after the last step: nothing trained here
		}
		interrupted := false
		if r.Test != nil && lead {
			row.Top1, row.Top5, err = r.evaluate(ctx, r.networkParams(st))
			if errors.Is(err, ErrInterrupted) {
				interrupted = true
			} else if err != nil {
				return err
			}
		}
		if size > 1 {
			// Rank 0's evaluation may have been interrupted: tell the others.
			flag := []byte{0}
			if interrupted {
				flag[0] = 1
			}
			if err := comm.Bcast(flag, 0); err != nil {
				return fmt.Errorf("rank %d: %w", rank, err)
			}
			interrupted = flag[0] == 1
		}
		if interrupted {
			st.pos = Position{Epoch: e, Step: off / s.Batch, GlobalStep: st.pos.GlobalStep, LossSum: lossSum, TrainSeconds: trainSec}
			return r.distInterrupted(st, lead)
		}
		row.WallSeconds = time.Since(wall).Seconds()
		st.pos = Position{Epoch: e + 1, GlobalStep: st.pos.GlobalStep}
		if lead {
			if err := r.checkpoint(st); err != nil {
				return err
			}
			if err := appendMetrics(r.Dir, row); err != nil {
				return err
			}
		}
		fmt.Fprintf(log, "epoch %d/%d: %s\n", e+1, r.Epochs, row.summary())
		if r.ProfileDist {
			fmt.Fprintf(log, "epoch %d/%d: %d ranks, rank 0 %s\n", e+1, r.Epochs, size, rep.Profile)
		}
		r.Profile.add(rep.Profile)
		rep.Profile = DistProfile{}
	}
	if size > 1 {
		return comm.Barrier()
	}
	return nil
}

// add accumulates q into p.
func (p *DistProfile) add(q DistProfile) {
	p.Steps += q.Steps
	p.Compute += q.Compute
	p.Wait += q.Wait
	p.Update += q.Update
	p.Bytes, p.Buckets = q.Bytes, q.Buckets
	p.EarlyBytes += q.EarlyBytes
	p.Ahead += q.Ahead
}

// distInterrupted is interrupted for a data-parallel run: rank 0 writes
// the checkpoint, the other ranks only stop.
func (r *Run) distInterrupted(st *state, lead bool) error {
	if lead {
		return r.interrupted(st)
	}
	return fmt.Errorf("%w at epoch %d, step %d (rank 0 writes the checkpoint)", ErrInterrupted, st.pos.Epoch+1, st.pos.Step)
}
