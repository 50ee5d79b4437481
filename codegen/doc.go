// Package codegen generates the native kernels of a Kiln network as LLVM IR
// (through github.com/llir/llvm) and compiles them with LLVM 19.
//
// # Targets
//
// A Target is data: triple, CPU, features, f32 vector width, vector register
// count and the channel block B its kernels expect. AVX512 and AVX2 both use
// B = 16, so one object holds both variants of every kernel with a single
// weight layout and arena plan (an AVX2 kernel treats a 16-channel block as
// two ymm vectors); NEON uses B = 4. A Module holds kernels for targets that
// share a triple; each kernel is emitted once per target as function
// NAME_TARGET (Target.Symbol) carrying that target's "target-cpu" and
// "target-features" attributes, so the loader picks a variant at run time.
//
// # Memory layouts
//
// All tensors are float32. Sizes and offsets are in elements.
//
//   - Activations: blocked NCHW{B}c = [N][ceil(C/B)][H][W][B], channels past C
//     in the last block zero; or plain NCHW, which only the network input may
//     be (read by the first convolution, or converted by a Reorder).
//   - Convolution weights: OIhw{B}i{B}o = [ceil(O/B)][ceil(I/B)][KH][KW][B in]
//     [B out], zero padded. A convolution reading a plain input uses the
//     same layout: input channel c is row c%B of input block c/B.
//   - Bias: ceil(O/B)*B floats, zero padded.
//   - Dense weights: [I][O], transposed at build time from PyTorch's [O][I]
//     (the lead's weight packing does this), bias [O]; input [N][I] and output
//     [N][O] plain.
//
// # Kernel ABI
//
// Every kernel is an externally visible C function
//
//	void NAME_TARGET(float *arena, const float *weights, int64_t tile_begin, int64_t tile_end);
//
// Activations live in one arena and weights in one read-only buffer; every
// tensor address is a compile-time constant offset from one of the two
// (both are marked noalias: the arena and the weights must not overlap).
// A kernel's work is cut into independent tiles; a call computes tiles
// [tile_begin, tile_end) (clamped to [0, Tiles)), so a runtime splits one
// kernel across threads without knowing anything about it. The tile count
// is returned by the Module method that adds the kernel and is the same for
// every target. Vector loads and stores assume only 4-byte alignment, but
// the arena and weights should be 64-byte aligned for speed.
//
// # Kernels
//
// Conv (ConvSpec) is a direct convolution with register blocking after
// oneDNN's nChw16c JIT kernels and Georganas et al., "Anatomy of
// High-Performance Deep Learning Convolutions on SIMD Architectures" (SC'18):
// a strip of RW output pixels × OCV output-channel vectors accumulates in
// registers over the input-channel blocks, kernel rows, kernel columns and
// the B channels of a block (broadcast one input, FMA with OCV weight
// vectors); bias, residual and ReLU are applied in registers before the
// store, which may target a channel slice of a larger buffer (in-place
// concatenation). Details are with planConv and convGen. Pool, GlobalAvgPool,
// Reorder, Dense, Softmax and Copy complete the set the Inception networks
// need.
//
// # Toolchain
//
// FindLLVM locates clang-19 and llc-19; Toolchain.CompileObject compiles a
// module to an object cached under a content hash of the IR, the target and
// the compiler version ($KILN_CACHE_DIR or os.UserCacheDir()/kiln/obj);
// CompileAll compiles modules in parallel; SharedLibrary links. Check is a
// small FileCheck-style matcher for tests of the generated code.
package codegen
