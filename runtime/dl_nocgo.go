//go:build !(linux && cgo)

package rt

import (
	"errors"
	goruntime "runtime"
)

// Without cgo on Linux the runtime cannot load shared objects; everything
// else (manifests, payloads, ISA selection) still works.

var errNoLoader = errors.New("load shared object: this kiln runtime was built without cgo or not for Linux (" +
	goruntime.GOOS + "/" + goruntime.GOARCH + "); rebuild with CGO_ENABLED=1 on Linux")

type library struct{ name string }

var noMemfd bool

func dlopen(path, name string) (*library, error)                                       { return nil, errNoLoader }
func openLibraryBytes(so []byte) (*library, error)                                     { return nil, errNoLoader }
func (l *library) sym(name string) uintptr                                             { return 0 }
func (l *library) close() error                                                        { return nil }
func callABIVersion(f uintptr) int32                                                   { return 0 }
func callSize(f uintptr) int64                                                         { return 0 }
func callRun(f, arena, weights uintptr, tid, nthreads int32, barrier, timings uintptr) {}
