package dsl

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/kiln-dev/kiln/archs"
)

// fuzzLimits keep elaboration of random programs small and fast.
var fuzzLimits = Limits{MaxRepeat: 64, MaxSize: 4096, MaxNodes: 20000, MaxSteps: 200000}

// FuzzParse parses arbitrary sources and, when they parse, elaborates them
// with small limits (imports resolve in the built-in library). It checks that
// nothing panics or hangs and that every error is a sorted, non-empty
// Diagnostics list whose entries carry a position.
func FuzzParse(f *testing.F) {
	seeds, _ := fs.Glob(archs.FS, "*.kiln")
	for _, name := range seeds {
		src, err := fs.ReadFile(archs.FS, name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	bad, _ := filepath.Glob("testdata/errors/*.kiln")
	for _, name := range bad {
		src, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		file, err := ParseFile("fuzz.kiln", src)
		if file == nil {
			t.Fatal("nil File")
		}
		checkDiagnostics(t, err)
		if err != nil {
			return
		}
		fsys := fstest.MapFS{"fuzz.kiln": {Data: src}}
		g, err := Elaborate(file, Options{FS: fsys, Limits: fuzzLimits})
		checkDiagnostics(t, err)
		if err == nil {
			if verr := g.Verify(); verr != nil {
				t.Fatalf("graph does not verify: %v", verr)
			}
		}
	})
}

func checkDiagnostics(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	ds, ok := err.(Diagnostics)
	if !ok {
		if strings.HasPrefix(err.Error(), "internal error") {
			t.Fatal(err)
		}
		t.Fatalf("error %T is not Diagnostics: %v", err, err)
	}
	if len(ds) == 0 {
		t.Fatal("empty Diagnostics")
	}
	for i, d := range ds {
		if d.Pos.File == "" || d.Msg == "" {
			t.Fatalf("diagnostic without file or message: %#v", d)
		}
		if i > 0 && ds[i-1].Pos.File == d.Pos.File && (ds[i-1].Pos.Line > d.Pos.Line ||
			ds[i-1].Pos.Line == d.Pos.Line && ds[i-1].Pos.Col > d.Pos.Col) {
			t.Fatalf("diagnostics not sorted: %v before %v", ds[i-1].Pos, d.Pos)
		}
	}
}
