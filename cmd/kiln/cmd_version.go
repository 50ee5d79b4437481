package main

import (
	"flag"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/kiln-dev/kiln/codegen"
)

func init() {
	register(&command{name: "version", args: "", summary: "print kiln's version, VCS revision, Go version and the LLVM found",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			return func(args []string) error {
				if len(args) > 0 {
					return usagef("version takes no arguments")
				}
				fmt.Fprintf(e.stdout, "kiln %s\n", buildVersion())
				fmt.Fprintf(e.stdout, "go: %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
				if tc, err := codegen.FindLLVM(); err != nil {
					fmt.Fprintf(e.stdout, "llvm: not found (%v)\n", err)
				} else {
					fmt.Fprintf(e.stdout, "llvm: %s (%s)\n", tc.Version, tc.Clang)
				}
				return nil
			}
		}})
}

// buildVersion describes this kiln executable from its Go build information
// (debug.ReadBuildInfo): the main module's version ("(devel)" for a build
// from a checkout), then the VCS revision (12 hex digits) and "+dirty" when
// the work tree had uncommitted changes, as `go build` records them
// (vcs.revision, vcs.modified); e.g. "(devel) 8a35eae1b2c3+dirty". Builds
// without VCS stamping (go test, -buildvcs=false) give the version only.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev string
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		v += " " + rev
		if dirty {
			v += "+dirty"
		}
	}
	return v
}
