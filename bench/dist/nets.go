package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/cpu"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/dist"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
	"github.com/kiln-dev/kiln/train/data"
	"github.com/kiln-dev/kiln/train/trainer"
)

// netSpec is one network of the step benchmark: a built-in network, the
// batch per rank and the per-sample input shape (nil: the network's).
type netSpec struct {
	name  string
	batch int
	shape []int
}

// parseNets parses -nets: comma-separated NAME:BATCH[:CxHxW].
func parseNets(s string) ([]netSpec, error) {
	var out []netSpec
	for _, item := range strings.Split(s, ",") {
		parts := strings.Split(strings.TrimSpace(item), ":")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" {
			return nil, fmt.Errorf("-nets: %q: want NAME:BATCH or NAME:BATCH:CxHxW", item)
		}
		b, err := strconv.Atoi(parts[1])
		if err != nil || b < 1 {
			return nil, fmt.Errorf("-nets: %q: batch %q is not a positive integer", item, parts[1])
		}
		spec := netSpec{name: parts[0], batch: b}
		if len(parts) == 3 {
			for _, d := range strings.Split(parts[2], "x") {
				v, err := strconv.Atoi(d)
				if err != nil || v < 1 {
					return nil, fmt.Errorf("-nets: %q: shape %q: want CxHxW", item, parts[2])
				}
				spec.shape = append(spec.shape, v)
			}
			if len(spec.shape) != 3 {
				return nil, fmt.Errorf("-nets: %q: shape %q: want CxHxW", item, parts[2])
			}
		}
		out = append(out, spec)
	}
	return out, nil
}

func (n netSpec) String() string {
	s := n.name + ":" + strconv.Itoa(n.batch)
	if n.shape != nil {
		s += fmt.Sprintf(":%dx%dx%d", n.shape[0], n.shape[1], n.shape[2])
	}
	return s
}

// updateModes is the -update flag: where the optimizer update runs,
// "compiled" or "interp", or a comma-separated list of them for runNets.
var updateModes = "compiled"

// stepHeader heads stepWorker's rows.
const stepHeader = "| network | ranks | batch per rank | threads per rank | step ms | compute ms | exposed wait ms | update ms | MB all-reduced per step (buckets) | all-reduce alone ms | peak RSS MiB (rank 0) |\n|---|---|---|---|---|---|---|---|---|---|---|\n"

// stepWorker runs data-parallel training steps of one network on the
// compiled backend as kiln train --backend compiled does under mpirun
// (trainer.Replicas with trainer.Compiled: forward and backward as native
// code, gradients all-reduced in 4 MB buckets started while backward runs,
// the update as native code too, or in the interpreter with -update
// interp), on a fixed pseudo-random batch per rank with procedural
// parameters, so no data loading is timed.
//
// After warmup untimed steps (the first compiles through LLVM or loads
// from the object cache) it times steps steps, and rank 0 prints their
// means from trainer.DistProfile: compute (forward and backward, bucket
// starts included), the exposed wait (blocked on the all-reduces after
// backward: the communication backward did not hide) and the update;
// then, to split the communication from the computation, the time of the
// same bytes all-reduced alone in the same bucket size (median of 3): the
// exposed wait is what backward did not hide of it, plus any time waiting
// for a slower rank. Rank 0's peak resident set ends the row.
func stepWorker(spec netSpec, steps, warmup, threads int) error {
	c, err := dist.FromEnv()
	if err != nil {
		return err
	}
	rank, size := c.Rank(), c.Size()
	g, err := dsl.LoadFile(spec.name+".kiln", dsl.Options{FS: archs.FS, Batch: spec.batch, InputShape: spec.shape})
	if err != nil {
		return err
	}
	ss, err := train.Split(g, train.StepOptions{Forward: train.Options{Replicas: size}, Smoothing: 0.1, Optimizer: train.PaperRMSProp})
	if err != nil {
		return err
	}
	params, err := g.GeneratedParams()
	if err != nil {
		return err
	}
	for _, s := range ss.State {
		params[s.Name] = s.Initial()
	}
	in := g.Inputs()[0]
	x := tensor.New(in.Type.Shape...)
	for i := range x.Data {
		x.Data[i] = float32(data.Hash(7, uint64(rank), uint64(i))%2001)/1000 - 1
	}
	classes := ss.Grad.Nodes[ss.Grad.Outputs[1]].Type.Shape[1]
	target := tensor.New(spec.batch, classes)
	for i := 0; i < spec.batch; i++ {
		target.Data[i*classes+(i+rank)%classes] = 1
	}
	inputs := map[string]*tensor.Tensor{in.Name: x, ss.Target: target}
	isa := codegen.AVX2
	if cpu.X86.HasAVX512F {
		isa = codegen.AVX512
	}
	ce := &trainer.Compiled{Threads: threads}
	if runtime.GOARCH == "amd64" {
		ce.Targets = []codegen.Target{isa} // one ISA: half the compile time
	}
	defer ce.Close()
	if updateModes != "compiled" && updateModes != "interp" {
		return fmt.Errorf("-update %q: want compiled or interp", updateModes)
	}
	rep := &trainer.Replicas{Comm: c, Compiled: ce, InterpUpdate: updateModes == "interp"}
	label := spec.name
	if rep.InterpUpdate {
		label += " (update in the interpreter)"
	}
	var wall time.Duration
	for k := 0; k < warmup+steps; k++ {
		if k == warmup {
			rep.Profile = trainer.DistProfile{}
			wall = 0
		}
		dist.SetStep(c, k+1)
		t := time.Now()
		res, err := rep.Step(ss, params, inputs, false)
		if err != nil {
			return fmt.Errorf("rank %d, step %d: %w", rank, k+1, err)
		}
		wall += time.Since(t)
		for name, v := range res.Updates {
			params[name] = v
		}
	}
	p := rep.Profile
	// The same bytes all-reduced alone, in buckets of the trainer's size.
	buf := make([]float32, p.Bytes/4)
	var alone []time.Duration
	for range 3 {
		if err := c.Barrier(); err != nil {
			return err
		}
		t := time.Now()
		var reqs []dist.Request
		for off := 0; off < len(buf); off += trainer.DefaultBucketBytes / 4 {
			q, err := c.IallreduceSum(buf[off:min(off+trainer.DefaultBucketBytes/4, len(buf))])
			if err != nil {
				return err
			}
			reqs = append(reqs, q)
		}
		for _, q := range reqs {
			if err := q.Wait(); err != nil {
				return err
			}
		}
		alone = append(alone, time.Since(t))
	}
	if rank == 0 {
		per := func(d time.Duration) float64 { return d.Seconds() * 1000 / float64(p.Steps) }
		a := median(alone).Seconds() * 1000
		fmt.Printf("| %s | %d | %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f (%d) | %.1f | %d |\n",
			label, size, spec.batch, threads, per(wall), per(p.Compute), per(p.Wait), per(p.Update),
			float64(p.Bytes)/1e6, p.Buckets, a, peakRSS())
	}
	return c.Close()
}

// fits reports whether np ranks of perRank MiB each, plus 10 %, fit in
// avail MiB; unknown figures (0) fit.
func fits(np, perRank, avail int) bool {
	return perRank <= 0 || avail <= 0 || np*perRank*11/10 <= avail
}

// memAvailable returns MemAvailable of /proc/meminfo in MiB, or 0.
func memAvailable() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, _ := strconv.Atoi(f[1])
			return kb / 1024
		}
	}
	return 0
}

// peakRSS returns this process's peak resident set (VmHWM) in MiB, or 0.
func peakRSS() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, _ := strconv.Atoi(f[1])
				return kb / 1024
			}
		}
	}
	return 0
}

// runNets launches stepWorker for every network of nets and every rank
// count of ranks, under mpirun, and prints rank 0's rows. A rank count
// whose ranks would need more memory than is available (the previous
// run's peak per rank, +10 %) is skipped with a row saying so: four
// ranks of Inception-v4 need about 18 GiB. The workers get
// KILN_DIST_TIMEOUT=30m unless it is set: with a cold object cache the
// ranks compile Inception-v4's step for many minutes, and one finishing
// first waits in the first all-reduce for the others.
func runNets(self, nets, ranks string, steps, warmup, threads int) error {
	specs, err := parseNets(nets)
	if err != nil {
		return err
	}
	env := os.Environ()
	if os.Getenv(dist.TimeoutEnv) == "" {
		env = append(env, dist.TimeoutEnv+"=30m")
	}
	fmt.Print(stepHeader)
	for _, spec := range specs {
		perRank := 0 // MiB, the peak of rank 0 in the last run
		for _, s := range strings.Split(ranks, ",") {
			np, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || np < 1 {
				return fmt.Errorf("-ranks: bad rank count %q", s)
			}
			// Skip a run that would not fit: np ranks of the last
			// run's peak, plus 10 %.
			if avail := memAvailable(); !fits(np, perRank, avail) {
				fmt.Printf("| %s | %d | %d | skipped: needs about %.1f GiB (%d × %d MiB), %.1f GiB available |\n",
					spec.name, np, spec.batch, float64(np*perRank)/1024, np, perRank, float64(avail)/1024)
				continue
			}
			th := threads
			if th <= 0 {
				th = max(1, runtime.NumCPU()/np)
			}
			for _, mode := range strings.Split(updateModes, ",") {
				argv, err := dist.MpirunCommand(np, self, "-worker", "-net", spec.String(), "-steps", strconv.Itoa(steps),
					"-warmup", strconv.Itoa(warmup), "-threads", strconv.Itoa(th), "-update", strings.TrimSpace(mode))
				if err != nil {
					return err
				}
				cmd := exec.Command(argv[0], argv[1:]...)
				cmd.Env = env
				cmd.Stderr = os.Stderr
				out, err := cmd.Output()
				if err != nil {
					return fmt.Errorf("%s: %v", strings.Join(argv, " "), err)
				}
				for _, l := range strings.Split(string(out), "\n") {
					if strings.HasPrefix(l, "| ") {
						fmt.Println(l)
						f := strings.Split(strings.Trim(l, "| "), " | ")
						if v, err := strconv.Atoi(f[len(f)-1]); err == nil {
							perRank = v
						}
					}
				}
			}
		}
	}
	return nil
}
