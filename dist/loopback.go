package dist

import (
	"fmt"
	"sync"
	"time"
)

// Loopback returns n in-process ranks (goroutines) for tests: same semantics, deterministic sums (rank order).
//
// Each rank numbers its collectives 0, 1, 2, …; the k-th collective of every
// rank meets in round k of a shared hub. The last rank to arrive computes
// the result, on a goroutine of its own so that IallreduceSum returns at
// once: for sums, out[i] = ((b0[i]+b1[i])+b2[i])+… in rank order (the same
// bits on every rank and in every run), then copies it into every rank's
// buffer and releases the waiters. Ranks whose k-th collectives disagree in
// kind, length or root all get an error naming the ranks.
func Loopback(n int) []Comm { return LoopbackOptions(n, Options{Timeout: -1}) }

// LoopbackOptions is Loopback with a timeout: a wait longer than
// o.Timeout fails with an error naming the ranks that did not arrive
// (instead of hanging the test). o.Library is ignored.
func LoopbackOptions(n int, o Options) []Comm {
	if n < 1 {
		n = 1
	}
	h := &hub{n: n, timeout: o.timeout(), rounds: map[int64]*round{}}
	cs := make([]Comm, n)
	for r := range cs {
		cs[r] = &loopRank{hub: h, rank: r}
	}
	return cs
}

type hub struct {
	n       int
	timeout time.Duration
	mu      sync.Mutex
	rounds  map[int64]*round
}

type opKind int

const (
	opSum32 opKind = iota
	opSum64
	opBcast
	opBarrier
)

func (k opKind) String() string {
	return [...]string{"AllreduceSum", "AllreduceSum64", "Bcast", "Barrier"}[k]
}

// arrival is one rank's part in a round.
type arrival struct {
	kind opKind
	f32  []float32
	f64  []float64
	b    []byte
	root int
}

func (a *arrival) len() int {
	switch a.kind {
	case opSum32:
		return len(a.f32)
	case opSum64:
		return len(a.f64)
	case opBcast:
		return len(a.b)
	}
	return 0
}

type round struct {
	seq     int64
	parts   []*arrival // by rank; nil until arrived
	arrived int
	left    int // ranks that have not yet returned from Wait
	done    chan struct{}
	err     error
}

type loopRank struct {
	hub   *hub
	rank  int
	seq   int64
	mu    sync.Mutex
	stats Stats
}

func (c *loopRank) Rank() int { return c.rank }
func (c *loopRank) Size() int { return c.hub.n }

// Stats returns this rank's communication totals.
func (c *loopRank) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

func (c *loopRank) AllreduceSum(buf []float32) error {
	return c.start(&arrival{kind: opSum32, f32: buf}, 4*len(buf)).Wait()
}

func (c *loopRank) IallreduceSum(buf []float32) (Request, error) {
	return c.start(&arrival{kind: opSum32, f32: buf}, 4*len(buf)), nil
}

func (c *loopRank) AllreduceSum64(buf []float64) error {
	return c.start(&arrival{kind: opSum64, f64: buf}, 8*len(buf)).Wait()
}

func (c *loopRank) Bcast(buf []byte, root int) error {
	if root < 0 || root >= c.hub.n {
		return fmt.Errorf("dist: bcast root %d out of range for %d ranks", root, c.hub.n)
	}
	return c.start(&arrival{kind: opBcast, b: buf, root: root}, len(buf)).Wait()
}

func (c *loopRank) Barrier() error { return c.start(&arrival{kind: opBarrier}, 0).Wait() }

func (c *loopRank) Close() error { return nil }
func (c *loopRank) Abort(code int, msg string) {
	abortProcess(code, fmt.Sprintf("rank %d: %s", c.rank, msg))
}

type loopRequest struct {
	c     *loopRank
	r     *round
	start time.Time
}

// start deposits a in the rank's next round.
func (c *loopRank) start(a *arrival, bytes int) *loopRequest {
	h := c.hub
	seq := c.seq
	c.seq++
	c.mu.Lock()
	c.stats.Calls++
	c.stats.Bytes += int64(bytes)
	c.mu.Unlock()
	h.mu.Lock()
	r := h.rounds[seq]
	if r == nil {
		r = &round{seq: seq, parts: make([]*arrival, h.n), left: h.n, done: make(chan struct{})}
		h.rounds[seq] = r
	}
	r.parts[c.rank] = a
	r.arrived++
	last := r.arrived == h.n
	h.mu.Unlock()
	if last {
		go r.finish()
	}
	return &loopRequest{c: c, r: r, start: time.Now()}
}

// finish checks that all parts agree and computes the result.
func (r *round) finish() {
	defer close(r.done)
	p0 := r.parts[0]
	for rk, p := range r.parts[1:] {
		if p.kind != p0.kind {
			r.err = fmt.Errorf("dist: collective #%d: rank 0 called %v but rank %d called %v", r.seq, p0.kind, rk+1, p.kind)
			return
		}
		if p.len() != p0.len() {
			r.err = fmt.Errorf("dist: %v #%d: rank 0 has %d elements but rank %d has %d", p0.kind, r.seq, p0.len(), rk+1, p.len())
			return
		}
		if p.root != p0.root {
			r.err = fmt.Errorf("dist: Bcast #%d: rank 0 names root %d but rank %d names root %d", r.seq, p0.root, rk+1, p.root)
			return
		}
	}
	switch p0.kind {
	case opSum32:
		sum := make([]float32, len(p0.f32))
		copy(sum, p0.f32)
		for _, p := range r.parts[1:] {
			for i, v := range p.f32 {
				sum[i] += v
			}
		}
		for _, p := range r.parts {
			copy(p.f32, sum)
		}
	case opSum64:
		sum := make([]float64, len(p0.f64))
		copy(sum, p0.f64)
		for _, p := range r.parts[1:] {
			for i, v := range p.f64 {
				sum[i] += v
			}
		}
		for _, p := range r.parts {
			copy(p.f64, sum)
		}
	case opBcast:
		src := r.parts[p0.root].b
		for rk, p := range r.parts {
			if rk != p0.root {
				copy(p.b, src)
			}
		}
	}
}

func (q *loopRequest) Wait() error {
	c, r, h := q.c, q.r, q.c.hub
	var err error
	if h.timeout < 0 {
		<-r.done
		err = r.err
	} else {
		t := time.NewTimer(h.timeout - time.Since(q.start))
		select {
		case <-r.done:
			err = r.err
		case <-t.C:
			h.mu.Lock()
			var missing []int
			for rk, p := range r.parts {
				if p == nil {
					missing = append(missing, rk)
				}
			}
			h.mu.Unlock()
			err = fmt.Errorf("dist: rank %d: %s did not reach collective #%d within %v", c.rank, ranksPhrase(missing), r.seq, h.timeout)
		}
		t.Stop()
	}
	c.mu.Lock()
	c.stats.Waiting += time.Since(q.start)
	c.mu.Unlock()
	if err == nil {
		h.mu.Lock()
		r.left--
		if r.left == 0 {
			delete(h.rounds, r.seq)
		}
		h.mu.Unlock()
	}
	return err
}

// ranksPhrase returns "rank 2" or "ranks 1, 3".
func ranksPhrase(rs []int) string {
	if len(rs) == 1 {
		return fmt.Sprintf("rank %d", rs[0])
	}
	s := "ranks "
	for i, r := range rs {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprint(r)
	}
	return s
}
