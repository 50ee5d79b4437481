package rt

import (
	"fmt"
	goruntime "runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// DefaultSpinWait is how long, by default, idle workers spin before parking
// and a caller spins waiting for its workers before parking. See
// Options.SpinWait.
const DefaultSpinWait = 100 * time.Microsecond

// session is one concurrent inference's resources: an arena, a barrier
// block, a timings array (all in one anonymous mapping) and the worker
// threads for tids 1..Threads-1. The goroutine calling Run acts as tid 0.
//
// Hand-off protocol. The caller publishes an inference by bumping seq;
// workers wait for it spinning on seq for up to spin, then park on their
// wake channel after announcing it in parked. The caller wakes, with a
// token, exactly the workers whose parked flag it manages to clear. A worker
// runs inference gen only if it moves its claimed counter from gen-1 to gen
// first; when the caller's own call returns it does the same for every
// worker, and a worker it beats skips gen (the driver's completion counting
// and work stealing let thread 0 finish an inference alone; where the
// driver's split is static, thread 0 cannot return before every worker has
// claimed its tiles, so none is skipped). Workers count pending down when their cgo call returns (the
// caller for those it claimed); the caller spins on
// pending, then parks on doneTok after announcing it in waiting (with the
// inference number), and the worker that brings pending to zero sends the
// token if it manages to clear waiting for its own inference. Every flag is cleared by exactly one side (compare-and-swap), so
// each token sent is received exactly once, and Go's sequentially
// consistent atomics make "announce, then re-check" race-free.
type session struct {
	m        *Model
	mem      []byte    // the mapping
	arena    []float32 // the arena, viewed as floats
	timings  []int64   // per-kernel nanoseconds from tid 0
	arenaPtr uintptr
	barrier  uintptr
	runWord  *uint64 // the inference number in the barrier block (barrierRunOff)
	timingsP uintptr
	spin     time.Duration

	curTimings uintptr       // timings pointer of the current inference, or 0
	seq        atomic.Uint64 // number of inferences published to the workers
	pending    atomic.Int32  // workers still running the current inference
	waiting    atomic.Uint64 // inference the caller is parked on doneTok for, or 0
	doneTok    chan struct{} // capacity 1
	stop       atomic.Bool   // set by destroy
	workers    []*worker
	exited     sync.WaitGroup // workers that have not exited yet
}

type worker struct {
	parked  atomic.Bool   // parked (or about to park) on wake
	claimed atomic.Uint64 // last inference this worker ran or the caller finished without it
	wake    chan struct{} // capacity 1; closed by destroy
	_       [48]byte      // keep workers' flags on separate cache lines
}

// newSession maps a session's memory and starts its workers.
func (m *Model) newSession() (*session, error) {
	barrierOff := alignUp(m.arenaBytes, 64)
	timingsOff := barrierOff + BarrierBytes
	size := timingsOff + 8*int64(len(m.man.Kernels))
	if size > int64(^uint(0)>>1) {
		return nil, fmt.Errorf("arena of %d bytes is too large", m.arenaBytes)
	}
	mem, err := mapAnon(int(size))
	if err != nil {
		return nil, fmt.Errorf("allocate arena: %w", err)
	}
	base := unsafe.Pointer(&mem[0])
	s := &session{
		m:        m,
		mem:      mem,
		arena:    unsafe.Slice((*float32)(base), m.arenaBytes/4),
		timings:  unsafe.Slice((*int64)(unsafe.Pointer(&mem[timingsOff])), len(m.man.Kernels)),
		arenaPtr: uintptr(base),
		barrier:  uintptr(base) + uintptr(barrierOff),
		runWord:  (*uint64)(unsafe.Pointer(&mem[barrierOff+barrierRunOff])),
		timingsP: uintptr(base) + uintptr(timingsOff),
		spin:     m.spin,
		doneTok:  make(chan struct{}, 1),
		workers:  make([]*worker, m.threads-1),
	}
	s.exited.Add(len(s.workers))
	for i := range s.workers {
		w := &worker{wake: make(chan struct{}, 1)}
		s.workers[i] = w
		go s.work(int32(i+1), w)
	}
	return s, nil
}

// work is the body of the persistent worker thread for tid: locked to its
// OS thread, it makes one cgo call per inference and spins, then parks,
// between inferences.
func (s *session) work(tid int32, w *worker) {
	// Never unlocked: when the goroutine exits, the thread exits with it,
	// taking any thread state the kernels set along.
	goruntime.LockOSThread()
	defer s.exited.Done()
	m := s.m
	n := int32(m.threads)
	for gen := uint64(1); ; gen++ {
		if !s.await(w, gen) || s.stop.Load() {
			return
		}
		if !w.claimed.CompareAndSwap(gen-1, gen) {
			continue // the caller finished inference gen without this worker
		}
		callRun(m.runFn, s.arenaPtr, m.weightsPtr, tid, n, s.barrier, s.curTimings)
		// The generation check keeps a worker that is slow to get here
		// from waking the caller for a later inference.
		if s.pending.Add(-1) == 0 && s.waiting.CompareAndSwap(gen, 0) {
			s.doneTok <- struct{}{}
		}
	}
}

// await waits until inference gen is published; false means the session
// is being destroyed.
func (s *session) await(w *worker, gen uint64) bool {
	if spinUntil(s.spin, func() bool { return s.seq.Load() >= gen }) {
		return true
	}
	w.parked.Store(true)
	if s.seq.Load() >= gen && w.parked.CompareAndSwap(true, false) {
		return true
	}
	// Either nothing is published yet, or the caller cleared parked and
	// its token is on the way.
	_, ok := <-w.wake
	return ok
}

// spinUntil polls cond for up to d; it reports whether cond became true.
func spinUntil(d time.Duration, cond func() bool) bool {
	if cond() {
		return true
	}
	if d <= 0 {
		return false
	}
	start := time.Now()
	for i := 1; ; i++ {
		if cond() {
			return true
		}
		if i%128 == 0 && time.Since(start) > d {
			return false
		}
	}
}

// run executes one inference on the session.
func (s *session) run(in, out []float32, profile bool) {
	m := s.m
	copy(s.arena[m.inOff:m.inOff+m.inLen], in)
	s.curTimings = 0
	if profile {
		clear(s.timings)
		s.curTimings = s.timingsP
	}
	var gen uint64
	if len(s.workers) > 0 {
		s.pending.Store(int32(len(s.workers)))
		// The driver numbers the kernels' epochs from the inference
		// number; it must be in place before any thread starts.
		atomic.StoreUint64(s.runWord, s.seq.Load()+1)
		gen = s.seq.Add(1)
		for _, w := range s.workers {
			if w.parked.Load() && w.parked.CompareAndSwap(true, false) {
				w.wake <- struct{}{}
			}
		}
	} else {
		// Numbered too: a training step's driver publishes its progress
		// from it (progress.go).
		atomic.AddUint64(s.runWord, 1)
	}
	callRun(m.runFn, s.arenaPtr, m.weightsPtr, 0, int32(m.threads), s.barrier, s.curTimings)
	// A worker that has not started inference gen by now is not needed:
	// the driver's work stealing let this thread run its share. Claiming
	// gen for it (it skips gen when it wakes) saves waiting for a parked
	// worker's wake-up, which costs more than a small network's inference.
	for _, w := range s.workers {
		if w.claimed.CompareAndSwap(gen-1, gen) {
			s.pending.Add(-1)
			m.skipped.Add(1)
		}
	}
	if len(s.workers) > 0 && !spinUntil(s.spin, s.done) {
		s.waiting.Store(gen)
		if !s.done() || !s.waiting.CompareAndSwap(gen, 0) {
			<-s.doneTok
		}
	}
	copy(out, s.arena[m.outOff:m.outOff+m.outLen])
}

func (s *session) done() bool { return s.pending.Load() == 0 }

// destroy stops the workers and unmaps the session's memory. The session
// must be idle.
func (s *session) destroy() error {
	s.stop.Store(true)
	s.seq.Add(1) // release spinning workers
	for _, w := range s.workers {
		close(w.wake) // release parked ones
	}
	s.exited.Wait()
	err := unmap(s.mem)
	s.mem, s.arena, s.timings = nil, nil, nil
	return err
}
