package main

import (
	"flag"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/kiln-dev/kiln/codegen/onnx"
)

func init() {
	register(&command{name: "export", args: "--onnx FILE -o OUT", summary: "export a network as written, with its weights, to a standard ONNX model",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			var nf netFlags
			nf.register(fs)
			asONNX := fs.Bool("onnx", false, fmt.Sprintf("write an ONNX model (opset %d, IR version %d): the only export format, required", onnx.Opset, onnx.IRVersion))
			weights := fs.String("weights", "", "safetensors `file` with the network's weights (timm names); default: procedural weights")
			stripPrefix := fs.String("strip-prefix", "", "remove `PREFIX` from every --weights name that starts with it (e.g. module. from a DataParallel state dict)")
			out := fs.String("o", "", "output `file` (model.onnx), written atomically")
			return func(args []string) error {
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				if !*asONNX {
					return usagef("give the export format: --onnx (the only one)")
				}
				if *out == "" {
					return usagef("-o OUT is required")
				}
				g, err := nf.load(file)
				if err != nil {
					return err
				}
				params, err := loadWeightsStrip(g, *weights, *stripPrefix)
				if err != nil {
					return err
				}
				src := "procedural weights"
				if *weights != "" {
					src = "weights " + *weights
				}
				err = onnx.WriteFile(*out, g, params, onnx.Options{
					ProducerVersion: kilnVersion(),
					DocString:       fmt.Sprintf("%s, batch %d, %s", g.Name, g.Inputs()[0].Type.Shape[0], src),
				})
				if err != nil {
					return err
				}
				st, err := os.Stat(*out)
				if err != nil {
					return err
				}
				in := g.Inputs()[0]
				fmt.Fprintf(e.stdout, "wrote %s: ONNX opset %d, %s input %q %s -> %q %s, %d initializers (%.1f MiB)\n",
					*out, onnx.Opset, g.Name, in.Name, in.Type, onnx.OutputName, g.Nodes[g.Outputs[0]].Type,
					len(g.Params()), float64(st.Size())/(1<<20))
				return nil
			}
		}})
}

// kilnVersion is the module version kiln was built from ("(devel)" for a
// build from a source tree).
func kilnVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
