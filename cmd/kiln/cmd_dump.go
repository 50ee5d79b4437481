package main

import (
	"flag"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/passes"
)

func init() {
	register(&command{name: "dump", args: "FILE", summary: "print the IR as text (parses back with ir.Parse) or Graphviz DOT, before or after the pass pipeline",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			var nf netFlags
			nf.register(fs)
			var pf pipeFlags
			pf.register(fs, false)
			format := fs.String("format", "text", "output `format`: text, dot, or counts (op counts before and after the pipeline)")
			return func(args []string) error {
				if pf.listPasses {
					listPasses(e.stdout)
					return nil
				}
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				if *format != "text" && *format != "dot" && *format != "counts" {
					return usagef("--format must be text, dot or counts, got %q", *format)
				}
				opts, err := nf.options()
				if err != nil {
					return err
				}
				g, err := loadNet(file, opts)
				if err != nil {
					return err
				}
				if *format == "counts" {
					pf.optimize = true
				}
				st, err := pf.run(g, e.stdout)
				if err != nil {
					return err
				}
				switch *format {
				case "dot":
					return ir.WriteDOT(e.stdout, st.Graph)
				case "counts":
					_, err := e.stdout.Write([]byte(passes.FormatOpCounts(g, st.Graph)))
					return err
				}
				if len(pf.printAfter) > 0 || pf.printAfterAll {
					return nil // already printed
				}
				return ir.Print(e.stdout, st.Graph)
			}
		}})
}
