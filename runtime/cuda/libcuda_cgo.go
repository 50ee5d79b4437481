//go:build linux && cgo

package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// The CUDA driver API's types as the ABI sees them (cuda.h): CUresult and
// CUdevice are int, CUdeviceptr is a 64-bit integer, every other handle is
// a pointer. No CUDA header is needed.
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void *CUhandle;

typedef CUresult (*fn_i)(unsigned int);
typedef CUresult (*fn_v)(void);
typedef CUresult (*fn_pi)(int *);
typedef CUresult (*fn_dev_get)(CUdevice *, int);
typedef CUresult (*fn_dev_name)(char *, int, CUdevice);
typedef CUresult (*fn_dev_attr)(int *, int, CUdevice);
typedef CUresult (*fn_ctx_retain)(CUhandle *, CUdevice);
typedef CUresult (*fn_dev)(CUdevice);
typedef CUresult (*fn_h)(CUhandle);
typedef CUresult (*fn_load)(CUhandle *, const void *, unsigned int, int *, void **);
typedef CUresult (*fn_getfn)(CUhandle *, CUhandle, const char *);
typedef CUresult (*fn_fattr)(CUhandle, int, int);
typedef CUresult (*fn_alloc)(CUdeviceptr *, size_t);
typedef CUresult (*fn_free)(CUdeviceptr);
typedef CUresult (*fn_alloc_host)(void **, size_t);
typedef CUresult (*fn_free_host)(void *);
typedef CUresult (*fn_htod)(CUdeviceptr, const void *, size_t);
typedef CUresult (*fn_memset)(CUdeviceptr, unsigned char, size_t);
typedef CUresult (*fn_htod_async)(CUdeviceptr, const void *, size_t, CUhandle);
typedef CUresult (*fn_dtoh_async)(void *, CUdeviceptr, size_t, CUhandle);
typedef CUresult (*fn_launch)(CUhandle, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                              unsigned, CUhandle, void **, void **);
typedef CUresult (*fn_stream_create)(CUhandle *, unsigned int);
typedef CUresult (*fn_begin_capture)(CUhandle, int);
typedef CUresult (*fn_end_capture)(CUhandle, CUhandle *);
typedef CUresult (*fn_instantiate)(CUhandle *, CUhandle, unsigned long long);
typedef CUresult (*fn_hh)(CUhandle, CUhandle);
typedef CUresult (*fn_event_create)(CUhandle *, unsigned int);
typedef CUresult (*fn_elapsed)(float *, CUhandle, CUhandle);
typedef CUresult (*fn_errstr)(CUresult, const char **);

static void *kiln_cuda_open(char **err) {
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		const char *e = dlerror();
		*err = strdup(e != NULL ? e : "unknown dlopen error");
	}
	return h;
}

static uintptr_t kiln_cuda_sym(void *h, const char *name) { return (uintptr_t)dlsym(h, name); }

static int c_i(uintptr_t f, unsigned int a) { return ((fn_i)f)(a); }
static int c_v(uintptr_t f) { return ((fn_v)f)(); }
static int c_pi(uintptr_t f, int *a) { return ((fn_pi)f)(a); }
static int c_dev_get(uintptr_t f, int *d, int ord) { return ((fn_dev_get)f)(d, ord); }
static int c_dev_name(uintptr_t f, char *buf, int n, int d) { return ((fn_dev_name)f)(buf, n, d); }
static int c_dev_attr(uintptr_t f, int *v, int a, int d) { return ((fn_dev_attr)f)(v, a, d); }
static int c_ctx_retain(uintptr_t f, uintptr_t *c, int d) {
	CUhandle h = 0;
	int r = ((fn_ctx_retain)f)(&h, d);
	*c = (uintptr_t)h;
	return r;
}
static int c_dev(uintptr_t f, int d) { return ((fn_dev)f)(d); }
static int c_h(uintptr_t f, uintptr_t h) { return ((fn_h)f)((CUhandle)h); }

// c_load is cuModuleLoadDataEx with the JIT's error and info logs
// (CU_JIT_INFO_LOG_BUFFER 3, _SIZE_BYTES 4, CU_JIT_ERROR_LOG_BUFFER 5,
// _SIZE_BYTES 6): the logs are written NUL-terminated into errlog and
// infolog, each logsize bytes.
static int c_load(uintptr_t f, uintptr_t *mod, const char *ptx, char *errlog, char *infolog, int logsize) {
	int opts[4] = {5, 6, 3, 4};
	void *vals[4] = {errlog, (void *)(uintptr_t)logsize, infolog, (void *)(uintptr_t)logsize};
	CUhandle h = 0;
	errlog[0] = 0;
	infolog[0] = 0;
	int r = ((fn_load)f)(&h, ptx, 4, opts, vals);
	errlog[logsize - 1] = 0;
	infolog[logsize - 1] = 0;
	*mod = (uintptr_t)h;
	return r;
}
static int c_getfn(uintptr_t f, uintptr_t *fn, uintptr_t mod, const char *name) {
	CUhandle h = 0;
	int r = ((fn_getfn)f)(&h, (CUhandle)mod, name);
	*fn = (uintptr_t)h;
	return r;
}
static int c_fattr(uintptr_t f, uintptr_t fn, int a, int v) { return ((fn_fattr)f)((CUhandle)fn, a, v); }
static int c_alloc(uintptr_t f, uint64_t *p, uint64_t n) {
	CUdeviceptr d = 0;
	int r = ((fn_alloc)f)(&d, (size_t)n);
	*p = d;
	return r;
}
static int c_free(uintptr_t f, uint64_t p) { return ((fn_free)f)(p); }
static int c_alloc_host(uintptr_t f, void **p, uint64_t n) { return ((fn_alloc_host)f)(p, (size_t)n); }
static int c_free_host(uintptr_t f, uintptr_t p) { return ((fn_free_host)f)((void *)p); }
static int c_htod(uintptr_t f, uint64_t dst, uintptr_t src, uint64_t n) {
	return ((fn_htod)f)(dst, (const void *)src, (size_t)n);
}
static int c_memset(uintptr_t f, uint64_t dst, unsigned char v, uint64_t n) {
	return ((fn_memset)f)(dst, v, (size_t)n);
}
static int c_htod_async(uintptr_t f, uint64_t dst, uintptr_t src, uint64_t n, uintptr_t s) {
	return ((fn_htod_async)f)(dst, (const void *)src, (size_t)n, (CUhandle)s);
}
static int c_dtoh_async(uintptr_t f, uintptr_t dst, uint64_t src, uint64_t n, uintptr_t s) {
	return ((fn_dtoh_async)f)((void *)dst, src, (size_t)n, (CUhandle)s);
}

// c_launch is cuLaunchKernel with kernelParams pointing at the nargs 8-byte
// values in args (the driver copies them before returning).
static int c_launch(uintptr_t f, uintptr_t fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                    unsigned by, unsigned bz, unsigned shared, uintptr_t s, uint64_t *args, int nargs) {
	void *params[256];
	if (nargs > 256) return 1; // CUDA_ERROR_INVALID_VALUE
	for (int i = 0; i < nargs; i++) params[i] = &args[i];
	return ((fn_launch)f)((CUhandle)fn, gx, gy, gz, bx, by, bz, shared, (CUhandle)s, params, NULL);
}
static int c_stream_create(uintptr_t f, uintptr_t *s, unsigned flags) {
	CUhandle h = 0;
	int r = ((fn_stream_create)f)(&h, flags);
	*s = (uintptr_t)h;
	return r;
}
static int c_begin_capture(uintptr_t f, uintptr_t s, int mode) { return ((fn_begin_capture)f)((CUhandle)s, mode); }
static int c_end_capture(uintptr_t f, uintptr_t s, uintptr_t *g) {
	CUhandle h = 0;
	int r = ((fn_end_capture)f)((CUhandle)s, &h);
	*g = (uintptr_t)h;
	return r;
}
static int c_instantiate(uintptr_t f, uintptr_t *e, uintptr_t g) {
	CUhandle h = 0;
	int r = ((fn_instantiate)f)(&h, (CUhandle)g, 0);
	*e = (uintptr_t)h;
	return r;
}
static int c_hh(uintptr_t f, uintptr_t a, uintptr_t b) { return ((fn_hh)f)((CUhandle)a, (CUhandle)b); }
static int c_event_create(uintptr_t f, uintptr_t *e) {
	CUhandle h = 0;
	int r = ((fn_event_create)f)(&h, 0);
	*e = (uintptr_t)h;
	return r;
}
static int c_elapsed(uintptr_t f, float *ms, uintptr_t a, uintptr_t b) {
	return ((fn_elapsed)f)(ms, (CUhandle)a, (CUhandle)b);
}
static const char *c_errstr(uintptr_t f, int code) {
	const char *s = NULL;
	if (f == 0 || ((fn_errstr)f)(code, &s) != 0) return NULL;
	return s;
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"unsafe"
)

// symbols lists every driver entry point the runtime uses, by the name
// libcuda exports: since CUDA 3.2 several calls exist in versioned forms
// (_v2) whose unversioned symbol keeps the old 32-bit ABI, so the versioned
// one must be looked up by hand (cuda.h does it with macros). Alternatives
// are tried in order (cuEventElapsedTime_v2 appeared in CUDA 12.8).
var symbols = [...][]string{
	symInit:              {"cuInit"},
	symDriverVersion:     {"cuDriverGetVersion"},
	symDeviceCount:       {"cuDeviceGetCount"},
	symDeviceGet:         {"cuDeviceGet"},
	symDeviceName:        {"cuDeviceGetName"},
	symDeviceAttribute:   {"cuDeviceGetAttribute"},
	symPrimaryRetain:     {"cuDevicePrimaryCtxRetain"},
	symPrimaryRelease:    {"cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"},
	symCtxSetCurrent:     {"cuCtxSetCurrent"},
	symCtxSynchronize:    {"cuCtxSynchronize"},
	symModuleLoad:        {"cuModuleLoadDataEx"},
	symModuleUnload:      {"cuModuleUnload"},
	symModuleGetFunction: {"cuModuleGetFunction"},
	symFuncSetAttribute:  {"cuFuncSetAttribute"},
	symMemAlloc:          {"cuMemAlloc_v2"},
	symMemFree:           {"cuMemFree_v2"},
	symMemAllocHost:      {"cuMemAllocHost_v2"},
	symMemFreeHost:       {"cuMemFreeHost"},
	symMemcpyHtoD:        {"cuMemcpyHtoD_v2"},
	symMemsetD8:          {"cuMemsetD8_v2"},
	symMemcpyHtoDAsync:   {"cuMemcpyHtoDAsync_v2"},
	symMemcpyDtoHAsync:   {"cuMemcpyDtoHAsync_v2"},
	symLaunchKernel:      {"cuLaunchKernel"},
	symStreamCreate:      {"cuStreamCreate"},
	symStreamDestroy:     {"cuStreamDestroy_v2"},
	symStreamSynchronize: {"cuStreamSynchronize"},
	symBeginCapture:      {"cuStreamBeginCapture_v2", "cuStreamBeginCapture"},
	symEndCapture:        {"cuStreamEndCapture"},
	symGraphInstantiate:  {"cuGraphInstantiateWithFlags"},
	symGraphLaunch:       {"cuGraphLaunch"},
	symGraphDestroy:      {"cuGraphDestroy"},
	symGraphExecDestroy:  {"cuGraphExecDestroy"},
	symEventCreate:       {"cuEventCreate"},
	symEventRecord:       {"cuEventRecord"},
	symEventSynchronize:  {"cuEventSynchronize"},
	symEventElapsed:      {"cuEventElapsedTime_v2", "cuEventElapsedTime"},
	symEventDestroy:      {"cuEventDestroy_v2"},
	symGetErrorName:      {"cuGetErrorName"},
	symGetErrorString:    {"cuGetErrorString"},
}

const (
	symInit = iota
	symDriverVersion
	symDeviceCount
	symDeviceGet
	symDeviceName
	symDeviceAttribute
	symPrimaryRetain
	symPrimaryRelease
	symCtxSetCurrent
	symCtxSynchronize
	symModuleLoad
	symModuleUnload
	symModuleGetFunction
	symFuncSetAttribute
	symMemAlloc
	symMemFree
	symMemAllocHost
	symMemFreeHost
	symMemcpyHtoD
	symMemsetD8
	symMemcpyHtoDAsync
	symMemcpyDtoHAsync
	symLaunchKernel
	symStreamCreate
	symStreamDestroy
	symStreamSynchronize
	symBeginCapture
	symEndCapture
	symGraphInstantiate
	symGraphLaunch
	symGraphDestroy
	symGraphExecDestroy
	symEventCreate
	symEventRecord
	symEventSynchronize
	symEventElapsed
	symEventDestroy
	symGetErrorName
	symGetErrorString
	numSymbols
)

// libcuda is the Driver backed by the NVIDIA driver's libcuda.so.1.
type libcuda struct {
	fn [numSymbols]uintptr
}

var (
	loadOnce   sync.Once
	loadedDrv  *libcuda
	loadDrvErr error
)

// LoadDriver opens libcuda.so.1 (once per process) and resolves the entry
// points; it does not call cuInit. It fails with ErrNoDriver (wrapped, with
// dlopen's message) where the library is absent, and names a missing entry
// point of an older driver.
func LoadDriver() (Driver, error) {
	loadOnce.Do(func() { loadedDrv, loadDrvErr = loadLibcuda() })
	if loadDrvErr != nil {
		return nil, loadDrvErr
	}
	return loadedDrv, nil
}

func loadLibcuda() (*libcuda, error) {
	var cerr *C.char
	h := C.kiln_cuda_open(&cerr)
	if h == nil {
		msg := C.GoString(cerr)
		C.free(unsafe.Pointer(cerr))
		return nil, fmt.Errorf("%w: %s", ErrNoDriver, msg)
	}
	d := &libcuda{}
	for i, names := range symbols {
		for _, n := range names {
			cn := C.CString(n)
			d.fn[i] = uintptr(C.kiln_cuda_sym(h, cn))
			C.free(unsafe.Pointer(cn))
			if d.fn[i] != 0 {
				break
			}
		}
		if d.fn[i] == 0 && i != symGetErrorString {
			return nil, fmt.Errorf("libcuda.so.1 lacks %s: the NVIDIA driver is too old (CUDA 11.4 or newer is needed)", strings.Join(names, " and "))
		}
	}
	return d, nil
}

// check turns a CUresult into nil or an *Error naming the call.
func (d *libcuda) check(call string, r C.int) error {
	if r == 0 {
		return nil
	}
	e := &Error{Call: call, Code: Result(r)}
	if s := C.c_errstr(C.uintptr_t(d.fn[symGetErrorName]), r); s != nil {
		e.Name = C.GoString(s)
	} else {
		e.Name = fmt.Sprintf("CUresult %d", int(r))
	}
	if s := C.c_errstr(C.uintptr_t(d.fn[symGetErrorString]), r); s != nil {
		e.Desc = C.GoString(s)
	}
	return e
}

func (d *libcuda) f(i int) C.uintptr_t { return C.uintptr_t(d.fn[i]) }

func (d *libcuda) Init() error { return d.check("cuInit", C.c_i(d.f(symInit), 0)) }

func (d *libcuda) Version() (int, error) {
	var v C.int
	err := d.check("cuDriverGetVersion", C.c_pi(d.f(symDriverVersion), &v))
	return int(v), err
}

func (d *libcuda) DeviceCount() (int, error) {
	var v C.int
	err := d.check("cuDeviceGetCount", C.c_pi(d.f(symDeviceCount), &v))
	return int(v), err
}

func (d *libcuda) DeviceGet(ordinal int) (Device, error) {
	var v C.int
	err := d.check("cuDeviceGet", C.c_dev_get(d.f(symDeviceGet), &v, C.int(ordinal)))
	return Device(v), err
}

func (d *libcuda) DeviceName(dev Device) (string, error) {
	buf := (*C.char)(C.calloc(256, 1))
	defer C.free(unsafe.Pointer(buf))
	if err := d.check("cuDeviceGetName", C.c_dev_name(d.f(symDeviceName), buf, 256, C.int(dev))); err != nil {
		return "", err
	}
	return C.GoString(buf), nil
}

func (d *libcuda) DeviceAttribute(dev Device, a Attribute) (int, error) {
	var v C.int
	err := d.check(fmt.Sprintf("cuDeviceGetAttribute(%d)", a), C.c_dev_attr(d.f(symDeviceAttribute), &v, C.int(a), C.int(dev)))
	return int(v), err
}

func (d *libcuda) PrimaryCtxRetain(dev Device) (Context, error) {
	var c C.uintptr_t
	err := d.check("cuDevicePrimaryCtxRetain", C.c_ctx_retain(d.f(symPrimaryRetain), &c, C.int(dev)))
	return Context(c), err
}

func (d *libcuda) PrimaryCtxRelease(dev Device) error {
	return d.check("cuDevicePrimaryCtxRelease", C.c_dev(d.f(symPrimaryRelease), C.int(dev)))
}

func (d *libcuda) CtxSetCurrent(c Context) error {
	return d.check("cuCtxSetCurrent", C.c_h(d.f(symCtxSetCurrent), C.uintptr_t(c)))
}

func (d *libcuda) CtxSynchronize() error {
	return d.check("cuCtxSynchronize", C.c_v(d.f(symCtxSynchronize)))
}

// jitLogBytes is the size of each JIT log buffer.
const jitLogBytes = 16 << 10

func (d *libcuda) ModuleLoadData(ptx []byte) (Module, error) {
	cptx := C.CString(string(ptx)) // NUL-terminated copy
	defer C.free(unsafe.Pointer(cptx))
	errlog := (*C.char)(C.calloc(jitLogBytes, 1))
	defer C.free(unsafe.Pointer(errlog))
	infolog := (*C.char)(C.calloc(jitLogBytes, 1))
	defer C.free(unsafe.Pointer(infolog))
	var m C.uintptr_t
	r := C.c_load(d.f(symModuleLoad), &m, cptx, errlog, infolog, jitLogBytes)
	if err := d.check("cuModuleLoadDataEx", r); err != nil {
		e := err.(*Error)
		log := strings.TrimSpace(C.GoString(errlog))
		if log == "" {
			log = strings.TrimSpace(C.GoString(infolog))
		}
		if log != "" {
			e.Detail = "PTX JIT log:\n" + log
		}
		return 0, e
	}
	return Module(m), nil
}

func (d *libcuda) ModuleUnload(m Module) error {
	return d.check("cuModuleUnload", C.c_h(d.f(symModuleUnload), C.uintptr_t(m)))
}

func (d *libcuda) ModuleGetFunction(m Module, name string) (Function, error) {
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	var f C.uintptr_t
	if err := d.check("cuModuleGetFunction", C.c_getfn(d.f(symModuleGetFunction), &f, C.uintptr_t(m), cn)); err != nil {
		err.(*Error).Detail = "kernel " + name
		return 0, err
	}
	return Function(f), nil
}

func (d *libcuda) FuncSetAttribute(f Function, attr, value int) error {
	return d.check("cuFuncSetAttribute", C.c_fattr(d.f(symFuncSetAttribute), C.uintptr_t(f), C.int(attr), C.int(value)))
}

func (d *libcuda) MemAlloc(bytes int64) (DevicePtr, error) {
	var p C.uint64_t
	if err := d.check("cuMemAlloc", C.c_alloc(d.f(symMemAlloc), &p, C.uint64_t(bytes))); err != nil {
		err.(*Error).Detail = fmt.Sprintf("%d bytes", bytes)
		return 0, err
	}
	return DevicePtr(p), nil
}

func (d *libcuda) MemFree(p DevicePtr) error {
	return d.check("cuMemFree", C.c_free(d.f(symMemFree), C.uint64_t(p)))
}

func (d *libcuda) MemAllocHost(bytes int64) (HostBuffer, error) {
	var p unsafe.Pointer
	if err := d.check("cuMemAllocHost", C.c_alloc_host(d.f(symMemAllocHost), &p, C.uint64_t(bytes))); err != nil {
		err.(*Error).Detail = fmt.Sprintf("%d bytes", bytes)
		return HostBuffer{}, err
	}
	return HostBuffer{Ptr: uintptr(p), Bytes: unsafe.Slice((*byte)(p), bytes)}, nil
}

func (d *libcuda) MemFreeHost(b HostBuffer) error {
	return d.check("cuMemFreeHost", C.c_free_host(d.f(symMemFreeHost), C.uintptr_t(b.Ptr)))
}

// MemcpyHtoD copies synchronously; src is Go or mapped memory that the
// driver reads only during the call.
func (d *libcuda) MemcpyHtoD(dst DevicePtr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	p := C.uintptr_t(uintptr(unsafe.Pointer(&src[0])))
	r := C.c_htod(d.f(symMemcpyHtoD), C.uint64_t(dst), p, C.uint64_t(len(src)))
	runtime.KeepAlive(src)
	return d.check("cuMemcpyHtoD", r)
}

func (d *libcuda) MemsetD8(dst DevicePtr, v byte, n int64) error {
	return d.check("cuMemsetD8", C.c_memset(d.f(symMemsetD8), C.uint64_t(dst), C.uchar(v), C.uint64_t(n)))
}

func (d *libcuda) MemcpyHtoDAsync(dst DevicePtr, src uintptr, n int64, s Stream) error {
	return d.check("cuMemcpyHtoDAsync", C.c_htod_async(d.f(symMemcpyHtoDAsync), C.uint64_t(dst), C.uintptr_t(src), C.uint64_t(n), C.uintptr_t(s)))
}

func (d *libcuda) MemcpyDtoHAsync(dst uintptr, src DevicePtr, n int64, s Stream) error {
	return d.check("cuMemcpyDtoHAsync", C.c_dtoh_async(d.f(symMemcpyDtoHAsync), C.uintptr_t(dst), C.uint64_t(src), C.uint64_t(n), C.uintptr_t(s)))
}

func (d *libcuda) LaunchKernel(f Function, grid, block Dim3, shared uint32, s Stream, args []uint64) error {
	if len(args) > 256 {
		return fmt.Errorf("cuLaunchKernel: %d parameters, at most 256", len(args))
	}
	cargs := (*C.uint64_t)(C.malloc(C.size_t(8 * max(1, len(args)))))
	defer C.free(unsafe.Pointer(cargs))
	copy(unsafe.Slice((*uint64)(unsafe.Pointer(cargs)), len(args)), args)
	r := C.c_launch(d.f(symLaunchKernel), C.uintptr_t(f), C.uint(grid[0]), C.uint(grid[1]), C.uint(grid[2]),
		C.uint(block[0]), C.uint(block[1]), C.uint(block[2]), C.uint(shared), C.uintptr_t(s), cargs, C.int(len(args)))
	return d.check("cuLaunchKernel", r)
}

// streamNonBlocking is CU_STREAM_NON_BLOCKING: no implicit synchronization
// with the legacy default stream.
const streamNonBlocking = 1

func (d *libcuda) StreamCreate() (Stream, error) {
	var s C.uintptr_t
	err := d.check("cuStreamCreate", C.c_stream_create(d.f(symStreamCreate), &s, streamNonBlocking))
	return Stream(s), err
}

func (d *libcuda) StreamDestroy(s Stream) error {
	return d.check("cuStreamDestroy", C.c_h(d.f(symStreamDestroy), C.uintptr_t(s)))
}

func (d *libcuda) StreamSynchronize(s Stream) error {
	return d.check("cuStreamSynchronize", C.c_h(d.f(symStreamSynchronize), C.uintptr_t(s)))
}

// captureModeRelaxed is CU_STREAM_CAPTURE_MODE_RELAXED.
const captureModeRelaxed = 2

func (d *libcuda) StreamBeginCapture(s Stream) error {
	return d.check("cuStreamBeginCapture", C.c_begin_capture(d.f(symBeginCapture), C.uintptr_t(s), captureModeRelaxed))
}

func (d *libcuda) StreamEndCapture(s Stream) (Graph, error) {
	var g C.uintptr_t
	err := d.check("cuStreamEndCapture", C.c_end_capture(d.f(symEndCapture), C.uintptr_t(s), &g))
	return Graph(g), err
}

func (d *libcuda) GraphInstantiate(g Graph) (GraphExec, error) {
	var e C.uintptr_t
	err := d.check("cuGraphInstantiateWithFlags", C.c_instantiate(d.f(symGraphInstantiate), &e, C.uintptr_t(g)))
	return GraphExec(e), err
}

func (d *libcuda) GraphLaunch(e GraphExec, s Stream) error {
	return d.check("cuGraphLaunch", C.c_hh(d.f(symGraphLaunch), C.uintptr_t(e), C.uintptr_t(s)))
}

func (d *libcuda) GraphDestroy(g Graph) error {
	return d.check("cuGraphDestroy", C.c_h(d.f(symGraphDestroy), C.uintptr_t(g)))
}

func (d *libcuda) GraphExecDestroy(e GraphExec) error {
	return d.check("cuGraphExecDestroy", C.c_h(d.f(symGraphExecDestroy), C.uintptr_t(e)))
}

func (d *libcuda) EventCreate() (Event, error) {
	var e C.uintptr_t
	err := d.check("cuEventCreate", C.c_event_create(d.f(symEventCreate), &e))
	return Event(e), err
}

func (d *libcuda) EventRecord(e Event, s Stream) error {
	return d.check("cuEventRecord", C.c_hh(d.f(symEventRecord), C.uintptr_t(e), C.uintptr_t(s)))
}

func (d *libcuda) EventSynchronize(e Event) error {
	return d.check("cuEventSynchronize", C.c_h(d.f(symEventSynchronize), C.uintptr_t(e)))
}

func (d *libcuda) EventElapsedTime(a, b Event) (float32, error) {
	var ms C.float
	err := d.check("cuEventElapsedTime", C.c_elapsed(d.f(symEventElapsed), &ms, C.uintptr_t(a), C.uintptr_t(b)))
	return float32(ms), err
}

func (d *libcuda) EventDestroy(e Event) error {
	return d.check("cuEventDestroy", C.c_h(d.f(symEventDestroy), C.uintptr_t(e)))
}
