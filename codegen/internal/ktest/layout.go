// Package ktest loads compiled kernels for tests and benchmarks of package
// codegen: dlopen/dlsym through cgo, a trampoline calling the kernel ABI
// void (*)(float*, const float*, int64_t, int64_t), CPU feature checks, and
// packing between plain and blocked layouts. It is imported only by tests.
//
// Without cgo, Open fails and the CPU checks report false, so the tests
// that execute kernels skip.
package ktest

import "github.com/kiln-dev/kiln/ir"

// Aligned returns a zeroed slice of n floats whose first element is 64-byte
// aligned, as the runtime's arenas are.
func Aligned(n int) []float32 {
	s := make([]float32, n+16)
	off := 0
	for uintptrOf(s[off:])%64 != 0 {
		off++
	}
	return s[off : off+n : off+n]
}

// PackBlocked converts plain x[N][C][H][W] into NCHW{b}c
// [N][ceil(C/b)][H][W][b] (ir.Layout's arithmetic), writing it into dst
// (padding lanes zero).
func PackBlocked(dst, x []float32, n, c, h, w, b int) {
	shape := []int{n, c, h, w}
	l := ir.NCHWc(b)
	size, _ := l.PhysicalNumel(shape)
	clear(dst[:size])
	for in := 0; in < n; in++ {
		for ic := 0; ic < c; ic++ {
			for y := 0; y < h; y++ {
				for xx := 0; xx < w; xx++ {
					dst[l.Offset(shape, in, ic, y, xx)] = x[ir.Plain.Offset(shape, in, ic, y, xx)]
				}
			}
		}
	}
}

// BlockedAt returns element (n, c, y, x) of an NCHW{b}c tensor with cTotal
// channels.
func BlockedAt(src []float32, cTotal, h, w, b, n, c, y, x int) float32 {
	return src[ir.NCHWc(b).Offset([]int{n + 1, cTotal, h, w}, n, c, y, x)]
}

// PackWeights converts plain OIHW weights w[O][I][KH][KW] into
// OIhw{b}i{b}o [ceil(O/b)][ceil(I/b)][KH][KW][b in][b out] in dst.
func PackWeights(dst, w []float32, o, i, kh, kw, b int) {
	shape := []int{o, i, kh, kw}
	l := ir.OIhwIiOo(b)
	size, _ := l.PhysicalNumel(shape)
	clear(dst[:size])
	for oc := 0; oc < o; oc++ {
		for ic := 0; ic < i; ic++ {
			for y := 0; y < kh; y++ {
				for x := 0; x < kw; x++ {
					dst[l.Offset(shape, oc, ic, y, x)] = w[ir.Plain.Offset(shape, oc, ic, y, x)]
				}
			}
		}
	}
}
