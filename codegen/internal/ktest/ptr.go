package ktest

import "unsafe"

func uintptrOf(s []float32) uintptr { return uintptr(unsafe.Pointer(&s[0])) }
