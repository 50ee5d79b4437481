// Package cuda runs networks compiled for NVIDIA GPUs (kiln build --target
// cuda-sm80/cuda-sm90) through the CUDA driver API.
//
// The driver API is reached only at run time, through dlopen("libcuda.so.1")
// (libcuda_cgo.go): nothing of CUDA is needed to build or link Kiln — no
// headers, no toolkit, no libcuda — and the few types and enumerations used
// are declared here, with the values of the CUDA 12/13 cuda.h. On a machine
// without the NVIDIA driver, or without a device, Open fails with a clear
// error (ErrNoDriver, ErrNoDevice); without cgo every call fails saying so.
//
// The runtime talks to the driver through the Driver interface. LoadDriver
// returns the real one; Fake (fake.go) is an in-memory implementation for
// tests that records every call and runs kernels through a Go callback (the
// host emulation of the generated kernels), so the whole path — one arena
// and one weights allocation, the weights uploaded once, pinned input and
// output buffers, the launch list replayed inside a captured CUDA graph, the
// output downloaded — is tested without a GPU.
package cuda

import (
	"errors"
	"fmt"
)

// Handles are opaque driver values (CUdevice, CUcontext, CUmodule, ...)
// carried as integers, so that no C or Go pointer crosses the interface.
type (
	Device    int32
	Context   uintptr
	Module    uintptr
	Function  uintptr
	DevicePtr uint64 // CUdeviceptr
	Stream    uintptr
	Graph     uintptr
	GraphExec uintptr
	Event     uintptr
)

// Attribute is a CUdevice_attribute.
type Attribute int32

// Device attributes (cuda.h, CUdevice_attribute).
const (
	AttrMaxThreadsPerBlock         Attribute = 1
	AttrClockRateKHz               Attribute = 13
	AttrMultiprocessorCount        Attribute = 16
	AttrMemoryClockRateKHz         Attribute = 36
	AttrGlobalMemoryBusWidth       Attribute = 37
	AttrComputeCapabilityMajor     Attribute = 75
	AttrComputeCapabilityMinor     Attribute = 76
	AttrMaxSharedMemoryPerBlockOpt Attribute = 97
)

// FuncAttrMaxDynamicSharedBytes is CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES:
// a kernel using more than 48 KiB of dynamic shared memory must raise it.
const FuncAttrMaxDynamicSharedBytes = 8

// Result is a CUresult.
type Result int32

// The CUresult values the runtime tells apart (cuda.h, cudaError_enum).
const (
	Success              Result = 0
	ErrorNotInitialized  Result = 3
	ErrorNoDevice        Result = 100
	ErrorInvalidPTX      Result = 218
	ErrorNoBinaryForGPU  Result = 209
	ErrorUnsupportedPTX  Result = 222
	ErrorInsufficientDrv Result = 35
)

// ErrNoDriver is returned (wrapped) when libcuda.so.1 cannot be loaded.
var ErrNoDriver = errors.New("no NVIDIA driver (libcuda.so.1 not found)")

// ErrNoDevice is returned (wrapped) when the driver reports no device.
var ErrNoDevice = errors.New("no CUDA device")

// Error is a failed driver call: the call's name, its CUresult and the
// driver's name and description of it (cuGetErrorName, cuGetErrorString).
type Error struct {
	Call   string // e.g. "cuModuleLoadDataEx"
	Code   Result
	Name   string // e.g. "CUDA_ERROR_INVALID_PTX"
	Desc   string // cuGetErrorString, may be empty
	Detail string // extra context, e.g. the JIT error log
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s: %s (%d)", e.Call, e.Name, e.Code)
	if e.Desc != "" {
		s += ": " + e.Desc
	}
	if e.Detail != "" {
		s += "\n" + e.Detail
	}
	return s
}

// Is makes errors.Is(err, ErrNoDevice) true for CUDA_ERROR_NO_DEVICE.
func (e *Error) Is(target error) bool {
	return target == ErrNoDevice && e.Code == ErrorNoDevice
}

// Dim3 is a grid or block size.
type Dim3 [3]uint32

// Count is x·y·z.
func (d Dim3) Count() int64 { return int64(d[0]) * int64(d[1]) * int64(d[2]) }

// HostBuffer is page-locked host memory from cuMemAllocHost (or, in Fake,
// ordinary memory). Bytes aliases it; it stays valid until MemFreeHost.
type HostBuffer struct {
	Ptr   uintptr
	Bytes []byte
}

// Driver is the part of the CUDA driver API the runtime uses. Each method is
// one driver call (named in its doc), with CUDA's semantics: the current
// context is per OS thread, so callers lock the goroutine to its thread and
// make the context current first (Model does). Errors are *Error naming the
// call, or ErrNoDriver.
type Driver interface {
	// Init is cuInit(0).
	Init() error
	// Version is cuDriverGetVersion: 1000·major + 10·minor (13000 = 13.0).
	Version() (int, error)
	// DeviceCount is cuDeviceGetCount.
	DeviceCount() (int, error)
	// DeviceGet is cuDeviceGet.
	DeviceGet(ordinal int) (Device, error)
	// DeviceName is cuDeviceGetName.
	DeviceName(d Device) (string, error)
	// DeviceAttribute is cuDeviceGetAttribute.
	DeviceAttribute(d Device, a Attribute) (int, error)
	// PrimaryCtxRetain is cuDevicePrimaryCtxRetain.
	PrimaryCtxRetain(d Device) (Context, error)
	// PrimaryCtxRelease is cuDevicePrimaryCtxRelease.
	PrimaryCtxRelease(d Device) error
	// CtxSetCurrent is cuCtxSetCurrent.
	CtxSetCurrent(c Context) error
	// CtxSynchronize is cuCtxSynchronize: it waits for all work of the
	// current context, including the legacy stream's (synchronous copies
	// from pageable memory and memsets may return before they complete).
	CtxSynchronize() error
	// ModuleLoadData is cuModuleLoadDataEx on NUL-free PTX text, with the
	// JIT's error and info log buffers; a failure's Error carries the error
	// log in Detail.
	ModuleLoadData(ptx []byte) (Module, error)
	// ModuleUnload is cuModuleUnload.
	ModuleUnload(m Module) error
	// ModuleGetFunction is cuModuleGetFunction.
	ModuleGetFunction(m Module, name string) (Function, error)
	// FuncSetAttribute is cuFuncSetAttribute.
	FuncSetAttribute(f Function, attr int, value int) error
	// MemAlloc is cuMemAlloc.
	MemAlloc(bytes int64) (DevicePtr, error)
	// MemFree is cuMemFree.
	MemFree(p DevicePtr) error
	// MemAllocHost is cuMemAllocHost (page-locked, so asynchronous copies
	// are truly asynchronous and can be captured into a graph).
	MemAllocHost(bytes int64) (HostBuffer, error)
	// MemFreeHost is cuMemFreeHost.
	MemFreeHost(b HostBuffer) error
	// MemcpyHtoD is the synchronous cuMemcpyHtoD from any host memory
	// (the weights, once).
	MemcpyHtoD(dst DevicePtr, src []byte) error
	// MemsetD8 is cuMemsetD8 (zeroing the arena once).
	MemsetD8(dst DevicePtr, value byte, n int64) error
	// MemcpyHtoDAsync is cuMemcpyHtoDAsync from pinned memory at src.
	MemcpyHtoDAsync(dst DevicePtr, src uintptr, n int64, s Stream) error
	// MemcpyDtoHAsync is cuMemcpyDtoHAsync into pinned memory at dst.
	MemcpyDtoHAsync(dst uintptr, src DevicePtr, n int64, s Stream) error
	// LaunchKernel is cuLaunchKernel with one 8-byte value per parameter
	// (a device pointer or an integer; a 4-byte parameter reads the low
	// half, as the platform is little-endian).
	LaunchKernel(f Function, grid, block Dim3, sharedBytes uint32, s Stream, args []uint64) error
	// StreamCreate is cuStreamCreate(CU_STREAM_NON_BLOCKING).
	StreamCreate() (Stream, error)
	// StreamDestroy is cuStreamDestroy.
	StreamDestroy(s Stream) error
	// StreamSynchronize is cuStreamSynchronize.
	StreamSynchronize(s Stream) error
	// StreamBeginCapture is cuStreamBeginCapture in relaxed mode (Go may
	// move a goroutine between OS threads between calls).
	StreamBeginCapture(s Stream) error
	// StreamEndCapture is cuStreamEndCapture.
	StreamEndCapture(s Stream) (Graph, error)
	// GraphInstantiate is cuGraphInstantiateWithFlags(0).
	GraphInstantiate(g Graph) (GraphExec, error)
	// GraphLaunch is cuGraphLaunch.
	GraphLaunch(e GraphExec, s Stream) error
	// GraphDestroy is cuGraphDestroy.
	GraphDestroy(g Graph) error
	// GraphExecDestroy is cuGraphExecDestroy.
	GraphExecDestroy(e GraphExec) error
	// EventCreate is cuEventCreate(CU_EVENT_DEFAULT).
	EventCreate() (Event, error)
	// EventRecord is cuEventRecord.
	EventRecord(e Event, s Stream) error
	// EventSynchronize is cuEventSynchronize.
	EventSynchronize(e Event) error
	// EventElapsedTime is cuEventElapsedTime, in milliseconds.
	EventElapsedTime(start, end Event) (float32, error)
	// EventDestroy is cuEventDestroy.
	EventDestroy(e Event) error
}
