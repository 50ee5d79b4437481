// Package testenv decides what a test does when something it needs from the
// machine is missing: an external tool (clang-19, llc-19, ld.lld-19,
// qemu-aarch64-static, node), cgo, or a CPU feature.
//
// Outside CI such a test skips, saying why. With KILN_REQUIRE_TOOLS=1 (set by
// .ci/run) it fails instead, so CI can never go green having silently run no
// kernel. Skips for -short are a separate, deliberate choice and are not
// affected.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	rt "github.com/kiln-dev/kiln/runtime"
)

// RequireEnv is the environment variable that turns missing-tool skips into
// failures.
const RequireEnv = "KILN_REQUIRE_TOOLS"

// Required reports whether missing tools must fail tests (KILN_REQUIRE_TOOLS
// is set to anything but "" or "0").
func Required() bool {
	v := os.Getenv(RequireEnv)
	return v != "" && v != "0"
}

// Missing stops the test because something it needs is absent: a skip
// normally, a failure under KILN_REQUIRE_TOOLS. It does not return.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("%s=1 and a required tool is missing: %s", RequireEnv, msg)
	}
	t.Skipf("skipping: %s (set %s=1 to make this a failure)", msg, RequireEnv)
}

// Check stops the test through Missing when err is non-nil (err says what is
// missing, e.g. codegen.FindLLVM's error).
func Check(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		Missing(t, "%v", err)
	}
}

// LookPath returns the path of the named program, or stops the test through
// Missing when it is not on PATH.
func LookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, "%s not found on PATH", name)
	}
	return p
}

// MPI returns the path of Open MPI's mpirun, or stops the test through
// Missing (naming the Debian packages) when it is not on PATH.
func MPI(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("mpirun")
	if err != nil {
		Missing(t, "mpirun not found on PATH (install Open MPI: apt-get install libopenmpi-dev openmpi-bin)")
	}
	return p
}

// MPIJobEnv returns the environment entries that give one mpirun job an
// Open MPI session directory of its own: TMPDIR set to a fresh, short
// directory (Unix socket paths inside it must stay under 108 bytes),
// removed when the test ends. Open MPI 4 creates <TMPDIR>/ompi.<host>.<uid>
// as each job starts, and two jobs starting at the same moment race to
// create it: the loser fails in orte_init ("A call to mkdir was unable to
// create the desired directory ... File exists", open-mpi/ompi#8510).
// Tests start jobs side by side (t.Parallel, packages run concurrently),
// so each job gets its own.
func MPIJobEnv(t testing.TB) []string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ompi")
	if err != nil {
		t.Fatalf("MPI session directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return []string{"TMPDIR=" + dir}
}

// HostISAs returns those of the named ISAs (e.g. "avx512", "avx2") that
// this CPU runs, by the runtime's own check (rt.HostISAs), in the given
// order, and logs the others. A CPU feature is not a tool that CI could
// install: a test runs the kernels on every listed ISA the machine
// executes, and the ones it cannot run are still compiled by the same
// test. Only when none of them runs does the test stop through Missing.
func HostISAs(t testing.TB, isas ...string) []string {
	t.Helper()
	host := rt.HostISAs()
	var run []string
	for _, name := range isas {
		if !slices.Contains(host, name) {
			t.Logf("not running %s kernels: this CPU runs only %s", name, strings.Join(host, ", "))
			continue
		}
		run = append(run, name)
	}
	if len(run) == 0 {
		Missing(t, "this CPU runs none of %s", strings.Join(isas, ", "))
	}
	return run
}
