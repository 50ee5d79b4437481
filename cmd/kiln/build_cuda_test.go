package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	cudagen "github.com/kiln-dev/kiln/codegen/cuda"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	gpurt "github.com/kiln-dev/kiln/runtime/cuda"
	"github.com/kiln-dev/kiln/target"
)

// TestGPURuntimeEmulated builds tiny for cuda-sm90 in bf16 (real PTX from
// llc-19) and runs it through the GPU runtime — weights upload, arena,
// pinned buffers, the captured graph, the launch list replayed with the
// kernel parameters the runtime forms — on the fake driver, whose kernels
// are codegen/cuda's host emulation of the generated code. The output must
// equal, bit for bit, the emulator running the program directly, and agree
// with the interpreter within the bf16 tolerance.
func TestGPURuntimeEmulated(t *testing.T) {
	tc, err := codegen.FindLLVM()
	testenv.Check(t, err)
	g, err := dsl.LoadFile("tiny.kiln", dsl.Options{Batch: 1, FS: archs.FS})
	if err != nil {
		t.Fatal(err)
	}
	params, err := loadWeightsStrip(g, "", "")
	if err != nil {
		t.Fatal(err)
	}
	tg := target.CUDASM90
	tg.NotImplemented = ""
	cm, err := cudagen.Lower(g, params, tg, cudagen.BF16)
	if err != nil {
		t.Fatal(err)
	}
	if err := cm.PTX(tc); err != nil {
		t.Fatal(err)
	}
	p := cm.Program
	em, err := cudagen.NewEmulator(cm.IR)
	if err != nil {
		t.Fatal(err)
	}
	x, err := tensor.Generate("input", p.Input.Shape)
	if err != nil {
		t.Fatal(err)
	}

	// Direct emulation.
	arena := make([]byte, p.ArenaBytes)
	for i, v := range x.Data {
		binary.LittleEndian.PutUint32(arena[p.Input.Offset+4*int64(i):], math.Float32bits(v))
	}
	if err := em.Run(cm.Program, arena); err != nil {
		t.Fatal(err)
	}
	direct := make([]float32, gpurt.Numel(p.Output.Shape))
	for i := range direct {
		direct[i] = math.Float32frombits(binary.LittleEndian.Uint32(arena[p.Output.Offset+4*int64(i):]))
	}

	// Through the runtime: each launch's parameters are the device
	// addresses the runtime formed, turned back into offsets of the
	// allocations they point into.
	f := gpurt.NewFake()
	n := 0
	f.Exec = func(fl gpurt.FakeLaunch) error {
		l := cm.Program.Launches[n%len(cm.Program.Launches)]
		n++
		if l.Kernel != fl.Kernel || fmt.Sprint(l.Grid) != fmt.Sprint(fl.Grid) || fmt.Sprint(l.Block) != fmt.Sprint(fl.Block) {
			return fmt.Errorf("launch %d: kernel %s grid %v block %v, the program says %s %v %v", n-1, fl.Kernel, fl.Grid, fl.Block, l.Kernel, l.Grid, l.Block)
		}
		l.Args = append([]cudagen.Arg(nil), l.Args...)
		mem := map[cudagen.ArgKind][]byte{cudagen.ArgWeights: {}}
		for j, a := range l.Args {
			if a.Kind == cudagen.ArgI32 {
				if fl.Args[j] != uint64(uint32(a.Value)) {
					return fmt.Errorf("launch %d argument %d: %d, want %d", n-1, j, fl.Args[j], a.Value)
				}
				continue
			}
			base, b, ok := fl.Mem.Allocation(fl.Args[j])
			if !ok {
				return fmt.Errorf("launch %d argument %d: address %#x in no allocation", n-1, j, fl.Args[j])
			}
			l.Args[j].Offset = int64(fl.Args[j] - base)
			mem[a.Kind] = b
		}
		return em.Launch(l, mem[cudagen.ArgArena], mem[cudagen.ArgWeights])
	}
	m, err := gpurt.Open(f, p, p.Weights, gpurt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	y := make([]float32, len(direct))
	if err := m.Run(x.Data, y); err != nil {
		t.Fatal(err)
	}
	if n != len(p.Launches) {
		t.Errorf("%d launches ran, the program has %d", n, len(p.Launches))
	}
	for i := range y {
		if math.Float32bits(y[i]) != math.Float32bits(direct[i]) {
			t.Fatalf("y[%d] = %v through the runtime, %v emulated directly", i, y[i], direct[i])
		}
	}
	ref, err := interp.Run(g, params, map[string]*tensor.Tensor{g.Inputs()[0].Name: x}, interp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ag, err := gpurt.Compare(y, ref.Outputs[0].Data, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !ag.Within(2e-2, true) {
		t.Errorf("bf16 vs interpreter: %+v", ag)
	}
	t.Logf("%d launches; bf16 vs interpreter: max|diff| %.3g of max|ref| %.3g", len(p.Launches), ag.MaxDiff, ag.MaxRef)
}

// TestBuildGPU runs kiln build --target cuda-sm90 --format program and
// weights, and the usage errors; tests/gpu_test.go builds executables with
// the runner, and cmd/kiln-runner tests their GPU path.
func TestBuildGPU(t *testing.T) {
	_, err := codegen.FindLLVM()
	testenv.Check(t, err)
	dir := t.TempDir()
	exe := filepath.Join(dir, "tiny_gpu.kgpu")
	prog := filepath.Join(dir, "tiny.kgpu")
	w := filepath.Join(dir, "tiny.w")
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"build", "tiny", "--target", "cuda-sm90", "--precision", "bf16", "--format", "program", "-o", exe}, 0, "built " + exe + " (cuda-sm90 bf16"},
		{[]string{"build", "tiny", "--target", "cuda-sm90", "--format", "program", "--weights-external", "-o", prog}, 0, "weights external"},
		{[]string{"build", "tiny", "--target", "cuda-sm90", "--format", "weights", "-o", w}, 0, "weights blob"},
		{[]string{"build", "tiny", "--target", "cuda-sm90", "--precision", "fp16", "-o", exe}, 2, `--precision "fp16"`},
		{[]string{"build", "tiny", "--target", "cuda-sm90", "--batch", "1,8", "-o", exe}, 2, "one batch size"},
		{[]string{"build", "tiny", "--target", "cuda-sm90", "--format", "lib", "-o", exe}, 2, "exe, program or weights"},
	}
	for _, tc := range tests {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if all := stdout.String() + stderr.String(); code != tc.code || !strings.Contains(all, tc.want) {
			t.Errorf("kiln %s: exit %d (want %d), output %q (want %q)", strings.Join(tc.args, " "), code, tc.code, all, tc.want)
		}
	}
	a, found, err := gpurt.FindPayload(exe)
	if err != nil || !found {
		t.Fatalf("FindPayload(%s): %v, %v", exe, found, err)
	}
	if a.Manifest.Program.Precision != gpurt.BF16 || a.Manifest.Network != "tiny" || len(a.Weights) == 0 || !strings.Contains(a.Manifest.Program.PTX, ".entry") {
		t.Errorf("executable's manifest: %+v", a.Manifest)
	}
	pa, _, err := gpurt.FindPayload(prog)
	if err != nil {
		t.Fatal(err)
	}
	wb, err := os.ReadFile(w)
	if err != nil {
		t.Fatal(err)
	}
	if err := pa.SetWeights(wb, w); err != nil {
		t.Errorf("the --format weights blob does not match the --weights-external program: %v", err)
	}
	if !bytes.Equal(wb, a.Weights) {
		t.Error("the weights blob differs between precisions")
	}
	js, _ := json.Marshal(a.Manifest.Labels)
	if len(a.Manifest.Labels) != 0 {
		t.Errorf("tiny got labels %s", js)
	}
}

// TestBenchGPU runs kiln bench --target cuda-sm90 --layers on the fake
// driver (kernels not executed; each takes 0.01 ms of virtual time): the
// report's shape, per-kernel lines and % of peak; and without a driver,
// the error.
func TestBenchGPU(t *testing.T) {
	_, err := codegen.FindLLVM()
	testenv.Check(t, err)
	old := loadGPUDriver
	t.Cleanup(func() { loadGPUDriver = old })
	loadGPUDriver = func() (gpurt.Driver, error) { return gpurt.NewFake(), nil }
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "tiny", "--target", "cuda-sm90", "--precision", "tf32", "--layers", "--min-time", "1ms"}
	if code := run(append(args, "--format", "json"), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var res gpuBenchResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || res.Launches == 0 || len(res.Layers) != res.Launches || res.PeakTFLOPs == 0 {
		t.Errorf("json %v: %+v", err, res)
	}
	var table bytes.Buffer
	res.writeTable(&table)
	for _, want := range []string{"tiny batch 1, cuda-sm90 tf32 on Fake GPU (sm_90, 132 SMs, 1980 MHz)",
		"latency (CUDA graph replay, CUDA events): median 0.", "of the tf32 dense peak 535 TFLOP/s", "median ms  share  %peak", "conv_0"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table does not contain %q:\n%s", want, table.String())
		}
	}
	loadGPUDriver = func() (gpurt.Driver, error) { return nil, fmt.Errorf("%w: test", gpurt.ErrNoDriver) }
	stderr.Reset()
	if code := run(args, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "no NVIDIA driver") {
		t.Errorf("no driver: exit %d, %s", code, stderr.String())
	}
	stderr.Reset()
	if code := run([]string{"bench", "tiny", "--target", "avx2"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "takes a GPU target") {
		t.Errorf("CPU target: exit %d, %s", code, stderr.String())
	}
}

// TestUncoveredOps: a positioned code generation error names the ops of
// the source's nodes at that position.
func TestUncoveredOps(t *testing.T) {
	src := "network sig(image: f32[N, 3, 8, 8]) -> f32[N, 8, 8, 8] {\n    c = conv2d(image, 8, 3, pad=1)\n    return sigmoid(c)\n}\n"
	g, err := dsl.Load("sig.kiln", []byte(src), dsl.Options{Batch: 1})
	if err != nil {
		t.Fatal(err)
	}
	var pos ir.Pos
	for _, n := range g.Nodes {
		if n.Op == "sigmoid" {
			pos = n.Pos
		}
	}
	err = fmt.Errorf("lower: %w", ir.Errorf(pos, "cuda %%4: no GPU kernel for codegen.ElementwiseSpec yet"))
	if got, want := uncoveredOps(g, err), " (ops at 3:12: sigmoid %"; !strings.HasPrefix(got, want) {
		t.Errorf("uncoveredOps = %q, want %q...", got, want)
	}
	if got := uncoveredOps(g, fmt.Errorf("plain")); got != "" {
		t.Errorf("uncoveredOps(unpositioned) = %q", got)
	}
}
