package cuda

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/codegen/lower"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	"github.com/kiln-dev/kiln/target"
	llir "github.com/llir/llvm/ir"
)

// Module is a generated GPU program before PTX: the launches (Program with
// PTX empty) and the LLVM module they call into. Emulate runs it on the
// CPU; PTX compiles it.
type Module struct {
	Program *Program
	IR      *llir.Module
}

// PassTarget is the passes' view of a GPU target: its name and the channel
// block 32 (target.CUDASM90.Block) that the layout pass and the planner use.
// The target table still marks the GPU builds not buildable for the CPU
// pipeline (passes.TargetFor refuses them), so GPU builds take this path.
func PassTarget(t target.Target) passes.Target { return passes.Target{Name: t.Name, Block: t.Block} }

// Lower runs the inference pipeline on g for GPU target t (ISA cuda-sm80 or
// cuda-sm90), lowers it with codegen/lower (the same plan, weights blob and
// offsets as the CPU targets, with block 32) and generates the GPU kernels
// in precision prec.
func Lower(g *ir.Graph, params map[string]*tensor.Tensor, t target.Target, prec Precision) (*Module, error) {
	return lowerWith(g, params, t, prec, 0)
}

// lowerWith is Lower with the conv tile forced to forceWarps warps (0: the
// heuristic), for tests of both tiles.
func lowerWith(g *ir.Graph, params map[string]*tensor.Tensor, t target.Target, prec Precision, forceWarps int) (*Module, error) {
	if _, err := NewGenerator(t, prec); err != nil {
		return nil, err
	}
	s, err := passes.Run(g, passes.Options{Target: PassTarget(t)})
	if err != nil {
		return nil, err
	}
	p, err := lower.Lower(s, params, []codegen.Target{{Target: t}})
	if err != nil {
		return nil, err
	}
	return generate(p, t, prec, forceWarps)
}

// Generate emits the GPU kernels of the lowered program p for t in
// precision prec: one kernel per distinct spec shape (kernels take tensor
// pointers, so the 149 convolutions of Inception-v4 share 42 kernels) and
// one launch per lowered kernel, in schedule order.
func Generate(p *lower.Program, t target.Target, prec Precision) (*Module, error) {
	return generate(p, t, prec, 0)
}

func generate(p *lower.Program, t target.Target, prec Precision, forceWarps int) (*Module, error) {
	gn, err := NewGenerator(t, prec)
	if err != nil {
		return nil, err
	}
	gn.g.forceWarps = forceWarps
	mf := p.Manifest
	prog := &Program{
		Target: t.Name, SM: gn.sm, Precision: prec,
		ArenaBytes: mf.ArenaBytes, Weights: p.Weights, WeightsBytes: int64(len(p.Weights)), Batch: mf.Batch,
		Input:  Tensor{Name: mf.Input.Name, Shape: mf.Input.Shape, Offset: mf.Input.Offset * 4},
		Output: Tensor{Name: mf.Output.Name, Shape: mf.Output.Shape, Offset: mf.Output.Offset * 4},
	}
	if prog.Launches, err = gn.Add(p.Graph(), p.Kernels()); err != nil {
		return nil, err
	}
	return &Module{Program: prog, IR: gn.g.m}, nil
}

// Generator emits kernels of one target and precision into one LLVM
// module, one kernel per distinct spec shape.
type Generator struct {
	g    *gen
	t    target.Target
	sm   int
	prec Precision
}

// NewGenerator starts a module for GPU target t in precision prec.
func NewGenerator(t target.Target, prec Precision) (*Generator, error) {
	switch prec {
	case FP32, TF32, BF16:
	default:
		return nil, fmt.Errorf("cuda: unknown precision %q (fp32, tf32, bf16)", prec)
	}
	if t.Kind != target.GPU || t.Block != blk {
		return nil, fmt.Errorf("cuda: target %s is not a GPU target with block %d", t.Name, blk)
	}
	sm := 0
	if _, err := fmt.Sscanf(strings.TrimPrefix(t.CPU, "sm_"), "%d", &sm); err != nil {
		return nil, fmt.Errorf("cuda: target %s: CPU %q is not sm_NN", t.Name, t.CPU)
	}
	return &Generator{g: newGen(t.Triple), t: t, sm: sm, prec: prec}, nil
}

// Add emits the kernels of graph's lowered kernels ks (lower.Program.Kernels
// or lower.Specs) that the module does not have yet and returns their
// launches. Errors name the node's source position.
func (gn *Generator) Add(graph *ir.Graph, ks []lower.Kernel) ([]Launch, error) {
	var out []Launch
	for _, kn := range ks {
		l, err := gn.g.launch(kn, gn.prec)
		if err != nil {
			return nil, ir.Errorf(graph.Nodes[kn.Node].Pos, "cuda %s: %v", kn.Label, err)
		}
		out = append(out, l)
	}
	return out, nil
}

// Module returns the LLVM module generated so far.
func (gn *Generator) Module() *llir.Module { return gn.g.m }

// SM returns the compute capability (80, 90).
func (gn *Generator) SM() int { return gn.sm }

func arena(elems int) Arg   { return Arg{Kind: ArgArena, Offset: int64(elems) * 4} }
func weights(elems int) Arg { return Arg{Kind: ArgWeights, Offset: int64(elems) * 4} }

// dedup returns the kernel name for spec s (offsets zeroed) and whether it
// still has to be emitted.
func (g *gen) dedup(op string, s any, prec Precision, extra ...string) (string, bool) {
	v := reflect.ValueOf(&s).Elem()
	c := reflect.New(v.Elem().Type()).Elem()
	c.Set(v.Elem())
	for i := 0; i < c.NumField(); i++ {
		if f := c.Type().Field(i).Name; strings.HasSuffix(f, "Off") && f != "OutCOffset" {
			c.Field(i).SetInt(0)
		}
	}
	key := fmt.Sprintf("%s %s %+v %v", op, prec, c.Interface(), extra)
	if name, ok := g.kernels[key]; ok {
		return name, false
	}
	name := fmt.Sprintf("%s_%d", op, len(g.kernels))
	g.kernels[key] = name
	return name, true
}

func grid1(total, threads int) ([3]int, [3]int) {
	return [3]int{ceilDiv(total, threads), 1, 1}, [3]int{threads, 1, 1}
}

// launch emits (or reuses) the kernel of kn and returns its launch.
func (g *gen) launch(kn lower.Kernel, prec Precision) (Launch, error) {
	l := Launch{Label: kn.Label, FLOPs: 2 * kn.MACs}
	if v, ok := kn.Spec.(interface{ Validate(int) error }); ok {
		if err := v.Validate(blk); err != nil {
			return l, err
		}
	} else if v, ok := kn.Spec.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return l, err
		}
	}
	var emit bool
	switch s := kn.Spec.(type) {
	case codegen.ConvSpec:
		if max(s.Groups, 1) != 1 || s.MaskIn != 0 || s.MaskOut != 0 {
			return l, fmt.Errorf("grouped convolutions have no GPU kernel yet")
		}
		l.Op = "conv"
		tile := tileFor(s)
		if g.forceWarps > 0 {
			tile = convTile{g.forceWarps}
		}
		if l.Kernel, emit = g.dedup("conv", s, prec, fmt.Sprintf("warps=%d", tile.warps)); emit {
			g.conv(l.Kernel, s, prec, tile)
		}
		l.Grid = [3]int{ceilDiv(s.N*s.OH*s.OW, tile.bm()), ceilDiv(s.O, blk), 1}
		l.Block = [3]int{tile.threads(), 1, 1}
		l.Args = []Arg{arena(s.InOff), weights(s.WeightOff), weights(s.BiasOff), arena(s.ResidualOff), arena(s.OutOff)}
	case codegen.PoolSpec:
		l.Op = "avgpool"
		if s.Max {
			l.Op = "maxpool"
		}
		if l.Kernel, emit = g.dedup(l.Op, s, FP32); emit {
			g.pool(l.Kernel, s)
		}
		l.Grid, l.Block = grid1(s.N*ceilDiv(s.C, blk)*s.OH*s.OW*blk, elemThreads)
		l.Args = []Arg{arena(s.InOff), arena(s.OutOff)}
	case codegen.GlobalAvgPoolSpec:
		l.Op = "global_avgpool"
		if l.Kernel, emit = g.dedup(l.Op, s, FP32); emit {
			g.globalAvgPool(l.Kernel, s)
		}
		l.Grid, l.Block = grid1(s.N*ceilDiv(s.C, blk)*blk, elemThreads)
		l.Args = []Arg{arena(s.InOff), arena(s.OutOff)}
	case codegen.ReorderSpec:
		l.Op = "reorder"
		if l.Kernel, emit = g.dedup(l.Op, s, FP32); emit {
			g.reorder(l.Kernel, s)
		}
		total := s.N * s.C * s.H * s.W
		if s.ToBlocked {
			total = s.N * ceilDiv(s.C, blk) * blk * s.H * s.W
		}
		l.Grid, l.Block = grid1(total, elemThreads)
		l.Args = []Arg{arena(s.InOff), arena(s.OutOff)}
	case codegen.CopySpec:
		l.Op = "copy"
		if l.Kernel, emit = g.dedup(l.Op, s, FP32); emit {
			g.copyRows(l.Kernel, s)
		}
		l.Grid, l.Block = grid1(max(s.Rows, 1)*s.Elems, elemThreads)
		l.Args = []Arg{arena(s.InOff), arena(s.OutOff)}
	case codegen.DenseSpec:
		l.Op = "dense"
		if l.Kernel, emit = g.dedup(l.Op, s, FP32); emit {
			g.dense(l.Kernel, s)
		}
		l.Grid, l.Block = grid1(s.N*s.O, elemThreads)
		l.Args = []Arg{arena(s.InOff), weights(s.WeightOff), weights(s.BiasOff), arena(s.OutOff)}
	case codegen.SoftmaxSpec:
		l.Op = "softmax"
		if l.Kernel, emit = g.dedup(l.Op, s, FP32); emit {
			g.softmax(l.Kernel, s)
		}
		l.Grid, l.Block = grid1(s.N, elemThreads)
		l.Args = []Arg{arena(s.InOff), arena(s.OutOff)}
	default:
		return l, fmt.Errorf("no GPU kernel for %T yet", kn.Spec)
	}
	return l, nil
}
