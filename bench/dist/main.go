// Command bench-dist measures Kiln's MPI collectives on this machine: the
// time of one all-reduce of a gradient-sized buffer with 1, 2 and 4 ranks,
// and how much of it a nonblocking all-reduce hides behind computation;
// with -sweep, the all-reduce throughput from 4 KB up (sweep.go; Open
// MPI's own, for comparison, is testdata/allreduce.c); with -nets, the
// data-parallel training step of networks on the compiled backend split
// into compute, exposed wait and update (nets.go).
//
// Usage (bench/dist/run.sh builds it and runs it):
//
//	bench-dist [-ranks 1,2,4] [-floats 42700000] [-reps 3]
//	bench-dist -model [-img 222ms]  # print the scaling-model table (dist.ScalingTable)
//	bench-dist -sweep [-floats N]   # all-reduce throughput, 4 KB to 4·N bytes, 2 ranks
//	bench-dist -nets inception_v4:2 [-ranks 1,2,4] [-steps 3]  # data-parallel training steps (nets.go)
//	bench-dist -mpirun N  # print the mpirun command line for N ranks
//
// For each rank count the launcher starts itself under mpirun
// (dist.MpirunCommand, the one place mpirun's flags are chosen) in worker
// mode. Every worker then, in alternating rounds:
//
//  1. all-reduces -floats float32s (Inception-v4's 42.7 M parameters by
//     default, 171 MB) with AllreduceSum: comm time;
//  2. computes alone for about as long, 20 ms to 2 s (a fixed FMA loop on
//     the caller's goroutine, calibrated once by rank 0): compute time;
//  3. starts IallreduceSum, computes the same loop, then Waits: overlapped
//     time.
//
// Rank 0 prints the medians as a Markdown row: the comm time, the bus
// bandwidth 2(N-1)/N·bytes/time (the NCCL-tests convention: what each
// rank's link carries in a ring), and the hidden fraction
// (comm+compute−overlapped)/min(comm, compute), the median over rounds: 1
// when the all-reduce is hidden entirely, 0 when it progresses only inside
// Wait (outside 0–1 when the machine's load changes within a round).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/dist"
)

func main() {
	ranks := flag.String("ranks", "1,2,4", "rank counts to measure, comma-separated")
	floats := flag.Int("floats", 42_700_000, "float32s per all-reduce (Inception-v4: 42.7 M)")
	reps := flag.Int("reps", 3, "alternating rounds per rank count")
	worker := flag.Bool("worker", false, "run as one rank (under mpirun)")
	model := flag.Bool("model", false, "print the scaling-model table and exit")
	img := flag.Duration("img", 0, "-model: this machine's compute (forward, backward, update) per Inception-v4 image, e.g. from -nets inception_v4:2 (0: dist.DefaultScalingModel's estimate); the servers are 16x faster")
	sweep := flag.Bool("sweep", false, "measure AllreduceSum throughput from 4 KB to -floats×4 bytes instead (with 2 ranks unless -ranks says otherwise)")
	nets := flag.String("nets", "", "instead, time data-parallel training steps (compiled backend) of these networks: comma-separated `NAME:BATCH[:CxHxW]`, batch per rank")
	net := flag.String("net", "", "worker: the -nets entry to run")
	steps := flag.Int("steps", 3, "-nets: timed steps")
	warmup := flag.Int("warmup", 1, "-nets: untimed steps first (the first compiles)")
	threads := flag.Int("threads", 0, "-nets: runtime threads per rank (0: the cores divided among the ranks, at least 1)")
	flag.StringVar(&updateModes, "update", "compiled", "-nets: where the optimizer update runs: compiled, interp (trainer.Replicas.InterpUpdate), or a comma-separated list, run one after the other per rank count (interp,compiled: an A/B comparison)")
	launch := flag.Int("mpirun", 0, "print the mpirun command line (dist.MpirunCommand) for `N` ranks, without the program, and exit")
	flag.Parse()
	if *launch > 0 {
		argv, err := dist.MpirunCommand(*launch, "")
		if err != nil {
			fatal(err)
		}
		fmt.Println(strings.Join(argv[:len(argv)-1], " "))
		return
	}
	if *model {
		m := dist.DefaultScalingModel()
		if *img > 0 {
			m.Machines[0].Image = *img
			for i := 1; i < len(m.Machines); i++ {
				m.Machines[i].Image = *img / 16
			}
		}
		fmt.Print(dist.ScalingTable(m))
		return
	}
	if *worker && *net != "" {
		specs, err := parseNets(*net)
		if err != nil {
			fatal(err)
		}
		if err := stepWorker(specs[0], *steps, *warmup, *threads); err != nil {
			fmt.Fprintln(os.Stderr, "bench-dist worker:", err)
			os.Exit(1)
		}
		return
	}
	if *worker && *sweep {
		if err := sweepWorker(*floats, *reps); err != nil {
			fmt.Fprintln(os.Stderr, "bench-dist worker:", err)
			os.Exit(1)
		}
		return
	}
	if *worker {
		if err := runWorker(*floats, *reps); err != nil {
			fmt.Fprintln(os.Stderr, "bench-dist worker:", err)
			os.Exit(1)
		}
		return
	}
	self, err := os.Executable()
	if err != nil {
		fatal(err)
	}
	if *nets != "" {
		if err := runNets(self, *nets, *ranks, *steps, *warmup, *threads); err != nil {
			fatal(err)
		}
		return
	}
	if *sweep {
		fmt.Print(sweepHeader)
	} else {
		fmt.Printf("| ranks | MB per all-reduce | all-reduce ms | bus GB/s | compute ms | overlapped ms | hidden |\n|---|---|---|---|---|---|---|\n")
	}
	for _, s := range strings.Split(*ranks, ",") {
		np, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || np < 1 {
			fatal(fmt.Errorf("-ranks: bad rank count %q", s))
		}
		argv, err := dist.MpirunCommand(np, self, "-worker", "-sweep="+strconv.FormatBool(*sweep), "-floats", strconv.Itoa(*floats), "-reps", strconv.Itoa(*reps))
		if err != nil {
			fatal(err)
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			fatal(fmt.Errorf("%s: %v", strings.Join(argv, " "), err))
		}
		sc := bufio.NewScanner(strings.NewReader(string(out)))
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "| ") {
				fmt.Println(sc.Text())
			}
		}
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench-dist:", err)
	os.Exit(1)
}

// spin runs n iterations of a dependent FMA chain over a small array (the
// stand-in for backward's compute) and returns a value so it is not
// optimized away.
func spin(n int, a []float32) float32 {
	s := float32(0)
	for i := 0; i < n; i++ {
		for j := range a {
			a[j] = a[j]*0.999 + 0.001
		}
		s += a[i%len(a)]
	}
	return s
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func runWorker(floats, reps int) error {
	c, err := dist.FromEnv()
	if err != nil {
		return err
	}
	buf := make([]float32, floats)
	for i := range buf {
		buf[i] = float32(i%1000) * 1e-3
	}
	work := make([]float32, 4096)
	// Calibrate the compute loop to about one all-reduce (20 ms to 2 s).
	if err := c.AllreduceSum(buf); err != nil { // warm-up
		return err
	}
	t0 := time.Now()
	if err := c.AllreduceSum(buf); err != nil {
		return err
	}
	target := min(max(time.Since(t0), 20*time.Millisecond), 2*time.Second)
	iters := 16
	for {
		t := time.Now()
		spin(iters, work)
		if d := time.Since(t); d >= target/4 {
			iters = int(float64(iters) * float64(target) / float64(d))
			break
		}
		iters *= 2
	}
	// Every rank uses rank 0's calibration, so the loops match.
	b := []byte(strconv.Itoa(iters) + strings.Repeat(" ", 20))[:20]
	if err := c.Bcast(b, 0); err != nil {
		return err
	}
	iters, _ = strconv.Atoi(strings.TrimSpace(string(b)))

	var comm, comp, both []time.Duration
	for r := 0; r < reps; r++ {
		if err := c.Barrier(); err != nil {
			return err
		}
		t := time.Now()
		if err := c.AllreduceSum(buf); err != nil {
			return err
		}
		comm = append(comm, time.Since(t))
		if err := c.Barrier(); err != nil {
			return err
		}
		t = time.Now()
		spin(iters, work)
		comp = append(comp, time.Since(t))
		if err := c.Barrier(); err != nil {
			return err
		}
		t = time.Now()
		q, err := c.IallreduceSum(buf)
		if err != nil {
			return err
		}
		spin(iters, work)
		if err := q.Wait(); err != nil {
			return err
		}
		both = append(both, time.Since(t))
	}
	n := c.Size()
	if c.Rank() == 0 {
		mc, mp, mb := median(comm), median(comp), median(both)
		bytes := 4 * float64(floats)
		bus := 2 * float64(n-1) / float64(n) * bytes / mc.Seconds() / 1e9
		hidden := "–"
		if n > 1 {
			// Per round, then the median: the rounds' noise does not mix.
			h := make([]time.Duration, reps)
			for i := range h {
				h[i] = time.Duration(float64(time.Second) * (comm[i] + comp[i] - both[i]).Seconds() / min(comm[i], comp[i]).Seconds())
			}
			hidden = fmt.Sprintf("%.2f", median(h).Seconds())
		}
		ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", d.Seconds()*1000) }
		fmt.Printf("| %d | %.1f | %s | %.2f | %s | %s | %s |\n", n, bytes/1e6, ms(mc), bus, ms(mp), ms(mb), hidden)
	}
	return c.Close()
}
