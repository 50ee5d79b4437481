package codegen

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// Tests of the generated machine code with the FileCheck-style matcher.

// asmFunction returns the assembly of function fn.
func asmFunction(t *testing.T, asm, fn string) string {
	t.Helper()
	start := strings.Index(asm, "\n"+fn+":")
	if start < 0 {
		t.Fatalf("function %s not in the assembly", fn)
	}
	rest := asm[start+1:]
	if end := strings.Index(rest, ".Lfunc_end"); end >= 0 {
		rest = rest[:end]
	}
	return rest
}

var loopLabel = regexp.MustCompile(`^(\.LBB[0-9_]+):`)

// innerLoops returns the text of each innermost loop of a function's
// assembly: from its header label to the branch back to it (LLVM marks
// innermost loop headers with "This Inner Loop Header").
func innerLoops(fnAsm string) []string {
	lines := strings.Split(fnAsm, "\n")
	var loops []string
	for i, l := range lines {
		m := loopLabel.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		// The annotation is on the label line or the comment lines after it.
		inner := strings.Contains(l, "Inner Loop Header")
		for j := i + 1; !inner && j < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[j]), "//") || !inner && j < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[j]), "#"); j++ {
			inner = strings.Contains(lines[j], "Inner Loop Header")
		}
		if !inner {
			continue
		}
		for j := i + 1; j < len(lines); j++ {
			f := strings.Fields(lines[j])
			// x86 jcc, aarch64 b.cc/cbnz/tbnz back to the header.
			if len(f) >= 2 && strings.IndexAny(f[0][:1], "jbct") == 0 && f[len(f)-1] == m[1] {
				loops = append(loops, strings.Join(lines[i:j+1], "\n"))
				break
			}
		}
	}
	return loops
}

// Typical Inception layers (and the awkward ones) whose inner loops must be
// pure register-blocked FMA loops.
var asmConvs = []ConvSpec{
	with(cv(1, 64, 73, 73, 96, 3, 3, 1, 1, 0, 0), biasRelu),
	with(cv(1, 1024, 17, 17, 384, 1, 1, 1, 1, 0, 0), biasRelu),
	with(cv(1, 3, 299, 299, 32, 3, 3, 2, 2, 0, 0), func(s *ConvSpec) { plain(s); biasRelu(s) }),
	with(cv(1, 192, 17, 17, 224, 1, 7, 1, 1, 0, 3), allEpi),
	with(cv(1, 160, 17, 17, 192, 7, 1, 1, 1, 3, 0), biasRelu),
	with(cv(1, 448, 8, 8, 512, 3, 1, 1, 1, 1, 0), biasRelu),
	with(cv(1, 64, 35, 35, 96, 5, 5, 1, 1, 2, 2), biasRelu),
	with(cv(1, 384, 35, 35, 384, 3, 3, 2, 2, 0, 0), biasRelu),
}

func TestConvAssemblyX86(t *testing.T) {
	tc := toolchain(t)
	m := NewModule(AVX512, AVX2)
	for i, s := range asmConvs {
		s.OutOff = 1 << 24
		if _, _, err := m.Conv(fmt.Sprintf("conv%d", i), s); err != nil {
			t.Fatal(err)
		}
	}
	asm, err := tc.Assembly(m.String(), AVX512)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range asmConvs {
		for _, tg := range []struct {
			t              Target
			fma, forbidden string
		}{
			// AVX-512: FMAs on zmm (the broadcast input is an embedded
			// {1to16} operand when one FMA uses it, a register when several).
			{AVX512, "CHECK: vfmadd231ps {{.*}}%zmm{{[0-9]+}}, %zmm{{[0-9]+}}", "ymm"},
			// AVX2: FMAs on ymm, no zmm anywhere.
			{AVX2, "CHECK: vfmadd231ps {{.*}}%ymm{{[0-9]+}}, %ymm{{[0-9]+}}", "zmm"},
		} {
			fn := tg.t.Symbol(fmt.Sprintf("conv%d", i))
			t.Run(fmt.Sprintf("%dx%d_%dto%d_%dx%d/%s", s.KH, s.KW, s.C, s.O, s.H, s.W, tg.t.Name), func(t *testing.T) {
				body := asmFunction(t, asm, fn)
				if err := Check(body, fmt.Sprintf("CHECK-LABEL: %s:\nCHECK-NOT: %s\n%s\nCHECK-NOT: %s", fn, tg.forbidden, tg.fma, tg.forbidden)); err != nil {
					t.Fatal(err)
				}
				loops := innerLoops(body)
				if len(loops) == 0 {
					t.Fatal("no innermost loop found")
				}
				for _, l := range loops {
					// Each innermost loop is an FMA loop without spills or
					// reloads: no stack references between label and back-edge.
					if err := Check(l, "CHECK-NOT: rsp\n"+tg.fma+"\nCHECK-NOT: rsp"); err != nil {
						t.Fatalf("%v\nloop:\n%s", err, l)
					}
				}
			})
		}
	}
}

func TestConvAssemblyNEON(t *testing.T) {
	tc := toolchain(t)
	m := NewModule(NEON)
	specs := []ConvSpec{
		with(cv(1, 32, 17, 17, 48, 3, 3, 1, 1, 1, 1), biasRelu),
		with(cv(1, 64, 8, 8, 64, 1, 1, 1, 1, 0, 0), allEpi),
		with(cv(1, 3, 31, 31, 32, 3, 3, 2, 2, 0, 0), func(s *ConvSpec) { plain(s); biasRelu(s) }),
	}
	for i, s := range specs {
		s.OutOff = 1 << 24
		if _, _, err := m.Conv(fmt.Sprintf("conv%d", i), s); err != nil {
			t.Fatal(err)
		}
	}
	ps := pool(true, false, 1, 8, 9, 9, 3, 3, 2, 2, 0, 0, 8, 0)
	ps.OutOff = 1000
	if _, _, err := m.Pool("pool", ps); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Softmax("softmax", SoftmaxSpec{N: 1, K: 1000, OutOff: 1000}); err != nil {
		t.Fatal(err)
	}
	ll := m.String()
	if _, err := tc.CompileObject(ll, NEON); err != nil {
		t.Fatal(err)
	}
	asm, err := tc.Assembly(ll, NEON)
	if err != nil {
		t.Fatal(err)
	}
	const fma = "CHECK: fmla v{{[0-9]+}}.4s, v{{[0-9]+}}.4s, v{{[0-9]+}}{{(.4s|.s\\[[0-3]\\])}}"
	for i := range specs {
		fn := NEON.Symbol(fmt.Sprintf("conv%d", i))
		body := asmFunction(t, asm, fn)
		if err := Check(body, "CHECK-LABEL: "+fn+":\n"+fma); err != nil {
			t.Fatal(err)
		}
		for _, l := range innerLoops(body) {
			if err := Check(l, "CHECK-NOT: [sp\n"+fma+"\nCHECK-NOT: [sp"); err != nil {
				t.Fatalf("%s: %v\nloop:\n%s", fn, err, l)
			}
		}
	}
	// Cross-linking needs lld; without it SharedLibrary says so.
	if !haveLLD() {
		obj, _ := tc.CompileObject(ll, NEON)
		err := tc.SharedLibrary([]string{obj}, NEON, t.TempDir()+"/k.so")
		if err == nil || !strings.Contains(err.Error(), "ld.lld") {
			t.Errorf("cross-link without lld: error %v, want one naming ld.lld", err)
		}
	}
}

// TestTrainWgradAssembly checks the inner loop of the dot-product weight
// gradient (train_conv_same.go) on both x86 targets: its wgShape register
// tile (AVX2: 4 channels × 3 rows, all 16 ymm registers) stays in
// registers, with no stack reference between the loop's label and its
// back-edge, and each pass runs the whole tile's FMAs (times the vectors
// per cache line: one prefetch per line, so AVX2 unrolls two vectors).
// The dot-product kernel now runs the 1x1 gradients over fewer than 128
// channels and planes whose mask table leaves no room for the transposed
// packing's zero row (transPack), as the 41x41 and 46x46 planes here.
func TestTrainWgradAssembly(t *testing.T) {
	tc := toolchain(t)
	geoms := []ConvGeom{
		{N: 8, C: 64, H: 14, W: 14, O: 16, KH: 1, KW: 1, SH: 1, SW: 1, OH: 14, OW: 14},
		{N: 8, C: 16, H: 41, W: 41, O: 16, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1, OH: 41, OW: 41},
		{N: 8, C: 32, H: 46, W: 46, O: 32, KH: 1, KW: 7, SH: 1, SW: 1, PW: 3, OH: 46, OW: 46},
	}
	for _, tg := range []Target{AVX512, AVX2} {
		m := NewModule(tg)
		for i, s := range geoms {
			if ws := (TrainConvGradWeightSpec{ConvGeom: s}); !ws.sameOK() || ws.transPack() {
				t.Fatalf("geometry %d does not take the dot-product kernel", i)
			}
			if _, _, err := m.Train(fmt.Sprintf("wg%d", i), TrainConvGradWeightSpec{ConvGeom: s, DY: 1 << 22, DW: 1 << 23}); err != nil {
				t.Fatal(err)
			}
		}
		asm, err := tc.Assembly(m.String(), tg)
		if err != nil {
			t.Fatal(err)
		}
		mr, nr := wgShape(tg)
		fmas := mr * nr * max(1, lineFloats/tg.VectorLanes)
		for i, s := range geoms {
			t.Run(fmt.Sprintf("%s/%dx%d_%dto%d", tg.Name, s.KH, s.KW, s.C, s.O), func(t *testing.T) {
				body := asmFunction(t, asm, tg.Symbol(fmt.Sprintf("wg%d", i)))
				found := false
				for _, l := range innerLoops(body) {
					if n := strings.Count(l, "vfmadd231ps"); n == fmas {
						found = true
						if strings.Contains(l, "rsp") {
							t.Errorf("the %d-FMA loop touches the stack:\n%s", n, l)
						}
					}
				}
				if !found {
					t.Errorf("no inner loop with %d FMAs (%d×%d tile)", fmas, mr, nr)
				}
			})
		}
	}
}

// TestTrainWgradTransPackAssembly checks that the weight gradients packed
// by transposes (transPack: the mini nets' stride-1 3x3 32→48, 1x7 and
// 1x1 176→48 and their stride-2 3x3) contain no gather on either x86 target,
// and that their micro-kernel (gemmTile) runs as an inner loop of at
// least 2·MR FMAs (MR rows of dW by two vectors of K per reduction step).
func TestTrainWgradTransPackAssembly(t *testing.T) {
	tc := toolchain(t)
	geoms := []ConvGeom{
		{N: 8, C: 32, H: 14, W: 14, O: 48, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1, OH: 14, OW: 14},
		{N: 8, C: 32, H: 7, W: 7, O: 32, KH: 1, KW: 7, SH: 1, SW: 1, PW: 3, OH: 7, OW: 7},
		{N: 8, C: 176, H: 7, W: 7, O: 48, KH: 1, KW: 1, SH: 1, SW: 1, OH: 7, OW: 7},
		{N: 8, C: 32, H: 28, W: 28, O: 64, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1, OH: 14, OW: 14},
	}
	for _, tg := range []Target{AVX512, AVX2} {
		m := NewModule(tg)
		for i, s := range geoms {
			if !(TrainConvGradWeightSpec{ConvGeom: s}).transPack() {
				t.Fatalf("geometry %d is not packed by transposes", i)
			}
			if _, _, err := m.Train(fmt.Sprintf("wg%d", i), TrainConvGradWeightSpec{ConvGeom: s, DY: 1 << 22, DW: 1 << 23}); err != nil {
				t.Fatal(err)
			}
		}
		asm, err := tc.Assembly(m.String(), tg)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range geoms {
			t.Run(fmt.Sprintf("%s/%dx%d_s%d_%dto%d", tg.Name, s.KH, s.KW, s.SH, s.C, s.O), func(t *testing.T) {
				body := asmFunction(t, asm, tg.Symbol(fmt.Sprintf("wg%d", i)))
				if strings.Contains(body, "gather") {
					t.Errorf("a gather in the transposed packing")
				}
				fmas := 0
				for _, l := range innerLoops(body) {
					fmas = max(fmas, strings.Count(l, "vfmadd231ps"))
				}
				if want := 2 * balancedMR(tg, s.O); fmas < want {
					t.Errorf("the largest inner loop has %d FMAs, want at least %d (2·MR)", fmas, want)
				}
			})
		}
	}
}
