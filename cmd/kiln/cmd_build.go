package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/kiln-dev/kiln/ir"
	rt "github.com/kiln-dev/kiln/runtime"
)

func init() {
	register(&command{name: "build", args: "FILE -o OUT", summary: "compile a network with its weights into one standalone executable",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			var nf netFlags
			nf.register(fs)
			nf.multiBatch = true // --batch 1,8,32: build_multi.go
			nf.registerMACs(fs)
			var pf pipeFlags
			pf.registerPassFlags(fs)
			weights := fs.String("weights", "", "safetensors `file` with the network's weights (timm names); default: procedural weights")
			stripPrefix := fs.String("strip-prefix", "", "remove `PREFIX` from every --weights name that starts with it (e.g. module. from a DataParallel state dict)")
			target := fs.String("target", hostTarget(), "code generation `target`: x86-64 (AVX-512 and AVX2 in one binary), avx512, avx2, arm64-neon, or an NVIDIA GPU: cuda-sm80, cuda-sm90 (docs/GPU.md)")
			out := fs.String("o", "", "output executable `OUT`")
			var taps listFlag
			fs.Var(&taps, "tap", "also compile the output of marked module `NAME` (e.g. features.5) into the binary, for its --tap (repeatable)")
			var imf imageFlags
			imf.register(fs)
			format := fs.String("format", "exe", "output `FORMAT`: exe (a standalone executable) or lib (a C shared library, with kiln.h written next to it);\n"+
				"GPU targets: exe, program (the GPU program without the runner, for kiln-runner --program FILE) or weights (the weights blob alone)")
			var gf gpuFlags
			gf.register(fs, true)
			return func(args []string) error {
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				if *out == "" {
					return usagef("-o OUT is required")
				}
				if b, ok := gpuBuild(*target); ok { // cuda-sm80, cuda-sm90: build_cuda.go
					return buildGPU(e, b, &nf, &gf, &imf, file, *weights, *stripPrefix, *out, *format, taps)
				}
				bt, err := lookupBuildTarget(*target)
				if err != nil {
					return err
				}
				if bt.lib, err = parseFormat(*format); err != nil {
					return err
				}
				runner, err := runnerFor(bt)
				if err != nil {
					return err
				}
				if err := checkOutputPath(*out, runner, file, *weights); err != nil {
					return err
				}
				if len(nf.batches) > 1 {
					if err := buildMultiBatch(e, &nf, &pf, bt, file, *weights, *stripPrefix, *out, taps, &imf); err != nil {
						return err
					}
					return writeLibHeader(e, bt, *out)
				}
				var c *compiled
				err = interruptible(e.stderr, "build", func(ctx context.Context) error {
					g, err := nf.load(file)
					if err != nil {
						return err
					}
					if err := nf.checkMACs(g); err != nil {
						return err
					}
					params, err := loadWeightsStrip(g, *weights, *stripPrefix)
					if err != nil {
						return err
					}
					ident, err := buildIdentity(file, g, *weights)
					if err != nil {
						return err
					}
					if err := ctx.Err(); err != nil {
						return err
					}
					if c, err = compileNetCtx(ctx, g, params, bt, &pf, e.stderr, taps); err != nil {
						return err
					}
					c.prog.Manifest.Build = ident
					c.imageFlags = &imf
					return writeStandalone(ctx, c, g, bt, *out)
				})
				if err != nil {
					return err
				}
				if *weights == "" {
					fmt.Fprintf(e.stderr, proceduralWarning, *out)
				}
				st, _ := os.Stat(*out)
				fmt.Fprintf(e.stdout, "built %s (%s, %s, %.1f MiB): %s\n", *out, bt.name, isaList(c.prog.Manifest.ISAs), float64(st.Size())/(1<<20), c.stats)
				return writeLibHeader(e, bt, *out)
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

// runnerEnv names the runner executable explicitly, overriding the search
// next to kiln.
const runnerEnv = "KILN_RUNNER"

// runnerPkg is the import path every runner is built from.
const runnerPkg = "github.com/kiln-dev/kiln/cmd/kiln-runner"

// runnerFor returns the runner executable (cmd/kiln-runner) that kiln build
// copies and appends the compiled network to for bt. It is $KILN_RUNNER when
// set; otherwise it is looked for next to the kiln executable: kiln-runner
// for the host's architecture (make build puts it in bin/ with kiln) and
// kiln-runner-linux-ARCH for another one (make kiln-arm64). The file's Go
// build information must say it is that package, built with cgo for bt's
// architecture, and it must not already carry a network; any failure is an
// error saying what to run, before anything is compiled or written.
func runnerFor(bt buildTarget) (string, error) {
	if bt.lib {
		return libFor(bt)
	}
	arch := archOfTarget(bt)
	makeHint := "make build"
	switch {
	case arch == hostArch():
	case arch == "arm64":
		makeHint = "make kiln-arm64"
	default:
		makeHint = "CGO_ENABLED=1 GOARCH=" + arch + " go build -o kiln-runner-linux-" + arch + " ./cmd/kiln-runner"
	}
	p := os.Getenv(runnerEnv)
	if p == "" {
		self, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("locating the runner next to kiln: %w (set %s to the runner's path)", err, runnerEnv)
		}
		name := "kiln-runner"
		if arch != hostArch() {
			name = "kiln-runner-linux-" + arch
		}
		p = filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("--target %s needs the %s runner next to kiln: %s is missing (build it with `%s`, or set %s)", bt.name, arch, p, makeHint, runnerEnv)
		}
	}
	bi, err := buildinfo.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("runner %s: not a Go executable built from %s: %v (build it with `%s`)", p, runnerPkg, err, makeHint)
	}
	if bi.Path != runnerPkg {
		return "", fmt.Errorf("runner %s was built from %s, not %s (build it with `%s`)", p, bi.Path, runnerPkg, makeHint)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if got := settings["GOARCH"]; got != arch {
		return "", fmt.Errorf("runner %s is built for %s, --target %s needs %s (build it with `%s`)", p, got, bt.name, arch, makeHint)
	}
	if settings["CGO_ENABLED"] != "1" {
		return "", fmt.Errorf("runner %s was built without cgo and cannot load kernels (build it with `%s`)", p, makeHint)
	}
	a, found, err := rt.FindPayload(p)
	if err != nil {
		return "", fmt.Errorf("runner %s: %w", p, err)
	}
	if found {
		a.Close()
		return "", fmt.Errorf("runner %s already carries a compiled network (%s): use the plain runner (`%s`)", p, a.Manifest.Network, makeHint)
	}
	return p, nil
}

func hostArch() string { return runtime.GOARCH }

// archOfTarget is the GOARCH a build target's code runs on, from the target
// table (the runner must be built for it).
func archOfTarget(bt buildTarget) string { return bt.build.Arch() }

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
// compiled network appended (atomically, executable; removed on interrupt:
// writeExecutableAtomic).
func writeStandalone(ctx context.Context, c *compiled, g *ir.Graph, bt buildTarget, out string) error {
	runner, err := runnerFor(bt)
	if err != nil {
		return err
	}
	c.prog.Manifest.Preprocess = preprocessFor(g.Name, g.Inputs()[0].Type.Shape)
	if c.imageFlags != nil {
		if err := c.imageFlags.apply(&c.prog.Manifest, g.Inputs()[0].Type.Shape); err != nil {
			return err
		}
	}
	exe, err := os.Open(runner)
	if err != nil {
		return err
	}
	defer exe.Close()
	return writeExecutableAtomic(ctx, out, func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 1<<20)
		if err := rt.AppendPayload(bw, exe, c.so, bytes.NewReader(c.prog.Weights), c.prog.Manifest); err != nil {
			return err
		}
		return bw.Flush()
	})
}
