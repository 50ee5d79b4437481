package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kiln-dev/kiln/codegen"
	cudagen "github.com/kiln-dev/kiln/codegen/cuda"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
	gpurt "github.com/kiln-dev/kiln/runtime/cuda"
	"github.com/kiln-dev/kiln/target"
)

// GPU builds (issue 12): kiln build --target cuda-sm80/cuda-sm90 lowers the
// network with codegen/cuda (the CPU pipeline's plan and weights blob with
// channel block 32, kernels as NVPTX LLVM IR, PTX from llc-19) and appends
// the program — PTX, launch list, weights — to the host's kiln runner,
// which runs it through runtime/cuda (the CUDA driver API by dlopen). The
// formats: exe (one executable), program (the same payload without the
// runner, for OUT --program FILE) and weights (the weights blob alone: no
// LLVM needed, so a GPU machine without LLVM can regenerate what
// --weights-external left out).

// gpuFlags are kiln build's and kiln bench's GPU options.
type gpuFlags struct {
	precision string
	external  bool
}

func (g *gpuFlags) register(fs *flag.FlagSet, build bool) {
	fs.StringVar(&g.precision, "precision", "fp32", "GPU targets: convolution and dense `arithmetic`: fp32 (exact, no tensor cores), tf32 or bf16 (tensor cores, f32 accumulation)")
	if build {
		fs.BoolVar(&g.external, "weights-external", false, "GPU targets: leave the weights out of OUT; the GPU executable then reads them from --weights-file W,\n"+
			"written by the same command with --format weights (which needs no LLVM)")
	}
}

// gpuBuild returns the build target called name when it is a GPU one.
func gpuBuild(name string) (target.Build, bool) {
	b, err := target.LookupBuild(name)
	return b, err == nil && b.Kind() == target.GPU
}

// compileGPU lowers g with params for GPU build b in precision prec and,
// with ptx, compiles the kernels to PTX with llc-19. A node without a GPU
// kernel yet is an error at its position naming it. The program is
// converted to the runtime's mirror of codegen/cuda.Program through JSON,
// the contract between the two.
func compileGPU(g *ir.Graph, params map[string]*tensor.Tensor, b target.Build, prec string, ptx bool) (*gpurt.Program, error) {
	if err := checkPrecision(prec); err != nil {
		return nil, err
	}
	t := b.Targets()[0]
	t.NotImplemented = "" // the CPU pipeline's refusal; codegen/cuda builds it
	m, err := cudagen.Lower(g, params, t, cudagen.Precision(prec))
	if err != nil {
		return nil, fmt.Errorf("--target %s: %w%s", b.Name, err, uncoveredOps(g, err))
	}
	if ptx {
		tc, err := codegen.FindLLVM()
		if err != nil {
			return nil, err
		}
		if err := m.PTX(tc); err != nil {
			return nil, err
		}
	}
	return m.Program, nil
}

// uncoveredOps names the ops of g's nodes at the source position of a
// positioned code generation error (after fusion a kernel's position is
// that of the node it came from), e.g. " (ops at 3:12: sigmoid %2)", or ""
// when the error has no position or no node there.
func uncoveredOps(g *ir.Graph, err error) string {
	var ie *ir.Error
	if !errors.As(err, &ie) || !ie.Pos.IsValid() {
		return ""
	}
	var ops []string
	for i, n := range g.Nodes {
		if n.Pos == ie.Pos && n.Op != "param" && n.Op != "input" {
			ops = append(ops, fmt.Sprintf("%s %%%d", n.Op, i))
		}
	}
	if len(ops) == 0 {
		return ""
	}
	return fmt.Sprintf(" (ops at %d:%d: %s)", ie.Pos.Line, ie.Pos.Col, strings.Join(ops, ", "))
}

// checkPrecision refuses a --precision other than fp32, tf32 and bf16
// (a usage error).
func checkPrecision(prec string) error {
	switch gpurt.Precision(prec) {
	case gpurt.FP32, gpurt.TF32, gpurt.BF16:
		return nil
	}
	return usagef("--precision %q: want fp32, tf32 or bf16", prec)
}

// gpuManifest is the manifest of a GPU artifact for g: the image
// preprocessing and labels as for CPU executables (preprocessFor,
// imageFlags) and the build record.
func gpuManifest(g *ir.Graph, p *gpurt.Program, imf *imageFlags, ident *rt.BuildInfo) (gpurt.Manifest, error) {
	rm := rt.Manifest{Network: g.Name, Batch: p.Batch, Output: rt.TensorInfo{Shape: p.Output.Shape}}
	rm.Preprocess = preprocessFor(g.Name, p.Input.Shape)
	if imf != nil {
		if err := imf.apply(&rm, p.Input.Shape); err != nil {
			return gpurt.Manifest{}, err
		}
	}
	return gpurt.Manifest{Network: g.Name, Preprocess: rm.Preprocess, Labels: rm.Labels, Build: ident}, nil
}

// buildGPU is kiln build --target cuda-*: format exe, program or weights.
func buildGPU(e *env, b target.Build, nf *netFlags, gf *gpuFlags, imf *imageFlags, file, weights, stripPrefix, out, format string, taps []string) error {
	switch {
	case format != "exe" && format != "program" && format != "weights":
		return usagef("--format %s: a GPU target builds exe, program or weights", format)
	case len(nf.batches) > 1:
		return usagef("--batch %v: a GPU build takes one batch size", nf.batches)
	case len(taps) > 0:
		return usagef("--tap: GPU builds have no taps yet")
	case gf.external && format == "weights":
		return usagef("--weights-external goes with --format exe or program")
	}
	if err := checkPrecision(gf.precision); err != nil {
		return err
	}
	var runner string
	if format == "exe" {
		host, err := lookupBuildTarget(hostTarget())
		if err != nil {
			return err
		}
		if runner, err = runnerFor(host); err != nil {
			return fmt.Errorf("--target %s: the GPU executable is the host's kiln runner with the program appended: %w", b.Name, err)
		}
	}
	if err := checkOutputPath(out, runner, file, weights); err != nil {
		return err
	}
	var p *gpurt.Program
	err := interruptible(e.stderr, "build", func(ctx context.Context) error {
		g, err := nf.load(file)
		if err != nil {
			return err
		}
		if err := nf.checkMACs(g); err != nil {
			return err
		}
		params, err := loadWeightsStrip(g, weights, stripPrefix)
		if err != nil {
			return err
		}
		if p, err = compileGPU(g, params, b, gf.precision, format != "weights"); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if format == "weights" {
			return writeExecutableAtomic(ctx, out, func(w io.Writer) error {
				_, err := w.Write(p.Weights)
				return err
			})
		}
		ident, err := buildIdentity(file, g, weights)
		if err != nil {
			return err
		}
		man, err := gpuManifest(g, p, imf, ident)
		if err != nil {
			return err
		}
		return writeExecutableAtomic(ctx, out, func(w io.Writer) error {
			bw := bufio.NewWriterSize(w, 1<<20)
			var exe io.Reader
			if runner != "" {
				f, err := os.Open(runner)
				if err != nil {
					return err
				}
				defer f.Close()
				exe = f
			}
			if err := gpurt.AppendPayload(bw, exe, man, p, gf.external); err != nil {
				return err
			}
			return bw.Flush()
		})
	})
	if err != nil {
		return err
	}
	if weights == "" {
		fmt.Fprintf(e.stderr, proceduralWarning, out)
	}
	st, _ := os.Stat(out)
	size := float64(0)
	if st != nil {
		size = float64(st.Size()) / (1 << 20)
	}
	if format == "weights" {
		sum := sha256.Sum256(p.Weights)
		fmt.Fprintf(e.stdout, "wrote %s (%s weights blob, %.1f MiB, sha256:%s)\n", out, b.Name, size, hex.EncodeToString(sum[:]))
		return nil
	}
	ext := ""
	if gf.external {
		ext = ", weights external"
	}
	fmt.Fprintf(e.stdout, "built %s (%s %s, %d launches, %.2f GFLOP, PTX %.1f KiB%s, %.1f MiB)\n",
		out, b.Name, p.Precision, len(p.Launches), float64(p.FLOPs())/1e9, float64(len(p.PTX))/1024, ext, size)
	return nil
}
