package rt

import (
	"sync/atomic"
	"time"
	"unsafe"
)

// The driver's completion word (KILN_DONE_OFF of codegen/lower/driver.go):
// bits 63..24 hold the epoch of the kernel in progress, inference number ×
// kernel count + kernel index, modulo 2^40; bits 23..0 its completed tiles.
const (
	barrierDoneOff = 320
	doneCntBits    = 24
	doneEpMask     = 1<<(64-doneCntBits) - 1
)

// DefaultProgressPoll is RunProgress's polling interval when none is
// given: short next to a kernel of a network worth overlapping with, long
// enough that the polling goroutine costs the kernels' threads little.
const DefaultProgressPoll = 100 * time.Microsecond

// RunProgress is Run that also reports, while the kernels run, how many of
// them are complete. A goroutine polls the driver's completion word every
// poll (0: DefaultProgressPoll; it sleeps in between) and, whenever more
// kernels are complete than it last reported, calls progress(done, arena)
// with the count, in Manifest.Kernels order, and the session's arena.
// Every value that the first done kernels wrote and no later kernel
// overwrites is final in arena then (the driver stores the word with
// release order after a kernel's last tile, and the load acquires it); the
// rest of the arena is being written and must not be read, and none of it
// may be written. progress is never called concurrently with itself, and
// its last call, with done = len(Manifest.Kernels), happens after the
// kernels have returned and before RunProgress does. It must not call the
// Model's methods (the state lock is held during the run).
//
// Multi-threaded runs keep the completion word for their own completion
// counting; single-threaded runs keep it only when the program's driver
// was generated for it (training steps: codegen/lower/progress.go), so
// for other programs progress sees no kernel complete before the end.
func (m *Model) RunProgress(in, out []float32, poll time.Duration, progress func(done int, arena []float32)) error {
	if progress == nil {
		return m.Run(in, out)
	}
	if err := m.checkLens("RunProgress", in, out); err != nil {
		return err
	}
	if poll <= 0 {
		poll = DefaultProgressPoll
	}
	s, err := m.acquire()
	if err != nil {
		return err
	}
	nk := len(m.man.Kernels)
	// s.run numbers this inference one past the last (session.run): its
	// kernel k has epoch r*nk + k, and the word holds r*nk, or an older
	// epoch, until kernel 0 is complete.
	r := atomic.LoadUint64(s.runWord) + 1
	ep0 := (r * uint64(nk)) & doneEpMask
	word := (*uint64)(unsafe.Pointer(&s.mem[alignUp(m.arenaBytes, 64)+barrierDoneOff]))
	doneNow := func() int {
		d := int64((atomic.LoadUint64(word)>>doneCntBits-ep0)<<doneCntBits) >> doneCntBits
		return int(min(max(d, 0), int64(nk)))
	}
	reported := 0
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(poll)
		defer tick.Stop()
		for {
			if d := doneNow(); d > reported {
				reported = d
				progress(d, s.arena)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	m.runState(s, in, out, false)
	close(stop)
	<-stopped
	if reported < nk {
		progress(nk, s.arena)
	}
	m.release(s)
	return nil
}
