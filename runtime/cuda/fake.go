package cuda

import (
	"fmt"
	"strings"
	"sync"
	"unsafe"
)

// Fake is an in-memory Driver for tests without a GPU. Device memory is Go
// memory at made-up device addresses; streams run their work immediately
// unless capturing, in which case the work is recorded into the graph that
// StreamEndCapture returns and runs on each GraphLaunch, in capture order.
// Kernels run through Exec (for instance the host emulation of the
// generated kernels); events read a virtual clock that each launch advances
// by KernelMS. Every call is appended to Calls ("cuLaunchKernel k0 [captured]"),
// so tests can check the order of what the runtime asks of the driver.
type Fake struct {
	// Devices is the number of GPUs (0: DeviceCount reports none).
	Devices int
	// SM is the compute capability as an integer (default 90).
	SM int
	// Name is the device name (default "Fake GPU").
	Name string
	// Exec runs one kernel launch; nil launches do nothing.
	Exec func(l FakeLaunch) error
	// KernelMS is the virtual time of one launch (default 0.01 ms).
	KernelMS float64
	// Fail makes the named call (e.g. "cuModuleLoadDataEx") fail with the
	// given result; JITLog is the error log a failing module load reports.
	Fail   map[string]Result
	JITLog string

	mu       sync.Mutex
	Calls    []string
	next     uint64
	mem      map[DevicePtr][]byte
	host     map[uintptr][]byte
	capture  map[Stream]*[]func() error
	graphs   map[Graph][]func() error
	execs    map[GraphExec]Graph
	events   map[Event]float64
	handles  uintptr
	clock    float64
	modules  map[Module]string
	funcs    map[Function]string
	inited   bool
	Launches int // kernels run (not captured)
}

// FakeLaunch is a kernel launch as Fake.Exec sees it.
type FakeLaunch struct {
	Kernel      string
	Grid, Block Dim3
	SharedBytes uint32
	// Args are the 8-byte parameter values (device addresses or integers).
	Args []uint64
	// Mem resolves device addresses.
	Mem *FakeMemory
}

// FakeMemory resolves Fake device addresses to their memory.
type FakeMemory struct{ f *Fake }

// Bytes returns the n bytes at device address p, or an error if they are
// not inside one allocation.
func (m *FakeMemory) Bytes(p uint64, n int64) ([]byte, error) { return m.f.resolve(DevicePtr(p), n) }

// Float32s returns the n floats at device address p.
func (m *FakeMemory) Float32s(p uint64, n int) ([]float32, error) {
	b, err := m.f.resolve(DevicePtr(p), 4*int64(n))
	if err != nil || n == 0 {
		return nil, err
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n), nil
}

// Allocation returns the device allocation containing address p: its base
// address and its memory.
func (m *FakeMemory) Allocation(p uint64) (base uint64, b []byte, ok bool) {
	f := m.f
	f.mu.Lock()
	defer f.mu.Unlock()
	for a, mem := range f.mem {
		if DevicePtr(p) >= a && p-uint64(a) < uint64(len(mem)) {
			return uint64(a), mem, true
		}
	}
	return 0, nil, false
}

// NewFake returns a Fake with one sm_90 device.
func NewFake() *Fake { return &Fake{Devices: 1} }

func (f *Fake) record(call string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.recordLocked(call, args...)
}

func (f *Fake) recordLocked(call string, args ...any) error {
	s := call
	if len(args) > 0 {
		s += " " + strings.TrimSpace(fmt.Sprintln(args...))
	}
	f.Calls = append(f.Calls, s)
	if r, ok := f.Fail[call]; ok {
		e := &Error{Call: call, Code: r, Name: fakeErrorName(r)}
		if call == "cuModuleLoadDataEx" && f.JITLog != "" {
			e.Detail = "PTX JIT log:\n" + f.JITLog
		}
		return e
	}
	return nil
}

func fakeErrorName(r Result) string {
	switch r {
	case ErrorNoDevice:
		return "CUDA_ERROR_NO_DEVICE"
	case ErrorInvalidPTX:
		return "CUDA_ERROR_INVALID_PTX"
	case ErrorUnsupportedPTX:
		return "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"
	}
	return fmt.Sprintf("CUDA_ERROR_%d", r)
}

// CallNames returns the calls made so far without their arguments.
func (f *Fake) CallNames() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, len(f.Calls))
	for i, c := range f.Calls {
		out[i], _, _ = strings.Cut(c, " ")
	}
	return out
}

// Live reports the device allocations, pinned buffers and graphs not yet
// freed (leak checks).
func (f *Fake) Live() (device, host, graphs int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.mem), len(f.host), len(f.graphs) + len(f.execs)
}

func (f *Fake) handle() uintptr {
	f.handles++
	return f.handles
}

func (f *Fake) resolve(p DevicePtr, n int64) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.resolveLocked(p, n)
}

func (f *Fake) resolveLocked(p DevicePtr, n int64) ([]byte, error) {
	// Allocations are few; find the one containing p.
	for base, b := range f.mem {
		if p >= base && uint64(p-base)+uint64(n) <= uint64(len(b)) {
			return b[p-base : int64(p-base)+n : int64(p-base)+n], nil
		}
	}
	return nil, fmt.Errorf("fake CUDA: device range [%#x, +%d) is not inside one allocation", uint64(p), n)
}

// run executes op now or, while s is capturing, appends it to the capture.
func (f *Fake) run(s Stream, op func() error) error {
	f.mu.Lock()
	if c, ok := f.capture[s]; ok {
		*c = append(*c, op)
		f.mu.Unlock()
		return nil
	}
	f.mu.Unlock()
	return op()
}

func (f *Fake) capturing(s Stream) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.capture[s]; ok {
		return "[captured]"
	}
	return ""
}

func (f *Fake) Init() error {
	if err := f.record("cuInit"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Devices == 0 {
		return &Error{Call: "cuInit", Code: ErrorNoDevice, Name: "CUDA_ERROR_NO_DEVICE", Desc: "no CUDA-capable device is detected"}
	}
	f.inited = true
	f.mem, f.host = map[DevicePtr][]byte{}, map[uintptr][]byte{}
	f.capture, f.graphs, f.execs = map[Stream]*[]func() error{}, map[Graph][]func() error{}, map[GraphExec]Graph{}
	f.events, f.modules, f.funcs = map[Event]float64{}, map[Module]string{}, map[Function]string{}
	f.next = 0x7f0000000000
	return nil
}

func (f *Fake) Version() (int, error) { return 13000, f.record("cuDriverGetVersion") }

func (f *Fake) DeviceCount() (int, error) { return f.Devices, f.record("cuDeviceGetCount") }

func (f *Fake) DeviceGet(ordinal int) (Device, error) {
	return Device(ordinal), f.record("cuDeviceGet", ordinal)
}

func (f *Fake) DeviceName(d Device) (string, error) {
	if f.Name == "" {
		return "Fake GPU", f.record("cuDeviceGetName")
	}
	return f.Name, f.record("cuDeviceGetName")
}

func (f *Fake) DeviceAttribute(d Device, a Attribute) (int, error) {
	if err := f.record("cuDeviceGetAttribute", int(a)); err != nil {
		return 0, err
	}
	sm := f.SM
	if sm == 0 {
		sm = 90
	}
	switch a {
	case AttrComputeCapabilityMajor:
		return sm / 10, nil
	case AttrComputeCapabilityMinor:
		return sm % 10, nil
	case AttrMultiprocessorCount:
		return 132, nil
	case AttrClockRateKHz:
		return 1980000, nil
	case AttrMaxThreadsPerBlock:
		return 1024, nil
	}
	return 0, nil
}

func (f *Fake) PrimaryCtxRetain(d Device) (Context, error) {
	return Context(0xc0), f.record("cuDevicePrimaryCtxRetain")
}

func (f *Fake) PrimaryCtxRelease(d Device) error { return f.record("cuDevicePrimaryCtxRelease") }

func (f *Fake) CtxSetCurrent(c Context) error { return f.record("cuCtxSetCurrent") }

func (f *Fake) CtxSynchronize() error { return f.record("cuCtxSynchronize") }

func (f *Fake) ModuleLoadData(ptx []byte) (Module, error) {
	if err := f.record("cuModuleLoadDataEx", len(ptx)); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	m := Module(f.handle())
	f.modules[m] = string(ptx)
	return m, nil
}

func (f *Fake) ModuleUnload(m Module) error {
	f.mu.Lock()
	delete(f.modules, m)
	f.mu.Unlock()
	return f.record("cuModuleUnload")
}

func (f *Fake) ModuleGetFunction(m Module, name string) (Function, error) {
	if err := f.record("cuModuleGetFunction", name); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !ptxEntries(f.modules[m])[name] {
		return 0, &Error{Call: "cuModuleGetFunction", Code: 500, Name: "CUDA_ERROR_NOT_FOUND", Detail: "kernel " + name}
	}
	fn := Function(f.handle())
	f.funcs[fn] = name
	return fn, nil
}

func (f *Fake) FuncSetAttribute(fn Function, attr, value int) error {
	return f.record("cuFuncSetAttribute", attr, value)
}

func (f *Fake) MemAlloc(bytes int64) (DevicePtr, error) {
	if err := f.record("cuMemAlloc", bytes); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p := DevicePtr(f.next)
	f.mem[p] = make([]byte, bytes)
	f.next += uint64(bytes+511) / 512 * 512
	f.next += 512 // a gap, so an overrun is not inside the next allocation
	return p, nil
}

func (f *Fake) MemFree(p DevicePtr) error {
	f.mu.Lock()
	_, ok := f.mem[p]
	delete(f.mem, p)
	f.mu.Unlock()
	if err := f.record("cuMemFree"); err != nil {
		return err
	}
	if !ok {
		return &Error{Call: "cuMemFree", Code: 1, Name: "CUDA_ERROR_INVALID_VALUE"}
	}
	return nil
}

func (f *Fake) MemAllocHost(bytes int64) (HostBuffer, error) {
	if err := f.record("cuMemAllocHost", bytes); err != nil {
		return HostBuffer{}, err
	}
	b := make([]byte, max(bytes, 1))
	p := uintptr(unsafe.Pointer(&b[0]))
	f.mu.Lock()
	f.host[p] = b
	f.mu.Unlock()
	return HostBuffer{Ptr: p, Bytes: b[:bytes]}, nil
}

func (f *Fake) MemFreeHost(b HostBuffer) error {
	f.mu.Lock()
	delete(f.host, b.Ptr)
	f.mu.Unlock()
	return f.record("cuMemFreeHost")
}

func (f *Fake) hostBytes(p uintptr, n int64) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for base, b := range f.host {
		if p >= base && int64(p-base)+n <= int64(len(b)) {
			return b[p-base : int64(p-base)+n], nil
		}
	}
	return nil, fmt.Errorf("fake CUDA: host range [%#x, +%d) is not pinned memory from cuMemAllocHost", p, n)
}

func (f *Fake) MemcpyHtoD(dst DevicePtr, src []byte) error {
	if err := f.record("cuMemcpyHtoD", len(src)); err != nil {
		return err
	}
	d, err := f.resolve(dst, int64(len(src)))
	if err != nil {
		return err
	}
	copy(d, src)
	return nil
}

func (f *Fake) MemsetD8(dst DevicePtr, v byte, n int64) error {
	if err := f.record("cuMemsetD8", n); err != nil {
		return err
	}
	d, err := f.resolve(dst, n)
	if err != nil {
		return err
	}
	for i := range d {
		d[i] = v
	}
	return nil
}

func (f *Fake) MemcpyHtoDAsync(dst DevicePtr, src uintptr, n int64, s Stream) error {
	if err := f.record("cuMemcpyHtoDAsync", n, f.capturing(s)); err != nil {
		return err
	}
	return f.run(s, func() error {
		h, err := f.hostBytes(src, n)
		if err != nil {
			return err
		}
		d, err := f.resolve(dst, n)
		if err != nil {
			return err
		}
		copy(d, h)
		return nil
	})
}

func (f *Fake) MemcpyDtoHAsync(dst uintptr, src DevicePtr, n int64, s Stream) error {
	if err := f.record("cuMemcpyDtoHAsync", n, f.capturing(s)); err != nil {
		return err
	}
	return f.run(s, func() error {
		h, err := f.hostBytes(dst, n)
		if err != nil {
			return err
		}
		d, err := f.resolve(src, n)
		if err != nil {
			return err
		}
		copy(h, d)
		return nil
	})
}

func (f *Fake) LaunchKernel(fn Function, grid, block Dim3, shared uint32, s Stream, args []uint64) error {
	f.mu.Lock()
	name, ok := f.funcs[fn]
	f.mu.Unlock()
	if err := f.record("cuLaunchKernel", name, f.capturing(s)); err != nil {
		return err
	}
	if !ok {
		return &Error{Call: "cuLaunchKernel", Code: 400, Name: "CUDA_ERROR_INVALID_HANDLE"}
	}
	l := FakeLaunch{Kernel: name, Grid: grid, Block: block, SharedBytes: shared, Args: append([]uint64(nil), args...), Mem: &FakeMemory{f}}
	return f.run(s, func() error {
		f.mu.Lock()
		f.Launches++
		ms := f.KernelMS
		if ms == 0 {
			ms = 0.01
		}
		f.clock += ms
		f.mu.Unlock()
		if f.Exec != nil {
			if err := f.Exec(l); err != nil {
				return fmt.Errorf("kernel %s: %w", name, err)
			}
		}
		return nil
	})
}

func (f *Fake) StreamCreate() (Stream, error) {
	if err := f.record("cuStreamCreate"); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return Stream(f.handle()), nil
}

func (f *Fake) StreamDestroy(s Stream) error { return f.record("cuStreamDestroy") }

func (f *Fake) StreamSynchronize(s Stream) error { return f.record("cuStreamSynchronize") }

func (f *Fake) StreamBeginCapture(s Stream) error {
	if err := f.record("cuStreamBeginCapture"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.capture[s] = &[]func() error{}
	return nil
}

func (f *Fake) StreamEndCapture(s Stream) (Graph, error) {
	if err := f.record("cuStreamEndCapture"); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.capture[s]
	if !ok {
		return 0, &Error{Call: "cuStreamEndCapture", Code: 900, Name: "CUDA_ERROR_STREAM_CAPTURE_ILLEGAL"}
	}
	delete(f.capture, s)
	g := Graph(f.handle())
	f.graphs[g] = *c
	return g, nil
}

func (f *Fake) GraphInstantiate(g Graph) (GraphExec, error) {
	if err := f.record("cuGraphInstantiateWithFlags"); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e := GraphExec(f.handle())
	f.execs[e] = g
	return e, nil
}

func (f *Fake) GraphLaunch(e GraphExec, s Stream) error {
	if err := f.record("cuGraphLaunch"); err != nil {
		return err
	}
	f.mu.Lock()
	ops := f.graphs[f.execs[e]]
	f.mu.Unlock()
	for _, op := range ops {
		if err := op(); err != nil {
			return err
		}
	}
	return nil
}

func (f *Fake) GraphDestroy(g Graph) error {
	f.mu.Lock()
	delete(f.graphs, g)
	f.mu.Unlock()
	return f.record("cuGraphDestroy")
}

func (f *Fake) GraphExecDestroy(e GraphExec) error {
	f.mu.Lock()
	delete(f.execs, e)
	f.mu.Unlock()
	return f.record("cuGraphExecDestroy")
}

func (f *Fake) EventCreate() (Event, error) {
	if err := f.record("cuEventCreate"); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return Event(f.handle()), nil
}

func (f *Fake) EventRecord(e Event, s Stream) error {
	if err := f.record("cuEventRecord", f.capturing(s)); err != nil {
		return err
	}
	return f.run(s, func() error {
		f.mu.Lock()
		f.events[e] = f.clock
		f.mu.Unlock()
		return nil
	})
}

func (f *Fake) EventSynchronize(e Event) error { return f.record("cuEventSynchronize") }

func (f *Fake) EventElapsedTime(a, b Event) (float32, error) {
	if err := f.record("cuEventElapsedTime"); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return float32(f.events[b] - f.events[a]), nil
}

func (f *Fake) EventDestroy(e Event) error {
	f.mu.Lock()
	delete(f.events, e)
	f.mu.Unlock()
	return f.record("cuEventDestroy")
}
