package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
	"github.com/kiln-dev/kiln/runtime/cuda"
)

// gpuTestProgram is y = x·w + 1 per element for a 2×4 input: one kernel,
// run by gpuTestExec on the fake driver.
func gpuTestProgram() *cuda.Program {
	const n = 8
	p := &cuda.Program{
		Target: "cuda-sm90", SM: 90, Precision: cuda.BF16, Batch: 2,
		PTX:        ".version 7.8\n.target sm_90\n.visible .entry axpb(.param .u64 x, .param .u64 w, .param .u64 y, .param .u32 n) { ret; }\n",
		ArenaBytes: 256, WeightsBytes: 4 * n,
		Input:  cuda.Tensor{Name: "input", Shape: []int{2, 4}},
		Output: cuda.Tensor{Name: "logits", Shape: []int{2, 4}, Offset: 128},
		Launches: []cuda.Launch{{Kernel: "axpb", Label: "%3 = fused_conv", Op: "conv", Grid: [3]int{1, 1, 1}, Block: [3]int{32, 1, 1},
			Args: []cuda.Arg{{Kind: cuda.ArgArena}, {Kind: cuda.ArgWeights}, {Kind: cuda.ArgArena, Offset: 128}, {Kind: cuda.ArgI32, Value: n}}, FLOPs: 2 * n}},
	}
	p.Weights = make([]byte, 4*n)
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint32(p.Weights[4*i:], math.Float32bits(float32(i%4+1)))
	}
	return p
}

func gpuTestExec(l cuda.FakeLaunch) error {
	n := int(l.Args[3])
	x, err := l.Mem.Float32s(l.Args[0], n)
	if err != nil {
		return err
	}
	w, err := l.Mem.Float32s(l.Args[1], n)
	if err != nil {
		return err
	}
	y, err := l.Mem.Float32s(l.Args[2], n)
	if err != nil {
		return err
	}
	for i := range y {
		y[i] = x[i]*w[i] + 1
	}
	return nil
}

func useFakeDriver(t *testing.T, f *cuda.Fake) {
	old := loadDriver
	loadDriver = func() (cuda.Driver, error) { return f, nil }
	t.Cleanup(func() { loadDriver = old })
}

func writeGPUArtifact(t *testing.T, dir, name string, exe []byte, external bool) string {
	t.Helper()
	var buf bytes.Buffer
	var err error
	man := cuda.Manifest{Network: "testnet", Labels: []string{"a", "b", "c", "d"}}
	if exe != nil {
		err = cuda.AppendPayload(&buf, bytes.NewReader(exe), man, gpuTestProgram(), external)
	} else {
		err = cuda.AppendPayload(&buf, nil, man, gpuTestProgram(), external)
	}
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, buf.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRunGPU runs every mode of a GPU executable and of a program file on
// the fake driver: the runner's whole GPU path (payload, weights upload,
// captured graph, pinned buffers, download, reference check) without a GPU.
func TestRunGPU(t *testing.T) {
	dir := t.TempDir()
	f := cuda.NewFake()
	f.Exec = gpuTestExec
	useFakeDriver(t, f)
	exe := writeGPUArtifact(t, dir, "net", []byte("\x7fELF runner"), false)
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, []byte("\x7fELF plain runner"), 0o755)
	prog := writeGPUArtifact(t, dir, "net.kgpu", nil, false)
	ext := writeGPUArtifact(t, dir, "ext.kgpu", nil, true)
	weights := filepath.Join(dir, "w.bin")
	os.WriteFile(weights, gpuTestProgram().Weights, 0o644)
	x := &tensor.Tensor{Shape: []int{2, 4}, Data: []float32{1, 2, 3, 4, -1, -2, -3, -4}}
	in := filepath.Join(dir, "x.npy")
	if err := tensor.WriteNPYFile(in, x); err != nil {
		t.Fatal(err)
	}
	want := []float32{2, 5, 10, 17, 0, -3, -8, -15}
	ref := filepath.Join(dir, "ref.npy")
	tensor.WriteNPYFile(ref, &tensor.Tensor{Shape: []int{2, 4}, Data: []float32{2, 5, 10, 17.1, 0, -3, -8, -15}})
	badRef := filepath.Join(dir, "bad.npy")
	tensor.WriteNPYFile(badRef, &tensor.Tensor{Shape: []int{2, 4}, Data: []float32{2, 5, 30, 17, 0, -3, -8, -15}})
	out := filepath.Join(dir, "y.npy")

	tests := []struct {
		name string
		exe  string
		args []string
		code int
		want []string // in stdout+stderr
	}{
		{"input", exe, []string{"--input", in, "--output", out}, 0, []string{"wrote " + out + ": 2x4"}},
		{"program file", plain, []string{"--program", prog, "--input", in, "--output", out}, 0, []string{"wrote"}},
		{"reference pass", exe, []string{"--input", in, "--reference", ref}, 0, []string{"testnet cuda-sm90 bf16: max|y-ref| 0.1 = 0.00585 x max|ref| (17.1; tolerance 2e-02), top-1 2/2 rows agree: PASS"}},
		{"reference fail", exe, []string{"--input", in, "--reference", badRef}, 1, []string{"top-1 1/2 rows agree: FAIL"}},
		{"reference tight", exe, []string{"--input", in, "--reference", ref, "--tolerance", "1e-4"}, 1, []string{"FAIL"}},
		{"bench", exe, []string{"--bench", "--profile", "--iters", "5"}, 0, []string{
			"device: Fake GPU (sm_90, 132 SMs, 1980 MHz, driver 13.0)",
			"testnet cuda-sm90 bf16 batch 2: graph median 0.010 ms", "% of the bf16 peak 1071 TFLOP/s",
			"kernels (launch by launch, median of 5 runs", "conv", "%3 = fused_conv"}},
		{"info", exe, []string{"--info"}, 0, []string{"target:       cuda-sm90 (sm_90), precision bf16", "kernels:      1 launches"}},
		{"external weights", plain, []string{"--program", ext, "--weights-file", weights, "--input", in, "--output", out}, 0, []string{"wrote"}},
		{"external weights missing", plain, []string{"--program", ext, "--input", in, "--output", out}, 1, []string{"--weights-external", "--weights-file"}},
		{"wrong weights", plain, []string{"--program", ext, "--weights-file", in, "--input", in, "--output", out}, 1, []string{"weights file " + in}},
		{"not a program", plain, []string{"--program", plain, "--bench"}, 1, []string{"not a GPU program"}},
		{"two modes", exe, []string{"--bench", "--input", in}, 2, []string{"exactly one of"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run("net", tc.exe, tc.args, &stdout, &stderr)
			all := stdout.String() + stderr.String()
			if code != tc.code {
				t.Errorf("exit %d, want %d; output:\n%s", code, tc.code, all)
			}
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("output does not contain %q:\n%s", w, all)
				}
			}
		})
	}
	y, err := tensor.ReadNPYFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(y.Data) != fmt.Sprint(want) {
		t.Errorf("y = %v, want %v", y.Data, want)
	}
	if d, h, g := f.Live(); d != 0 || h != 0 || g != 0 {
		t.Errorf("%d device allocations, %d pinned buffers, %d graphs left", d, h, g)
	}
}

// TestRunGPUNoDriver: on a machine without the NVIDIA driver (this one, CI)
// a GPU executable says so and exits 1.
func TestRunGPUNoDriver(t *testing.T) {
	dir := t.TempDir()
	useFakeDriver(t, nil)
	loadDriver = func() (cuda.Driver, error) {
		return nil, fmt.Errorf("%w: libcuda.so.1: cannot open shared object file", cuda.ErrNoDriver)
	}
	exe := writeGPUArtifact(t, dir, "net", []byte("\x7fELF runner"), false)
	for _, tc := range []struct {
		drv  func() (cuda.Driver, error)
		want string
	}{
		{func() (cuda.Driver, error) { return nil, fmt.Errorf("%w: dlopen failed", cuda.ErrNoDriver) }, "net: no NVIDIA driver (libcuda.so.1 not found): dlopen failed"},
		{func() (cuda.Driver, error) { return &cuda.Fake{}, nil }, "net: no CUDA device"},
	} {
		loadDriver = tc.drv
		var stdout, stderr bytes.Buffer
		if code := run("net", exe, []string{"--bench"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("exit %d, stderr %q; want 1 and %q", code, stderr.String(), tc.want)
		}
	}
}

// TestRunGPUImage classifies an image through a GPU program whose input is
// an RGB image (the manifest's preprocessing) on the fake driver.
func TestRunGPUImage(t *testing.T) {
	dir := t.TempDir()
	f := cuda.NewFake()
	f.Exec = gpuTestExec
	useFakeDriver(t, f)
	p := gpuTestProgram()
	p.Input.Shape = []int{2, 3, 2, 2} // 96 bytes before the output at 128
	man := cuda.Manifest{Network: "imgnet", Labels: []string{"cat", "dog", "owl", "emu"},
		Preprocess: &rt.Preprocess{Size: 2, CropPct: 1, Mean: [3]float64{0.5, 0.5, 0.5}, Std: [3]float64{0.5, 0.5, 0.5}, Interpolation: "bicubic"}}
	var buf bytes.Buffer
	if err := cuda.AppendPayload(&buf, nil, man, p, false); err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(dir, "img.kgpu")
	os.WriteFile(prog, buf.Bytes(), 0o644)
	img := image.NewRGBA(image.Rect(0, 0, 4, 4))
	for i := range img.Pix {
		img.Pix[i] = uint8(37 * i)
	}
	pngPath := filepath.Join(dir, "x.png")
	var pb bytes.Buffer
	png.Encode(&pb, img)
	os.WriteFile(pngPath, pb.Bytes(), 0o644)
	var stdout, stderr bytes.Buffer
	code := run("net", filepath.Join(dir, "plain-runner"), []string{"--program", prog, "--image", pngPath, "--top", "2"}, &stdout, &stderr)
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if code != 0 || len(lines) != 2 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	// The kernel ran on the preprocessed image: y = x·w + 1 for the first
	// sample's first 4 values; the classes are printed best first.
	for _, l := range lines {
		if f := strings.Fields(l); len(f) != 3 || !slices.Contains(man.Labels, f[2]) {
			t.Errorf("line %q: want index, probability, label", l)
		}
	}
}
