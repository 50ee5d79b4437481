package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/kiln-dev/kiln/codegen/onnx"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// maxONNXBytes is the largest model kiln import reads: protobuf messages are
// limited to 2 GiB, so a larger file cannot be one ModelProto.
const maxONNXBytes = 2 << 30

func init() {
	register(&command{name: "import", args: "MODEL.onnx -o NET.kiln [--weights-out NET.safetensors]",
		summary: "convert an ONNX model (opset 11-21) into a .kiln network and a safetensors weights file",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			out := fs.String("o", "", "the .kiln `file` to write (atomically)")
			wout := fs.String("weights-out", "", "the safetensors `file` to write the weights to, under the .kiln's parameter names (default: NET.safetensors beside -o)")
			batch := fs.Int("batch", 1, "batch size `N` used where the model's batch dimension is symbolic")
			input := fs.String("input", "", "per-sample input shape `CxHxW`, needed where the model's is symbolic")
			name := fs.String("name", "", "network `name` (default: the ONNX graph name)")
			return func(args []string) error {
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				if *out == "" {
					return usagef("-o NET.kiln is required")
				}
				if !strings.HasSuffix(*out, ".kiln") {
					return usagef("-o %s: the network file must end in .kiln", *out)
				}
				if *batch <= 0 {
					return usagef("--batch must be positive, got %d", *batch)
				}
				if *wout == "" {
					*wout = strings.TrimSuffix(*out, ".kiln") + ".safetensors"
				}
				opts := onnx.ImportOptions{Source: file, Batch: *batch, Name: *name}
				if *input != "" {
					if opts.InputShape, err = tensor.ParseShape(*input); err != nil {
						return usagef("--input: %v", err)
					}
				}
				for _, p := range []string{*out, *wout} {
					if same, _ := sameFile(p, file); same {
						return fmt.Errorf("%s would overwrite the input model", p)
					}
				}
				data, err := readModelFile(file)
				if err != nil {
					return err
				}
				m, err := onnx.ReadModel(data, file, onnx.Limits{})
				if err != nil {
					return err
				}
				imp, err := onnx.Import(m, opts)
				if err != nil {
					return err
				}
				meta := map[string]string{
					"format":           "pt",
					"kiln.import.from": filepath.Base(file),
					"kiln.import.onnx": imp.NamesJSON(),
				}
				// Weights first: a .kiln without its weights is worse than none.
				if err := tensor.WriteSafetensorsFile(*wout, imp.Weights, meta); err != nil {
					return err
				}
				if err := tensor.WriteFileAtomic(*out, func(w io.Writer) error {
					_, err := w.Write(imp.Source)
					return err
				}); err != nil {
					return err
				}
				g := imp.Graph
				in := g.Inputs()[0]
				fmt.Fprintf(e.stdout, "wrote %s (network %s: input %s %s -> %s; %d statements) and %s (%d weights)\n",
					*out, g.Name, in.Name, in.Type, g.Nodes[g.Outputs[0]].Type, strings.Count(string(imp.Source), " = "), *wout, len(imp.Weights))
				return nil
			}
		}})
}

// readModelFile reads a regular file of at most maxONNXBytes.
func readModelFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if st.Size() > maxONNXBytes {
		return nil, fmt.Errorf("%s: %d bytes is more than an ONNX model can hold (2 GiB; models with external data are not supported)", path, st.Size())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxONNXBytes+1))
}

// sameFile reports whether a and b name the same existing file.
func sameFile(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(sa, sb), nil
}
