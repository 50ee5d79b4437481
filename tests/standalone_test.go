package tests

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kiln-dev/kiln/ir/tensor"
)

// buildKiln builds the kiln command into dir.
func buildKiln(t *testing.T, dir string) string {
	t.Helper()
	exe := filepath.Join(dir, "kiln")
	cmd := exec.Command("go", "build", "-o", exe, "github.com/kiln-dev/kiln/cmd/kiln")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return exe
}

type result struct {
	code           int
	stdout, stderr string
	maxRSSKiB      int64
}

// runIn runs exe with args in dir with a PATH that has neither Go nor LLVM.
func runIn(t *testing.T, dir, exe string, args ...string) result {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/nonexistent", "HOME=" + dir}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s: %v", exe, err)
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.maxRSSKiB = ru.Maxrss
	}
	return r
}

// TestStandaloneBinary builds tiny into a standalone executable and runs it
// from another directory with no Go or LLVM on PATH: --input/--output (checked
// against kiln run --backend interp), --image, --bench, and bad input.
func TestStandaloneBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kiln and a network")
	}
	bin, work := t.TempDir(), t.TempDir()
	kiln := buildKiln(t, bin)
	out, err := exec.Command(kiln, "build", "tiny", "--batch", "2", "-o", filepath.Join(bin, "tiny")).CombinedOutput()
	if err != nil {
		t.Fatalf("kiln build: %v\n%s", err, out)
	}
	// Sample input and the interpreter's answer.
	x, err := tensor.Generate("input", []int{2, 3, 32, 32})
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(work, "x.npy")
	if err := tensor.WriteNPYFile(in, x); err != nil {
		t.Fatal(err)
	}
	ref := filepath.Join(work, "ref.npy")
	if out, err := exec.Command(kiln, "run", "tiny", "--input", in, "--output", ref).CombinedOutput(); err != nil {
		t.Fatalf("kiln run: %v\n%s", err, out)
	}
	r := runIn(t, work, filepath.Join(bin, "tiny"), "--input", "x.npy", "--output", "y.npy")
	if r.code != 0 {
		t.Fatalf("standalone run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	got, err := tensor.ReadNPYFile(filepath.Join(work, "y.npy"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := tensor.ReadNPYFile(ref)
	if err != nil {
		t.Fatal(err)
	}
	rel := compare(t, "standalone tiny", got, want, 1e-4)
	t.Logf("standalone vs interpreter: %.2e; peak RSS %d KiB", rel, r.maxRSSKiB)

	// An image through the Inception preprocessing.
	img := image.NewRGBA(image.Rect(0, 0, 64, 48))
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 7)
	}
	img.Set(3, 3, color.RGBA{255, 0, 0, 255})
	var pngBuf bytes.Buffer
	if err := png.Encode(&pngBuf, img); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "photo.png"), pngBuf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	r = runIn(t, work, filepath.Join(bin, "tiny"), "--image", "photo.png", "--top", "3")
	if r.code != 0 || len(strings.Split(strings.TrimSpace(r.stdout), "\n")) != 3 {
		t.Fatalf("--image: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runIn(t, work, filepath.Join(bin, "tiny"), "--bench", "--iters", "3")
	if r.code != 0 || !strings.Contains(r.stdout, "median") {
		t.Fatalf("--bench: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// Bad input: clear errors, exit 1 (2 for usage), no output file.
	wrongShape := filepath.Join(work, "wrong.npy")
	if err := tensor.WriteNPYFile(wrongShape, tensor.New(1, 3, 32, 32)); err != nil {
		t.Fatal(err)
	}
	intNPY := []byte("\x93NUMPY\x01\x00v\x00{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3, 32, 32), }")
	intNPY = append(intNPY, bytes.Repeat([]byte(" "), 128-len(intNPY)-1)...)
	intNPY = append(intNPY, '\n')
	intNPY = append(intNPY, make([]byte, 8*2*3*32*32)...)
	if err := os.WriteFile(filepath.Join(work, "int.npy"), intNPY, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "broken.jpg"), []byte("\xff\xd8\xff\xe0 not really"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"wrong shape", []string{"--input", "wrong.npy", "--output", "o.npy"}, 1, "shape 1x3x32x32, this binary was built for 2x3x32x32"},
		{"wrong dtype", []string{"--input", "int.npy", "--output", "o.npy"}, 1, "'<i8'"},
		{"missing input", []string{"--input", "none.npy", "--output", "o.npy"}, 1, "none.npy"},
		{"missing image", []string{"--image", "none.jpg"}, 1, "none.jpg"},
		{"undecodable image", []string{"--image", "broken.jpg"}, 1, "cannot decode image"},
		{"isa the artifact lacks", []string{"--bench", "--isa", "neon"}, 1, "neon"},
		{"no mode", nil, 2, "give exactly one of"},
	}
	for _, tc := range cases {
		r := runIn(t, work, filepath.Join(bin, "tiny"), tc.args...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d (want %d), stderr:\n%s\nwant %q", tc.name, r.code, tc.code, r.stderr, tc.want)
		}
		if _, err := os.Stat(filepath.Join(work, "o.npy")); err == nil {
			t.Errorf("%s: output file written", tc.name)
		}
	}
	// kiln build refuses unsupported targets.
	out, err = exec.Command(kiln, "build", "tiny", "--target", "riscv64", "-o", filepath.Join(bin, "x")).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), `unsupported --target "riscv64"`) {
		t.Errorf("unsupported target: %v\n%s", err, out)
	}
}
