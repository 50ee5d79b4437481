package interp

import (
	"sync"
	"sync/atomic"
)

// parallel calls fn(worker, i) for every i in [0, n) on up to workers
// goroutines; worker is in [0, workers) and identifies per-goroutine scratch
// space. Items are handed out dynamically, so fn must not depend on which
// worker runs which item (every caller writes disjoint outputs per item).
func parallel(workers, n int, fn func(worker, i int)) {
	workers = max(1, min(workers, n))
	if workers == 1 {
		for i := 0; i < n; i++ {
			fn(0, i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(w, i)
			}
		}()
	}
	wg.Wait()
}

// parallelRange splits [0, n) into contiguous chunks of at least grain items
// and calls fn(lo, hi) for each on up to workers goroutines.
func parallelRange(workers, n, grain int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	chunks := max(1, min(4*workers, n/max(grain, 1)))
	size := ceilDiv(n, chunks)
	parallel(workers, ceilDiv(n, size), func(_, c int) {
		fn(c*size, min((c+1)*size, n))
	})
}
