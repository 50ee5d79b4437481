/*
 * kiln.h: the C API of a network compiled by `kiln build NET --format lib -o libNET.so`.
 *
 * The library carries the compiled network (kernels for each instruction set,
 * weights, manifest) appended to Kiln's runtime. kiln_open checks the
 * SHA-256 digests of the manifest, the kernels and the weights before the
 * first inference (as a built executable does) and picks the instruction set
 * for this CPU (AVX-512, else AVX2; KILN_ISA forces one).
 *
 *     #include "kiln.h"
 *     kiln_model m = kiln_open(NULL);          // the network inside this library
 *     if (m == 0) { fprintf(stderr, "%s\n", kiln_last_error()); return 1; }
 *     int64_t in[8], out[8];
 *     int rin = kiln_input_shape(m, in, 8);    // rank, e.g. 4: {1, 3, 32, 32}
 *     ...
 *     if (kiln_run(m, x, nx, y, ny) != KILN_OK) fprintf(stderr, "%s\n", kiln_last_error());
 *     kiln_close(m);
 *
 * Link with -lNET (or dlopen libNET.so; Python: ctypes.CDLL). The library
 * contains a Go runtime: load at most one Kiln library per process.
 *
 * Thread safety: every function may be called from any thread. kiln_run may
 * run concurrently on one model (each concurrent call gets its own
 * activation memory; calls beyond the model's session pool wait for one).
 * kiln_close must not overlap other calls on the same model; after it the
 * handle is invalid (using it is an error, not a crash). kiln_last_error is
 * per thread.
 *
 * Errors never abort the process: every function reports failure by its
 * return value and kiln_last_error() describes it.
 */
#ifndef KILN_H
#define KILN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A loaded network; 0 is never a valid handle. */
typedef int64_t kiln_model;

/* Return codes. */
enum {
	KILN_OK = 0,
	KILN_ERR_HANDLE = -1, /* not an open model */
	KILN_ERR_ARG = -2,    /* NULL pointer or too small a buffer */
	KILN_ERR_SIZE = -3,   /* n_in or n_out does not fit the network */
	KILN_ERR_RUN = -4     /* the inference failed */
};

/*
 * kiln_open loads a network: with path NULL the one carried by this library;
 * otherwise the one appended to the file at path (a library or executable
 * built by kiln build). The weights' SHA-256 is checked unless the
 * environment variable KILN_WEIGHTS_CHECK is "off"; threads per inference
 * are all cores unless KILN_THREADS is set. Returns 0 on error.
 */
kiln_model kiln_open(const char *path);

/*
 * kiln_run runs the network on n_in floats of input (row-major, the input
 * shape) and writes n_out floats of output. n_in may be any positive
 * multiple of one sample (the input shape without its first dimension) when
 * the network's tensors lead with the batch: more samples than a compiled
 * batch are run in chunks, fewer are padded. n_out must be the output for
 * that many samples. Returns KILN_OK or a negative KILN_ERR_*.
 */
int kiln_run(kiln_model m, const float *in, size_t n_in, float *out, size_t n_out);

/*
 * kiln_input_shape and kiln_output_shape write the tensor's shape (at the
 * largest compiled batch) into dims[0..rank-1] and return its rank, or a
 * negative KILN_ERR_* (KILN_ERR_ARG when cap < rank).
 */
int kiln_input_shape(kiln_model m, int64_t *dims, size_t cap);
int kiln_output_shape(kiln_model m, int64_t *dims, size_t cap);

/* kiln_close releases the model. Returns KILN_OK or KILN_ERR_HANDLE. */
int kiln_close(kiln_model m);

/*
 * kiln_last_error describes the calling thread's last failure ("" if none).
 * The text stays valid until the thread's next call into the library.
 */
const char *kiln_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* KILN_H */
