// Command kiln-lib is the runtime half of a network built as a C shared
// library: `make build` compiles it with -buildmode=c-shared into
// bin/libkiln.so, and `kiln build NET --format lib -o libNET.so` appends the
// compiled network to a copy of it (the same payload, digests and marker as
// a standalone executable, rt.AppendPayload), and writes kiln.h
// (runtime/clib) next to it. The C API is declared and documented in kiln.h.
//
// Why the Go runtime, not a small C runtime linked with the kernels: the
// library then shares every check of the Go runtime (package rt) with the
// standalone executables — payload trailer and marker, SHA-256 of manifest,
// kernels and weights, manifest offsets against the kernels' exported
// sizes, CPU dispatch with the target table's feature checks, the session
// pool with persistent worker threads, several batch sizes — instead of a
// second implementation of each in C. The cost is a Go runtime in the
// process (about 2 MB of code, a few threads, one Go runtime per process:
// load at most one Kiln library) and the cgo transition on each call,
// tens of nanoseconds against milliseconds per inference.
//
// Handles are small integers into a table, never Go pointers, so C holds no
// Go memory; every exported function recovers from a panic and reports it
// as an error, so no input aborts the caller's process.
package main

/*
#include <stddef.h>
#include <stdint.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"unsafe"

	rt "github.com/kiln-dev/kiln/runtime"
	"github.com/kiln-dev/kiln/runtime/clib"
)

func main() {} // required by -buildmode=c-shared; never runs

// model is one open network.
type model struct {
	mm     *rt.MultiModel
	bundle *rt.Bundle // nil once the weights were copied out of it
	in     []int64    // input shape at the largest batch
	out    []int64    // output shape at the largest batch
}

var (
	mu     sync.Mutex
	models = map[int64]*model{}
	nextID int64
)

func lookup(h C.int64_t) *model {
	mu.Lock()
	defer mu.Unlock()
	return models[int64(h)]
}

// guard turns a panic in an exported function into an error code and text.
func guard(code *C.int) {
	if r := recover(); r != nil {
		setError(fmt.Sprintf("kiln: internal error: %v", r))
		*code = clib.ErrRun
	}
}

//export kiln_open
func kiln_open(path *C.char) (h C.int64_t) {
	defer func() {
		if r := recover(); r != nil {
			setError(fmt.Sprintf("kiln_open: internal error: %v", r))
			h = 0
		}
	}()
	setError("")
	m, err := open(path)
	if err != nil {
		setError("kiln_open: " + err.Error())
		return 0
	}
	mu.Lock()
	defer mu.Unlock()
	nextID++
	models[nextID] = m
	return C.int64_t(nextID)
}

// open finds the payload at path (NULL: this library) and opens it with
// the options of the environment (KILN_THREADS, KILN_ISA,
// KILN_WEIGHTS_CHECK=off, KILN_WEIGHTS=mmap).
func open(path *C.char) (*model, error) {
	p := selfPath()
	if path != nil {
		p = C.GoString(path)
	}
	if p == "" {
		return nil, errors.New("cannot locate this library's file (dladdr failed); pass its path")
	}
	b, found, err := rt.FindBundle(p)
	if err != nil {
		return nil, err
	}
	if !found {
		if path == nil {
			return nil, fmt.Errorf("%s carries no compiled network: it is the plain runtime library, to which `kiln build NET --format lib -o libNET.so` appends one", p)
		}
		return nil, fmt.Errorf("%s carries no compiled network", p)
	}
	opts := rt.Options{
		SkipWeightsCheck: os.Getenv("KILN_WEIGHTS_CHECK") == "off",
		CopyWeights:      os.Getenv("KILN_WEIGHTS") != "mmap",
	}
	if s := os.Getenv("KILN_THREADS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 4096 {
			b.Close()
			return nil, fmt.Errorf("KILN_THREADS=%q: want a thread count from 0 (all cores) to 4096", s)
		}
		opts.Threads = n
	}
	mm, err := rt.OpenMulti(b, opts)
	if err != nil {
		b.Close()
		return nil, err
	}
	m := &model{mm: mm, bundle: b}
	man := mm.Largest().Manifest()
	for _, d := range man.Input.Shape {
		m.in = append(m.in, int64(d))
	}
	for _, d := range man.Output.Shape {
		m.out = append(m.out, int64(d))
	}
	if opts.CopyWeights {
		b.Close()
		m.bundle = nil
	}
	return m, nil
}

//export kiln_run
func kiln_run(h C.int64_t, in *C.float, nIn C.size_t, out *C.float, nOut C.size_t) (code C.int) {
	defer guard(&code)
	setError("")
	m := lookup(h)
	if m == nil {
		setError(fmt.Sprintf("kiln_run: %d is not an open model", int64(h)))
		return clib.ErrHandle
	}
	if in == nil || out == nil {
		setError("kiln_run: NULL input or output buffer")
		return clib.ErrArg
	}
	const maxFloats = 1 << 40
	if nIn == 0 || nOut == 0 || nIn > maxFloats || nOut > maxFloats {
		setError(fmt.Sprintf("kiln_run: n_in %d, n_out %d: want positive sizes", uint64(nIn), uint64(nOut)))
		return clib.ErrSize
	}
	if err := checkSizes(m, int(nIn), int(nOut)); err != nil {
		setError("kiln_run: " + err.Error())
		return clib.ErrSize
	}
	x := unsafe.Slice((*float32)(unsafe.Pointer(in)), int(nIn))
	y := unsafe.Slice((*float32)(unsafe.Pointer(out)), int(nOut))
	if err := m.mm.Run(x, y); err != nil {
		setError("kiln_run: " + err.Error())
		return clib.ErrRun
	}
	return clib.OK
}

// checkSizes checks n_in and n_out against the network before any memory
// is touched, so a wrong size is KILN_ERR_SIZE with the sizes wanted.
func checkSizes(m *model, nIn, nOut int) error {
	inRow, outRow := m.mm.InRow(), m.mm.OutRow()
	if inRow == 0 { // tensors do not lead with the batch: exact sizes only
		mmLargest := m.mm.Largest()
		man := mmLargest.Manifest()
		want, wantOut := numel(man.Input.Shape), numel(man.Output.Shape)
		if nIn != want || nOut != wantOut {
			return fmt.Errorf("n_in %d, n_out %d: want %d and %d", nIn, nOut, want, wantOut)
		}
		return nil
	}
	if nIn%inRow != 0 {
		return fmt.Errorf("n_in %d is not a multiple of one sample's %d floats (input %v)", nIn, inRow, m.in)
	}
	if n := nIn / inRow; nOut != n*outRow {
		return fmt.Errorf("n_out %d: %d samples give %d floats of output (output %v)", nOut, n, n*outRow, m.out)
	}
	return nil
}

func numel(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

//export kiln_input_shape
func kiln_input_shape(h C.int64_t, dims *C.int64_t, capacity C.size_t) (code C.int) {
	defer guard(&code)
	return shape(h, dims, capacity, "kiln_input_shape", func(m *model) []int64 { return m.in })
}

//export kiln_output_shape
func kiln_output_shape(h C.int64_t, dims *C.int64_t, capacity C.size_t) (code C.int) {
	defer guard(&code)
	return shape(h, dims, capacity, "kiln_output_shape", func(m *model) []int64 { return m.out })
}

func shape(h C.int64_t, dims *C.int64_t, capacity C.size_t, fn string, get func(*model) []int64) C.int {
	setError("")
	m := lookup(h)
	if m == nil {
		setError(fmt.Sprintf("%s: %d is not an open model", fn, int64(h)))
		return clib.ErrHandle
	}
	s := get(m)
	if dims == nil || uint64(capacity) < uint64(len(s)) {
		setError(fmt.Sprintf("%s: the shape has %d dimensions, dims holds %d", fn, len(s), uint64(capacity)))
		return clib.ErrArg
	}
	copy(unsafe.Slice((*int64)(unsafe.Pointer(dims)), len(s)), s)
	return C.int(len(s))
}

//export kiln_close
func kiln_close(h C.int64_t) (code C.int) {
	defer guard(&code)
	setError("")
	mu.Lock()
	m := models[int64(h)]
	delete(models, int64(h))
	mu.Unlock()
	if m == nil {
		setError(fmt.Sprintf("kiln_close: %d is not an open model", int64(h)))
		return clib.ErrHandle
	}
	err := m.mm.Close()
	if m.bundle != nil {
		m.bundle.Close()
	}
	if err != nil {
		setError("kiln_close: " + err.Error())
		return clib.ErrRun
	}
	return clib.OK
}

//export kiln_last_error
func kiln_last_error() *C.char { return lastError() }
