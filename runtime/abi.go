package rt

// ABIVersion is the version of the kernel ABI: the entry points a shared
// object exports and their C signatures (kiln_abi_version, kiln_arena_bytes,
// kiln_weights_bytes, kiln_run_<isa>), the calling convention of
// kiln_run_<isa> (one call per thread per inference, tid 0 on the caller's
// thread, the timings array) and the size and use of the barrier block
// (BarrierBytes). It is independent of the manifest format (ManifestVersion):
// a manifest field may be added without touching the ABI and vice versa.
//
// The code generator's C driver returns this constant from
// kiln_abi_version(); Open refuses a shared object that returns anything
// else, naming both versions. Bump it with any change to the above.
//
// Version history: 1 had kiln_abi_version and kiln_run_<isa> only (and was
// compared with the manifest version); 2 adds kiln_arena_bytes and
// kiln_weights_bytes; 3 separates kernels by completion counting instead of
// a barrier: the runtime writes the inference number at byte 256 of a
// 384-byte barrier block before each multi-threaded inference. Within 3,
// the runtime also writes it before single-threaded inferences and reads
// the driver's completion word at byte 320 (RunProgress, progress.go); a
// shared object that ignores the one and keeps the other only when
// multi-threaded still works (its progress is then reported at the end).
const ABIVersion = 3

// BarrierBytes is the size of the barrier block the runtime allocates (64-byte
// aligned, zeroed once per session) and passes to kiln_run_<isa>. Part of
// the kernel ABI (ABIVersion).
const BarrierBytes = 384

// barrierRunOff is where in the barrier block the runtime writes the
// inference number before waking the threads (KILN_RUN_OFF of the driver).
const barrierRunOff = 256

// ABI symbol names.
const (
	symABIVersion   = "kiln_abi_version"   // int32_t (void): ABIVersion
	symArenaBytes   = "kiln_arena_bytes"   // int64_t (void): the arena size the kernels were compiled for
	symWeightsBytes = "kiln_weights_bytes" // int64_t (void): the weights blob size the kernels were compiled for
)
