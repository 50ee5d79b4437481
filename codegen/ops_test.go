package codegen

import (
	"fmt"
	"math"
	"math/rand"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen/internal/ktest"
	kir "github.com/kiln-dev/kiln/ir"
)

// Tests of the non-conv kernels: each case builds its kernel, the test packs
// random inputs into an arena full of sentinels, runs every variant the CPU
// has (all tiles, and split in two ranges), and compares with a float64
// reference; nothing outside the output may change.

func pool(max, incl bool, n, c, h, w, kh, kw, sh, sw, ph, pw, outC, outOff int) PoolSpec {
	return PoolSpec{Max: max, CountIncludePad: incl, N: n, C: c, H: h, W: w, KH: kh, KW: kw, SH: sh, SW: sw, PH: ph, PW: pw,
		OH: kir.ConvOut(h, kh, sh, ph), OW: kir.ConvOut(w, kw, sw, pw), OutC: outC, OutCOffset: outOff}
}

var poolCases = []PoolSpec{
	pool(true, false, 1, 64, 15, 15, 3, 3, 2, 2, 0, 0, 64, 0),     // Inception reduction max pool
	pool(true, false, 2, 20, 9, 11, 3, 3, 2, 2, 1, 1, 48, 16),     // padded, partial block, into slice
	pool(false, false, 1, 32, 8, 8, 3, 3, 1, 1, 1, 1, 96, 64),     // Inception avg pool, count_include_pad=False, into slice
	pool(false, true, 2, 20, 7, 5, 3, 3, 1, 1, 1, 1, 20, 0),       // count_include_pad=True
	pool(false, false, 1, 16, 9, 8, 3, 2, 2, 2, 1, 1, 16, 0),      // non-square window
	pool(true, false, 1, 3, 5, 5, 2, 2, 2, 2, 0, 0, 16, 0),        // C < B, partial output window
	pool(false, true, 1, 48, 6, 6, 5, 5, 3, 3, 2, 2, 48, 0),       // wide pad, stride 3
	pool(true, false, 1, 16, 1, 1, 1, 1, 1, 1, 0, 0, 16, 0),       // 1x1 identity
	pool(false, false, 1, 16, 4, 4, 2, 2, 2, 2, 1, 1, 32, 16),     // pad = k/2 with even k
	pool(true, false, 1, 32, 73, 73, 3, 3, 2, 2, 0, 0, 32+64, 64), // wide row, high slice
}

func refPool(s PoolSpec, x []float32) []float64 {
	out := make([]float64, s.N*s.C*s.OH*s.OW)
	for n := 0; n < s.N; n++ {
		for c := 0; c < s.C; c++ {
			for oh := 0; oh < s.OH; oh++ {
				for ow := 0; ow < s.OW; ow++ {
					acc, cnt := 0.0, 0
					if s.Max {
						acc = math.Inf(-1)
					}
					for kh := 0; kh < s.KH; kh++ {
						for kw := 0; kw < s.KW; kw++ {
							ih, iw := oh*s.SH-s.PH+kh, ow*s.SW-s.PW+kw
							if ih < 0 || ih >= s.H || iw < 0 || iw >= s.W {
								continue
							}
							v := float64(x[((n*s.C+c)*s.H+ih)*s.W+iw])
							if s.Max {
								// Not math.Max: it returns +Inf for (+Inf, NaN),
								// where PyTorch and the interpreter give NaN.
								if v > acc || math.IsNaN(v) {
									acc = v
								}
							} else {
								acc += v
							}
							cnt++
						}
					}
					if !s.Max {
						if s.CountIncludePad {
							cnt = s.KH * s.KW
						}
						acc /= float64(cnt)
					}
					out[((n*s.C+c)*s.OH+oh)*s.OW+ow] = acc
				}
			}
		}
	}
	return out
}

// checkBlockedOut compares the channel slice [off, off+c) of a blocked
// output (oc channels) with ref [N][c][h][w] and requires the padding lanes
// up to the block boundary to be zero.
func checkBlockedOut(t *testing.T, what string, got []float32, ref []float64, n, c, h, w, oc, off, b int) {
	t.Helper()
	var vals []float32
	for in := 0; in < n; in++ {
		for ch := 0; ch < ceilDiv(c, b)*b; ch++ {
			for y := 0; y < h; y++ {
				for x := 0; x < w; x++ {
					v := ktest.BlockedAt(got, oc, h, w, b, in, off+ch, y, x)
					if ch < c {
						vals = append(vals, v)
					} else if v != 0 {
						t.Fatalf("%s: padding lane %d = %v, want 0", what, off+ch, v)
					}
				}
			}
		}
	}
	compare(t, what, vals, ref)
}

func inRange(lo, n int) func(int) bool { return func(i int) bool { return i >= lo && i < lo+n } }

func TestPool(t *testing.T) {
	for _, set := range targetSets(t) {
		t.Run(fmt.Sprintf("B%d", set.b), func(t *testing.T) { testPool(t, set) })
	}
}

func testPool(t *testing.T, set targetSet) {
	b := set.b
	layout := func(s PoolSpec) (PoolSpec, int) {
		s.InOff = 16
		s.OutOff = s.InOff + s.N*ceilDiv(s.C, b)*b*s.H*s.W + 32
		return s, s.OutOff + s.N*ceilDiv(s.OutC, b)*b*s.OH*s.OW + 16
	}
	lib := buildLibFor(t, set.targets, func(m *Module) error {
		for i, s := range poolCases {
			s, _ = layout(s)
			if _, _, err := m.Pool(fmt.Sprintf("pool%d", i), s); err != nil {
				return err
			}
		}
		return nil
	})
	r := rand.New(rand.NewSource(2))
	for i, s := range poolCases {
		s, n := layout(s)
		for _, special := range []bool{false, true} {
			testPoolCase(t, lib, set, r, fmt.Sprintf("pool%d", i), s, n, special)
		}
	}
}

// testPoolCase runs pooling kernel kname of case s (arena size n) on
// random inputs, with NaN and ±Inf among them when special is set: a max over a window holding
// a NaN must be NaN, as in the interpreter and PyTorch, and an average over +Inf and -Inf is
// NaN.
func testPoolCase(t *testing.T, lib *ktest.Lib, set targetSet, r *rand.Rand, kname string, s PoolSpec, n int, special bool) {
	b := set.b
	x := randn(r, s.N*s.C*s.H*s.W)
	if special {
		x = withSpecials(r, x)
	}
	ref := refPool(s, x)
	arena := make([]float32, n)
	fill(arena, sentinel)
	ktest.PackBlocked(arena[s.InOff:], x, s.N, s.C, s.H, s.W, b)
	tiles := s.N * ceilDiv(s.C, b) * s.OH
	cb, ocb := ceilDiv(s.C, b), ceilDiv(s.OutC, b)
	written := func(i int) bool {
		j := i - s.OutOff
		if j < 0 || j >= s.N*ocb*b*s.OH*s.OW {
			return false
		}
		blk := j / (b * s.OH * s.OW) % ocb
		return blk >= s.OutCOffset/b && blk < s.OutCOffset/b+cb
	}
	for _, tgt := range set.run {
		name := fmt.Sprintf("max=%v incl=%v %dx%d k%dx%d s%d p%dx%d C%d special=%v/%s", s.Max, s.CountIncludePad, s.H, s.W, s.KH, s.KW, s.SH, s.PH, s.PW, s.C, special, tgt.Name)
		t.Run(name, func(t *testing.T) {
			got := runChecked(t, kernel(t, lib, kname, tgt), arena, nil, tiles)
			checkUnchanged(t, "pool", got, arena, written)
			checkBlockedOut(t, "pool", got[s.OutOff:], ref, s.N, s.C, s.OH, s.OW, s.OutC, s.OutCOffset, b)
		})
	}
}

func TestGlobalAvgPoolReorderCopy(t *testing.T) {
	for _, set := range targetSets(t) {
		t.Run(fmt.Sprintf("B%d", set.b), func(t *testing.T) { testGlobalAvgPoolReorderCopy(t, set) })
	}
}

func testGlobalAvgPoolReorderCopy(t *testing.T, set targetSet) {
	b := set.b
	gaps := []GlobalAvgPoolSpec{{N: 2, C: 20, H: 5, W: 5}, {N: 1, C: 64, H: 8, W: 8}, {N: 1, C: 16, H: 1, W: 1}}
	reorders := []ReorderSpec{
		{N: 2, C: 20, H: 3, W: 5, ToBlocked: true}, {N: 2, C: 20, H: 3, W: 5},
		{N: 1, C: 3, H: 7, W: 6, ToBlocked: true}, {N: 1, C: 3, H: 7, W: 6},
		{N: 1, C: 32, H: 2, W: 3, ToBlocked: true}, {N: 1, C: 32, H: 2, W: 3},
		// Rows of whole vectors and a remainder on every ISA (reorderRow).
		{N: 2, C: 20, H: 2, W: 35, ToBlocked: true}, {N: 2, C: 20, H: 2, W: 35},
	}
	copies := []int{1, 17, 4096, 5000}
	const inOff, outOff = 8, 40000
	lib := buildLibFor(t, set.targets, func(m *Module) error {
		for i, s := range gaps {
			s.InOff, s.OutOff = inOff, outOff
			if _, _, err := m.GlobalAvgPool(fmt.Sprintf("gap%d", i), s); err != nil {
				return err
			}
		}
		for i, s := range reorders {
			s.InOff, s.OutOff = inOff, outOff
			if _, _, err := m.Reorder(fmt.Sprintf("reorder%d", i), s); err != nil {
				return err
			}
		}
		for i, n := range copies {
			if _, _, err := m.Copy(fmt.Sprintf("copy%d", i), CopySpec{Elems: n, InOff: inOff, OutOff: outOff}); err != nil {
				return err
			}
		}
		return nil
	})
	r := rand.New(rand.NewSource(3))
	arena := make([]float32, 2*outOff)
	for _, tgt := range set.run {
		for i, s := range gaps {
			t.Run(fmt.Sprintf("global_avgpool %+v/%s", s, tgt.Name), func(t *testing.T) {
				fill(arena, sentinel)
				x := randn(r, s.N*s.C*s.H*s.W)
				ktest.PackBlocked(arena[inOff:], x, s.N, s.C, s.H, s.W, b)
				ref := make([]float64, s.N*s.C)
				for k := range ref {
					for j := 0; j < s.H*s.W; j++ {
						ref[k] += float64(x[k*s.H*s.W+j])
					}
					ref[k] /= float64(s.H * s.W)
				}
				cb := ceilDiv(s.C, b)
				got := runChecked(t, kernel(t, lib, fmt.Sprintf("gap%d", i), tgt), arena, nil, s.N*cb)
				checkUnchanged(t, "global_avgpool", got, arena, inRange(outOff, s.N*cb*b))
				checkBlockedOut(t, "global_avgpool", got[outOff:], ref, s.N, s.C, 1, 1, s.C, 0, b)
			})
		}
		for i, s := range reorders {
			t.Run(fmt.Sprintf("reorder %+v/%s", s, tgt.Name), func(t *testing.T) {
				fill(arena, sentinel)
				x := randn(r, s.N*s.C*s.H*s.W)
				cb := ceilDiv(s.C, b)
				blocked := s.N * cb * b * s.H * s.W
				ref := make([]float64, len(x))
				for k, v := range x {
					ref[k] = float64(v)
				}
				k := kernel(t, lib, fmt.Sprintf("reorder%d", i), tgt)
				if s.ToBlocked {
					copy(arena[inOff:], x)
					got := runChecked(t, k, arena, nil, s.N*cb*s.H)
					checkUnchanged(t, "reorder", got, arena, inRange(outOff, blocked))
					checkBlockedOut(t, "reorder", got[outOff:], ref, s.N, s.C, s.H, s.W, s.C, 0, b)
					return
				}
				ktest.PackBlocked(arena[inOff:], x, s.N, s.C, s.H, s.W, b)
				got := runChecked(t, k, arena, nil, s.N*cb*s.H)
				checkUnchanged(t, "reorder", got, arena, inRange(outOff, len(x)))
				compare(t, "reorder", got[outOff:outOff+len(x)], ref)
			})
		}
		for i, n := range copies {
			t.Run(fmt.Sprintf("copy %d/%s", n, tgt.Name), func(t *testing.T) {
				fill(arena, sentinel)
				x := randn(r, n)
				copy(arena[inOff:], x)
				got := runChecked(t, kernel(t, lib, fmt.Sprintf("copy%d", i), tgt), arena, nil, ceilDiv(n, 4096))
				checkUnchanged(t, "copy", got, arena, inRange(outOff, n))
				for k := range x {
					if got[outOff+k] != x[k] {
						t.Fatalf("copy: element %d = %v, want %v", k, got[outOff+k], x[k])
					}
				}
			})
		}
	}
}

func TestDenseSoftmax(t *testing.T) {
	for _, set := range targetSets(t) {
		t.Run(fmt.Sprintf("B%d", set.b), func(t *testing.T) { testDenseSoftmax(t, set) })
	}
}

func testDenseSoftmax(t *testing.T, set targetSet) {
	denses := []DenseSpec{
		{N: 1, I: 100, O: 77, HasBias: true},
		{N: 4, I: 64, O: 130, HasBias: true},
		{N: 7, I: 33, O: 64},
		{N: 1, I: 1536, O: 1000, HasBias: true}, // Inception-v4 classifier
		{N: 2, I: 5, O: 3, HasBias: true},
	}
	softmaxes := []SoftmaxSpec{{N: 3, K: 77}, {N: 1, K: 1000}, {N: 2, K: 5}, {N: 4, K: 64}}
	const inOff, outOff = 8, 20000
	lib := buildLibFor(t, set.targets, func(m *Module) error {
		for i, s := range denses {
			s.InOff, s.OutOff, s.WeightOff, s.BiasOff = inOff, outOff, 3, 3+s.I*s.O+1
			if _, _, err := m.Dense(fmt.Sprintf("dense%d", i), s); err != nil {
				return err
			}
		}
		for i, s := range softmaxes {
			s.InOff, s.OutOff = inOff, outOff
			if _, _, err := m.Softmax(fmt.Sprintf("softmax%d", i), s); err != nil {
				return err
			}
			// In place.
			s.OutOff = inOff
			if _, _, err := m.Softmax(fmt.Sprintf("softmax_inplace%d", i), s); err != nil {
				return err
			}
		}
		return nil
	})
	r := rand.New(rand.NewSource(4))
	arena := make([]float32, 2*outOff)
	for _, tgt := range set.run {
		for i, s := range denses {
			t.Run(fmt.Sprintf("dense N%d I%d O%d/%s", s.N, s.I, s.O, tgt.Name), func(t *testing.T) {
				fill(arena, sentinel)
				x, w, bs := randn(r, s.N*s.I), randn(r, s.I*s.O), randn(r, s.O)
				copy(arena[inOff:], x)
				weights := make([]float32, 3+s.I*s.O+1+s.O+3)
				fill(weights, sentinel)
				copy(weights[3:], w)
				copy(weights[3+s.I*s.O+1:], bs)
				ref := make([]float64, s.N*s.O)
				for n := 0; n < s.N; n++ {
					for o := 0; o < s.O; o++ {
						sum := 0.0
						if s.HasBias {
							sum = float64(bs[o])
						}
						for k := 0; k < s.I; k++ {
							sum += float64(x[n*s.I+k]) * float64(w[k*s.O+o])
						}
						ref[n*s.O+o] = sum
					}
				}
				got := runChecked(t, kernel(t, lib, fmt.Sprintf("dense%d", i), tgt), arena, weights, ceilDiv(s.O, 64))
				checkUnchanged(t, "dense", got, arena, inRange(outOff, s.N*s.O))
				compare(t, "dense", got[outOff:outOff+s.N*s.O], ref)
			})
		}
		for i, s := range softmaxes {
			for _, inPlace := range []bool{false, true} {
				t.Run(fmt.Sprintf("softmax N%d K%d inplace=%v/%s", s.N, s.K, inPlace, tgt.Name), func(t *testing.T) {
					fill(arena, sentinel)
					x := randn(r, s.N*s.K)
					for k := range x {
						x[k] *= 30 // large logits: exp overflows without the max subtraction
					}
					copy(arena[inOff:], x)
					ref := make([]float64, len(x))
					for n := 0; n < s.N; n++ {
						row := x[n*s.K : (n+1)*s.K]
						m := math.Inf(-1)
						for _, v := range row {
							m = math.Max(m, float64(v))
						}
						sum := 0.0
						for k, v := range row {
							ref[n*s.K+k] = math.Exp(float64(v) - m)
							sum += ref[n*s.K+k]
						}
						for k := range row {
							ref[n*s.K+k] /= sum
						}
					}
					name, off := fmt.Sprintf("softmax%d", i), outOff
					if inPlace {
						name, off = fmt.Sprintf("softmax_inplace%d", i), inOff
					}
					got := runChecked(t, kernel(t, lib, name, tgt), arena, nil, s.N)
					checkUnchanged(t, "softmax", got, arena, inRange(off, len(x)))
					compare(t, "softmax", got[off:off+len(x)], ref)
					// Per element too: small probabilities must be accurate.
					for k, v := range ref {
						if d := math.Abs(float64(got[off+k]) - v); d > 1e-6*v+1e-30 && d > 1e-7 {
							t.Fatalf("softmax element %d: got %v, want %v", k, got[off+k], v)
						}
					}
				})
			}
		}
	}
}

// TestSpecErrors checks that bad specs and modules give errors.
func TestSpecErrors(t *testing.T) {
	m := NewModule(AVX512, AVX2)
	good := cv(1, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1)
	good.OutOff = 10000
	for _, c := range []struct {
		name string
		add  func() error
		want string
	}{
		{"bad name", func() error { _, _, err := m.Conv("1abc", good); return err }, "not a C identifier"},
		{"negative pad", func() error { s := good; s.PH = -1; _, _, err := m.Conv("a", s); return err }, "negative"},
		{"zero channels", func() error { s := good; s.C = 0; _, _, err := m.Conv("a", s); return err }, "must be positive"},
		{"wrong OH", func() error { s := good; s.OH = 7; _, _, err := m.Conv("a", s); return err }, "output 7x8"},
		{"unaligned slice", func() error { s := good; s.OutC, s.OutCOffset = 40, 8; _, _, err := m.Conv("a", s); return err }, "multiple of the block"},
		{"slice overflow", func() error { s := good; s.OutC, s.OutCOffset = 24, 16; _, _, err := m.Conv("a", s); return err }, "outside the destination"},
		{"overlap", func() error { s := good; s.OutOff = 100; _, _, err := m.Conv("a", s); return err }, "overlaps"},
		{"clip above zero", func() error { s := good; s.Clip, s.Lo, s.Hi = true, 0.5, 6; _, _, err := m.Conv("a", s); return err }, "must contain 0"},
		{"depthwise clip below zero", func() error {
			_, _, err := m.Depthwise("dw", DepthwiseSpec{N: 1, C: 16, H: 8, W: 8, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1, OH: 8, OW: 8,
				OutC: 16, OutOff: 5000, Clip: true, Lo: -2, Hi: -1})
			return err
		}, "must contain 0"},
		{"pool pad", func() error {
			_, _, err := m.Pool("p", PoolSpec{N: 1, C: 16, H: 8, W: 8, KH: 3, KW: 3, SH: 1, SW: 1, PH: 2, PW: 2, OH: 10, OW: 10, OutC: 16, OutOff: 5000})
			return err
		}, "at most half"},
		{"dense", func() error { _, _, err := m.Dense("d", DenseSpec{N: 1, I: 0, O: 3}); return err }, "must be positive"},
		{"softmax overlap", func() error { _, _, err := m.Softmax("s", SoftmaxSpec{N: 2, K: 10, InOff: 0, OutOff: 5}); return err }, "overlaps"},
		{"huge offset", func() error { s := good; s.OutOff = 1 << 50; _, _, err := m.Conv("a", s); return err }, "too large"},
		{"huge extent", func() error {
			s := good
			s.N, s.OutOff = 1<<30, 1<<20
			_, _, err := m.Conv("a", s)
			return err
		}, "too large"},
		{"huge kernel", func() error {
			s := cv(1, 16, 100, 100, 16, 65, 1, 1, 1, 0, 0)
			s.OutOff = 1 << 20
			_, _, err := m.Conv("a", s)
			return err
		}, "larger than 64"},
	} {
		err := c.add()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.name, err, c.want)
		}
	}
	if _, _, err := m.Conv("ok", good); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Conv("ok", good); err == nil || !strings.Contains(err.Error(), "defined twice") {
		t.Errorf("duplicate kernel: error %v", err)
	}
	if err := NewModule(AVX512, NEON).Err(); err == nil || !strings.Contains(err.Error(), "triples differ") {
		t.Errorf("mixed triples: error %v", err)
	}
	if _, _, err := NewModule().Conv("x", good); err == nil {
		t.Errorf("module without targets accepted a kernel")
	}
}
