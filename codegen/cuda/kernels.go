package cuda

// This file is the interface between GPU code generation (this package) and
// the GPU runtime (runtime/cuda, `kiln build --target cuda-sm90`): a compiled
// GPU program is one PTX module plus the ordered list of kernel launches that
// runs the network once. The types use only the standard library and encode
// as JSON (the field tags are part of the contract), so the runtime can
// decode a program from an artifact's payload without importing LLVM or the
// generators; changes here are additive only.

// Precision is the arithmetic of the convolutions and dense layers.
type Precision string

// The precisions a program can be generated in. Pooling, epilogues and
// softmax are always fp32; activations and weights are stored as f32 in all
// three (bf16/tf32 inputs are rounded when the tile is staged in shared
// memory), so the arena plan and the weights blob do not depend on it.
const (
	// FP32 is exact fp32 FMA (no tensor cores): the 1e-4 reference.
	FP32 Precision = "fp32"
	// TF32 uses mma.sync m16n8k8 tf32 with f32 accumulation.
	TF32 Precision = "tf32"
	// BF16 uses mma.sync m16n8k16 bf16 with f32 accumulation.
	BF16 Precision = "bf16"
)

// Program is a network compiled for one GPU: the PTX text of one module
// holding every kernel, and the launches that run the network once, in
// order, on one stream. All launches read and write one device allocation,
// the arena (ArenaBytes), and read one read-only allocation, the weights
// (the Weights blob, uploaded once, already in the kernels' layout).
//
// The host writes the input, plain NCHW f32, at Input.Offset of the arena
// before the first launch and reads the output, plain f32, at Output.Offset
// after the last; layout conversions are launches of the program.
type Program struct {
	// Target is the ISA (target table name), e.g. "cuda-sm90".
	Target string `json:"target"`
	// SM is the compute capability as an integer (80, 90).
	SM int `json:"sm"`
	// Precision is the convolutions' arithmetic.
	Precision Precision `json:"precision"`
	// PTX is the module text (llc-19 -march=nvptx64 output), NUL-free; load
	// with cuModuleLoadData after appending a NUL.
	PTX string `json:"ptx"`
	// ArenaBytes is the size of the arena allocation (the memory plan's).
	ArenaBytes int64 `json:"arena_bytes"`
	// WeightsBytes is len(Weights).
	WeightsBytes int64 `json:"weights_bytes"`
	// Weights is the weights blob. It is not part of the JSON: artifacts
	// store it as its own payload section.
	Weights []byte `json:"-"`
	// Batch is the batch size the program was planned for.
	Batch int `json:"batch"`
	// Input and Output locate the network's input and first output.
	Input  Tensor `json:"input"`
	Output Tensor `json:"output"`
	// Launches run the network, in order.
	Launches []Launch `json:"launches"`
}

// Tensor is a plain f32 tensor in the arena.
type Tensor struct {
	Name  string `json:"name"`
	Shape []int  `json:"shape"`
	// Offset is the byte offset in the arena (a multiple of 16).
	Offset int64 `json:"offset"`
}

// Launch is one cuLaunchKernel of the program.
type Launch struct {
	// Kernel is the .entry name in the PTX.
	Kernel string `json:"kernel"`
	// Label is the IR node the kernel computes (for per-kernel times).
	Label string `json:"label"`
	// Op is the kernel kind: conv, maxpool, avgpool, global_avgpool, dense,
	// softmax, reorder, copy, ….
	Op string `json:"op"`
	// Grid and Block are the launch dimensions (x, y, z), each >= 1.
	Grid  [3]int `json:"grid"`
	Block [3]int `json:"block"`
	// SharedBytes is the dynamic shared memory per block (0: none; the
	// kernels use static shared memory, so this is 0 today).
	SharedBytes int `json:"shared_bytes"`
	// Args are the kernel's parameters, in order.
	Args []Arg `json:"args"`
	// FLOPs is the useful floating-point work (2 per multiply-add), for
	// % of peak.
	FLOPs int64 `json:"flops"`
}

// ArgKind says how the runtime forms a kernel parameter.
type ArgKind string

// Argument kinds.
const (
	// ArgArena is a .u64 pointer: arena base + Offset bytes.
	ArgArena ArgKind = "arena"
	// ArgWeights is a .u64 pointer: weights base + Offset bytes.
	ArgWeights ArgKind = "weights"
	// ArgI32 is a .u32 scalar holding Value (two's complement).
	ArgI32 ArgKind = "i32"
)

// Arg is one kernel parameter.
type Arg struct {
	Kind ArgKind `json:"kind"`
	// Offset is the byte offset into the arena or the weights.
	Offset int64 `json:"offset,omitempty"`
	// Value is an ArgI32's value.
	Value int64 `json:"value,omitempty"`
}

// ParamBytes returns the size of the kernel parameter a in the .param
// space: 8 for pointers, 4 for i32.
func (a Arg) ParamBytes() int {
	if a.Kind == ArgI32 {
		return 4
	}
	return 8
}
