package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/kiln-dev/kiln/ir"

	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
)

func init() {
	register(&command{name: "build", args: "FILE -o OUT", summary: "compile a network with its weights into one standalone executable",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			var nf netFlags
			nf.register(fs)
			var pf pipeFlags
			pf.registerPassFlags(fs)
			weights := fs.String("weights", "", "safetensors `file` with the network's weights (timm names); default: procedural weights")
			target := fs.String("target", hostTarget(), "code generation `target`: x86-64 (AVX-512 and AVX2 in one binary), avx512, avx2 or arm64-neon")
			out := fs.String("o", "", "output executable `OUT`")
			return func(args []string) error {
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				if *out == "" {
					return usagef("-o OUT is required")
				}
				bt, err := lookupBuildTarget(*target)
				if err != nil {
					return err
				}
				if _, err := runnerFor(bt); err != nil {
					return err
				}
				g, err := nf.load(file)
				if err != nil {
					return err
				}
				params, err := loadWeights(g, *weights)
				if err != nil {
					return err
				}
				c, err := compileNet(g, params, bt, &pf, e.stderr)
				if err != nil {
					return err
				}
				if err := writeStandalone(c, g, bt, *out); err != nil {
					return err
				}
				st, _ := os.Stat(*out)
				fmt.Fprintf(e.stdout, "built %s (%s, %s, %.1f MiB): %s\n", *out, bt.name, isaList(c.prog.Manifest.ISAs), float64(st.Size())/(1<<20), c.stats)
				return nil
			}
		}})
}

func isaList(isas []string) string {
	s := ""
	for i, x := range isas {
		if i > 0 {
			s += "+"
		}
		s += x
	}
	return s
}

// runnerFor returns the executable that becomes the standalone binary: this
// kiln itself for the host architecture (every kiln binary is also a
// runner), or kiln-linux-arm64 next to it for arm64 (make kiln-arm64).
func runnerFor(bt buildTarget) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	if archOfTarget(bt) == hostArch() {
		return self, nil
	}
	p := filepath.Join(filepath.Dir(self), "kiln-linux-"+archOfTarget(bt))
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("--target %s needs the %s runtime next to kiln: %s is missing (build it with `make kiln-arm64`)", bt.name, archOfTarget(bt), p)
	}
	return p, nil
}

func archOfTarget(bt buildTarget) string {
	if bt.name == "arm64-neon" {
		return "arm64"
	}
	return "amd64"
}

// preprocessFor is timm's evaluation preprocessing for the built-in
// networks: 299 crop, mean/std 0.5, bicubic, crop_pct 0.875 (0.8975 for
// Inception-ResNet-v2).
func preprocessFor(network string, inShape []int) *rt.Preprocess {
	if len(inShape) != 4 || inShape[1] != 3 || inShape[2] != inShape[3] {
		return nil
	}
	crop := 0.875
	if network == "inception_resnet_v2" {
		crop = 0.8975
	}
	return &rt.Preprocess{Size: inShape[2], CropPct: crop, Mean: [3]float64{0.5, 0.5, 0.5}, Std: [3]float64{0.5, 0.5, 0.5}, Interpolation: "bicubic"}
}

// writeStandalone writes the executable out: the runner for bt with the
// compiled network appended (atomically; executable bits set).
func writeStandalone(c *compiled, g *ir.Graph, bt buildTarget, out string) error {
	runner, err := runnerFor(bt)
	if err != nil {
		return err
	}
	c.prog.Manifest.Preprocess = preprocessFor(g.Name, g.Inputs()[0].Type.Shape)
	exe, err := os.Open(runner)
	if err != nil {
		return err
	}
	defer exe.Close()
	err = tensor.WriteFileAtomic(out, func(w io.Writer) error {
		return rt.AppendPayload(w, exe, c.so, bytes.NewReader(c.prog.Weights), c.prog.Manifest)
	})
	if err != nil {
		return err
	}
	return os.Chmod(out, 0o755)
}
