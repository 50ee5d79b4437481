package cuda

import (
	"bytes"
	"fmt"
	"strings"
)

// The program types below are the contract between GPU code generation and
// this runtime: codegen/cuda aliases them (kernels.go) and builds them; the
// runtime decodes them from an artifact's payload (JSON, the field tags are
// part of the format). They live here because a built executable carries
// no compiler, so the runtime cannot import codegen/cuda.

// Precision is the arithmetic of the convolutions and dense layers: fp32
// (exact, no tensor cores), tf32 or bf16 (tensor cores, f32 accumulation).
type Precision string

// Precisions.
const (
	FP32 Precision = "fp32"
	TF32 Precision = "tf32"
	BF16 Precision = "bf16"
)

// Program is a network compiled for one GPU: one PTX module, the launches
// that run the network once, in order, on one stream, and the sizes of the
// two device allocations they use: the arena (activations, ArenaBytes) and
// the read-only weights (WeightsBytes, uploaded once in the kernels'
// layout). The input (plain NCHW f32) is written at Input.Offset of the
// arena before the first launch and the output read at Output.Offset after
// the last.
type Program struct {
	Target       string    `json:"target"`
	SM           int       `json:"sm"`
	Precision    Precision `json:"precision"`
	PTX          string    `json:"ptx"`
	ArenaBytes   int64     `json:"arena_bytes"`
	WeightsBytes int64     `json:"weights_bytes"`
	Weights      []byte    `json:"-"`
	Batch        int       `json:"batch"`
	Input        Tensor    `json:"input"`
	Output       Tensor    `json:"output"`
	Launches     []Launch  `json:"launches"`
}

// Tensor is a plain f32 tensor at a byte offset of the arena.
type Tensor struct {
	Name   string `json:"name"`
	Shape  []int  `json:"shape"`
	Offset int64  `json:"offset"`
}

// Bytes is the tensor's size in bytes (f32).
func (t Tensor) Bytes() int64 { return 4 * int64(Numel(t.Shape)) }

// Launch is one cuLaunchKernel of the program: the .entry name, the IR
// node it computes (Label) and its kind (Op), the launch dimensions, the
// dynamic shared memory, the parameters in order and the useful FLOPs.
type Launch struct {
	Kernel      string `json:"kernel"`
	Label       string `json:"label"`
	Op          string `json:"op"`
	Grid        [3]int `json:"grid"`
	Block       [3]int `json:"block"`
	SharedBytes int    `json:"shared_bytes"`
	Args        []Arg  `json:"args"`
	FLOPs       int64  `json:"flops"`
}

// ArgKind says how the runtime forms a kernel parameter.
type ArgKind string

// Argument kinds: a .u64 pointer into the arena or the weights (base +
// Offset), or a .u32 scalar (Value).
const (
	ArgArena   ArgKind = "arena"
	ArgWeights ArgKind = "weights"
	ArgI32     ArgKind = "i32"
)

// Arg is one kernel parameter.
type Arg struct {
	Kind   ArgKind `json:"kind"`
	Offset int64   `json:"offset,omitempty"`
	Value  int64   `json:"value,omitempty"`
}

// ParamBytes returns the size of the kernel parameter a in the .param
// space: 8 for pointers, 4 for i32.
func (a Arg) ParamBytes() int {
	if a.Kind == ArgI32 {
		return 4
	}
	return 8
}

// Numel is the product of shape.
func Numel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// Limits of a launch on every NVIDIA GPU since sm_30.
const (
	maxThreadsPerBlock = 1024
	maxGridY           = 65535
	maxSharedBytes     = 227 << 10 // sm_90 opt-in maximum per block
)

// Validate checks what the runtime relies on before anything reaches the
// device: a PTX module that defines every kernel launched, launch
// dimensions within CUDA's limits, every pointer parameter inside its
// allocation, and the input and output inside the arena. Each error names
// the launch (index, kernel, label).
func (p *Program) Validate() error {
	if p.PTX == "" {
		return fmt.Errorf("GPU program: empty PTX module")
	}
	if strings.IndexByte(p.PTX, 0) >= 0 {
		return fmt.Errorf("GPU program: the PTX module contains a NUL byte")
	}
	if p.ArenaBytes <= 0 || p.WeightsBytes < 0 || p.Batch <= 0 {
		return fmt.Errorf("GPU program: arena %d bytes, weights %d bytes, batch %d", p.ArenaBytes, p.WeightsBytes, p.Batch)
	}
	if p.Weights != nil && int64(len(p.Weights)) != p.WeightsBytes {
		return fmt.Errorf("GPU program: weights blob is %d bytes, the program says %d", len(p.Weights), p.WeightsBytes)
	}
	switch p.Precision {
	case FP32, TF32, BF16:
	default:
		return fmt.Errorf("GPU program: unknown precision %q (want fp32, tf32 or bf16)", p.Precision)
	}
	for _, t := range []struct {
		what string
		t    Tensor
	}{{"input", p.Input}, {"output", p.Output}} {
		if len(t.t.Shape) == 0 || Numel(t.t.Shape) <= 0 {
			return fmt.Errorf("GPU program: %s %q has shape %v", t.what, t.t.Name, t.t.Shape)
		}
		if t.t.Offset < 0 || t.t.Offset%4 != 0 || t.t.Offset+t.t.Bytes() > p.ArenaBytes {
			return fmt.Errorf("GPU program: %s %q [%d, +%d) lies outside the %d-byte arena or is misaligned", t.what, t.t.Name, t.t.Offset, t.t.Bytes(), p.ArenaBytes)
		}
	}
	if len(p.Launches) == 0 {
		return fmt.Errorf("GPU program: no launches")
	}
	entries := ptxEntries(p.PTX)
	for i, l := range p.Launches {
		where := fmt.Sprintf("GPU program: launch %d (%s, %s)", i, l.Kernel, l.Label)
		if !entries[l.Kernel] {
			return fmt.Errorf("%s: the PTX module defines no .entry %s", where, l.Kernel)
		}
		threads := int64(1)
		for d := 0; d < 3; d++ {
			if l.Grid[d] < 1 || l.Block[d] < 1 {
				return fmt.Errorf("%s: grid %v, block %v: every dimension must be >= 1", where, l.Grid, l.Block)
			}
			threads *= int64(l.Block[d])
		}
		if threads > maxThreadsPerBlock || l.Block[2] > 64 {
			return fmt.Errorf("%s: block %v has %d threads (at most %d, z at most 64)", where, l.Block, threads, maxThreadsPerBlock)
		}
		if l.Grid[1] > maxGridY || l.Grid[2] > maxGridY || int64(l.Grid[0]) > 1<<31-1 {
			return fmt.Errorf("%s: grid %v exceeds CUDA's limits (x < 2^31, y and z <= %d)", where, l.Grid, maxGridY)
		}
		if l.SharedBytes < 0 || l.SharedBytes > maxSharedBytes {
			return fmt.Errorf("%s: %d bytes of dynamic shared memory (at most %d)", where, l.SharedBytes, maxSharedBytes)
		}
		for j, a := range l.Args {
			switch a.Kind {
			case ArgArena:
				if a.Offset < 0 || a.Offset >= p.ArenaBytes {
					return fmt.Errorf("%s: argument %d: arena offset %d outside the %d-byte arena", where, j, a.Offset, p.ArenaBytes)
				}
			case ArgWeights:
				if a.Offset < 0 || a.Offset > p.WeightsBytes || a.Offset == p.WeightsBytes && p.WeightsBytes > 0 {
					return fmt.Errorf("%s: argument %d: weights offset %d outside the %d-byte weights", where, j, a.Offset, p.WeightsBytes)
				}
			case ArgI32:
				if a.Value < -1<<31 || a.Value > 1<<32-1 {
					return fmt.Errorf("%s: argument %d: i32 value %d out of range", where, j, a.Value)
				}
			default:
				return fmt.Errorf("%s: argument %d: unknown kind %q", where, j, a.Kind)
			}
		}
	}
	return nil
}

// FLOPs is the useful work of one run (2 per multiply-add).
func (p *Program) FLOPs() int64 {
	var n int64
	for _, l := range p.Launches {
		n += l.FLOPs
	}
	return n
}

// ptxEntries returns the names of the kernels (".entry NAME(") a PTX module
// defines.
func ptxEntries(ptx string) map[string]bool {
	out := map[string]bool{}
	b := []byte(ptx)
	for {
		i := bytes.Index(b, []byte(".entry"))
		if i < 0 {
			return out
		}
		b = b[i+len(".entry"):]
		rest := bytes.TrimLeft(b, " \t")
		j := bytes.IndexAny(rest, "( \t\r\n")
		if j > 0 {
			out[string(rest[:j])] = true
		}
	}
}
