package main

import (
	"flag"
	"fmt"
	"runtime"
	"strings"
	"text/tabwriter"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/target"
)

func init() {
	register(&command{name: "targets", args: "", summary: "list the target table: ISAs, build targets, and whether each builds and runs here",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			return func(args []string) error {
				if len(args) != 0 {
					return usagef("targets takes no arguments")
				}
				return printTargets(e)
			}
		}})
}

// printTargets prints the target table (package target): one line per ISA
// with its LLVM description, widths and whether this CPU has its features,
// then one line per build target (--target) with whether this host can
// build it, or why not.
func printTargets(e *env) error {
	host := target.HostFeatures()
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ISA\tkind\tarch\ttriple\tcpu (tune)\tlanes\tregs\tblock\truns here\tfeatures")
	for _, t := range target.Targets() {
		cpu := t.CPU
		if t.TuneCPU != "" {
			cpu += " (" + t.TuneCPU + ")"
		}
		block := fmt.Sprint(t.Block)
		if t.Block == 0 {
			block = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", t.Name, t.Kind, t.Arch, t.Triple, cpu,
			t.VectorLanes, t.Registers, block, runsHere(t, host), strings.Join(t.Features, ","))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "--target\tISAs\tblock\tdescription\tbuildable here")
	for _, b := range target.Builds() {
		block := fmt.Sprint(b.Block())
		if b.Block() == 0 {
			block = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", b.Name, strings.Join(b.ISAs, "+"), block, b.Doc, buildableHere(b))
	}
	return tw.Flush()
}

// runsHere says whether this machine can run t's kernels: "yes", or what it
// lacks.
func runsHere(t target.Target, host map[string]bool) string {
	switch {
	case t.Kind != target.CPU:
		return "no: not implemented"
	case t.Arch != runtime.GOARCH:
		return "no: " + t.Arch + " ISA"
	}
	if m := target.Missing(t.Features, host); len(m) > 0 {
		return "no: lacks " + strings.Join(m, ",")
	}
	return "yes"
}

// buildableHere says whether `kiln build --target b` can work on this host:
// the target is implemented, LLVM 19 is installed, and for another
// architecture the cross linker, C headers and runner are present.
func buildableHere(b target.Build) string {
	bt, err := lookupBuildTarget(b.Name)
	if err != nil {
		return "no: " + err.Error()
	}
	if _, err := codegen.FindLLVM(); err != nil {
		return "no: " + err.Error()
	}
	if _, err := codegen.CrossCFlags(bt.cg[0]); err != nil {
		return "no: " + err.Error()
	}
	if _, err := runnerFor(bt); err != nil {
		return "no: " + err.Error()
	}
	return "yes"
}
