package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestCorpusNEONUnderQEMU runs every corpus network (tests/corpus) on the
// NEON target: the host kiln builds each at batch 1 with procedural weights
// into an arm64 standalone executable (kiln build --target arm64-neon, onto
// the cross-built kiln-runner-linux-arm64), qemu-aarch64-static runs it on a
// generated input, and the output must match the interpreter's (kiln run
// --backend interp) within corpusTol x max|ref|, the bound the x86 corpus
// test uses. This is issue 10's "compared with the interpreter on NEON
// (qemu)". Tools as in TestARM64NEONUnderQEMU; -short skips it.
func TestCorpusNEONUnderQEMU(t *testing.T) {
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
	files := corpus(t)

	dir := t.TempDir()
	kiln := filepath.Join(dir, "kiln")
	start := time.Now()
	goBuild(t, goTool, filepath.Join(dir, "kiln-runner-linux-arm64"), "github.com/kiln-dev/kiln/cmd/kiln-runner",
		"CGO_ENABLED=1", "GOOS=linux", "GOARCH=arm64", "CC="+aarch64CC)
	goBuild(t, goTool, kiln, "github.com/kiln-dev/kiln/cmd/kiln")
	t.Logf("built kiln and kiln-runner-linux-arm64 in %.1f s", time.Since(start).Seconds())

	for _, file := range files {
		file, err := filepath.Abs(file)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(filepath.Base(file), ".kiln")
		t.Run(name, func(t *testing.T) {
			g, err := dsl.LoadFile(file, dsl.Options{Batch: 1})
			if err != nil {
				t.Fatal(err)
			}
			shape := g.Inputs()[0].Type.Shape
			x, err := tensor.Generate("input", shape)
			if err != nil {
				t.Fatal(err)
			}
			sub := t.TempDir()
			in, got, ref := filepath.Join(sub, "x.npy"), filepath.Join(sub, "got.npy"), filepath.Join(sub, "ref.npy")
			exe := filepath.Join(sub, name+"-arm64")
			if err := tensor.WriteNPYFile(in, x); err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			mustRunTool(t, kiln, "build", "--target", "arm64-neon", "--batch", "1", file, "-o", exe)
			tBuild := time.Since(t0)

			// The interpreter runs on the host while qemu runs the NEON
			// binary.
			refDone := make(chan error, 1)
			go func() {
				_, err := runTool(kiln, "run", "--backend", "interp", file, "--input", in, "--output", ref)
				refDone <- err
			}()
			t0 = time.Now()
			_, qemuErr := runTool(qemuAarch64, "-L", aarch64Sysroot, exe, "--input", in, "--output", got)
			tQemu := time.Since(t0)
			if err := <-refDone; err != nil {
				t.Fatal(err)
			}
			if qemuErr != nil {
				t.Fatal(qemuErr)
			}
			gotT, err := tensor.ReadNPYFile(got)
			if err != nil {
				t.Fatal(err)
			}
			refT, err := tensor.ReadNPYFile(ref)
			if err != nil {
				t.Fatal(err)
			}
			rel := compare(t, fmt.Sprintf("%s: neon under qemu vs interp", name), gotT, refT, corpusTol)
			t.Logf("%s input %s: max|got-ref| = %.2e x max|ref|; kiln build %.1f s, qemu run %.1f s",
				name, tensor.ShapeString(shape), rel, tBuild.Seconds(), tQemu.Seconds())
		})
	}
}
