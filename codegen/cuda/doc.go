// Package cuda generates NVIDIA GPU kernels (issue 12): it takes the
// network as codegen/lower lowers it for the CPU — the same inference
// pipeline, memory plan, weights blob and resolved offsets, with the GPU
// targets' channel block 32 — and emits one LLVM IR module for the NVPTX
// back end (github.com/llir/llvm), compiled to PTX by llc-19. The result is
// a Program (kernels.go): the PTX text and the ordered launches that the
// GPU runtime (runtime/cuda) replays.
//
// Layout. Activations are NCHW32c (the CPU pipeline's blocked layout with
// B = 32), weights OIhw32i32o. For implicit GEMM this is NHWC within a
// channel block: a pixel's 32 channels are one 128-byte line, so a warp
// loads a whole K slice of one pixel in one coalesced transaction, and a
// weight slab [32 in][32 out] of one filter tap is 4 KB contiguous. Keeping
// the CPU's layout family means one planner, one weight packer and one
// interpreter reference for both.
//
// Kernels: implicit-GEMM convolution (conv.go) with shared-memory tiles
// in three precisions (exact fp32 FMA; bf16 mma.m16n8k16 and tf32
// mma.m16n8k8 with f32 accumulation through the NVVM mma intrinsics), the
// fused epilogue (bias, residual, ReLU, concat slice), max/avg pooling,
// global average pooling, layout reorders, concat copies, dense and softmax
// (simple.go).
//
// Emulate (emulate.go) runs the generated LLVM IR itself on the CPU — an
// interpreter of the IR subset the generator emits, with per-thread
// registers, per-block shared memory, barriers and warp-collective mma
// following the PTX ISA fragment layouts, and a shared-memory race check per
// barrier phase — so tests check the tiling, the synchronization and the
// fragment mapping against ir/interp without a GPU.
package cuda
