package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestLibDeps checks that the runtime library, like the runner, carries no
// part of the compiler: a library built by kiln build --format lib is the
// runtime plus the network.
func TestLibDeps(t *testing.T) {
	out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "list", "-deps", "github.com/kiln-dev/kiln/cmd/kiln-lib").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{"github.com/kiln-dev/kiln/ir", "github.com/kiln-dev/kiln/ir/interp", "github.com/kiln-dev/kiln/dsl",
		"github.com/kiln-dev/kiln/passes", "github.com/kiln-dev/kiln/codegen", "github.com/kiln-dev/kiln/archs",
		"github.com/llir/", "github.com/alecthomas/participle/", "google.golang.org/protobuf/"}
	for _, p := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if p == f || strings.HasPrefix(p, strings.TrimSuffix(f, "/")+"/") && !strings.HasPrefix(p, "github.com/kiln-dev/kiln/ir/tensor") {
				t.Errorf("kiln-lib imports %s (matches %q): the library must not carry the compiler", p, f)
			}
		}
	}
}
