package rt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"math"
	goruntime "runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/kiln-dev/kiln/ir/tensor"
)

// Artifact is a compiled network: manifest, shared object and weights.
type Artifact struct {
	// Manifest describes the artifact.
	Manifest Manifest
	// SharedObject holds the shared object's bytes; it is loaded through
	// memfd_create. Exactly one of SharedObject and SharedObjectPath must be
	// set.
	SharedObject []byte
	// SharedObjectPath is the shared object's file, loaded with dlopen.
	SharedObjectPath string
	// Weights is the weights blob, exactly Manifest.WeightsBytes long. It
	// may be Go memory or an mmap of a file region; it must stay valid and
	// unmodified until the Model is closed.
	Weights []byte

	mapping []byte // mmap behind Weights, owned by the Artifact (FindPayload)
}

// Close releases memory the Artifact owns (the weights mapping made by
// FindPayload). Close every Model opened from the Artifact first.
func (a *Artifact) Close() error {
	m := a.mapping
	a.mapping, a.Weights = nil, nil
	return unmap(m)
}

// Options tune Open. The zero value picks everything automatically.
type Options struct {
	// ISA forces an instruction set: "avx512", "avx2" or "neon"; "" reads
	// the KILN_ISA environment variable, and "" or "auto" there picks the
	// best one the CPU and the artifact share.
	ISA string
	// Threads is the number of threads per inference; <= 0 means
	// GOMAXPROCS.
	Threads int
	// MaxSessions bounds the number of concurrent inferences (each has its
	// own arena and Threads-1 worker threads besides the calling
	// goroutine); <= 0 means GOMAXPROCS/Threads, at least 1. Run waits for
	// a session when all are busy.
	MaxSessions int
	// SpinWait is how long idle worker threads spin waiting for the next
	// inference, and a caller spins waiting for its workers, before
	// parking: back-to-back inferences then skip the wake-up of parked
	// threads (microseconds on bare metal, far more in some VMs) at the
	// price of that much CPU per thread after each inference. 0 means
	// DefaultSpinWait; negative means park at once.
	SpinWait time.Duration
	// CopyWeights copies the weights into private memory backed by
	// transparent huge pages, so the caller may release Artifact.Weights
	// (for example a mapping of the executable) right after Open. Kernels
	// stream hundreds of megabytes of weights; with 4 KiB pages of a file
	// mapping every few kilobytes cost a TLB miss, which measurably slows
	// inference and widens its latency tail. The copy costs one memcpy at
	// load time and no extra resident memory once the mapping is released.
	CopyWeights bool
	// SkipWeightsCheck skips the SHA-256 check of the weights against
	// Manifest.Checksums (the shared object is always checked). The check
	// reads every weight byte once at load time: on Inception-v4's 163 MiB
	// it is folded into the copy CopyWeights makes (see BENCHMARKS.md for
	// the measured cost).
	SkipWeightsCheck bool

	cpu *cpuFeatures // test hook: pretend to run on this CPU
}

// ErrClosed is returned by Run and Profile after Close.
var ErrClosed = errors.New("kiln model is closed")

// maxThreads bounds Options.Threads.
const maxThreads = 4096

// Model is a loaded artifact ready to run. Its methods are safe for
// concurrent use.
type Model struct {
	man     Manifest
	isa     string
	threads int
	spin    time.Duration
	lib     *library
	runFn   uintptr // kiln_run_<isa>

	weights      []byte // what the kernels read: the caller's or ownWeights
	weightsPtr   uintptr
	ownWeights   []byte // aligned copy of misaligned weights, unmapped on Close
	pinner       goruntime.Pinner
	arenaBytes   int64
	inOff, inLen int
	outOff       int
	outLen       int
	taps         []span // Manifest.Taps in the arena, in floats

	// stateMu serializes runs of an artifact with state (Manifest.State):
	// each run reads the current state and leaves the next one.
	stateMu sync.Mutex
	state   [][]float32 // current value of each Manifest.State entry

	maxSessions int
	skipped     atomic.Int64 // worker inferences thread 0 finished without the worker
	mu          sync.Mutex   // guards the fields below
	cond        sync.Cond    // on mu: a session was released, or Close began
	idle        []*session   // idle sessions, most recently used last; capacity maxSessions
	nSessions   int          // sessions made, idle or not
	closed      bool
	closeDone   sync.WaitGroup // Close in progress
	closeErr    error          // set before closeDone is released
}

// Open loads an artifact: it validates the manifest and weights, selects an
// ISA for this CPU, verifies the shared object's SHA-256 against
// Manifest.Checksums (before loading it), loads the shared object (from SharedObjectPath with
// dlopen, or from SharedObject through memfd_create), checks its kernel ABI
// version and the arena and weights sizes it was compiled for (see bind),
// resolves kiln_run_<isa> for every ISA of the manifest, verifies the
// weights' SHA-256 (unless Options.SkipWeightsCheck; while copying them when
// Options.CopyWeights) and starts one session. At most one Options may be
// given. A manifest without Checksums is trusted: kiln run --backend cpu and
// kiln bench open what they compiled in the same process, from memory.
func Open(a Artifact, opts ...Options) (*Model, error) {
	if len(opts) > 1 {
		return nil, errors.New("open artifact: at most one Options")
	}
	var o Options
	if len(opts) == 1 {
		o = opts[0]
	}
	m := &Model{man: a.Manifest.clone()}
	man := &m.man
	if err := man.Validate(); err != nil {
		return nil, fmt.Errorf("open artifact: %w", err)
	}
	if int64(len(a.Weights)) != man.WeightsBytes {
		return nil, fmt.Errorf("open artifact %q: weights are %d bytes, the manifest says %d", man.Network, len(a.Weights), man.WeightsBytes)
	}
	if (a.SharedObject == nil) == (a.SharedObjectPath == "") {
		return nil, fmt.Errorf("open artifact %q: set exactly one of SharedObject and SharedObjectPath", man.Network)
	}
	c := hostCPU()
	if o.cpu != nil {
		c = *o.cpu
	}
	isa, err := selectISA(man, o.ISA, c)
	if err != nil {
		return nil, err
	}
	m.isa = isa

	m.threads = o.Threads
	if m.threads <= 0 {
		m.threads = goruntime.GOMAXPROCS(0)
	}
	if m.threads > maxThreads {
		return nil, fmt.Errorf("open artifact %q: %d threads: at most %d", man.Network, m.threads, maxThreads)
	}
	m.spin = o.SpinWait
	if m.spin == 0 {
		m.spin = DefaultSpinWait
	}
	m.maxSessions = o.MaxSessions
	if m.maxSessions <= 0 {
		m.maxSessions = max(1, goruntime.GOMAXPROCS(0)/m.threads)
	}

	if err := verifySharedObject(&a); err != nil {
		return nil, fmt.Errorf("open artifact %q: %w", man.Network, err)
	}
	if a.SharedObjectPath != "" {
		m.lib, err = dlopen(a.SharedObjectPath, "shared object "+a.SharedObjectPath)
	} else {
		m.lib, err = openLibraryBytes(a.SharedObject)
	}
	if err != nil {
		return nil, fmt.Errorf("open artifact %q: %w", man.Network, err)
	}
	ok := false
	defer func() {
		if !ok {
			m.releaseModel()
		}
	}()
	if err := m.bind(); err != nil {
		return nil, fmt.Errorf("open artifact %q: %w", man.Network, err)
	}
	if err := m.setWeights(a.Weights, o.CopyWeights, a.mapping != nil, weightsHasher(&a, o.SkipWeightsCheck)); err != nil {
		return nil, fmt.Errorf("open artifact %q: %w", man.Network, err)
	}

	m.arenaBytes = man.ArenaBytes
	m.inOff, m.inLen = int(man.Input.Offset), mustNumel(man.Input.Shape)
	m.outOff, m.outLen = int(man.Output.Offset), mustNumel(man.Output.Shape)
	for _, t := range append([]TensorInfo{man.Input, man.Output}, man.Taps...) {
		// The arena is float32: kernels of other dtypes come with the
		// bf16/int8 work.
		if t.DType != "" && t.DType != "f32" {
			return nil, fmt.Errorf("open artifact %q: tensor %q is %s; this runtime runs f32 networks only", man.Network, t.Name, t.DType)
		}
	}
	for _, t := range man.Taps {
		m.taps = append(m.taps, span{int(t.Offset), mustNumel(t.Shape)})
	}
	for _, st := range man.State {
		v := make([]float32, mustNumel(st.Shape))
		for i := range v {
			v[i] = math.Float32frombits(binary.LittleEndian.Uint32(m.weights[4*(int(st.Init)+i):]))
		}
		m.state = append(m.state, v)
	}
	m.cond.L = &m.mu
	m.idle = make([]*session, 0, m.maxSessions)
	// Start one session now, so that allocation failures show up here and
	// the first Run pays no thread start-up.
	s, err := m.newSession()
	if err != nil {
		return nil, fmt.Errorf("open artifact %q: %w", man.Network, err)
	}
	m.nSessions = 1
	m.idle = append(m.idle, s)
	ok = true
	return m, nil
}

func mustNumel(shape []int) int {
	n, err := tensor.NumelOf(shape)
	if err != nil {
		panic(err) // Validate checked the shape
	}
	return n
}

// bind checks the kernel ABI and the sizes the shared object was compiled
// for, then resolves the entry points. The ABI version must equal ABIVersion
// (not the manifest's version: the two evolve separately). The kernels
// address the arena and the weights with compile-time offsets, so an arena
// smaller than the one they were compiled for would be written past its
// end, and weights of another size are another network's: kiln_arena_bytes
// and kiln_weights_bytes must equal the manifest's arena_bytes and
// weights_bytes (Open has already checked that weights_bytes is the length
// of the weights given).
func (m *Model) bind() error {
	abi := m.lib.sym(symABIVersion)
	if abi == 0 {
		return fmt.Errorf("%s does not export %s: not a kiln artifact", m.lib.name, symABIVersion)
	}
	if v := callABIVersion(abi); v != ABIVersion {
		return fmt.Errorf("%s has kernel ABI version %d (%s); this runtime implements kernel ABI version %d: rebuild the artifact with a matching kiln",
			m.lib.name, v, symABIVersion, ABIVersion)
	}
	for _, c := range []struct {
		sym, field string
		want       int64
	}{
		{symArenaBytes, "arena_bytes", m.man.ArenaBytes},
		{symWeightsBytes, "weights_bytes", m.man.WeightsBytes},
	} {
		f := m.lib.sym(c.sym)
		if f == 0 {
			return fmt.Errorf("%s does not export %s (required by kernel ABI version %d)", m.lib.name, c.sym, ABIVersion)
		}
		if got := callSize(f); got != c.want {
			return fmt.Errorf("manifest %s is %d but %s was compiled for %d (%s): the manifest does not belong to this shared object",
				c.field, c.want, m.lib.name, got, c.sym)
		}
	}
	for _, isa := range m.man.ISAs {
		name := "kiln_run_" + isa
		f := m.lib.sym(name)
		if f == 0 {
			return fmt.Errorf("%s lacks symbol %s (the manifest lists ISA %s)", m.lib.name, name, isa)
		}
		if isa == m.isa {
			m.runFn = f
		}
	}
	return nil
}

// setWeights makes w available to the kernels: in place if it is 64-byte
// aligned (pinned, in case it is Go memory), else as an aligned copy. With
// h non-nil it checks the weights' digest: the copy is hashed chunk by
// chunk right after each chunk is copied (while it is still in cache), so
// what is verified is what the kernels will read and the check costs no
// second pass over memory; weights used in place are hashed in place.
func (m *Model) setWeights(w []byte, copyAlways, fileMapped bool, h hash.Hash) error {
	if len(w) == 0 {
		return checkWeightsDigest(&m.man, h)
	}
	if copyAlways || uintptr(unsafe.Pointer(&w[0]))%64 != 0 {
		cp, err := mapAnon(len(w))
		if err != nil {
			return fmt.Errorf("copy weights: %w", err)
		}
		// Copy in chunks; a file mapping's pages are dropped from this
		// process as soon as they are copied, so the peak resident size is
		// one copy of the weights, not two.
		const chunk = 1 << 20
		for off := 0; off < len(w); off += chunk {
			end := min(off+chunk, len(w))
			copy(cp[off:end], w[off:end])
			if h != nil {
				h.Write(cp[off:end])
			}
			if fileMapped {
				dropPages(w[off:end])
			}
		}
		m.ownWeights, w = cp, cp
		if err := checkWeightsDigest(&m.man, h); err != nil {
			return err
		}
	} else {
		if h != nil {
			h.Write(w)
			if err := checkWeightsDigest(&m.man, h); err != nil {
				return err
			}
		}
		// A no-op for non-Go memory such as an mmap.
		m.pinner.Pin(&w[0])
	}
	m.weights = w
	m.weightsPtr = uintptr(unsafe.Pointer(&w[0]))
	return nil
}

// releaseModel frees what Open acquired besides sessions.
func (m *Model) releaseModel() error {
	err := m.lib.close()
	m.lib = nil
	if uerr := unmap(m.ownWeights); err == nil {
		err = uerr
	}
	m.ownWeights = nil
	m.pinner.Unpin()
	m.weights, m.weightsPtr = nil, 0
	return err
}

// Manifest returns the artifact's manifest. The caller must not modify it.
func (m *Model) Manifest() *Manifest { return &m.man }

// ISA returns the instruction set the model runs with.
func (m *Model) ISA() string { return m.isa }

// Threads returns the number of threads per inference.
func (m *Model) Threads() int { return m.threads }

// MaxSessions returns the bound on concurrent inferences.
func (m *Model) MaxSessions() int { return m.maxSessions }

// SkippedWorkers is how many times, over the model's life, a worker thread
// had not started an inference by the time the calling thread had finished
// it alone (by work stealing), so the caller did not wait for it: a
// statistic of how often waking workers costs more than the work.
func (m *Model) SkippedWorkers() int64 { return m.skipped.Load() }

// Run runs one inference: it copies in (Manifest.Input, row-major) into an
// arena, runs every kernel on Threads threads and copies the result into out
// (Manifest.Output, row-major). It allocates nothing, and may be called
// from many goroutines at once: each call uses its own session, waiting for
// one when MaxSessions are busy.
func (m *Model) Run(in, out []float32) error {
	if err := m.checkLens("Run", in, out); err != nil {
		return err
	}
	s, err := m.acquire()
	if err != nil {
		return err
	}
	m.runState(s, in, out, false)
	m.release(s)
	return nil
}

// RunTaps is Run that also copies the value of every tap (Manifest.Taps)
// into taps, which must have one slice per tap of exactly its size.
func (m *Model) RunTaps(in, out []float32, taps [][]float32) error {
	if err := m.checkLens("RunTaps", in, out); err != nil {
		return err
	}
	if len(taps) != len(m.taps) {
		return fmt.Errorf("RunTaps %q: %d tap buffers for %d taps", m.man.Network, len(taps), len(m.taps))
	}
	for i, t := range m.taps {
		if len(taps[i]) != t.n {
			return fmt.Errorf("RunTaps %q: tap %q has room for %d values, it holds %s = %d",
				m.man.Network, m.man.Taps[i].Name, len(taps[i]), tensor.ShapeString(m.man.Taps[i].Shape), t.n)
		}
	}
	s, err := m.acquire()
	if err != nil {
		return err
	}
	m.runState(s, in, out, false)
	for i, t := range m.taps {
		copy(taps[i], s.arena[t.off:t.off+t.n])
	}
	m.release(s)
	return nil
}

// runState runs s with the model's state: under stateMu it writes every
// state tensor into the arena, runs, and takes the new values from their
// update offsets (Manifest.State). Without state it is s.run.
func (m *Model) runState(s *session, in, out []float32, profile bool) {
	if len(m.state) == 0 {
		s.run(in, out, profile)
		return
	}
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	for i, st := range m.man.State {
		copy(s.arena[st.Offset:], m.state[i])
	}
	s.run(in, out, profile)
	for i, st := range m.man.State {
		copy(m.state[i], s.arena[st.Update:st.Update+int64(len(m.state[i]))])
	}
}

// State returns a copy of the current value of the mutable parameter name
// (Manifest.State), or false when the artifact has no such state.
func (m *Model) State(name string) ([]float32, bool) {
	for i, st := range m.man.State {
		if st.Name == name {
			m.stateMu.Lock()
			defer m.stateMu.Unlock()
			return slices.Clone(m.state[i]), true
		}
	}
	return nil, false
}

// StateView is State without the copy: it returns the model's own buffer
// of the mutable parameter name. The next run and SetState(name) overwrite
// it in place, so the view always shows the current value between runs; a
// caller that needs an earlier value copies it, and never writes to the
// view (SetState does that) nor reads it while a run is in progress. A
// training loop uses it to avoid copying every parameter and optimizer
// state tensor out of the model after each step (trainer.Compiled).
func (m *Model) StateView(name string) ([]float32, bool) {
	for i, st := range m.man.State {
		if st.Name == name {
			return m.state[i], true
		}
	}
	return nil, false
}

// SetState replaces the value of the mutable parameter name (for example
// to restore a checkpoint); v must have exactly its size.
func (m *Model) SetState(name string, v []float32) error {
	for i, st := range m.man.State {
		if st.Name == name {
			if len(v) != len(m.state[i]) {
				return fmt.Errorf("SetState %q: %d values, the state %s holds %d", name, len(v), tensor.ShapeString(st.Shape), len(m.state[i]))
			}
			m.stateMu.Lock()
			defer m.stateMu.Unlock()
			copy(m.state[i], v)
			return nil
		}
	}
	return fmt.Errorf("SetState: artifact %q has no state %q", m.man.Network, name)
}

// span is a run of n floats at offset off of the arena.
type span struct{ off, n int }

// Profile is Run that also measures each kernel. It returns the time spent
// in each kernel of Manifest.Kernels, as measured by thread 0 (including its
// wait on the barrier after the kernel).
func (m *Model) Profile(in, out []float32) ([]time.Duration, error) {
	if err := m.checkLens("Profile", in, out); err != nil {
		return nil, err
	}
	s, err := m.acquire()
	if err != nil {
		return nil, err
	}
	m.runState(s, in, out, true)
	d := make([]time.Duration, len(s.timings))
	for i, ns := range s.timings {
		d[i] = time.Duration(ns)
	}
	m.release(s)
	return d, nil
}

func (m *Model) checkLens(op string, in, out []float32) error {
	if len(in) != m.inLen {
		return fmt.Errorf("%s %q: input has %d values, the model expects %s = %d",
			op, m.man.Network, len(in), tensor.ShapeString(m.man.Input.Shape), m.inLen)
	}
	if len(out) != m.outLen {
		return fmt.Errorf("%s %q: output has room for %d values, the model produces %s = %d",
			op, m.man.Network, len(out), tensor.ShapeString(m.man.Output.Shape), m.outLen)
	}
	return nil
}

// acquire takes the most recently used idle session (its workers are the
// likeliest to be still spinning and its arena still in cache), makes a new
// one if fewer than MaxSessions exist, or waits for one to be released.
func (m *Model) acquire() (*session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		if m.closed {
			return nil, ErrClosed
		}
		if n := len(m.idle); n > 0 {
			s := m.idle[n-1]
			m.idle = m.idle[:n-1]
			return s, nil
		}
		if m.nSessions < m.maxSessions {
			s, err := m.newSession()
			if err != nil {
				return nil, fmt.Errorf("run %q: %w", m.man.Network, err)
			}
			m.nSessions++
			return s, nil
		}
		m.cond.Wait()
	}
}

// release returns s to the idle stack.
func (m *Model) release(s *session) {
	m.mu.Lock()
	m.idle = append(m.idle, s) // within capacity: no allocation
	closed := m.closed
	m.mu.Unlock()
	if closed {
		m.cond.Broadcast() // Close waits for every session
	} else {
		m.cond.Signal()
	}
}

// Close waits for running inferences to finish, stops the worker threads,
// unmaps the arenas and unloads the shared object. Later calls to Run and
// Profile return ErrClosed; Close itself may be called more than once.
func (m *Model) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		m.closeDone.Wait()
		return m.closeErr
	}
	m.closed = true
	m.closeDone.Add(1)
	defer m.closeDone.Done()
	m.cond.Broadcast() // waiting acquirers return ErrClosed
	for len(m.idle) < m.nSessions {
		m.cond.Wait()
	}
	idle := m.idle
	m.idle = nil
	m.mu.Unlock()
	var err error
	for _, s := range idle {
		if serr := s.destroy(); err == nil {
			err = serr
		}
	}
	if rerr := m.releaseModel(); err == nil {
		err = rerr
	}
	m.closeErr = err
	return err
}
