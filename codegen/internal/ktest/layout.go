// Package ktest loads compiled kernels for tests and benchmarks of package
// codegen: dlopen/dlsym through cgo, a trampoline calling the kernel ABI
// void (*)(float*, const float*, int64_t, int64_t), CPU feature checks, and
// packing between plain and blocked layouts. It is imported only by tests.
//
// Without cgo, Open fails and the CPU checks report false, so the tests
// that execute kernels skip.
package ktest

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

func ceil(a, b int) int { return (a + b - 1) / b }

// PackBlocked converts plain x[N][C][H][W] into NCHW{b}c
// [N][ceil(C/b)][H][W][b], writing it into dst (padding lanes zero).
func PackBlocked(dst, x []float32, n, c, h, w, b int) {
	cb := ceil(c, b)
	for i := range dst[:n*cb*b*h*w] {
		dst[i] = 0
	}
	for in := 0; in < n; in++ {
		for ic := 0; ic < c; ic++ {
			for y := 0; y < h; y++ {
				for xx := 0; xx < w; xx++ {
					dst[(((in*cb+ic/b)*h+y)*w+xx)*b+ic%b] = x[((in*c+ic)*h+y)*w+xx]
				}
			}
		}
	}
}

// BlockedAt returns element (n, c, y, x) of an NCHW{b}c tensor with cTotal
// channels.
func BlockedAt(src []float32, cTotal, h, w, b, n, c, y, x int) float32 {
	cb := ceil(cTotal, b)
	return src[(((n*cb+c/b)*h+y)*w+x)*b+c%b]
}

// PackWeights converts plain OIHW weights w[O][I][KH][KW] into
// OIhw{b}i{b}o [ceil(O/b)][ceil(I/b)][KH][KW][b in][b out] in dst.
func PackWeights(dst, w []float32, o, i, kh, kw, b int) {
	ob, ib := ceil(o, b), ceil(i, b)
	for k := range dst[:ob*ib*kh*kw*b*b] {
		dst[k] = 0
	}
	for oc := 0; oc < o; oc++ {
		for ic := 0; ic < i; ic++ {
			for y := 0; y < kh; y++ {
				for x := 0; x < kw; x++ {
					dst[((((oc/b)*ib+ic/b)*kh+y)*kw+x)*b*b+(ic%b)*b+oc%b] = w[((oc*i+ic)*kh+y)*kw+x]
				}
			}
		}
	}
}
