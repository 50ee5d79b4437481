package tests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// The arm64 target end to end on an x86-64 host (docs/ARM64.md): the runner
// (cmd/kiln-runner) is cross-compiled for arm64 with cgo and Debian's aarch64
// toolchain, the host kiln builds NEON standalone binaries onto it (kiln
// build --target arm64-neon), and qemu-aarch64-static runs them; their
// outputs must match the interpreter's on the same input at the fixtures'
// tolerance.
//
// The tools come from `make install-deps`; a missing one skips through
// internal/testenv, which fails instead under KILN_REQUIRE_TOOLS=1 (CI), so
// that CI cannot pass without running this. -short skips it.

const (
	aarch64CC      = "aarch64-linux-gnu-gcc"
	aarch64Sysroot = "/usr/aarch64-linux-gnu" // libc6-dev-arm64-cross: qemu's -L prefix
	qemuAarch64    = "qemu-aarch64-static"
	arm64Hint      = "run `make install-deps` (apt-get install lld-19 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)"
)

func TestARM64NEONUnderQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the arm64 cross build and qemu runs")
	}
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skipf("cross-compiles from linux/amd64; host is %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not on PATH: %v", err)
	}
	for _, tool := range []string{aarch64CC, qemuAarch64} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, "%s not found: %s", tool, arm64Hint)
		}
	}
	if _, err := os.Stat(filepath.Join(aarch64Sysroot, "lib", "ld-linux-aarch64.so.1")); err != nil {
		testenv.Missing(t, "no aarch64 libc in %s: %s", aarch64Sysroot, arm64Hint)
	}

	// kiln and kiln-runner-linux-arm64 side by side, as `make build
	// kiln-arm64` leaves them in bin/: kiln build --target arm64-neon looks
	// for the arm64 runner next to its own executable.
	dir := t.TempDir()
	kiln := filepath.Join(dir, "kiln")
	start := time.Now()
	goBuild(t, goTool, filepath.Join(dir, "kiln-runner-linux-arm64"), "github.com/kiln-dev/kiln/cmd/kiln-runner",
		"CGO_ENABLED=1", "GOOS=linux", "GOARCH=arm64", "CC="+aarch64CC)
	t.Logf("cross-built kiln-runner-linux-arm64 in %.1f s", time.Since(start).Seconds())
	goBuild(t, goTool, kiln, "github.com/kiln-dev/kiln/cmd/kiln")

	cases := []struct {
		net   string
		batch int
		input []int // per-sample CxHxW; nil: the network's own
	}{
		{"tiny", 1, nil},
		{"tiny", 2, nil},
		// A full network at the smallest input it takes (qemu is slow).
		{"inception_resnet_v1", 1, []int{3, 75, 75}},
	}
	for _, c := range cases {
		name := fmt.Sprintf("%s_batch%d", c.net, c.batch)
		if c.input != nil {
			name += "_" + tensor.ShapeString(c.input)
		}
		t.Run(name, func(t *testing.T) {
			g := loadNet(t, c.net, c.batch, c.input)
			shape := g.Inputs()[0].Type.Shape
			x, err := tensor.Generate("input", shape)
			if err != nil {
				t.Fatal(err)
			}
			sub := t.TempDir()
			in, got, ref := filepath.Join(sub, "x.npy"), filepath.Join(sub, "got.npy"), filepath.Join(sub, "ref.npy")
			exe := filepath.Join(sub, c.net+"-arm64")
			if err := tensor.WriteNPYFile(in, x); err != nil {
				t.Fatal(err)
			}

			args := []string{"build", "--target", "arm64-neon", "--batch", fmt.Sprint(c.batch)}
			if c.input != nil {
				args = append(args, "--input", tensor.ShapeString(c.input))
			}
			t0 := time.Now()
			mustRunTool(t, kiln, append(args, c.net, "-o", exe)...)
			tBuild := time.Since(t0)

			// The reference runs on the host while qemu runs the NEON binary.
			refDone := make(chan error, 1)
			var tRef time.Duration
			go func() {
				t0 := time.Now()
				_, err := runTool(kiln, "run", "--backend", "interp", c.net, "--input", in, "--output", ref)
				tRef = time.Since(t0)
				refDone <- err
			}()
			t0 = time.Now()
			qemuOut, qemuErr := runTool(qemuAarch64, "-L", aarch64Sysroot, exe, "--input", in, "--output", got)
			tQemu := time.Since(t0)
			if err := <-refDone; err != nil {
				t.Fatal(err)
			}
			if qemuErr != nil {
				t.Fatal(qemuErr)
			}
			if !strings.Contains(qemuOut, "wrote "+got) {
				t.Errorf("qemu run printed %q, want the wrote line", qemuOut)
			}

			gotT, err := tensor.ReadNPYFile(got)
			if err != nil {
				t.Fatal(err)
			}
			refT, err := tensor.ReadNPYFile(ref)
			if err != nil {
				t.Fatal(err)
			}
			rel := compare(t, "neon under qemu vs interp", gotT, refT, fixtureTol)
			t.Logf("%s input %s: max|got-ref| = %.3g x max|ref| (max|ref| %.3g); kiln build %.1f s, qemu run %.1f s, interp %.1f s",
				c.net, tensor.ShapeString(shape), rel, tensor.MaxAbs(refT), tBuild.Seconds(), tQemu.Seconds(), tRef.Seconds())
		})
	}
}

// goBuild builds the package pkg into out with goTool and the extra
// environment.
func goBuild(t *testing.T, goTool, out, pkg string, env ...string) {
	t.Helper()
	cmd := exec.Command(goTool, "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s go build -o %s %s: %v\n%s%s", strings.Join(env, " "), out, pkg, err, b, installHint(env))
	}
}

func installHint(env []string) string {
	if len(env) == 0 {
		return ""
	}
	return "\n" + arm64Hint
}

func mustRunTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runTool(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runTool runs a command and returns its stdout; a failure's error carries
// the command line and its stderr.
func runTool(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}
