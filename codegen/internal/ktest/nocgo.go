//go:build !cgo

package ktest

import "errors"

// Lib is a shared library (unavailable without cgo).
type Lib struct{}

// Kernel is a function with the kernel ABI (unavailable without cgo).
type Kernel struct{ Name string }

var errNoCgo = errors.New("ktest: built without cgo: cannot load kernels")

// Open fails without cgo.
func Open(path string) (*Lib, error) { return nil, errNoCgo }

// Close does nothing.
func (l *Lib) Close() error { return nil }

// Kernel fails without cgo.
func (l *Lib) Kernel(name string) (Kernel, error) { return Kernel{}, errNoCgo }

// Run panics: no kernel can be obtained without cgo.
func (k Kernel) Run(arena, weights []float32, begin, end int) { panic(errNoCgo) }

// Time panics: no kernel can be obtained without cgo.
func (k Kernel) Time(arena, weights []float32, tiles, reps int) float64 { panic(errNoCgo) }

// HasAVX512 reports false without cgo.
func HasAVX512() bool { return false }

// HasAVX2 reports false without cgo.
func HasAVX2() bool { return false }
