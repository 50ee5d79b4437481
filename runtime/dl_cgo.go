//go:build linux && cgo

package rt

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void (*kiln_run_fn)(float *, const float *, int32_t, int32_t, void *, int64_t *);
typedef int32_t (*kiln_abi_fn)(void);
typedef int64_t (*kiln_size_fn)(void);

// kiln_dlopen opens path and, on failure, returns dlerror's message (to be
// freed) in *err, read on the same thread as the failing call.
static void *kiln_dlopen(const char *path, char **err) {
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		const char *e = dlerror();
		*err = strdup(e != NULL ? e : "unknown dlopen error");
	}
	return h;
}

static uintptr_t kiln_dlsym(void *h, const char *name) {
	return (uintptr_t)dlsym(h, name);
}

static int32_t kiln_call_abi(uintptr_t f) {
	return ((kiln_abi_fn)f)();
}

static int64_t kiln_call_size(uintptr_t f) {
	return ((kiln_size_fn)f)();
}

// Everything is passed as integers: the arena, barrier and timings are
// anonymous mmaps and the weights are an mmap or pinned Go memory, so there
// is nothing for cgo's pointer checks to do.
static void kiln_call_run(uintptr_t f, uintptr_t arena, uintptr_t weights, int32_t tid,
                          int32_t nthreads, uintptr_t barrier, uintptr_t timings) {
	((kiln_run_fn)f)((float *)arena, (const float *)weights, tid, nthreads,
	                 (void *)barrier, (int64_t *)timings);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// noMemfd makes openLibraryBytes skip memfd_create (tests of the fallback).
var noMemfd bool

// library is a dlopen'ed shared object.
type library struct {
	handle unsafe.Pointer
	name   string // for error messages
	// memfd is the memory file the library was loaded from, kept open
	// while it is loaded: glibc's dlopen returns an already loaded library
	// whose name matches, so a second library loaded from a reused
	// descriptor number (/proc/self/fd/N) would silently be the first one.
	memfd *os.File
}

// dlopen loads the shared object at path; name describes it in errors,
// e.g. "shared object /tmp/net.so".
func dlopen(path, name string) (*library, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var cerr *C.char
	h := C.kiln_dlopen(cpath, &cerr)
	if h == nil {
		msg := C.GoString(cerr)
		C.free(unsafe.Pointer(cerr))
		return nil, fmt.Errorf("load %s: %s", name, msg)
	}
	return &library{handle: h, name: name}, nil
}

// openLibraryBytes loads a shared object held in memory: through an
// anonymous memory file (memfd_create) when the kernel allows it, else
// through a temporary file removed right after dlopen.
func openLibraryBytes(so []byte) (*library, error) {
	const name = "in-memory shared object"
	var memfdErr error
	fd, err := unix.MemfdCreate("kiln-artifact.so", unix.MFD_CLOEXEC)
	if err == nil && noMemfd {
		unix.Close(fd)
		err = errors.New("disabled")
	}
	if err == nil {
		f := os.NewFile(uintptr(fd), "memfd:kiln-artifact.so")
		if _, err := f.Write(so); err != nil {
			f.Close()
			return nil, fmt.Errorf("load %s: write memfd: %w", name, err)
		}
		lib, err := dlopen(fmt.Sprintf("/proc/self/fd/%d", fd), name)
		if err == nil {
			lib.memfd = f // closed after dlclose (library.close)
			return lib, nil
		}
		f.Close()
		// /proc may be missing, or memfds may be noexec
		// (vm.memfd_noexec): try a real file before giving up, but
		// report this error, which names the real problem if the
		// shared object itself is bad.
		memfdErr = err
	}
	f, err := os.CreateTemp("", "kiln-*.so")
	if err != nil {
		if memfdErr != nil {
			return nil, memfdErr
		}
		return nil, fmt.Errorf("load %s: %w", name, err)
	}
	path := f.Name()
	defer os.Remove(path)
	_, werr := f.Write(so)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, fmt.Errorf("load %s: write %s: %w", name, path, werr)
	}
	lib, err := dlopen(path, name)
	if err != nil && memfdErr != nil {
		return nil, memfdErr
	}
	return lib, err
}

// sym resolves name, returning 0 if the library does not export it.
func (l *library) sym(name string) uintptr {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	return uintptr(C.kiln_dlsym(l.handle, cname))
}

func (l *library) close() error {
	if l == nil || l.handle == nil {
		return nil
	}
	if C.dlclose(l.handle) != 0 {
		return errors.New("dlclose " + l.name + ": " + C.GoString(C.dlerror()))
	}
	l.handle = nil
	if l.memfd != nil {
		l.memfd.Close()
		l.memfd = nil
	}
	return nil
}

// callABIVersion calls int32_t kiln_abi_version(void) at f.
func callABIVersion(f uintptr) int32 {
	return int32(C.kiln_call_abi(C.uintptr_t(f)))
}

// callSize calls int64_t f(void) at f (kiln_arena_bytes,
// kiln_weights_bytes).
func callSize(f uintptr) int64 {
	return int64(C.kiln_call_size(C.uintptr_t(f)))
}

// callRun calls kiln_run_<isa> at f. This is the one cgo call each worker
// makes per inference.
func callRun(f, arena, weights uintptr, tid, nthreads int32, barrier, timings uintptr) {
	C.kiln_call_run(C.uintptr_t(f), C.uintptr_t(arena), C.uintptr_t(weights),
		C.int32_t(tid), C.int32_t(nthreads), C.uintptr_t(barrier), C.uintptr_t(timings))
}
