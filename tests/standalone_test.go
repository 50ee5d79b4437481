package tests

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/ir/tensor"
)

// buildKiln builds the kiln command and its runner (kiln-runner, which kiln
// build appends networks to) side by side into dir, as `make build` does in
// bin/, and returns kiln's path.
func buildKiln(t *testing.T, dir string) string {
	t.Helper()
	goBuild(t, "go", filepath.Join(dir, "kiln-runner"), "github.com/kiln-dev/kiln/cmd/kiln-runner")
	exe := filepath.Join(dir, "kiln")
	goBuild(t, "go", exe, "github.com/kiln-dev/kiln/cmd/kiln")
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
// against kiln run --backend interp), --tap of modules compiled in with kiln
// build --tap, --image, --bench, and bad input.
func TestStandaloneBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kiln and a network")
	}
	bin, work := t.TempDir(), t.TempDir()
	kiln := buildKiln(t, bin)
	out, err := exec.Command(kiln, "build", "tiny", "--batch", "2", "--tap", "stem", "--tap", "mixed", "-o", filepath.Join(bin, "tiny")).CombinedOutput()
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
	rel := compare(t, "standalone tiny", got, want, 1e-5)
	t.Logf("standalone vs interpreter: %.2e; peak RSS %d KiB", rel, r.maxRSSKiB)

	// Module outputs compiled in with --tap, against the interpreter's.
	for _, tap := range []string{"stem", "mixed"} {
		ref := filepath.Join(work, "ref-"+tap+".npy")
		if out, err := exec.Command(kiln, "run", "tiny", "--input", in, "--output", ref, "--tap", tap).CombinedOutput(); err != nil {
			t.Fatalf("kiln run --tap %s: %v\n%s", tap, err, out)
		}
		r := runIn(t, work, filepath.Join(bin, "tiny"), "--input", "x.npy", "--output", tap+".npy", "--tap", tap)
		if r.code != 0 {
			t.Fatalf("standalone --tap %s: exit %d\n%s%s", tap, r.code, r.stdout, r.stderr)
		}
		got, err := tensor.ReadNPYFile(filepath.Join(work, tap+".npy"))
		if err != nil {
			t.Fatal(err)
		}
		want, err := tensor.ReadNPYFile(ref)
		if err != nil {
			t.Fatal(err)
		}
		compare(t, "standalone tiny --tap "+tap, got, want, 1e-5)
	}

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
	if err := tensor.WriteNPYFile(wrongShape, tensor.New(2, 3, 16, 16)); err != nil {
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
		{"wrong shape", []string{"--input", "wrong.npy", "--output", "o.npy"}, 1, "shape 2x3x16x16, this binary takes N×3x32x32"},
		{"wrong dtype", []string{"--input", "int.npy", "--output", "o.npy"}, 1, "'<i8'"},
		{"missing input", []string{"--input", "none.npy", "--output", "o.npy"}, 1, "none.npy"},
		{"missing image", []string{"--image", "none.jpg"}, 1, "none.jpg"},
		{"undecodable image", []string{"--image", "broken.jpg"}, 1, "cannot decode image"},
		{"isa the artifact lacks", []string{"--bench", "--isa", "neon"}, 1, "neon"},
		{"no mode", nil, 2, "give exactly one of"},
		{"tap not compiled in", []string{"--input", "x.npy", "--output", "o.npy", "--tap", "blocks.0"}, 2, "--tap blocks.0: not compiled in (taps: stem, mixed)"},
		{"tap without input", []string{"--bench", "--tap", "stem"}, 2, "--tap needs --input"},
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

// TestBuildRunner checks how kiln build finds the runner it appends the
// network to: missing, the wrong program, or one that already carries a
// network fails at once with a message saying what to run and writes no
// output; KILN_RUNNER names another runner; the plain runner refuses to run.
func TestBuildRunner(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kiln")
	}
	bin, other, work := t.TempDir(), t.TempDir(), t.TempDir()
	kiln := buildKiln(t, bin)
	runner := filepath.Join(bin, "kiln-runner")
	// A runner elsewhere, for KILN_RUNNER, and a copy of kiln without one.
	moved := filepath.Join(other, "my-runner")
	copyFile(t, runner, moved)
	lone := filepath.Join(other, "kiln")
	copyFile(t, kiln, lone)
	built := filepath.Join(bin, "tiny")
	if out, err := exec.Command(kiln, "build", "tiny", "-o", built).CombinedOutput(); err != nil {
		t.Fatalf("kiln build: %v\n%s", err, out)
	}
	// The host's target and a foreign one, whose runner is not there.
	host, foreign, hostArch, foreignArch := "x86-64", "arm64-neon", "amd64", "arm64"
	if runtime.GOARCH == "arm64" {
		host, foreign, hostArch, foreignArch = foreign, host, foreignArch, hostArch
	}
	cases := []struct {
		name, kiln, runnerEnv, target string
		code                          int
		want                          string
	}{
		{"no runner next to kiln", lone, "", host, 1, "kiln-runner is missing (build it with `make build`, or set KILN_RUNNER)"},
		{"no foreign runner next to kiln", lone, "", foreign, 1, "kiln-runner-linux-" + foreignArch + " is missing (build it with `"},
		{"KILN_RUNNER", lone, moved, host, 0, "built "},
		{"KILN_RUNNER missing", kiln, filepath.Join(other, "none"), host, 1, "none"},
		{"KILN_RUNNER is kiln", kiln, kiln, host, 1, "was built from github.com/kiln-dev/kiln/cmd/kiln, not github.com/kiln-dev/kiln/cmd/kiln-runner"},
		{"KILN_RUNNER is a built network", kiln, built, host, 1, "already carries a compiled network (tiny)"},
		{"KILN_RUNNER is not Go", kiln, "/bin/sh", host, 1, "not a Go executable"},
		{"KILN_RUNNER for another arch", kiln, runner, foreign, 1, "is built for " + hostArch + ", --target " + foreign + " needs " + foreignArch},
	}
	for _, tc := range cases {
		out := filepath.Join(work, "out")
		cmd := exec.Command(tc.kiln, "build", "tiny", "--target", tc.target, "-o", out)
		cmd.Env = append(os.Environ(), "KILN_RUNNER="+tc.runnerEnv)
		t0 := time.Now()
		b, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s: exit %d (want %d), output:\n%s\nwant it to contain %q", tc.name, code, tc.code, b, tc.want)
		}
		_, statErr := os.Stat(out)
		switch {
		case tc.code != 0 && statErr == nil:
			t.Errorf("%s: kiln build failed but wrote %s", tc.name, out)
		case tc.code != 0 && time.Since(t0) > 5*time.Second:
			t.Errorf("%s: kiln build took %v to fail; the runner must be checked before compiling", tc.name, time.Since(t0))
		case tc.code == 0:
			if statErr != nil {
				t.Errorf("%s: no output: %v", tc.name, statErr)
			} else if r := runIn(t, work, out, "--bench", "--iters", "2"); r.code != 0 || !strings.Contains(r.stdout, "median") {
				t.Errorf("%s: the built binary: exit %d\n%s%s", tc.name, r.code, r.stdout, r.stderr)
			}
		}
		os.Remove(out)
	}
	// The runner on its own carries no network; kiln ignores payloads.
	if r := runIn(t, work, runner, "--bench"); r.code != 1 || !strings.Contains(r.stderr, "carries no compiled network") {
		t.Errorf("plain runner: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if r := runIn(t, work, kiln, "--bench"); r.code != 2 || !strings.Contains(r.stderr, `unknown command "--bench"`) {
		t.Errorf("kiln --bench: exit %d (want 2, the CLI's usage error), stderr:\n%s", r.code, r.stderr)
	}
	// The built executable is the runner plus the payload: it starts with
	// the runner's bytes, not kiln's, but for the one byte of the payload
	// marker kiln build sets (runtime/verify.go), which differs.
	rb, err := os.ReadFile(runner)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(built)
	if err != nil {
		t.Fatal(err)
	}
	var diff []int
	for i := range min(len(rb), len(bb)) {
		if rb[i] != bb[i] {
			diff = append(diff, i)
		}
	}
	if len(bb) <= len(rb) || len(diff) != 1 || string(rb[diff[0]-21:diff[0]+1]) != "KILN-PAYLOAD-MARK-v1:0" || bb[diff[0]] != '1' {
		t.Errorf("%s is not the runner %s with its payload marker set (bytes differing: %v)", built, runner, diff[:min(len(diff), 10)])
	}
	st, _ := os.Stat(kiln)
	t.Logf("kiln %.1f MiB, kiln-runner %.1f MiB, built tiny %.1f MiB", float64(st.Size())/(1<<20), float64(len(rb))/(1<<20), float64(len(bb))/(1<<20))
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}
