package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/kiln-dev/kiln/dist"
)

// sweepHeader heads the table sweepWorker's rows go into; testdata/allreduce.c
// prints rows of the same form for Open MPI's own MPI_Allreduce and
// MPI_Iallreduce, so the two can be compared line by line.
const sweepHeader = "| implementation | ranks | bytes | all-reduce ms, best | median | bus GB/s (best) |\n|---|---|---|---|---|---|\n"

// sweepSizes returns the all-reduce sizes in float32s: 4 KB, then ×16 up
// to (and including) max floats.
func sweepSizes(max int) []int {
	var s []int
	for n := 1024; n < max; n *= 16 {
		s = append(s, n)
	}
	return append(s, max)
}

// sweepWorker measures dist's AllreduceSum (the same Iallreduce, chunking
// and progress goroutine as training) at each sweepSizes size: after a
// warm-up, reps calls (50 below 4 MB), each started after a Barrier. Rank
// 0 prints one row per size: the best and the median time, and the bus
// bandwidth 2(N−1)/N·bytes/time of the best (on a loaded machine the best
// is the software path, the median includes the ranks' waits for a core).
func sweepWorker(maxFloats, reps int) error {
	c, err := dist.FromEnv()
	if err != nil {
		return err
	}
	n := c.Size()
	for _, floats := range sweepSizes(maxFloats) {
		buf := make([]float32, floats)
		for i := range buf {
			buf[i] = 1
		}
		if err := c.AllreduceSum(buf); err != nil { // warm-up
			return err
		}
		r := reps
		if 4*floats < 4<<20 {
			r = max(reps, 50)
		}
		var times []time.Duration
		for range r {
			if err := c.Barrier(); err != nil {
				return err
			}
			t := time.Now()
			if err := c.AllreduceSum(buf); err != nil {
				return err
			}
			times = append(times, time.Since(t))
		}
		best := slices.Min(times)
		if c.Rank() == 0 {
			bytes := 4 * float64(floats)
			fmt.Printf("| dist.AllreduceSum | %d | %d | %.3f | %.3f | %.2f |\n", n, 4*floats,
				best.Seconds()*1000, median(times).Seconds()*1000, 2*float64(n-1)/float64(n)*bytes/best.Seconds()/1e9)
		}
	}
	return c.Close()
}
