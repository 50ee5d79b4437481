package dsl

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with the file path, or rewrites it with -update.
func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}

// TestDiagnostics loads every testdata/errors/*.kiln and compares the
// diagnostics text with the .golden file beside it.
func TestDiagnostics(t *testing.T) {
	files, err := filepath.Glob("testdata/errors/*.kiln")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	fsys := os.DirFS("testdata/errors")
	for _, path := range files {
		name := filepath.Base(path)
		t.Run(strings.TrimSuffix(name, ".kiln"), func(t *testing.T) {
			g, err := LoadFile(name, Options{FS: fsys})
			if err == nil {
				t.Fatalf("no error; graph has %d nodes", len(g.Nodes))
			}
			if _, ok := err.(Diagnostics); !ok {
				t.Fatalf("error is %T, want Diagnostics: %v", err, err)
			}
			golden(t, strings.TrimSuffix(path, ".kiln")+".golden", err.Error()+"\n")
		})
	}
}
