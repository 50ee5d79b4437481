package cuda

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"
)

// Options configure Open.
type Options struct {
	// Device is the ordinal of the GPU to use (0: the first).
	Device int
	// Sessions is the number of inferences that may run at once, each on
	// its own stream with its own arena, pinned buffers and graph (0: 1).
	// The weights are shared.
	Sessions int
	// NoGraph launches the kernels one by one on every run instead of
	// replaying the captured CUDA graph (for comparison and debugging).
	NoGraph bool
}

// DeviceInfo describes the GPU a Model runs on.
type DeviceInfo struct {
	Ordinal  int
	Name     string
	SM       int // compute capability as an integer: 90 for 9.0
	SMs      int // multiprocessors
	ClockKHz int // peak SM clock (0 if the driver does not report it)
	Driver   int // cuDriverGetVersion: 13000 for CUDA 13.0
}

// Model is a Program loaded on a GPU: its module, the weights uploaded once
// and Sessions sessions, each an arena, pinned input and output buffers, a
// stream and the whole inference — input upload, every launch, output
// download — captured once into a CUDA graph, so that an inference is one
// cuGraphLaunch (Nvidia, "CUDA Graphs", CUDA C++ Programming Guide §3.2.8.7)
// and batch-1 latency is not bound by launch overhead. Run is safe for
// concurrent use; concurrent calls use different sessions.
type Model struct {
	drv      Driver
	prog     *Program
	dev      Device
	ctx      Context
	retained bool
	info     DeviceInfo
	mod      Module
	funcs    []Function // per launch
	weights  DevicePtr
	sessions []*session
	pool     chan *session
	noGraph  bool
}

type session struct {
	arena   DevicePtr
	in, out HostBuffer
	stream  Stream
	graph   Graph      // input upload, launches, output download
	exec    GraphExec  //
	kgraph  Graph      // the launches alone (Time)
	kexec   GraphExec  //
	args    [][]uint64 // per launch
}

// bind locks the calling goroutine to its OS thread and makes the model's
// context current there: the CUDA context is per thread, and Go may move a
// goroutine between threads between calls. The returned function unlocks.
func (m *Model) bind() (func(), error) {
	runtime.LockOSThread()
	if err := m.drv.CtxSetCurrent(m.ctx); err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	return runtime.UnlockOSThread, nil
}

// Open loads prog on the GPU: cuInit, the device (Options.Device), its
// primary context, the PTX module (JIT-compiled by the driver; a failure
// carries the JIT log), every kernel, one weights allocation filled from
// weights (prog.WeightsBytes bytes, in the kernels' layout) and the
// sessions. A machine without the driver or without a device gets
// ErrNoDriver or ErrNoDevice (wrapped); a device older than the program's
// SM is refused by name.
func Open(drv Driver, prog *Program, weights []byte, opts Options) (*Model, error) {
	if err := prog.Validate(); err != nil {
		return nil, err
	}
	if int64(len(weights)) != prog.WeightsBytes {
		return nil, fmt.Errorf("GPU program: %d bytes of weights given, the program needs %d", len(weights), prog.WeightsBytes)
	}
	if opts.Sessions <= 0 {
		opts.Sessions = 1
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := drv.Init(); err != nil {
		if errors.Is(err, ErrNoDevice) {
			return nil, fmt.Errorf("%w: %v", ErrNoDevice, err)
		}
		return nil, err
	}
	n, err := drv.DeviceCount()
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: the NVIDIA driver reports no GPU", ErrNoDevice)
	}
	if opts.Device < 0 || opts.Device >= n {
		return nil, fmt.Errorf("%w: device %d requested, the driver reports %d (0 to %d)", ErrNoDevice, opts.Device, n, n-1)
	}
	m := &Model{drv: drv, prog: prog, noGraph: opts.NoGraph}
	if m.dev, err = drv.DeviceGet(opts.Device); err != nil {
		return nil, err
	}
	if m.info, err = deviceInfo(drv, m.dev, opts.Device); err != nil {
		return nil, err
	}
	if m.info.SM < prog.SM {
		return nil, fmt.Errorf("GPU program for %s (sm_%d) cannot run on device %d, %s (sm_%d): rebuild with --target cuda-sm%d",
			prog.Target, prog.SM, opts.Device, m.info.Name, m.info.SM, smTarget(m.info.SM))
	}
	if m.ctx, err = drv.PrimaryCtxRetain(m.dev); err != nil {
		return nil, err
	}
	m.retained = true
	ok := false
	defer func() {
		if !ok {
			m.release()
		}
	}()
	if err := drv.CtxSetCurrent(m.ctx); err != nil {
		return nil, err
	}
	if m.mod, err = drv.ModuleLoadData([]byte(prog.PTX)); err != nil {
		return nil, fmt.Errorf("load the PTX module of %s (%s, %d kernels): %w", prog.Target, prog.Precision, len(prog.Launches), err)
	}
	byName := map[string]Function{}
	for _, l := range prog.Launches {
		f, ok := byName[l.Kernel]
		if !ok {
			if f, err = drv.ModuleGetFunction(m.mod, l.Kernel); err != nil {
				return nil, err
			}
			byName[l.Kernel] = f
		}
		if l.SharedBytes > 48<<10 {
			if err := drv.FuncSetAttribute(f, FuncAttrMaxDynamicSharedBytes, l.SharedBytes); err != nil {
				return nil, fmt.Errorf("kernel %s (%s): %d bytes of shared memory: %w", l.Kernel, l.Label, l.SharedBytes, err)
			}
		}
		m.funcs = append(m.funcs, f)
	}
	if m.weights, err = drv.MemAlloc(max(prog.WeightsBytes, 256)); err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	if err := drv.MemcpyHtoD(m.weights, weights); err != nil {
		return nil, fmt.Errorf("upload weights: %w", err)
	}
	m.pool = make(chan *session, opts.Sessions)
	for i := 0; i < opts.Sessions; i++ {
		s, err := m.newSession()
		if s != nil {
			m.sessions = append(m.sessions, s) // freed by release on failure
		}
		if err != nil {
			return nil, fmt.Errorf("session %d: %w", i, err)
		}
		m.pool <- s
	}
	// The weights upload and the arenas' memsets ran on the legacy stream,
	// with which the sessions' non-blocking streams do not synchronize.
	if err := drv.CtxSynchronize(); err != nil {
		return nil, err
	}
	ok = true
	return m, nil
}

func smTarget(sm int) int {
	if sm >= 90 {
		return 90
	}
	return 80
}

func deviceInfo(drv Driver, dev Device, ordinal int) (DeviceInfo, error) {
	info := DeviceInfo{Ordinal: ordinal}
	var err error
	if info.Name, err = drv.DeviceName(dev); err != nil {
		return info, err
	}
	major, err := drv.DeviceAttribute(dev, AttrComputeCapabilityMajor)
	if err != nil {
		return info, err
	}
	minor, err := drv.DeviceAttribute(dev, AttrComputeCapabilityMinor)
	if err != nil {
		return info, err
	}
	info.SM = 10*major + minor
	if info.SMs, err = drv.DeviceAttribute(dev, AttrMultiprocessorCount); err != nil {
		return info, err
	}
	// The clock is informational (peak FLOP/s); a driver that dropped the
	// attribute leaves it 0.
	info.ClockKHz, _ = drv.DeviceAttribute(dev, AttrClockRateKHz)
	info.Driver, _ = drv.Version()
	return info, nil
}

// newSession allocates a session's arena (zeroed once, so padding the
// kernels never write reads as 0), pinned buffers and stream, forms each
// launch's parameters and captures one inference into a graph.
func (m *Model) newSession() (*session, error) {
	drv, p := m.drv, m.prog
	s := &session{}
	var err error
	if s.arena, err = drv.MemAlloc(p.ArenaBytes); err != nil {
		return s, fmt.Errorf("arena: %w", err)
	}
	if err := drv.MemsetD8(s.arena, 0, p.ArenaBytes); err != nil {
		return s, err
	}
	if s.in, err = drv.MemAllocHost(p.Input.Bytes()); err != nil {
		return s, fmt.Errorf("pinned input buffer: %w", err)
	}
	if s.out, err = drv.MemAllocHost(p.Output.Bytes()); err != nil {
		return s, fmt.Errorf("pinned output buffer: %w", err)
	}
	if s.stream, err = drv.StreamCreate(); err != nil {
		return s, err
	}
	for _, l := range p.Launches {
		args := make([]uint64, len(l.Args))
		for j, a := range l.Args {
			switch a.Kind {
			case ArgArena:
				args[j] = uint64(s.arena) + uint64(a.Offset)
			case ArgWeights:
				args[j] = uint64(m.weights) + uint64(a.Offset)
			case ArgI32:
				args[j] = uint64(uint32(int32(a.Value)))
			}
		}
		s.args = append(s.args, args)
	}
	if m.noGraph {
		return s, nil
	}
	if s.graph, s.exec, err = m.capture(s, true); err != nil {
		return s, err
	}
	if s.kgraph, s.kexec, err = m.capture(s, false); err != nil {
		return s, err
	}
	return s, nil
}

// capture records one inference on s's stream into a graph and
// instantiates it: with copies, the input upload, the launches and the
// output download; without, the launches alone.
func (m *Model) capture(s *session, copies bool) (Graph, GraphExec, error) {
	drv := m.drv
	if err := drv.StreamBeginCapture(s.stream); err != nil {
		return 0, 0, err
	}
	err := m.enqueue(s, nil, copies)
	g, eerr := drv.StreamEndCapture(s.stream)
	if err == nil {
		err = eerr
	}
	if err != nil {
		if g != 0 {
			drv.GraphDestroy(g)
		}
		return 0, 0, fmt.Errorf("capture the inference into a CUDA graph: %w", err)
	}
	e, err := drv.GraphInstantiate(g)
	if err != nil {
		drv.GraphDestroy(g)
		return 0, 0, err
	}
	return g, e, nil
}

// enqueue puts one inference on s's stream: the input upload (with
// copies), every launch in order and the output download (with copies).
// With events (len(launches)+1), event i is recorded before launch i and
// the last after the last launch.
func (m *Model) enqueue(s *session, events []Event, copies bool) error {
	drv, p := m.drv, m.prog
	if copies {
		if err := drv.MemcpyHtoDAsync(s.arena+DevicePtr(p.Input.Offset), s.in.Ptr, p.Input.Bytes(), s.stream); err != nil {
			return err
		}
	}
	for i, l := range p.Launches {
		if events != nil {
			if err := drv.EventRecord(events[i], s.stream); err != nil {
				return err
			}
		}
		grid := Dim3{uint32(l.Grid[0]), uint32(l.Grid[1]), uint32(l.Grid[2])}
		block := Dim3{uint32(l.Block[0]), uint32(l.Block[1]), uint32(l.Block[2])}
		if err := drv.LaunchKernel(m.funcs[i], grid, block, uint32(l.SharedBytes), s.stream, s.args[i]); err != nil {
			return fmt.Errorf("launch %d, kernel %s (%s): %w", i, l.Kernel, l.Label, err)
		}
	}
	if events != nil {
		if err := drv.EventRecord(events[len(p.Launches)], s.stream); err != nil {
			return err
		}
	}
	if !copies {
		return nil
	}
	return drv.MemcpyDtoHAsync(s.out.Ptr, s.arena+DevicePtr(p.Output.Offset), p.Output.Bytes(), s.stream)
}

// Program returns the program the model runs.
func (m *Model) Program() *Program { return m.prog }

// Device describes the GPU.
func (m *Model) Device() DeviceInfo { return m.info }

// Run runs one inference: in (Numel(Input.Shape) floats) is copied into the
// session's pinned buffer, the captured graph is launched and waited for,
// and the output is copied into out (Numel(Output.Shape) floats).
func (m *Model) Run(in, out []float32) error {
	p := m.prog
	if len(in) != Numel(p.Input.Shape) || len(out) != Numel(p.Output.Shape) {
		return fmt.Errorf("run %s: input has %d floats, output %d; want %d (%v) and %d (%v)",
			p.Target, len(in), len(out), Numel(p.Input.Shape), p.Input.Shape, Numel(p.Output.Shape), p.Output.Shape)
	}
	if m.pool == nil {
		return errors.New("run: model is closed")
	}
	s := <-m.pool
	defer func() { m.pool <- s }()
	unbind, err := m.bind()
	if err != nil {
		return err
	}
	defer unbind()
	copy(s.in.Bytes, f32bytes(in))
	if m.noGraph {
		err = m.enqueue(s, nil, true)
	} else {
		err = m.drv.GraphLaunch(s.exec, s.stream)
	}
	if err != nil {
		return err
	}
	if err := m.drv.StreamSynchronize(s.stream); err != nil {
		return fmt.Errorf("inference of %s: %w", p.Target, err)
	}
	copy(f32bytes(out), s.out.Bytes)
	return nil
}

// KernelTime is one launch's time in a profiled run.
type KernelTime struct {
	Index  int
	Kernel string
	Label  string
	Op     string
	MS     float64
	FLOPs  int64
}

// Profile runs one inference on in launch by launch (no graph), with a CUDA
// event recorded before each launch and after the last, and returns each
// launch's time (cuEventElapsedTime between consecutive events; the
// events' resolution is about 0.5 µs). out receives the output.
func (m *Model) Profile(in, out []float32) ([]KernelTime, error) {
	p := m.prog
	if len(in) != Numel(p.Input.Shape) || len(out) != Numel(p.Output.Shape) {
		return nil, fmt.Errorf("profile: input has %d floats, output %d; want %d and %d", len(in), len(out), Numel(p.Input.Shape), Numel(p.Output.Shape))
	}
	s := <-m.pool
	defer func() { m.pool <- s }()
	unbind, err := m.bind()
	if err != nil {
		return nil, err
	}
	defer unbind()
	events := make([]Event, 0, len(p.Launches)+1)
	defer func() {
		for _, e := range events {
			m.drv.EventDestroy(e)
		}
	}()
	for range len(p.Launches) + 1 {
		e, err := m.drv.EventCreate()
		if err != nil {
			return nil, err
		}
		events = append(events, e)
	}
	copy(s.in.Bytes, f32bytes(in))
	if err := m.enqueue(s, events, true); err != nil {
		return nil, err
	}
	if err := m.drv.StreamSynchronize(s.stream); err != nil {
		return nil, err
	}
	copy(f32bytes(out), s.out.Bytes)
	times := make([]KernelTime, len(p.Launches))
	for i, l := range p.Launches {
		ms, err := m.drv.EventElapsedTime(events[i], events[i+1])
		if err != nil {
			return nil, err
		}
		times[i] = KernelTime{Index: i, Kernel: l.Kernel, Label: l.Label, Op: l.Op, MS: float64(ms), FLOPs: l.FLOPs}
	}
	return times, nil
}

// Time runs the launches iters times, after warmup untimed runs, on the
// input last given to Run (the arena keeps it), and returns each run's GPU
// time in milliseconds from CUDA events recorded on the stream around it:
// the kernels-only graph's replay (or, with NoGraph, the launches one by
// one), without the host copies, as CUDA-event timings of a replayed graph
// are usually reported.
func (m *Model) Time(warmup, iters int) ([]float64, error) {
	s := <-m.pool
	defer func() { m.pool <- s }()
	unbind, err := m.bind()
	if err != nil {
		return nil, err
	}
	defer unbind()
	drv := m.drv
	var ev [2]Event
	for i := range ev {
		if ev[i], err = drv.EventCreate(); err != nil {
			return nil, err
		}
		defer drv.EventDestroy(ev[i])
	}
	once := func() error {
		if m.noGraph {
			return m.enqueue(s, nil, false)
		}
		return drv.GraphLaunch(s.kexec, s.stream)
	}
	for range warmup {
		if err := once(); err != nil {
			return nil, err
		}
	}
	if err := drv.StreamSynchronize(s.stream); err != nil {
		return nil, err
	}
	ms := make([]float64, iters)
	for i := range ms {
		if err := drv.EventRecord(ev[0], s.stream); err != nil {
			return nil, err
		}
		if err := once(); err != nil {
			return nil, err
		}
		if err := drv.EventRecord(ev[1], s.stream); err != nil {
			return nil, err
		}
		if err := drv.EventSynchronize(ev[1]); err != nil {
			return nil, err
		}
		t, err := drv.EventElapsedTime(ev[0], ev[1])
		if err != nil {
			return nil, err
		}
		ms[i] = float64(t)
	}
	return ms, nil
}

// Close frees everything Open allocated and releases the primary context.
// Wait for running inferences first.
func (m *Model) Close() error {
	if m.pool == nil {
		return nil
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for range m.sessions {
		<-m.pool
	}
	m.pool = nil
	return m.release()
}

// release frees whatever has been allocated, first error wins.
func (m *Model) release() error {
	drv := m.drv
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	if m.retained {
		keep(drv.CtxSetCurrent(m.ctx))
	}
	for _, s := range m.sessions {
		for _, e := range []GraphExec{s.exec, s.kexec} {
			if e != 0 {
				keep(drv.GraphExecDestroy(e))
			}
		}
		for _, g := range []Graph{s.graph, s.kgraph} {
			if g != 0 {
				keep(drv.GraphDestroy(g))
			}
		}
		if s.stream != 0 {
			keep(drv.StreamDestroy(s.stream))
		}
		if s.in.Ptr != 0 {
			keep(drv.MemFreeHost(s.in))
		}
		if s.out.Ptr != 0 {
			keep(drv.MemFreeHost(s.out))
		}
		if s.arena != 0 {
			keep(drv.MemFree(s.arena))
		}
	}
	m.sessions = nil
	if m.weights != 0 {
		keep(drv.MemFree(m.weights))
		m.weights = 0
	}
	if m.mod != 0 {
		keep(drv.ModuleUnload(m.mod))
		m.mod = 0
	}
	if m.retained {
		keep(drv.PrimaryCtxRelease(m.dev))
		m.retained = false
	}
	return first
}

// f32bytes views f as bytes.
func f32bytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))
}
