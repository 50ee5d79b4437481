package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestRunnerDeps lists the runner's transitive imports with `go list -deps`
// and fails if any part of the compiler is linked in: a built standalone
// executable must carry the runtime only (runtime/doc.go). It also requires
// the packages the runner does need, so that an empty or broken listing
// cannot pass.
func TestRunnerDeps(t *testing.T) {
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		if goTool, err = exec.LookPath("go"); err != nil {
			t.Fatalf("no go command in GOROOT/bin or on PATH: %v", err)
		}
	}
	out, err := exec.Command(goTool, "list", "-deps", "github.com/kiln-dev/kiln/cmd/kiln-runner").Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("go list -deps: %v\n%s", err, msg)
	}
	pkgs := strings.Fields(string(out))
	deps := map[string]bool{}
	for _, p := range pkgs {
		deps[p] = true
	}
	// Forbidden: exact packages, or anything under a prefix ending in "/".
	forbidden := []string{
		"github.com/kiln-dev/kiln/ir", // the graph package; ir/tensor is allowed
		"github.com/kiln-dev/kiln/ir/interp",
		"github.com/kiln-dev/kiln/dsl",
		"github.com/kiln-dev/kiln/dsl/",
		"github.com/kiln-dev/kiln/passes",
		"github.com/kiln-dev/kiln/passes/",
		"github.com/kiln-dev/kiln/codegen",
		"github.com/kiln-dev/kiln/codegen/",
		"github.com/kiln-dev/kiln/archs",
		"github.com/kiln-dev/kiln/cmd/kiln",
		"github.com/llir/",
		"github.com/alecthomas/participle/",
		// google.golang.org/protobuf is allowed: it reaches the runner only
		// through the Prometheus client of --serve (client_model's metric
		// types); the compiler's user of it, codegen/onnx, is forbidden
		// above.
	}
	for _, p := range pkgs {
		for _, f := range forbidden {
			if p == f || (strings.HasSuffix(f, "/") && strings.HasPrefix(p, f)) {
				t.Errorf("the runner imports %s (matches %q): the standalone executable must not carry the compiler", p, f)
			}
		}
	}
	for _, want := range []string{
		"github.com/kiln-dev/kiln/cmd/kiln-runner",
		"github.com/kiln-dev/kiln/runtime",
		"github.com/kiln-dev/kiln/ir/tensor",
		"github.com/kiln-dev/kiln/runtime/imageprep",
	} {
		if !deps[want] {
			t.Errorf("go list -deps does not list %s; output:\n%s", want, out)
		}
	}
}

// TestRunWithoutNetwork runs the runner on executables that carry no
// network or a damaged one: a clear error and exit status 1, nothing run.
func TestRunWithoutNetwork(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("\x7fELF just an executable"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A trailer magic with too few bytes after it: a truncated payload.
	cut := filepath.Join(dir, "cut")
	if err := os.WriteFile(cut, []byte("\x7fELF executable KILNPAY1\x00\x00\x00"), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, exe string
		args      []string
		want      string
	}{
		{"plain runner", plain, []string{"--bench"}, "carries no compiled network"},
		{"plain runner, no args", plain, nil, "it is the kiln runner"},
		{"truncated payload", cut, []string{"--bench"}, "corrupt kiln payload"},
		{"missing file", filepath.Join(dir, "none"), nil, "none"},
	}
	for _, tc := range cases {
		var stdout, stderr bytes.Buffer
		code := run("model", tc.exe, tc.args, &stdout, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), tc.want) || !strings.HasPrefix(stderr.String(), "model: ") || stdout.Len() != 0 {
			t.Errorf("%s: exit %d (want 1), stdout %q, stderr %q (want it to contain %q)", tc.name, code, stdout.String(), stderr.String(), tc.want)
		}
	}
}
