// Package clib holds kiln.h, the C API of a network built as a shared
// library (kiln build --format lib, implemented by cmd/kiln-lib). kiln build
// writes Header next to the library it builds.
package clib

import _ "embed"

// Header is the text of kiln.h.
//
//go:embed kiln.h
var Header []byte

// Return codes of the C API, as kiln.h defines them.
const (
	OK        = 0
	ErrHandle = -1
	ErrArg    = -2
	ErrSize   = -3
	ErrRun    = -4
)
