//go:build cgo

package ktest

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

typedef void (*kiln_kernel)(float*, const float*, int64_t, int64_t);

static void kiln_call(void* f, float* arena, const float* weights, int64_t b, int64_t e) {
	((kiln_kernel)f)(arena, weights, b, e);
}

// kiln_time runs the kernel reps times over [0, tiles) and returns the
// fastest run in nanoseconds.
static double kiln_time(void* f, float* arena, const float* weights, int64_t tiles, int reps) {
	double best = 1e30;
	for (int i = 0; i < reps; i++) {
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		((kiln_kernel)f)(arena, weights, 0, tiles);
		clock_gettime(CLOCK_MONOTONIC, &b);
		double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
		if (ns < best) best = ns;
	}
	return best;
}

static int kiln_has(int which) {
#if defined(__x86_64__)
	__builtin_cpu_init();
	switch (which) {
	case 0: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
	case 1: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
	}
#endif
	return 0;
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Lib is a shared library opened with dlopen.
type Lib struct {
	h    unsafe.Pointer
	path string
}

// Open dlopens path.
func Open(path string) (*Lib, error) {
	cs := C.CString(path)
	defer C.free(unsafe.Pointer(cs))
	h := C.dlopen(cs, C.RTLD_NOW|C.RTLD_LOCAL)
	if h == nil {
		return nil, fmt.Errorf("dlopen %s: %s", path, C.GoString(C.dlerror()))
	}
	return &Lib{h: h, path: path}, nil
}

// Close dlcloses the library.
func (l *Lib) Close() error {
	if C.dlclose(l.h) != 0 {
		return fmt.Errorf("dlclose %s: %s", l.path, C.GoString(C.dlerror()))
	}
	return nil
}

// Kernel is a function with the kernel ABI.
type Kernel struct {
	f    unsafe.Pointer
	Name string
}

// Kernel looks up symbol name.
func (l *Lib) Kernel(name string) (Kernel, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	f := C.dlsym(l.h, cs)
	if f == nil {
		return Kernel{}, fmt.Errorf("dlsym %s in %s: not found", name, l.path)
	}
	return Kernel{f: f, Name: name}, nil
}

func ptr(s []float32) *C.float {
	if len(s) == 0 {
		return nil
	}
	return (*C.float)(unsafe.Pointer(&s[0]))
}

// Run calls the kernel on tiles [begin, end).
func (k Kernel) Run(arena, weights []float32, begin, end int) {
	C.kiln_call(k.f, ptr(arena), ptr(weights), C.int64_t(begin), C.int64_t(end))
	runtime.KeepAlive(arena)
	runtime.KeepAlive(weights)
}

// Time runs the kernel reps times over [0, tiles) and returns the fastest
// run in seconds.
func (k Kernel) Time(arena, weights []float32, tiles, reps int) float64 {
	ns := C.kiln_time(k.f, ptr(arena), ptr(weights), C.int64_t(tiles), C.int(reps))
	runtime.KeepAlive(arena)
	runtime.KeepAlive(weights)
	return float64(ns) * 1e-9
}

// HasAVX512 reports whether the CPU runs the avx512 target's code.
func HasAVX512() bool { return C.kiln_has(0) != 0 }

// HasAVX2 reports whether the CPU runs the avx2 target's code.
func HasAVX2() bool { return C.kiln_has(1) != 0 }
