//go:build linux && cgo

package dist

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// The MPI communicator.
//
// Threading: every MPI call is made by one goroutine (the progress
// goroutine) locked to its OS thread, which initialized MPI with
// MPI_THREAD_FUNNELED. Callers hand it operations over a channel; it
// starts them as nonblocking collectives (MPI_Iallreduce, MPI_Ibcast,
// MPI_Ibarrier) and polls them with MPI_Test until they complete. Open
// MPI's nonblocking collectives (libnbc) advance only inside MPI calls, so
// this polling is what makes an IallreduceSum progress while the caller
// computes (the scheme of Horovod's background thread).
//
// Chunking: a sum is split into chunks of at most 4 MB
// (KILN_DIST_CHUNK_BYTES), each its own MPI_Iallreduce, with at most
// `window` (2) chunks in flight; the chunks of every op wait in one FIFO
// queue, so every rank starts the same collectives in the same order (as
// MPI requires) however their timing differs. Large all-reduces are thus
// pipelined (as NCCL and Horovod do), Open MPI's temporary buffers stay a
// chunk's size (reused by malloc instead of mmapped, page-faulted and
// unmapped on every call: at 171 MB that alone cost Open MPI's own
// blocking MPI_Allreduce 0.9 s here instead of 0.1 s), and a chunk
// completing is the progress signal for the polling policy:
//
//   - a caller blocked in Wait, and a chunk started or completed within
//     the last spinFor (20 ms): MPI_Test back to back, with sched_yield
//     after every 32 fruitless rounds so that ranks oversubscribing the
//     cores still run (Open MPI's mpi_yield_when_idle);
//   - a caller blocked, but nothing completed for spinFor (a peer is
//     late): rounds of burst tests 50 µs apart, so an idle wait for a
//     slow rank costs little CPU;
//   - collectives only outstanding (the caller computes): a round of burst
//     tests with a back-off from 20 µs to 1 ms (KILN_DIST_MAX_POLL),
//     leaving the cores to the computation.
//
// Before chunking and with 20 µs sleeps after 256 fruitless tests, one
// MPI_Test moved only a few of vader's 32 KB fragments per sleep: a 16 MB
// all-reduce of 2 ranks took 525 ms, against 3–5 ms for Open MPI's own
// MPI_Allreduce (BENCHMARKS.md, issue 14).
//
// Failure detection: before each collective, every rank r > 0 sends a
// 16-byte heartbeat (collective number, training step) to rank 0
// (MPI_Isend, tag heartbeatTag); rank 0 keeps one MPI_Irecv posted per
// rank. Rank 0 thus knows the last collective every rank has reached. A
// rank whose count stays below the highest count of any rank for longer
// than the timeout is hung (or dead without exiting): rank 0 prints
// "rank 2 did not reach step 14 within 30s" and calls MPI_Abort, which
// ends every process of the job. If every rank reached a collective that
// still does not complete within the timeout, rank 0 aborts saying so,
// naming the ranks it has not heard from for half the timeout: every rank
// > 0 answers each of rank 0's pings (below) with a pong (a heartbeat of
// collective number pongSeq), so a rank stopped inside a collective
// (SIGSTOP, a debugger, a frozen machine), which has announced it and
// then falls silent, is named too ("rank 2 has not answered for 3s inside
// AllreduceSum64 #136 (step 2)"). Synchronized BatchNorm makes this the
// common case: it runs about a hundred small collectives per step, inside
// forward and backward.
//
// Rank-local work longer than the timeout (rank 0 evaluating or writing a
// checkpoint while the others wait in the next collective) is announced
// with KeepAlive: a rank behind the others is hung only if it has neither
// advanced nor sent a keep-alive for the timeout. So that the waiting ranks
// do not give up on their own meanwhile, rank 0 pings every rank (tag
// pingTag) every quarter of the timeout; a rank > 0 aborts by itself only
// when its collective is overdue and rank 0 has been silent for longer than
// the timeout plus the grace period (rank 0 frozen). A rank that exits,
// crashes or is killed is reported by mpirun itself, which then ends the
// job (its message names the rank: "Process name: [[…],2] Exit code: 3").
const (
	heartbeatTag = 7001
	pingTag      = 7002
)

// heartbeatBytes is the size of one heartbeat: int64 collective number,
// int64 step, little-endian. A collective number of closingSeq says the
// sender is in Close, keepAliveSeq that it called KeepAlive.
const (
	heartbeatBytes = 16
	closingSeq     = -2
	keepAliveSeq   = -3
	pongSeq        = -4 // an answer to rank 0's ping
)

// maxPollEnv overrides the longest interval between two MPI_Test rounds
// while collectives are outstanding (a Go duration, default 1ms; for
// benchmarks of the polling policy).
const maxPollEnv = "KILN_DIST_MAX_POLL"

// maxCount is the largest element count passed to one MPI call (MPI counts
// are C ints); larger buffers are split into several collectives.
const maxCount = 1 << 30

// Chunking and polling (see the comment at the top of this file).
const (
	// chunkEnv overrides the chunk size in bytes (tests use tiny chunks).
	chunkEnv = "KILN_DIST_CHUNK_BYTES"
	// defaultChunkBytes: Open MPI's shared-memory all-reduce of 2 ranks
	// reaches its best bus bandwidth at 1–16 MB (bench/dist -sweep).
	defaultChunkBytes = 4 << 20
	// window is the number of chunks in flight: two, so that one chunk's
	// reduction overlaps the next one's transfer.
	window = 2
	// spinFor is how long after a chunk last started or completed a
	// blocked caller's collectives are tested back to back.
	spinFor = 20 * time.Millisecond
	// yieldAfter is the number of fruitless MPI_Test rounds a spinning
	// progress goroutine makes between two sched_yield calls: a small
	// all-reduce completes within a few rounds without giving the core
	// away; a long one lets the other ranks run.
	yieldAfter = 32
	// burst is the number of MPI_Test rounds per wake-up when not
	// spinning (each round moves a few fragments).
	burst = 16
)

// chunkElems returns the elements per chunk for elements of elem bytes:
// KILN_DIST_CHUNK_BYTES or defaultChunkBytes, at least one element and at
// most maxCount.
func chunkElems(elem int) int {
	b := defaultChunkBytes
	if v, err := strconv.Atoi(os.Getenv(chunkEnv)); err == nil && v > 0 {
		b = v
	}
	return min(max(b/elem, 1), maxCount)
}

type mpiComm struct {
	rank, size int
	timeout    time.Duration
	ops        chan *mpiOp
	step       atomic.Int64
	closed     atomic.Bool

	lastKeepAlive atomic.Int64  // UnixNano of the last KeepAlive sent
	dead          chan struct{} // closed when the progress goroutine exits
	wake          chan struct{} // a caller started waiting: poll without pausing

	mu    sync.Mutex
	stats Stats
}

type mpiOpKind int

const (
	mpiSum32 mpiOpKind = iota
	mpiSum64
	mpiBcast
	mpiBarrier
	mpiClose
	mpiAbortOp
	mpiKeepAlive
)

func (k mpiOpKind) String() string {
	return [...]string{"AllreduceSum", "AllreduceSum64", "Bcast", "Barrier", "Close", "Abort", "KeepAlive"}[k]
}

type mpiOp struct {
	kind  mpiOpKind
	ptr   uintptr // pinned Go memory
	count int     // elements
	root  int
	code  int    // abort
	msg   string // abort
	step  int64
	pin   runtime.Pinner
	done  chan error
	start time.Time

	// owned by the progress goroutine
	seq     int64
	reqs    []uintptr // one per started chunk; 0 once complete
	next    int       // elements whose chunks have been started
	started bool      // every chunk has been started

	// waited is set once a caller blocks in Wait on the op.
	waited atomic.Bool
}

type mpiRequest struct {
	c  *mpiComm
	op *mpiOp
}

var (
	openedMu sync.Mutex
	opened   *mpiComm
)

func openMPI(o Options) (Comm, error) {
	openedMu.Lock()
	defer openedMu.Unlock()
	if opened != nil {
		return nil, errors.New("dist: MPI is already initialized in this process (FromEnv may be called once)")
	}
	name, err := loadMPI(o.Library)
	if err != nil {
		return nil, fmt.Errorf("dist: this process was started by mpirun, but Open MPI's library could not be loaded (%v); install it: %s", err, InstallHint)
	}
	// Open MPI installs its backtrace handlers (opal_signal: SIGSEGV,
	// SIGBUS, SIGFPE, SIGILL) only where no handler exists, so the Go
	// runtime's stay in place (the MPI tests check that a nil dereference
	// still panics).
	c := &mpiComm{timeout: o.timeout(), ops: make(chan *mpiOp, 64), dead: make(chan struct{}), wake: make(chan struct{}, 1)}
	ready := make(chan error, 1)
	go c.progress(ready)
	if err := <-ready; err != nil {
		return nil, fmt.Errorf("dist: %s (loaded as %s): %w", "Open MPI initialization", name, err)
	}
	opened = c
	return c, nil
}

func (c *mpiComm) Rank() int { return c.rank }
func (c *mpiComm) Size() int { return c.size }

// SetStep records the training step, carried by the following heartbeats.
func (c *mpiComm) SetStep(step int) { c.step.Store(int64(step)) }

// Stats returns this rank's communication totals.
func (c *mpiComm) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

var errClosed = errors.New("dist: communicator is closed")

// submit hands op to the progress goroutine.
func (c *mpiComm) submit(op *mpiOp, bytes int) (*mpiRequest, error) {
	if c.closed.Load() {
		op.pin.Unpin()
		return nil, errClosed
	}
	op.done = make(chan error, 1)
	op.step = c.step.Load()
	op.start = time.Now()
	c.mu.Lock()
	c.stats.Calls++
	c.stats.Bytes += int64(bytes)
	c.mu.Unlock()
	select {
	case c.ops <- op:
	case <-c.dead:
		op.pin.Unpin()
		return nil, errClosed
	}
	return &mpiRequest{c: c, op: op}, nil
}

func (q *mpiRequest) Wait() error {
	var err error
	if !q.op.waited.Swap(true) {
		select {
		case q.c.wake <- struct{}{}:
		default:
		}
	}
	select {
	case err = <-q.op.done:
		q.op.done <- err // a second Wait returns the same
	case <-q.c.dead:
		select {
		case err = <-q.op.done:
			q.op.done <- err
		default:
			err = errClosed
		}
	}
	q.c.mu.Lock()
	q.c.stats.Waiting += time.Since(q.op.start)
	q.c.mu.Unlock()
	return err
}

// done reports whether the op has completed, without waiting (tests).
func (q *mpiRequest) done() bool { return len(q.op.done) > 0 }

func (c *mpiComm) IallreduceSum(buf []float32) (Request, error) {
	if len(buf) == 0 || c.size == 1 {
		return doneRequest{}, nil
	}
	op := &mpiOp{kind: mpiSum32, ptr: uintptr(unsafe.Pointer(&buf[0])), count: len(buf)}
	op.pin.Pin(&buf[0])
	r, err := c.submit(op, 4*len(buf))
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (c *mpiComm) AllreduceSum(buf []float32) error {
	r, err := c.IallreduceSum(buf)
	if err != nil {
		return err
	}
	return r.Wait()
}

func (c *mpiComm) AllreduceSum64(buf []float64) error {
	if len(buf) == 0 || c.size == 1 {
		return nil
	}
	op := &mpiOp{kind: mpiSum64, ptr: uintptr(unsafe.Pointer(&buf[0])), count: len(buf)}
	op.pin.Pin(&buf[0])
	r, err := c.submit(op, 8*len(buf))
	if err != nil {
		return err
	}
	return r.Wait()
}

func (c *mpiComm) Bcast(buf []byte, root int) error {
	if root < 0 || root >= c.size {
		return fmt.Errorf("dist: bcast root %d out of range for %d ranks", root, c.size)
	}
	if len(buf) == 0 || c.size == 1 {
		return nil
	}
	op := &mpiOp{kind: mpiBcast, ptr: uintptr(unsafe.Pointer(&buf[0])), count: len(buf), root: root}
	op.pin.Pin(&buf[0])
	r, err := c.submit(op, len(buf))
	if err != nil {
		return err
	}
	return r.Wait()
}

func (c *mpiComm) Barrier() error {
	r, err := c.submit(&mpiOp{kind: mpiBarrier}, 0)
	if err != nil {
		return err
	}
	return r.Wait()
}

// Close waits until every rank has reached Close, then calls MPI_Finalize.
func (c *mpiComm) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	op := &mpiOp{kind: mpiClose, done: make(chan error, 1), start: time.Now()}
	select {
	case c.ops <- op:
	case <-c.dead:
		return nil
	}
	err := <-op.done
	<-c.dead
	return err
}

// KeepAlive tells rank 0 that this rank is busy with rank-local work (see
// the package function KeepAlive). It does not block; calls closer than
// a twentieth of the timeout apart are dropped.
func (c *mpiComm) KeepAlive() {
	if c.size == 1 || c.timeout <= 0 || c.closed.Load() {
		return
	}
	now := time.Now().UnixNano()
	last := c.lastKeepAlive.Load()
	if now-last < int64(c.timeout/20) || !c.lastKeepAlive.CompareAndSwap(last, now) {
		return
	}
	select {
	case c.ops <- &mpiOp{kind: mpiKeepAlive, step: c.step.Load()}:
	default: // the progress goroutine is busy; the next call will do
	}
}

// Abort prints msg (prefixed with the rank) and ends every process of the
// job through MPI_Abort.
func (c *mpiComm) Abort(code int, msg string) {
	if code == 0 {
		code = 1
	}
	op := &mpiOp{kind: mpiAbortOp, code: code, msg: fmt.Sprintf("rank %d: %s", c.rank, msg)}
	select {
	case c.ops <- op:
		// MPI_Abort does not return; in case it does, or the progress
		// goroutine is gone, exit after a while.
		time.Sleep(10 * time.Second)
	case <-c.dead:
	case <-time.After(10 * time.Second):
	}
	abortProcess(code, op.msg)
}

// progressState is owned by the progress goroutine.
type progressState struct {
	c       *mpiComm
	active  []*mpiOp
	nextSeq int64

	// queue holds the ops (in submission order) with chunks not yet
	// started; inflight counts chunks started and not complete.
	queue    []*mpiOp
	inflight int
	// lastDone is when a chunk was last started or completed.
	lastDone time.Time

	// rank 0: heartbeats
	hbBuf  unsafe.Pointer // size × heartbeatBytes of C memory
	hbReq  []uintptr      // per rank; 0 when not posted
	seen   []int64        // last collective number reached, by rank (-1: none)
	steps  []int64        // step of that collective
	behind []time.Time    // when rank r was first seen behind the leader; zero if not
	alive  []time.Time    // rank r's last KeepAlive
	// allAt is when the slowest rank last advanced (min of seen grew).
	allAt   time.Time
	minSeen int64
	closing []bool
	pinged  time.Time // last ping to the other ranks

	heard []time.Time // when rank r last sent anything (heartbeat, keep-alive, pong)

	// ranks > 0: rank 0's pings
	pingBuf  unsafe.Pointer
	pingReq  uintptr
	lastPing time.Time
	closed   bool // in close: no more pongs (rank 0 stops receiving after the closing notice)

	// sends in flight (heartbeats; pings on rank 0)
	sends []pendingSend
}

type pendingSend struct {
	req uintptr
	buf unsafe.Pointer
}

func (c *mpiComm) progress(ready chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
	defer close(c.dead)
	rank, size, provided, err := mpiInit()
	if err != nil {
		ready <- err
		return
	}
	if provided < 1 {
		ready <- fmt.Errorf("MPI_Init_thread provided thread level %d, want MPI_THREAD_FUNNELED (1)", provided)
		return
	}
	c.rank, c.size = rank, size
	s := &progressState{c: c}
	if rank == 0 && size > 1 {
		s.hbBuf = cAlloc(size * heartbeatBytes)
		s.hbReq = make([]uintptr, size)
		s.seen = make([]int64, size)
		s.steps = make([]int64, size)
		s.behind = make([]time.Time, size)
		s.alive = make([]time.Time, size)
		s.closing = make([]bool, size)
		s.heard = make([]time.Time, size)
		for r := range s.seen {
			s.seen[r] = -1
			s.heard[r] = time.Now()
		}
		s.minSeen = -1
		for r := 1; r < size; r++ {
			if err := s.postRecv(r); err != nil {
				ready <- err
				return
			}
		}
	}
	if rank > 0 && size > 1 && c.timeout > 0 {
		s.pingBuf = cAlloc(heartbeatBytes)
		s.lastPing = time.Now()
		if s.pingReq, err = mpiIrecv(uintptr(s.pingBuf), heartbeatBytes, 0, pingTag); err != nil {
			ready <- err
			return
		}
	}
	ready <- nil

	const minPoll, idlePoll = 20 * time.Microsecond, 20 * time.Millisecond
	maxPoll := time.Millisecond
	if d, err := time.ParseDuration(os.Getenv(maxPollEnv)); err == nil && d >= minPoll {
		maxPoll = d
	}
	const latePoll = 50 * time.Microsecond
	poll, fruitless := minPoll, 0
	timer := time.NewTimer(idlePoll)
	for {
		waited := s.waited()
		spinning := waited && time.Since(s.lastDone) < spinFor
		rounds := burst
		if spinning {
			rounds = 1
		}
		progressed := false
		for i := 0; i < rounds && !progressed && len(s.active)+len(s.sends) > 0; i++ {
			p, err := s.poll()
			if err != nil {
				s.fatal(3, err.Error())
			}
			progressed = p
		}
		if len(s.active)+len(s.sends) == 0 {
			// Still check the heartbeats and timeouts while idle.
			if _, err := s.poll(); err != nil {
				s.fatal(3, err.Error())
			}
		}
		if progressed {
			poll, fruitless = minPoll, 0
		} else {
			fruitless++
			if poll < maxPoll {
				poll *= 2
			}
		}
		wait := poll
		switch {
		case len(s.active) == 0 && len(s.sends) == 0:
			wait = idlePoll
		case spinning:
			// A caller is blocked and chunks complete: drive MPI
			// without pausing, yielding the core to other processes
			// (ranks oversubscribing the cores) after every yieldAfter
			// fruitless rounds.
			wait = 0
			if fruitless%yieldAfter == yieldAfter-1 {
				syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
			}
		case waited:
			wait = latePoll
		}
		var tick <-chan time.Time
		if wait > 0 {
			timer.Reset(wait)
			tick = timer.C
		} else {
			tick = alwaysReady
		}
		select {
		case <-c.wake:
		case op := <-c.ops:
			switch op.kind {
			case mpiClose:
				op.done <- s.close()
				return
			case mpiAbortOp:
				s.fatal(op.code, op.msg)
			case mpiKeepAlive:
				if err := s.heartbeat(keepAliveSeq, op.step); err != nil {
					s.fatal(3, err.Error())
				}
			default:
				if err := s.startOp(op); err != nil {
					op.pin.Unpin()
					op.done <- err
				}
			}
			poll = minPoll
		case <-tick:
		}
	}
}

// alwaysReady is a closed channel: a select case that never blocks.
var alwaysReady = func() chan time.Time { c := make(chan time.Time); close(c); return c }()

// waited reports whether a caller is blocked on an outstanding op.
func (s *progressState) waited() bool {
	for _, op := range s.active {
		if op.waited.Load() {
			return true
		}
	}
	return false
}

// fatal prints msg and aborts the job.
func (s *progressState) fatal(code int, msg string) {
	fmt.Fprintln(os.Stderr, "kiln: "+msg)
	os.Stderr.Sync()
	mpiAbort(code)
	os.Exit(code)
}

func (s *progressState) postRecv(r int) error {
	req, err := mpiIrecv(uintptr(s.hbBuf)+uintptr(r*heartbeatBytes), heartbeatBytes, r, heartbeatTag)
	s.hbReq[r] = req
	return err
}

// heartbeat announces that this rank reached collective seq in step.
func (s *progressState) heartbeat(seq, step int64) error {
	c := s.c
	if c.size == 1 {
		return nil
	}
	if c.rank == 0 {
		s.record(0, seq, step)
		return nil
	}
	return s.send(0, heartbeatTag, seq, step)
}

// send starts sending (a, b) to rank dest.
func (s *progressState) send(dest, tag int, a, b int64) error {
	buf := cAlloc(heartbeatBytes)
	m := unsafe.Slice((*byte)(buf), heartbeatBytes)
	binary.LittleEndian.PutUint64(m, uint64(a))
	binary.LittleEndian.PutUint64(m[8:], uint64(b))
	req, err := mpiIsend(uintptr(buf), heartbeatBytes, dest, tag)
	if err != nil {
		cFree(buf)
		return err
	}
	s.sends = append(s.sends, pendingSend{req, buf})
	return nil
}

// record notes (on rank 0) that rank r reached collective seq.
func (s *progressState) record(r int, seq, step int64) {
	s.heard[r] = time.Now()
	switch seq {
	case pongSeq:
		return
	case closingSeq:
		s.closing[r] = true
		return
	case keepAliveSeq:
		s.alive[r] = time.Now()
		return
	}
	s.seen[r], s.steps[r] = seq, step
	s.behind[r] = time.Time{}
	if m := slices.Min(s.seen); m > s.minSeen {
		s.minSeen, s.allAt = m, time.Now()
	}
}

func (s *progressState) startOp(op *mpiOp) error {
	op.seq = s.nextSeq
	s.nextSeq++
	if err := s.heartbeat(op.seq, op.step); err != nil {
		return err
	}
	s.active = append(s.active, op)
	s.queue = append(s.queue, op)
	if err := s.launch(); err != nil {
		// The op is queued and other ranks may have started it: no
		// way back but ending the job.
		s.fatal(3, err.Error())
	}
	return nil
}

// launch starts queued chunks, oldest op first, while fewer than window
// are in flight. Every rank submits the same ops in the same order and
// splits them alike, so every rank starts the same MPI collectives in the
// same order.
func (s *progressState) launch() error {
	for s.inflight < window && len(s.queue) > 0 {
		op := s.queue[0]
		elem := map[mpiOpKind]int{mpiSum32: 4, mpiSum64: 8, mpiBcast: 1, mpiBarrier: 1}[op.kind]
		n := min(op.count-op.next, chunkElems(elem))
		p := op.ptr + uintptr(op.next*elem)
		var req uintptr
		var err error
		switch op.kind {
		case mpiSum32:
			req, err = mpiIallreduceSum(p, n, dtFloat32)
		case mpiSum64:
			req, err = mpiIallreduceSum(p, n, dtFloat64)
		case mpiBcast:
			req, err = mpiIbcast(p, n, op.root)
		case mpiBarrier:
			req, err = mpiIbarrier()
		}
		if err != nil {
			return err
		}
		op.reqs = append(op.reqs, req)
		s.inflight++
		s.lastDone = time.Now()
		op.next += n
		if op.next >= op.count {
			op.started = true
			s.queue = s.queue[1:]
		}
	}
	return nil
}

// poll tests every outstanding request once and checks the timeouts. It
// reports whether anything completed.
func (s *progressState) poll() (bool, error) {
	c := s.c
	progressed := false
	now := time.Now()
	keep := s.active[:0]
	for _, op := range s.active {
		done := true
		for i := range op.reqs {
			if op.reqs[i] == 0 {
				continue
			}
			ok, err := mpiTest(&op.reqs[i])
			if err != nil {
				return false, err
			}
			if ok {
				op.reqs[i] = 0
				s.inflight--
				s.lastDone = now
				progressed = true
			} else {
				done = false
			}
		}
		if done && op.started {
			// MPI is done with the buffer: unpin it here, not in Wait,
			// so that a request never waited for leaks no pin.
			op.pin.Unpin()
			op.done <- nil
			continue
		}
		keep = append(keep, op)
		if c.timeout > 0 && now.Sub(op.start) > c.timeout {
			s.timedOut(op, now)
		}
	}
	s.active = keep
	if progressed {
		if err := s.launch(); err != nil {
			return false, err
		}
	}

	sends := s.sends[:0]
	for _, ps := range s.sends {
		ok, err := mpiTest(&ps.req)
		if err != nil {
			return false, err
		}
		if ok {
			cFree(ps.buf)
			progressed = true
			continue
		}
		sends = append(sends, ps)
	}
	s.sends = sends

	if s.hbReq != nil {
		for r := 1; r < c.size; r++ {
			for s.hbReq[r] != 0 {
				ok, err := mpiTest(&s.hbReq[r])
				if err != nil {
					return false, err
				}
				if !ok {
					break
				}
				s.hbReq[r] = 0
				b := unsafe.Slice((*byte)(unsafe.Add(s.hbBuf, r*heartbeatBytes)), heartbeatBytes)
				seq := int64(binary.LittleEndian.Uint64(b))
				s.record(r, seq, int64(binary.LittleEndian.Uint64(b[8:])))
				if seq != closingSeq {
					if err := s.postRecv(r); err != nil {
						return false, err
					}
				}
			}
		}
		s.checkLaggards(now)
		if t := c.timeout; t > 0 && now.Sub(s.pinged) > t/4 && !s.closing[0] {
			s.pinged = now
			for r := 1; r < c.size; r++ {
				if !s.closing[r] {
					if err := s.send(r, pingTag, 0, 0); err != nil {
						return false, err
					}
				}
			}
		}
	}
	for s.pingReq != 0 {
		ok, err := mpiTest(&s.pingReq)
		if err != nil || !ok {
			return progressed, err
		}
		s.lastPing = now
		if !s.closed {
			if err := s.send(0, heartbeatTag, pongSeq, 0); err != nil {
				return false, err
			}
		}
		if s.pingReq, err = mpiIrecv(uintptr(s.pingBuf), heartbeatBytes, 0, pingTag); err != nil {
			return false, err
		}
	}
	return progressed, nil
}

// checkLaggards (rank 0) aborts the job when some rank has stayed behind
// the leading rank for longer than the timeout.
func (s *progressState) checkLaggards(now time.Time) {
	t := s.c.timeout
	if t <= 0 {
		return
	}
	lead, leadStep := int64(-1), int64(0)
	for r, q := range s.seen {
		if q > lead {
			lead, leadStep = q, s.steps[r]
		}
	}
	var hung []int
	for r, q := range s.seen {
		if q >= lead || s.closing[r] {
			s.behind[r] = time.Time{}
			continue
		}
		if s.behind[r].IsZero() {
			s.behind[r] = now
		} else if now.Sub(s.behind[r]) > t && now.Sub(s.alive[r]) > t {
			hung = append(hung, r)
		}
	}
	if len(hung) > 0 {
		s.fatal(4, s.missingMsg(hung, lead, leadStep))
	}
}

// missingMsg says which ranks did not reach collective seq of step.
func (s *progressState) missingMsg(hung []int, seq, step int64) string {
	sort.Ints(hung)
	behindStep := true
	for _, r := range hung {
		if s.steps[r] >= step {
			behindStep = false
		}
	}
	if behindStep && step > 0 {
		return fmt.Sprintf("%s did not reach step %d within %v (the other ranks are waiting in collective #%d)", ranksPhrase(hung), step, s.c.timeout, seq)
	}
	return fmt.Sprintf("%s did not reach collective #%d (step %d) within %v", ranksPhrase(hung), seq, step, s.c.timeout)
}

// timedOut handles an op still incomplete after the timeout.
func (s *progressState) timedOut(op *mpiOp, now time.Time) {
	c := s.c
	if c.rank == 0 {
		var hung []int
		busy := false
		for r, q := range s.seen {
			if q < op.seq {
				if now.Sub(s.alive[r]) <= c.timeout {
					busy = true // behind, but working (KeepAlive)
				} else {
					hung = append(hung, r)
				}
			}
		}
		if len(hung) > 0 {
			s.fatal(4, s.missingMsg(hung, op.seq, op.step))
		}
		// Every rank has reached op: give the collective the full
		// timeout from the moment the last one arrived.
		if !busy && now.Sub(s.allAt) > c.timeout {
			var silent []int // pings go out every timeout/4
			for r := 1; r < c.size; r++ {
				if !s.closing[r] && now.Sub(s.heard[r]) > c.timeout/2 {
					silent = append(silent, r)
				}
			}
			if len(silent) > 0 {
				s.fatal(4, fmt.Sprintf("%s has not answered for %v inside %v #%d (step %d), which every rank reached (stopped, frozen or stuck in MPI)",
					ranksPhrase(silent), now.Sub(s.heard[silent[0]]).Round(time.Millisecond), op.kind, op.seq, op.step))
			}
			s.fatal(4, fmt.Sprintf("%v #%d (step %d) did not complete within %v although every rank reached it", op.kind, op.seq, op.step, c.timeout))
		}
		return
	}
	// Rank 0 names the missing rank; abort here only if rank 0 itself
	// has been silent for the timeout plus a grace period.
	grace := min(c.timeout/2+time.Second, 30*time.Second)
	if now.Sub(op.start) > c.timeout+grace && now.Sub(s.lastPing) > c.timeout+grace {
		s.fatal(4, fmt.Sprintf("rank %d: %v #%d (step %d) did not complete within %v, and rank 0 has not been heard from since (rank 0 may be the one hung)", c.rank, op.kind, op.seq, op.step, c.timeout+grace))
	}
}

// close runs on the progress goroutine: it tells rank 0 this rank is
// closing, waits (rank 0) for every rank's notice and for the heartbeat
// sends to complete, then finalizes.
func (s *progressState) close() error {
	c := s.c
	s.closed = true
	deadline := time.Now().Add(c.timeout)
	if c.timeout <= 0 {
		deadline = time.Now().Add(100 * 365 * 24 * time.Hour)
	}
	for len(s.active) > 0 && time.Now().Before(deadline) {
		if _, err := s.poll(); err != nil {
			return err
		}
		time.Sleep(100 * time.Microsecond)
	}
	if c.size > 1 {
		if err := s.heartbeat(closingSeq, 0); err != nil {
			return err
		}
		if c.rank == 0 {
			s.closing[0] = true
		}
		for {
			n := 0
			for _, cl := range s.closing {
				if !cl {
					n++
				}
			}
			if n == 0 && len(s.sends) == 0 {
				break
			}
			if time.Now().After(deadline) {
				var miss []int
				for r, cl := range s.closing {
					if !cl {
						miss = append(miss, r)
					}
				}
				if len(miss) > 0 {
					s.fatal(4, fmt.Sprintf("%s did not reach Close within %v", ranksPhrase(miss), c.timeout))
				}
				s.fatal(4, fmt.Sprintf("rank %d: heartbeat to rank 0 did not complete within %v", c.rank, c.timeout))
			}
			if _, err := s.poll(); err != nil {
				return err
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	if s.pingReq != 0 {
		if err := mpiCancel(s.pingReq); err != nil {
			return err
		}
		for {
			ok, err := mpiTest(&s.pingReq)
			if err != nil {
				return err
			}
			if ok {
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
		s.pingReq = 0
	}
	if s.hbBuf != nil {
		cFree(s.hbBuf)
	}
	if s.pingBuf != nil {
		cFree(s.pingBuf)
	}
	return mpiFinalize()
}
