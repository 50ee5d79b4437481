package main

import (
	"bufio"
	"flag"
	"fmt"

	"github.com/kiln-dev/kiln/ir"
)

func init() {
	register(&command{name: "params", args: "FILE", summary: "list every parameter and buffer as name<TAB>shape, in checkpoint order",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			var nf netFlags
			nf.register(fs)
			return func(args []string) error {
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				g, err := nf.load(file)
				if err != nil {
					return err
				}
				w := bufio.NewWriter(e.stdout)
				for _, n := range g.Params() {
					fmt.Fprintf(w, "%s\t%s\n", n.Name, ir.ShapeString(n.Type.Shape))
				}
				return w.Flush()
			}
		}})
}
