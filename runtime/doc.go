// Package rt is Kiln's runtime: the thin layer that loads a compiled artifact
// (a shared object of native kernels, a weights blob and a JSON manifest) and
// runs inferences with it. It lives at github.com/kiln-dev/kiln/runtime; the
// package is named rt so that it does not collide with Go's own runtime.
//
// A built standalone executable carries this package and nothing of the
// compiler: rt must never import dsl, passes or codegen. Its only
// dependencies are ir/tensor and golang.org/x/sys.
//
// # Using it from Go
//
// A network built with `kiln build NET -o OUT` (or `--format lib`) carries
// its payload; a Go program loads and runs it with
//
//	a, found, err := rt.FindPayload("OUT") // trailer and manifest checked
//	m, err := rt.Open(*a, rt.Options{})    // kernels checked and loaded, weights checked
//	err = m.Run(in, out)                   // []float32 of Manifest().Input/Output's size
//	m.Close(); a.Close()
//
// Manifest describes the input and output (shape, NCHW row-major),
// preprocessing and labels; Run is safe for concurrent use (Options
// tunes threads and sessions); State and SetState read and restore mutable
// parameters. An artifact with several batch sizes (`--batch 1,8,32`) is
// read with FindBundle and opened with OpenMulti, which takes any number
// of samples. Errors are returned, never panics. The package examples show
// each step; examples/go-embed is a complete program, tested against the
// interpreter. From C or Python, build with `--format lib` and use kiln.h
// (runtime/clib).
//
// # Artifact ABI
//
// The shared object exports, for every ISA listed in the manifest,
//
//	void kiln_run_<isa>(float *arena, const float *weights, int32_t tid,
//	                    int32_t nthreads, void *barrier, int64_t *timings);
//
// and
//
//	int32_t kiln_abi_version(void);   // ABIVersion (2), not the manifest version
//	int64_t kiln_arena_bytes(void);   // the arena the kernels were compiled for
//	int64_t kiln_weights_bytes(void); // the weights blob they were compiled for
//
// Open refuses a shared object whose ABI version differs from ABIVersion, or
// whose sizes differ from the manifest's arena_bytes and weights_bytes: the
// kernels address both with compile-time offsets, so a smaller arena would be
// written past its end.
//
// Every participating thread calls kiln_run_<isa> once per inference with the
// same arena, weights and barrier and its own tid in [0, nthreads). The call
// runs every kernel of the network, splitting each kernel's tiles across the
// threads and meeting the others on the barrier between kernels. The barrier
// block is 256 bytes, 64-byte aligned and zeroed once per session by the
// runtime; the shared object implements the barrier in it with atomics.
// timings is NULL or an array of len(Manifest.Kernels) int64, zeroed by the
// runtime and passed to every thread, into which tid 0 accumulates
// nanoseconds per kernel (see Model.Profile). The arena, the weights and the
// barrier block are 64-byte aligned. tid 0 runs on the thread of the
// goroutine that called Run, so kiln_run_<isa> must leave the thread's
// floating-point control state (MXCSR, FPCR) as it found it.
//
// # Design
//
// One cgo call per thread per inference. A cgo call costs tens of
// nanoseconds plus a hand-off of the P when it runs long; per-kernel calls
// from Go would pay that, and a Go-side barrier, hundreds of times per
// inference. Instead the whole network runs inside one C call per thread and
// the threads synchronise among themselves on a spin barrier in C, so the Go
// scheduler is involved only at the start and the end of an inference.
//
// Sessions. Each concurrent inference needs its own activation arena, so a
// Model keeps a pool of sessions, each owning an arena, a barrier block, a
// timings array and Threads-1 persistent worker goroutines; the goroutine
// calling Run acts as tid 0 and makes its own one cgo call. Sessions are made
// on demand up to Options.MaxSessions (default GOMAXPROCS/Threads, at least
// 1, so that busy sessions never need more OS threads than there are Ps) and
// reused; Run takes an idle one or waits for one. Running tid 0 on the
// caller means an inference with Threads threads occupies exactly Threads
// Ps (a separate tid-0 worker plus a waiting caller would need one more, and
// the default Threads is GOMAXPROCS), and Threads == 1 costs no thread
// switch at all. Each worker is locked to its OS thread
// (runtime.LockOSThread) for its whole life: the same threads, with warm
// caches and TLBs, serve every inference of the session, and thread state
// the kernels may set stays on them (kiln_run_<isa> must still restore any
// floating-point control state it changes, since tid 0 runs on an ordinary
// goroutine's thread). Workers exit with their goroutine still locked, so
// Close also ends their OS threads.
//
// Spin, then park. Waking a parked goroutine that is locked to its thread
// is an OS-thread hand-off: on a 16-core host (an H200 machine) a locked
// ping-pong costs ~16µs against ~0.5µs unlocked, and waking 15 parked
// workers ~140µs per inference. So between inferences workers spin on an
// atomic inference counter for Options.SpinWait (default 100µs) before
// parking on a channel, and the caller spins the same way waiting for them;
// back-to-back inferences then cost ~4µs (2 threads) to ~8µs (16 threads)
// of runtime overhead on that host. The hand-off protocol is described on
// the session type.
//
// No Go heap on the hot path. Arenas, barrier blocks and timings arrays are
// anonymous mmaps: 64-byte (page) aligned, invisible to the garbage
// collector, and passed to C as plain integers, so cgo's pointer checks cost
// nothing. Run copies the input into the arena at Manifest.Input.Offset,
// wakes the workers, waits for them and copies the output out: zero
// allocations per call (the tests check this with testing.AllocsPerRun).
// Weights may be Go memory (they are pinned with runtime.Pinner for the
// Model's lifetime) or an mmap; weights that are not 64-byte aligned are
// copied once into an aligned anonymous mapping.
//
// Loading from bytes via memfd. A shared object held in memory (for example
// the one embedded in a standalone executable) is written to an anonymous
// memory file (memfd_create) and loaded with dlopen("/proc/self/fd/N"): no
// file system write, nothing left behind on a crash, no dependence on a
// writable or exec-mountable /tmp, and each Open gets its own copy of the
// library. Only if memfd is unavailable does Open fall back to a temporary
// file, removed right after dlopen.
//
// Standalone executables. AppendPayload appends the shared object, weights
// and manifest to an executable, each section 4096-byte aligned, followed by
// a fixed trailer carrying the manifest's SHA-256 (the manifest carries the
// shared object's and the weights'; Open checks them, the weights unless
// Options.SkipWeightsCheck; see verify.go for the marker that tells a
// stripped or truncated built executable from the plain runner).
// FindPayload reads that trailer from the running
// executable and maps the weights section read-only straight from the file:
// no copy and no read into the heap, so the page cache backs the weights and
// peak memory stays at about the weights actually touched plus the arenas,
// even for weights larger than RAM would comfortably hold twice.
//
// # CPU dispatch
//
// On amd64 the runtime picks avx512 when the CPU has AVX-512F and AVX-512VL
// (and the artifact was compiled for it), else avx2 (AVX2 and FMA); on arm64,
// neon. Options.ISA, or the KILN_ISA environment variable when Options.ISA is
// empty, forces an ISA; one the CPU or the artifact lacks is refused with an
// error saying what is missing.
package rt
