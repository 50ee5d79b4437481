package cuda

import rtcuda "github.com/kiln-dev/kiln/runtime/cuda"

// This file is the interface between GPU code generation (this package) and
// the GPU runtime (runtime/cuda, `kiln build --target cuda-sm90`): a compiled
// GPU program is one PTX module plus the ordered list of kernel launches that
// runs the network once. The types use only the standard library and encode
// as JSON (the field tags are part of the contract), so the runtime can
// decode a program from an artifact's payload without importing LLVM or the
// generators; changes here are additive only.

// The types are runtime/cuda's, aliased: the runtime decodes a program
// from an artifact without importing the compiler, and this package builds
// the same values, so there is one definition of the contract.

// Precision is the arithmetic of the convolutions and dense layers (fp32:
// exact FMA, the 1e-4 reference; tf32: mma.sync m16n8k8; bf16: mma.sync
// m16n8k16; f32 accumulation in all). Pooling, epilogues and softmax are
// always fp32, and activations and weights are stored as f32 in all three
// (bf16/tf32 inputs are rounded when a tile is staged in shared memory), so
// the arena plan and the weights blob do not depend on it.
type Precision = rtcuda.Precision

// The precisions a program can be generated in.
const (
	FP32 = rtcuda.FP32
	TF32 = rtcuda.TF32
	BF16 = rtcuda.BF16
)

// Program is a network compiled for one GPU (rtcuda.Program): the PTX of one
// module, the launches that run the network once, the arena and weights
// sizes, and the weights blob in the kernels' layout.
type Program = rtcuda.Program

// Tensor is a plain f32 tensor at a byte offset of the arena.
type Tensor = rtcuda.Tensor

// Launch is one cuLaunchKernel of the program.
type Launch = rtcuda.Launch

// ArgKind says how the runtime forms a kernel parameter.
type ArgKind = rtcuda.ArgKind

// Argument kinds.
const (
	ArgArena   = rtcuda.ArgArena
	ArgWeights = rtcuda.ArgWeights
	ArgI32     = rtcuda.ArgI32
)

// Arg is one kernel parameter.
type Arg = rtcuda.Arg
