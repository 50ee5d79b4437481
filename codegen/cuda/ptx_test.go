package cuda

import (
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/codegen/lower"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/passes"
	"github.com/kiln-dev/kiln/target"
)

// networks are the three networks of the issue.
var networks = []string{"inception_v4", "inception_resnet_v2", "inception_resnet_v1"}

// convChecks are FileCheck patterns every conv kernel's PTX must match per
// precision: the tiles are staged through shared memory between barriers,
// and the inner loop runs on tensor cores (bf16, tf32) or fma.rn.f32.
var convChecks = map[Precision]string{
	FP32: `
CHECK: .shared .align 16 .b8
CHECK: st.shared.{{f32|b32|u32}}
CHECK: bar.sync 0
CHECK: ld.shared.f32
CHECK: fma.rn.f32
CHECK: bar.sync 0
CHECK: ret;`,
	BF16: `
CHECK: .shared .align 16 .b8
CHECK: st.shared.{{f32|b32|u32}}
CHECK: bar.sync 0
CHECK: ld.shared
CHECK: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
CHECK: bar.sync 0
CHECK: ret;`,
	TF32: `
CHECK: .shared .align 16 .b8
CHECK: st.shared.{{f32|b32|u32}}
CHECK: bar.sync 0
CHECK: ld.shared
CHECK: mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
CHECK: bar.sync 0
CHECK: ret;`,
}

// entries splits PTX text into kernels: name -> text from ".entry name(" to
// the next entry.
func entries(ptx string) map[string]string {
	re := regexp.MustCompile(`(?m)^\.visible \.entry (\w+)\(`)
	idx := re.FindAllStringSubmatchIndex(ptx, -1)
	out := map[string]string{}
	for i, m := range idx {
		end := len(ptx)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		out[ptx[m[2]:m[3]]] = ptx[m[0]:end]
	}
	return out
}

// TestPTXNetworks generates every kernel of the three networks (the union
// of their distinct kernel shapes, one module per precision), has llc-19
// compile it for sm_90 and sm_80, and checks each conv kernel's PTX: shared
// memory staging, mma.sync of the precision (fma.rn.f32 for fp32), and no
// local memory at all (no spills, no stack arrays).
func TestPTXNetworks(t *testing.T) {
	tc, err := codegen.FindLLVM()
	testenv.Check(t, err)
	if tc.LLC == "" {
		testenv.Missing(t, "llc-19 not found")
	}
	type job struct {
		prec Precision
		sm   int
		ll   string
		n    int // launches
		ptx  string
		err  error
	}
	var jobs []*job
	for _, prec := range []Precision{FP32, BF16, TF32} {
		gn, err := NewGenerator(target.CUDASM90, prec)
		if err != nil {
			t.Fatal(err)
		}
		launches := 0
		for _, net := range networks {
			g, err := dsl.LoadFile(net+".kiln", dsl.Options{Batch: 1, FS: archs.FS})
			if err != nil {
				t.Fatal(err)
			}
			s, err := passes.Run(g, passes.Options{Target: PassTarget(target.CUDASM90)})
			if err != nil {
				t.Fatal(err)
			}
			ks, err := lower.Specs(s, []codegen.Target{{Target: target.CUDASM90}})
			if err != nil {
				t.Fatal(err)
			}
			ls, err := gn.Add(s.Graph, ks)
			if err != nil {
				t.Fatalf("%s: %v", net, err)
			}
			launches += len(ls)
		}
		ll := gn.Module().String()
		for _, sm := range []int{90, 80} {
			if testing.Short() && (sm != 90 || prec != BF16) {
				continue // -short: the tensor-core module for sm_90 only
			}
			jobs = append(jobs, &job{prec: prec, sm: sm, ll: ll, n: launches})
		}
	}
	// llc runs are independent: run as many at once as there are CPUs.
	sem := make(chan struct{}, runtime.NumCPU())
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			j.ptx, j.err = CompilePTX(tc, j.ll, j.sm)
		}()
	}
	wg.Wait()
	for _, j := range jobs {
		prec, sm := j.prec, j.sm
		if j.err != nil {
			t.Errorf("%s sm_%d: %v", prec, sm, j.err)
			continue
		}
		es := entries(j.ptx)
		convs := 0
		for name, body := range es {
			if strings.Contains(body, ".local") {
				t.Errorf("%s sm_%d: kernel %s uses local memory", prec, sm, name)
			}
			if !strings.HasPrefix(name, "conv_") {
				continue
			}
			convs++
			if err := codegen.Check(body, convChecks[prec]); err != nil {
				t.Errorf("%s sm_%d: kernel %s: %v", prec, sm, name, err)
			}
			if prec == FP32 && strings.Contains(body, "mma.sync") {
				t.Errorf("fp32 kernel %s uses tensor cores", name)
			}
		}
		t.Logf("%s sm_%d: %d launches, %d kernels (%d conv), PTX %d KB", prec, sm, j.n, len(es), convs, len(j.ptx)>>10)
		if convs == 0 {
			t.Errorf("%s sm_%d: no conv kernels", prec, sm)
		}
	}
}
