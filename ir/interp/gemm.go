package interp

// This file holds the float32 matrix multiplication that carries every
// convolution and dense layer: C = A·B with A (M×K), B (K×N) and C (M×N, row
// major), written in pure Go after the layered algorithm of
//
//	K. Goto and R. A. van de Geijn, "Anatomy of high-performance matrix
//	multiplication", ACM Trans. Math. Softw. 34(3), 2008,
//
// in the loop structure later popularised by BLIS (Van Zee and van de Geijn,
// 2015):
//
//	for each K block p of kcBlock rows of B            (packed B panel stays in L2)
//	    pack B[p, j0:j1] into nr-column slivers
//	    for each nr sliver jr of the panel               (one sliver stays in L1)
//	        for each mr-row panel ir of A in [i0, i1)    (packed A block streams from L2)
//	            micro-kernel: an mr×nr tile of C held in registers,
//	            accumulated over the kc values of the block,
//	            then stored to (p == 0) or added to (p > 0) C.
//
// The two outer loops of Goto's algorithm (over mc-row blocks of A and
// nc-column panels of B) become independent work tiles, which goroutines take
// from a shared counter (see gemm).
//
// A is packed once per GEMM (it is the conv or dense weight matrix and is
// reused by every image and pixel tile); B is packed on the fly by the worker
// that owns a tile. For convolutions B is the im2col matrix of the input and is
// never materialised: the packing routine reads the input image directly
// (implicit im2col), and for 1×1 stride-1 unpadded convolutions B is simply the
// input's C×(H·W) matrix.
//
// Summation order. Every element of C is the float32 sum
//
//	c = s_0 + s_1 + … + s_{P-1},  s_p = Σ_{k in block p} a_ik·b_kj  (sequential in k),
//
// evaluated left to right, where the K blocks have the fixed size kcBlock. The
// order depends only on K, never on the tile sizes mc and nc or the number of
// threads, so results are bitwise identical for any Options.Threads. Blocked
// summation also keeps the float32 rounding error well below that of one long
// sequential sum.
//
// Register tiling. Go compiles float32 arithmetic to scalar SSE instructions
// and has 15 usable XMM registers on amd64, so the micro-kernel is a 5×2 tile:
// ten accumulators plus the current A and B values and one product fit in
// registers without spills (see kernel5x2; 4×4 and wider tiles spill). Rows
// past M and columns past N are zero padding in the packed operands; the
// kernel computes them and the store discards them, so edge tiles follow the
// same arithmetic as interior ones.

const (
	// mr×nr is the register tile of the micro-kernel.
	mr = 5
	nr = 2
	// kcBlock is the K block: the depth of one packed panel and the unit of
	// blocked summation. It is fixed so that results do not depend on tiling.
	kcBlock = 256
	// mcMax and ncMax bound a work tile: an mcMax×kcBlock block of packed A
	// (120 KiB) and a kcBlock×ncMax panel of packed B (192 KiB) both fit in a
	// 512 KiB–1 MiB L2 cache.
	mcMax = 24 * mr
	ncMax = 96 * nr
)

// packedA is A (M×K) packed for the micro-kernel. blocks[p] holds K block p
// (columns p*kcBlock … of A, kc = min(kcBlock, K-p*kcBlock) of them) as
// ceil(M/mr) panels of kc×mr values, panel-major then k-major:
// blocks[p][ip*kc*mr + k*mr + r] = A[ip*mr+r][p*kcBlock+k], zero for rows ≥ M.
type packedA struct {
	m, k   int
	blocks [][]float32
}

// packA packs the M×K matrix stored row-major in a with row stride lda.
func packA(a []float32, m, k, lda int) *packedA {
	pa := &packedA{m: m, k: k}
	panels := ceilDiv(m, mr)
	for k0 := 0; k0 < k; k0 += kcBlock {
		kc := min(kcBlock, k-k0)
		blk := make([]float32, panels*kc*mr)
		for ip := 0; ip < panels; ip++ {
			dst := blk[ip*kc*mr : (ip+1)*kc*mr]
			for r := 0; r < mr; r++ {
				i := ip*mr + r
				if i >= m {
					break // rows past M stay zero
				}
				row := a[i*lda+k0 : i*lda+k0+kc]
				for kk, v := range row {
					dst[kk*mr+r] = v
				}
			}
		}
		pa.blocks = append(pa.blocks, blk)
	}
	return pa
}

// bSource is the B operand (K×N) of a GEMM. pack writes B[k0:k1, j0:j1] to dst
// as ceil((j1-j0)/nr) slivers of (k1-k0)×nr values, sliver-major then k-major:
// dst[s*kc*nr + k*nr + q] = B[k0+k][j0+s*nr+q], zero for columns ≥ j1.
type bSource interface {
	pack(dst []float32, k0, k1, j0, j1 int)
}

// matB is a row-major K×N matrix with row stride ld (the input of a 1×1
// stride-1 unpadded convolution: channels × pixels).
type matB struct {
	data []float32
	ld   int
}

func (b matB) pack(dst []float32, k0, k1, j0, j1 int) {
	kc := k1 - k0
	for k := k0; k < k1; k++ {
		row := b.data[k*b.ld+j0 : k*b.ld+j1]
		off := (k - k0) * nr
		for j := 0; j < len(row); j += nr {
			d := dst[(j/nr)*kc*nr+off : (j/nr)*kc*nr+off+nr]
			n := copy(d, row[j:])
			clear(d[n:])
		}
	}
}

// transB is B = Wᵀ for a row-major N×K matrix W with row stride ld (the weight
// of a dense layer): B[k][j] = W[j][k].
type transB struct {
	data []float32
	ld   int
}

func (b transB) pack(dst []float32, k0, k1, j0, j1 int) {
	kc := k1 - k0
	slivers := ceilDiv(j1-j0, nr)
	for s := 0; s < slivers; s++ {
		d := dst[s*kc*nr : (s+1)*kc*nr]
		for q := 0; q < nr; q++ {
			j := j0 + s*nr + q
			if j >= j1 {
				for k := 0; k < kc; k++ {
					d[k*nr+q] = 0
				}
				continue
			}
			col := b.data[j*b.ld+k0 : j*b.ld+k1]
			for k, v := range col {
				d[k*nr+q] = v
			}
		}
	}
}

// im2colB is the im2col matrix of one image (and one channel group) of a
// convolution, read straight from the input: row k = (c, ky, kx) in C·KH·KW
// order (matching OIHW weights), column j = output pixel (oy, ox) in row-major
// order, B[k][j] = x[c][oy*sh-ph+ky*dh][ox*sw-pw+kx*dw], zero outside the
// image (dh, dw: the dilation, PyTorch's Conv2d).
type im2colB struct {
	x              []float32 // c×h×w planes of this image and group
	h, w           int
	kh, kw         int
	sh, sw, ph, pw int
	dh, dw         int // dilation
	wo             int // output width
}

func (b *im2colB) pack(dst []float32, k0, k1, j0, j1 int) {
	kc := k1 - k0
	khw := b.kh * b.kw
	for k := k0; k < k1; k++ {
		c, r := k/khw, k%khw
		ky, kx := r/b.kw, r%b.kw
		plane := b.x[c*b.h*b.w : (c+1)*b.h*b.w]
		off := (k - k0) * nr
		// Walk the output pixels j0..j1 one output row segment at a time.
		oy, ox := j0/b.wo, j0%b.wo
		for j := j0; j < j1; {
			seg := min(b.wo-ox, j1-j) // pixels left in this output row
			iy := oy*b.sh - b.ph + ky*b.dh
			rowOK := iy >= 0 && iy < b.h
			for t := 0; t < seg; t++ {
				jj := j + t - j0
				v := float32(0)
				if rowOK {
					if ix := (ox+t)*b.sw - b.pw + kx*b.dw; ix >= 0 && ix < b.w {
						v = plane[iy*b.w+ix]
					}
				}
				dst[(jj/nr)*kc*nr+off+jj%nr] = v
			}
			j += seg
			ox = 0
			oy++
		}
		// Zero the padding columns of the last sliver.
		for jj := j1 - j0; jj%nr != 0; jj++ {
			dst[(jj/nr)*kc*nr+off+jj%nr] = 0
		}
	}
}

// gemmTask is one product C = A·B: A packed, B (K×N) packed on demand, C the
// M×N row-major matrix at c with row stride ldc.
type gemmTask struct {
	a   *packedA
	b   bSource
	n   int
	c   []float32
	ldc int
}

// gemmTile is a unit of parallel work: rows [i0, i1) and columns [j0, j1) of
// task t's C, computed over the whole of K.
type gemmTile struct {
	t              int
	i0, i1, j0, j1 int
}

// gemm computes all tasks, which must share M and N (the images and groups of
// one convolution), using up to threads goroutines. Tiles are sized so that
// there are a few per thread (for load balance) but no larger than mcMax×ncMax
// (for cache reuse); the tiling does not affect the results.
func gemm(tasks []gemmTask, threads int) {
	if len(tasks) == 0 {
		return
	}
	// Choose tile sizes from the first task (all tasks of one call have the
	// same shape).
	m, n := tasks[0].a.m, tasks[0].n
	mc := min(mcMax, roundUp(m, mr))
	nc := min(ncMax, roundUp(n, nr))
	count := func() int { return len(tasks) * ceilDiv(m, mc) * ceilDiv(n, nc) }
	for count() < 4*threads {
		switch {
		case nc >= mc && nc > 8*nr:
			nc = roundUp(nc/2, nr)
		case mc > 4*mr:
			mc = roundUp(mc/2, mr)
		case nc > 2*nr:
			nc = roundUp(nc/2, nr)
		default:
			goto done
		}
	}
done:
	var tiles []gemmTile
	for t := range tasks {
		for j0 := 0; j0 < n; j0 += nc {
			for i0 := 0; i0 < m; i0 += mc {
				tiles = append(tiles, gemmTile{t, i0, min(i0+mc, m), j0, min(j0+nc, n)})
			}
		}
	}
	workers := min(threads, len(tiles))
	bufs := make([][]float32, workers)
	for w := range bufs {
		bufs[w] = make([]float32, kcBlock*roundUp(nc, nr))
	}
	parallel(workers, len(tiles), func(w, i int) {
		tl := tiles[i]
		gemmTileRun(&tasks[tl.t], tl, bufs[w])
	})
}

// gemmTileRun computes one tile, using buf for the packed B panel.
func gemmTileRun(task *gemmTask, tl gemmTile, buf []float32) {
	a := task.a
	var acc [mr * nr]float32
	for p, blk := range a.blocks {
		k0 := p * kcBlock
		kc := min(kcBlock, a.k-k0)
		task.b.pack(buf, k0, k0+kc, tl.j0, tl.j1)
		for jr := tl.j0; jr < tl.j1; jr += nr {
			s := (jr - tl.j0) / nr
			bs := buf[s*kc*nr : (s+1)*kc*nr]
			nv := min(nr, tl.j1-jr)
			for ir := tl.i0; ir < tl.i1; ir += mr {
				ip := ir / mr
				as := blk[ip*kc*mr : (ip+1)*kc*mr]
				kernel5x2(as, bs, &acc)
				mv := min(mr, a.m-ir)
				for r := 0; r < mv; r++ {
					row := task.c[(ir+r)*task.ldc+jr : (ir+r)*task.ldc+jr+nv]
					if p == 0 {
						for q := range row {
							row[q] = acc[r*nr+q]
						}
					} else {
						for q := range row {
							row[q] += acc[r*nr+q]
						}
					}
				}
			}
		}
	}
}

// kernel5x2 is the micro-kernel: acc = Σ_k a[5k:5k+5] ⊗ b[2k:2k+2], the
// outer products of the kc = len(a)/5 packed columns of A and rows of B,
// accumulated sequentially in k in ten float32 registers.
//
// The indexed loads are deliberate. Go's instruction scheduler orders the
// values of a basic block so that those with uses inside the block come first;
// in a straight-line loop body that hoists all ten multiplications above the
// ten accumulating additions, needs twenty live registers and spills. The
// bounds check before each a[i+r] ends a basic block, so each block holds one
// row's two multiply-adds and nothing spills (measured about 1.5× faster than
// a branch-free body; the checks themselves are well-predicted compares).
func kernel5x2(a, b []float32, acc *[mr * nr]float32) {
	var c00, c01, c10, c11, c20, c21, c30, c31, c40, c41 float32
	kc := len(a) / mr
	for k := 0; k < kc; k++ {
		i, j := mr*k, nr*k
		b0, b1 := b[j], b[j+1]
		a0 := a[i]
		c00 += a0 * b0
		c01 += a0 * b1
		a1 := a[i+1]
		c10 += a1 * b0
		c11 += a1 * b1
		a2 := a[i+2]
		c20 += a2 * b0
		c21 += a2 * b1
		a3 := a[i+3]
		c30 += a3 * b0
		c31 += a3 * b1
		a4 := a[i+4]
		c40 += a4 * b0
		c41 += a4 * b1
	}
	*acc = [mr * nr]float32{c00, c01, c10, c11, c20, c21, c30, c31, c40, c41}
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

func roundUp(a, b int) int { return ceilDiv(a, b) * b }
