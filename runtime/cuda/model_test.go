package cuda

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
)

// testPTX defines the two kernels of testProgram.
const testPTX = `.version 7.8
.target sm_90
.address_size 64
.visible .entry add_one(.param .u64 a, .param .u64 b, .param .u32 n) { ret; }
.visible .entry mul_w(.param .u64 a, .param .u64 w, .param .u64 b, .param .u32 n) { ret; }
`

// testProgram computes y = (x + 1) * w elementwise for n floats: x at arena
// offset 0, the temporary at 4n rounded up, y after it, w the weights.
func testProgram(n int) (*Program, []byte) {
	tmp := int64(4*n+255) / 256 * 256
	y := 2 * tmp
	p := &Program{
		Target: "cuda-sm90", SM: 90, Precision: FP32, PTX: testPTX, Batch: 1,
		ArenaBytes: 3 * tmp, WeightsBytes: int64(4 * n),
		Input:  Tensor{Name: "x", Shape: []int{1, n}, Offset: 0},
		Output: Tensor{Name: "y", Shape: []int{1, n}, Offset: y},
		Launches: []Launch{
			{Kernel: "add_one", Label: "%1 = add", Op: "add", Grid: [3]int{1, 1, 1}, Block: [3]int{32, 1, 1},
				Args: []Arg{{Kind: ArgArena}, {Kind: ArgArena, Offset: tmp}, {Kind: ArgI32, Value: int64(n)}}, FLOPs: int64(n)},
			{Kernel: "mul_w", Label: "%2 = mul", Op: "mul", Grid: [3]int{1, 1, 1}, Block: [3]int{32, 1, 1},
				Args: []Arg{{Kind: ArgArena, Offset: tmp}, {Kind: ArgWeights}, {Kind: ArgArena, Offset: y}, {Kind: ArgI32, Value: int64(n)}}, FLOPs: int64(n)},
		},
	}
	w := make([]byte, 4*n)
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint32(w[4*i:], math.Float32bits(float32(i+2)))
	}
	return p, w
}

// testExec is the host version of testPTX's kernels.
func testExec(l FakeLaunch) error {
	switch l.Kernel {
	case "add_one":
		n := int(uint32(l.Args[2]))
		a, err := l.Mem.Float32s(l.Args[0], n)
		if err != nil {
			return err
		}
		b, err := l.Mem.Float32s(l.Args[1], n)
		if err != nil {
			return err
		}
		for i := range b {
			b[i] = a[i] + 1
		}
	case "mul_w":
		n := int(uint32(l.Args[3]))
		a, err := l.Mem.Float32s(l.Args[0], n)
		if err != nil {
			return err
		}
		w, err := l.Mem.Float32s(l.Args[1], n)
		if err != nil {
			return err
		}
		b, err := l.Mem.Float32s(l.Args[2], n)
		if err != nil {
			return err
		}
		for i := range b {
			b[i] = a[i] * w[i]
		}
	default:
		return fmt.Errorf("unknown kernel %s", l.Kernel)
	}
	return nil
}

func TestModelRunsCapturedGraph(t *testing.T) {
	const n = 10
	p, w := testProgram(n)
	f := NewFake()
	f.Exec = testExec
	m, err := Open(f, p, w, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Open captures the inference and runs nothing.
	if f.Launches != 0 {
		t.Errorf("Open ran %d kernels, want 0 (they are captured)", f.Launches)
	}
	want := []string{
		"cuInit", "cuDeviceGetCount", "cuDeviceGet", "cuDeviceGetName", "cuDeviceGetAttribute", "cuDeviceGetAttribute",
		"cuDeviceGetAttribute", "cuDeviceGetAttribute", "cuDriverGetVersion", "cuDevicePrimaryCtxRetain", "cuCtxSetCurrent",
		"cuModuleLoadDataEx", "cuModuleGetFunction", "cuModuleGetFunction",
		"cuMemAlloc", "cuMemcpyHtoD", // weights, once
		"cuMemAlloc", "cuMemsetD8", "cuMemAllocHost", "cuMemAllocHost", "cuStreamCreate", // the session
		"cuStreamBeginCapture", "cuMemcpyHtoDAsync", "cuLaunchKernel", "cuLaunchKernel", "cuMemcpyDtoHAsync",
		"cuStreamEndCapture", "cuGraphInstantiateWithFlags",
		"cuStreamBeginCapture", "cuLaunchKernel", "cuLaunchKernel", "cuStreamEndCapture", "cuGraphInstantiateWithFlags",
		"cuCtxSynchronize",
	}
	if got := f.CallNames(); !slices.Equal(got, want) {
		t.Errorf("Open's driver calls:\n got %v\nwant %v", got, want)
	}
	for _, c := range f.Calls {
		if strings.HasPrefix(c, "cuLaunchKernel") || strings.Contains(c, "Async") {
			if !strings.HasSuffix(c, "[captured]") {
				t.Errorf("%q was not captured", c)
			}
		}
	}
	for run := 0; run < 3; run++ {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(i*run) - 3
		}
		y := make([]float32, n)
		ncalls := len(f.Calls)
		if err := m.Run(x, y); err != nil {
			t.Fatal(err)
		}
		if got, want := f.CallNames()[ncalls:], []string{"cuCtxSetCurrent", "cuGraphLaunch", "cuStreamSynchronize"}; !slices.Equal(got, want) {
			t.Errorf("run %d: calls %v, want %v (one graph launch)", run, got, want)
		}
		for i := range y {
			if want := (x[i] + 1) * float32(i+2); y[i] != want {
				t.Fatalf("run %d: y[%d] = %v, want %v", run, i, y[i], want)
			}
		}
	}
	if f.Launches != 6 {
		t.Logf("calls: %v", f.CallNames())
		t.Errorf("%d kernels ran in 3 inferences, want 6", f.Launches)
	}
	x, y := make([]float32, n), make([]float32, n)
	times, err := m.Profile(x, y)
	if err != nil {
		t.Fatal(err)
	}
	if len(times) != 2 || times[0].Kernel != "add_one" || times[1].Label != "%2 = mul" || math.Abs(times[0].MS-0.01) > 1e-6 {
		t.Errorf("profile: %+v", times)
	}
	if y[3] != 5 {
		t.Errorf("profile output y[3] = %v, want 5", y[3])
	}
	ms, err := m.Time(2, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 || math.Abs(ms[0]-0.02) > 1e-6 {
		t.Errorf("Time = %v, want 3 runs of 2 kernels x 0.01 ms", ms)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if d, h, g := f.Live(); d != 0 || h != 0 || g != 0 {
		t.Errorf("after Close: %d device allocations, %d pinned buffers, %d graphs live", d, h, g)
	}
	if err := m.Run(x, y); err == nil {
		t.Error("Run after Close succeeded")
	}
}

func TestModelSessionsConcurrent(t *testing.T) {
	const n = 64
	p, w := testProgram(n)
	f := NewFake()
	f.Exec = testExec
	m, err := Open(f, p, w, Options{Sessions: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x, y := make([]float32, n), make([]float32, n)
			for it := 0; it < 20; it++ {
				for i := range x {
					x[i] = float32(g*100 + it + i)
				}
				if err := m.Run(x, y); err != nil {
					errs <- err
					return
				}
				for i := range y {
					if y[i] != (x[i]+1)*float32(i+2) {
						errs <- fmt.Errorf("goroutine %d: y[%d] = %v", g, i, y[i])
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestModelNoGraph(t *testing.T) {
	p, w := testProgram(4)
	f := NewFake()
	f.Exec = testExec
	m, err := Open(f, p, w, Options{NoGraph: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if slices.Contains(f.CallNames(), "cuStreamBeginCapture") {
		t.Error("NoGraph captured a graph")
	}
	y := make([]float32, 4)
	if err := m.Run([]float32{1, 2, 3, 4}, y); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(y, []float32{4, 9, 16, 25}) {
		t.Errorf("y = %v", y)
	}
}

func TestOpenErrors(t *testing.T) {
	tests := []struct {
		name  string
		fake  *Fake
		is    error
		wants []string
	}{
		{"no device", &Fake{}, ErrNoDevice, []string{"no CUDA device", "cuInit: CUDA_ERROR_NO_DEVICE"}},
		{"old GPU", &Fake{Devices: 1, SM: 80, Name: "A100"}, nil, []string{"sm_90", "A100 (sm_80)", "--target cuda-sm80"}},
		{"bad PTX", &Fake{Devices: 1, Fail: map[string]Result{"cuModuleLoadDataEx": ErrorInvalidPTX}, JITLog: "ptxas: line 5: syntax error"},
			nil, []string{"cuModuleLoadDataEx: CUDA_ERROR_INVALID_PTX", "ptxas: line 5: syntax error", "load the PTX module"}},
		{"out of memory", &Fake{Devices: 1, Fail: map[string]Result{"cuMemAlloc": 2}}, nil, []string{"weights: cuMemAlloc"}},
		{"capture fails", &Fake{Devices: 1, Fail: map[string]Result{"cuLaunchKernel": 700}}, nil, []string{"capture the inference", "launch 0, kernel add_one (%1 = add)"}},
		{"instantiate fails", &Fake{Devices: 1, Fail: map[string]Result{"cuGraphInstantiateWithFlags": 1}}, nil, []string{"session 0: cuGraphInstantiateWithFlags"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, w := testProgram(8)
			_, err := Open(tc.fake, p, w, Options{})
			if err == nil {
				t.Fatal("Open succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			for _, s := range tc.wants {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if tc.fake.mem != nil {
				if d, h, g := tc.fake.Live(); d != 0 || h != 0 || g != 0 {
					t.Errorf("after the failed Open: %d device allocations, %d pinned buffers, %d graphs live", d, h, g)
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(p *Program)
		want string
	}{
		{"ok", func(p *Program) {}, ""},
		{"no PTX", func(p *Program) { p.PTX = "" }, "empty PTX"},
		{"missing entry", func(p *Program) { p.Launches[1].Kernel = "conv_7" }, "launch 1 (conv_7, %2 = mul): the PTX module defines no .entry conv_7"},
		{"block too big", func(p *Program) { p.Launches[0].Block = [3]int{64, 32, 1} }, "2048 threads"},
		{"zero grid", func(p *Program) { p.Launches[0].Grid[2] = 0 }, "must be >= 1"},
		{"arena overrun", func(p *Program) { p.Launches[0].Args[1].Offset = p.ArenaBytes }, "argument 1: arena offset"},
		{"weights overrun", func(p *Program) { p.Launches[1].Args[1].Offset = p.WeightsBytes + 4 }, "weights offset"},
		{"output outside", func(p *Program) { p.Output.Offset = p.ArenaBytes - 4 }, "output \"y\""},
		{"precision", func(p *Program) { p.Precision = "fp8" }, "unknown precision"},
		{"arg kind", func(p *Program) { p.Launches[0].Args[2].Kind = "f64" }, "unknown kind"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := testProgram(8)
			tc.edit(p)
			err := p.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestLoadDriver checks the message on a machine without the NVIDIA driver
// (CI, this repository's build machines); with a driver, LoadDriver must
// succeed.
func TestLoadDriver(t *testing.T) {
	d, err := LoadDriver()
	if err == nil {
		if d == nil {
			t.Fatal("LoadDriver returned neither a driver nor an error")
		}
		t.Logf("libcuda.so.1 is present")
		return
	}
	if !errors.Is(err, ErrNoDriver) || !strings.Contains(err.Error(), "no NVIDIA driver (libcuda.so.1 not found)") {
		t.Errorf("LoadDriver error %q, want ErrNoDriver", err)
	}
}

func TestPeakAndCompare(t *testing.T) {
	h100 := DeviceInfo{SM: 90, SMs: 132, ClockKHz: 1830000}
	for _, tc := range []struct {
		p    Precision
		want float64 // TFLOP/s, the whitepaper's dense figures
	}{{FP32, 61.8}, {TF32, 494.7}, {BF16, 989.4}} {
		if got := PeakFLOPs(h100, tc.p) / 1e12; math.Abs(got-tc.want) > 0.5 {
			t.Errorf("H100 %s peak %.1f TFLOP/s, want %.1f", tc.p, got, tc.want)
		}
	}
	if PeakFLOPs(DeviceInfo{SM: 75, SMs: 40, ClockKHz: 1e6}, FP32) != 0 {
		t.Error("unknown SM has a peak")
	}
	a, err := Compare([]float32{1, 3, 2, 0, 5, 1}, []float32{1, 2.9, 2, 0.1, 5, 1}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if a.Top1Same != 2 || math.Abs(a.MaxDiff-0.1) > 1e-6 || a.MaxRef != 5 || !a.Within(0.03, true) || a.Within(0.01, false) {
		t.Errorf("agreement %+v", a)
	}
	a, _ = Compare([]float32{3, 1, float32(math.NaN()), 0}, []float32{1, 3, 0, 0}, 2)
	if a.Top1Same != 1 || !math.IsInf(a.MaxDiff, 1) || a.Within(1e9, false) {
		t.Errorf("agreement with NaN %+v", a)
	}
}
