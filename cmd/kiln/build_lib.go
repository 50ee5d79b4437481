package main

import (
	"bytes"
	"debug/buildinfo"
	"fmt"
	"os"
	"path/filepath"

	rt "github.com/kiln-dev/kiln/runtime"
	"github.com/kiln-dev/kiln/runtime/clib"
)

// kiln build --format lib: the compiled network appended to a copy of the
// runtime library (cmd/kiln-lib built with -buildmode=c-shared; `make build`
// leaves it in bin/libkiln.so), exactly as --format exe appends it to the
// runner, plus kiln.h (runtime/clib) next to the output.

// libEnv names the runtime library explicitly, overriding the search next
// to kiln.
const libEnv = "KILN_LIB"

// libPkg is the import path every runtime library is built from.
const libPkg = "github.com/kiln-dev/kiln/cmd/kiln-lib"

// parseFormat reads --format: false for exe, true for lib.
func parseFormat(s string) (lib bool, err error) {
	switch s {
	case "exe", "":
		return false, nil
	case "lib":
		return true, nil
	}
	return false, usagef("--format %q: want exe or lib", s)
}

// libFor returns the runtime library kiln build --format lib copies for bt:
// $KILN_LIB when set, else libkiln.so (libkiln-linux-ARCH.so for another
// architecture) next to the kiln executable. Like runnerFor it checks the
// file's Go build information (package, GOARCH, cgo, c-shared build mode)
// and that it carries no network yet, before anything is compiled.
func libFor(bt buildTarget) (string, error) {
	arch := archOfTarget(bt)
	name := "libkiln.so"
	makeHint := "make build"
	if arch != hostArch() {
		name = "libkiln-linux-" + arch + ".so"
		makeHint = "CGO_ENABLED=1 GOARCH=" + arch + " go build -buildmode=c-shared -o " + name + " ./cmd/kiln-lib"
	}
	p := os.Getenv(libEnv)
	if p == "" {
		self, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("locating the runtime library next to kiln: %w (set %s to its path)", err, libEnv)
		}
		p = filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("--format lib needs the runtime library next to kiln: %s is missing (build it with `%s`, or set %s)", p, makeHint, libEnv)
		}
	}
	bi, err := buildinfo.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("runtime library %s: not built from %s: %v (build it with `%s`)", p, libPkg, err, makeHint)
	}
	if bi.Path != libPkg {
		return "", fmt.Errorf("runtime library %s was built from %s, not %s (build it with `%s`)", p, bi.Path, libPkg, makeHint)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if got := settings["GOARCH"]; got != arch {
		return "", fmt.Errorf("runtime library %s is built for %s, --target %s needs %s (build it with `%s`)", p, got, bt.name, arch, makeHint)
	}
	if settings["CGO_ENABLED"] != "1" || settings["-buildmode"] != "c-shared" {
		return "", fmt.Errorf("runtime library %s is not a cgo c-shared build (build it with `%s`)", p, makeHint)
	}
	b, found, err := rt.FindBundle(p)
	if err != nil {
		return "", fmt.Errorf("runtime library %s: %w", p, err)
	}
	if found {
		b.Close()
		return "", fmt.Errorf("runtime library %s already carries a compiled network: use the plain library (`%s`)", p, makeHint)
	}
	return p, nil
}

// writeLibHeader writes kiln.h next to the library out (for --format lib;
// nothing for an executable). An existing kiln.h with the same text is
// left alone; one with other text is not overwritten (a warning says so).
func writeLibHeader(e *env, bt buildTarget, out string) error {
	if !bt.lib {
		return nil
	}
	h := filepath.Join(filepath.Dir(out), "kiln.h")
	if old, err := os.ReadFile(h); err == nil {
		if !bytes.Equal(old, clib.Header) {
			fmt.Fprintf(e.stderr, "warning: %s exists with other content; not overwritten (kiln's header is runtime/clib/kiln.h)\n", h)
		}
		return nil
	}
	if err := os.WriteFile(h, clib.Header, 0o644); err != nil {
		return fmt.Errorf("writing the C header: %w", err)
	}
	fmt.Fprintf(e.stdout, "wrote %s\n", h)
	return nil
}
