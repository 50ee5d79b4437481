package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBuildLibErrors checks kiln build --format's refusals, all before
// anything is compiled: an unknown format, a missing runtime library, and a
// KILN_LIB that is not cmd/kiln-lib. tests/clib_test.go builds and runs a
// library end to end.
func TestBuildLibErrors(t *testing.T) {
	dir := t.TempDir()
	notGo := filepath.Join(dir, "libnot.so")
	if err := os.WriteFile(notGo, []byte("not an ELF file"), 0o644); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "libtiny.so")
	tests := []struct {
		name, lib string
		args      []string
		code      int
		stderr    string
	}{
		{"unknown format", "", []string{"--format", "zip"}, 2, `--format "zip": want exe or lib`},
		{"missing library", "", []string{"--format", "lib"}, 1, "libkiln.so is missing (build it with `make build`, or set KILN_LIB)"},
		{"not a Go build", notGo, []string{"--format", "lib"}, 1, "not built from github.com/kiln-dev/kiln/cmd/kiln-lib"},
		{"another program", self, []string{"--format", "lib"}, 1, "not github.com/kiln-dev/kiln/cmd/kiln-lib"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(libEnv, tc.lib)
			args := append([]string{"build", "tiny", "-o", out}, tc.args...)
			code, _, errs := kiln(t, args...)
			if code != tc.code || !strings.Contains(errs, tc.stderr) {
				t.Errorf("kiln %v: exit %d, stderr %q; want exit %d and %q", args, code, errs, tc.code, tc.stderr)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("%s was written", out)
			}
		})
	}
}
