package main

/*
#cgo LDFLAGS: -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

// The calling thread's last error (kiln_last_error). An exported Go function
// runs on the OS thread of its C caller, so setting it from Go during the
// call sets the caller's.
static __thread char *kiln_err;

static void kiln_set_error(const char *msg) {
	free(kiln_err);
	kiln_err = msg ? strdup(msg) : NULL;
}

static const char *kiln_get_error(void) { return kiln_err ? kiln_err : ""; }

// kiln_self is the absolute path of this shared library, resolved when it is
// loaded (before the program can change directory): dladdr names the file
// a symbol of ours was loaded from.
static char kiln_self[PATH_MAX];

__attribute__((constructor)) static void kiln_find_self(void) {
	Dl_info info;
	if (dladdr((void *)&kiln_find_self, &info) && info.dli_fname) {
		if (!realpath(info.dli_fname, kiln_self)) {
			strncpy(kiln_self, info.dli_fname, sizeof kiln_self - 1);
		}
	}
}

static const char *kiln_self_path(void) { return kiln_self; }
*/
import "C"

import "unsafe"

// setError records msg as the calling thread's last error ("" clears it).
func setError(msg string) {
	if msg == "" {
		C.kiln_set_error(nil)
		return
	}
	cs := C.CString(msg)
	defer C.free(unsafe.Pointer(cs))
	C.kiln_set_error(cs)
}

// lastError returns the calling thread's last error text.
func lastError() *C.char { return C.kiln_get_error() }

// selfPath is the file this library was loaded from ("" if unknown).
func selfPath() string { return C.GoString(C.kiln_self_path()) }
