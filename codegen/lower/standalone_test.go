package lower

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
)

// optionalPasses are the rewrites code generation does not need: every op
// they remove has a standalone kernel.
var optionalPasses = []string{"fold-bn", "fold-residual-scale", "fuse-epilogue", "concat-in-place"}

// checkDisabled compiles graph g (procedural weights) with the passes in
// disabled turned off, runs it on AVX-512 and AVX2 and compares the output
// with the interpreter's within compiledTol x max|ref|. It returns the ops
// left in the final graph, so a test can check that the standalone kernels
// were exercised.
func checkDisabled(t *testing.T, g *ir.Graph, disabled []string) map[string]int {
	t.Helper()
	params := map[string]*tensor.Tensor{}
	var err error
	for _, p := range g.Params() {
		if params[p.Name], err = tensor.Generate(p.Name, p.Type.Shape); err != nil {
			t.Fatal(err)
		}
	}
	x, err := tensor.Generate("input", g.Inputs()[0].Type.Shape)
	if err != nil {
		t.Fatal(err)
	}
	res, err := interp.Run(g, params, map[string]*tensor.Tensor{g.Inputs()[0].Name: x}, interp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := res.Outputs[0]
	opts := passes.Options{Target: passes.Targets[0], VerifyEach: true, Disabled: map[string]bool{}, Consumer: passes.Codegen}
	for _, d := range disabled {
		opts.Disabled[d] = true
	}
	s, err := passes.Run(g, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(s, nil); err == nil || !strings.Contains(err.Error(), "no targets") {
		t.Fatalf("Check without targets: %v", err)
	}
	a := build(t, s, params)
	for _, isa := range testenv.HostISAs(t, "avx512", "avx2") {
		m, err := rt.Open(a.Artifact, rt.Options{ISA: isa, Threads: 2})
		if err != nil {
			t.Fatal(err)
		}
		got := tensor.New(want.Shape...)
		if err := m.Run(x.Data, got.Data); err != nil {
			t.Fatal(err)
		}
		m.Close()
		rel := relErr(t, got, want)
		if !(rel <= compiledTol) {
			t.Errorf("%s, --disable %v, %s: compiled differs from the interpreter by %.3g x max|ref|", g.Name, disabled, isa, rel)
		}
	}
	return passes.OpCounts(s.Graph)
}

// TestDisabledPassesCompiled builds tiny with each optional pass disabled,
// a small residual network (mini_inception_resnet) with each of them and
// all of them off (every combination without -short) and, without -short,
// inception_resnet_v1 at 75x75 with all of them off (every combination
// with KILN_SLOW_TESTS=1), and compares each build with the interpreter: every
// op that a disabled rewrite leaves behind (conv2d without epilogue,
// batchnorm, relu, add, scale mul, concat) runs on its standalone kernel.
func TestDisabledPassesCompiled(t *testing.T) {
	load := func(t *testing.T, net string, input []int) *ir.Graph {
		g, err := dsl.LoadFile(net+".kiln", dsl.Options{Batch: 1, InputShape: input, FS: archs.FS})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	for _, d := range optionalPasses {
		t.Run("tiny/"+d, func(t *testing.T) {
			ops := checkDisabled(t, load(t, "tiny", nil), []string{d})
			t.Logf("ops: %v", ops)
		})
	}
	t.Run("tiny/all", func(t *testing.T) {
		ops := checkDisabled(t, load(t, "tiny", nil), optionalPasses)
		for _, op := range []string{ir.OpConv2D, ir.OpBatchNorm, ir.OpReLU} {
			if ops[op] == 0 {
				t.Errorf("no %s left with every rewrite disabled: %v", op, ops)
			}
		}
	})
	// Each optional pass alone and all of them off (every subset without
	// -short) on a small residual network with residual scales, concats,
	// unaligned channel counts and a dense head (mini_inception_resnet,
	// 1x28x28).
	mini := load(t, "mini_inception_resnet", nil)
	all := 1<<len(optionalPasses) - 1
	for mask := 1; mask <= all; mask++ {
		var off []string
		for k, p := range optionalPasses {
			if mask&(1<<k) != 0 {
				off = append(off, p)
			}
		}
		if testing.Short() && len(off) != 1 && mask != all {
			continue
		}
		sort.Strings(off)
		t.Run(fmt.Sprintf("mini_inception_resnet/%s", strings.Join(off, "+")), func(t *testing.T) {
			ops := checkDisabled(t, mini, off)
			if mask == all {
				for _, op := range []string{ir.OpConv2D, ir.OpBatchNorm, ir.OpReLU, ir.OpAdd, ir.OpMul, ir.OpConcat} {
					if ops[op] == 0 {
						t.Errorf("no %s left with every rewrite disabled: %v", op, ops)
					}
				}
			}
		})
	}
	if testing.Short() {
		return
	}
	// A full residual network at its smallest input with every rewrite
	// off; with KILN_SLOW_TESTS=1 every subset of them (minutes cold).
	irv1 := load(t, "inception_resnet_v1", []int{3, 75, 75})
	for mask := 1; mask <= all; mask++ {
		if mask != all && os.Getenv("KILN_SLOW_TESTS") == "" {
			continue
		}
		var off []string
		for k, p := range optionalPasses {
			if mask&(1<<k) != 0 {
				off = append(off, p)
			}
		}
		sort.Strings(off)
		t.Run("inception_resnet_v1/"+strings.Join(off, "+"), func(t *testing.T) { checkDisabled(t, irv1, off) })
	}
}
