//go:build linux && cgo

package dist

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// The few Open MPI types used here, declared without mpi.h so that the
// package builds where Open MPI is not installed. In Open MPI (mpi.h,
// 4.x and 5.x) every handle is a pointer and the predefined handles are
// the addresses of exported globals: MPI_COMM_WORLD is &ompi_mpi_comm_world,
// MPI_FLOAT &ompi_mpi_float, MPI_SUM &ompi_mpi_op_sum, and so on.
typedef void *k_comm;
typedef void *k_type;
typedef void *k_op;
typedef void *k_req;

#define K_IN_PLACE ((void *)1)   // MPI_IN_PLACE in Open MPI
#define K_THREAD_FUNNELED 1      // enum: SINGLE, FUNNELED, SERIALIZED, MULTIPLE

static struct {
	int (*Init_thread)(int *, char ***, int, int *);
	int (*Comm_rank)(k_comm, int *);
	int (*Comm_size)(k_comm, int *);
	int (*Iallreduce)(const void *, void *, int, k_type, k_op, k_comm, k_req *);
	int (*Ibcast)(void *, int, k_type, int, k_comm, k_req *);
	int (*Ibarrier)(k_comm, k_req *);
	int (*Isend)(const void *, int, k_type, int, int, k_comm, k_req *);
	int (*Irecv)(void *, int, k_type, int, int, k_comm, k_req *);
	int (*Test)(k_req *, int *, void *);
	int (*Cancel)(k_req *);
	int (*Finalize)(void);
	int (*Abort)(k_comm, int);
	int (*Error_string)(int, char *, int *);
	k_comm world;
	k_type f32, f64, byte;
	k_op sum;
} M;

// k_load dlopens path with RTLD_GLOBAL (Open MPI's plugins resolve
// symbols of libmpi through the global scope) and resolves everything.
// On failure it returns -1 with a message to free in *err.
static int k_load(const char *path, char **err) {
	void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
	if (h == NULL) {
		const char *e = dlerror();
		*err = strdup(e != NULL ? e : "unknown dlopen error");
		return -1;
	}
#define SYM(field, name) \
	if ((*(void **)&M.field = dlsym(h, name)) == NULL) { \
		*err = strdup("symbol " name " not found (is it Open MPI?)"); \
		return -1; \
	}
	SYM(Init_thread, "MPI_Init_thread")
	SYM(Comm_rank, "MPI_Comm_rank")
	SYM(Comm_size, "MPI_Comm_size")
	SYM(Iallreduce, "MPI_Iallreduce")
	SYM(Ibcast, "MPI_Ibcast")
	SYM(Ibarrier, "MPI_Ibarrier")
	SYM(Isend, "MPI_Isend")
	SYM(Irecv, "MPI_Irecv")
	SYM(Test, "MPI_Test")
	SYM(Cancel, "MPI_Cancel")
	SYM(Finalize, "MPI_Finalize")
	SYM(Abort, "MPI_Abort")
	SYM(Error_string, "MPI_Error_string")
	SYM(world, "ompi_mpi_comm_world")
	SYM(f32, "ompi_mpi_float")
	SYM(f64, "ompi_mpi_double")
	SYM(byte, "ompi_mpi_byte")
	SYM(sum, "ompi_mpi_op_sum")
#undef SYM
	return 0;
}

static int k_init(int *provided) { return M.Init_thread(NULL, NULL, K_THREAD_FUNNELED, provided); }
static int k_rank(int *r) { return M.Comm_rank(M.world, r); }
static int k_size(int *s) { return M.Comm_size(M.world, s); }

static k_type k_dtype(int t) { return t == 0 ? M.f32 : t == 1 ? M.f64 : M.byte; }

static int k_iallreduce_sum(uintptr_t buf, int count, int t, uintptr_t *req) {
	k_req r;
	int rc = M.Iallreduce(K_IN_PLACE, (void *)buf, count, k_dtype(t), M.sum, M.world, &r);
	*req = (uintptr_t)r;
	return rc;
}

static int k_ibcast(uintptr_t buf, int count, int root, uintptr_t *req) {
	k_req r;
	int rc = M.Ibcast((void *)buf, count, M.byte, root, M.world, &r);
	*req = (uintptr_t)r;
	return rc;
}

static int k_ibarrier(uintptr_t *req) {
	k_req r;
	int rc = M.Ibarrier(M.world, &r);
	*req = (uintptr_t)r;
	return rc;
}

static int k_isend(uintptr_t buf, int bytes, int dest, int tag, uintptr_t *req) {
	k_req r;
	int rc = M.Isend((const void *)buf, bytes, M.byte, dest, tag, M.world, &r);
	*req = (uintptr_t)r;
	return rc;
}

static int k_irecv(uintptr_t buf, int bytes, int src, int tag, uintptr_t *req) {
	k_req r;
	int rc = M.Irecv((void *)buf, bytes, M.byte, src, tag, M.world, &r);
	*req = (uintptr_t)r;
	return rc;
}

// k_test tests *req (MPI_STATUS_IGNORE); on completion MPI sets the
// request to MPI_REQUEST_NULL.
static int k_test(uintptr_t *req, int *flag) {
	k_req r = (k_req)*req;
	int rc = M.Test(&r, flag, NULL);
	*req = (uintptr_t)r;
	return rc;
}

static int k_cancel(uintptr_t req) {
	k_req r = (k_req)req;
	return M.Cancel(&r);
}

static int k_finalize(void) { return M.Finalize(); }
static int k_abort(int code) { return M.Abort(M.world, code); }

static void k_error_string(int code, char *buf, int n) {
	int len = 0;
	buf[0] = 0;
	if (M.Error_string(code, buf, &len) == 0 && len >= 0 && len < n) buf[len] = 0;
	buf[n - 1] = 0;
}
*/
import "C"

import (
	"fmt"
	"sync"
	"unsafe"
)

// The binding: thin Go wrappers over the C shims above. Buffers are passed
// as integers; callers pin Go memory (runtime.Pinner) for as long as MPI
// holds it, or use C memory.

// canLoadMPI reports whether this build can dlopen Open MPI.
const canLoadMPI = true

const (
	dtFloat32 = 0
	dtFloat64 = 1
	dtByte    = 2
)

var (
	loadMu   sync.Mutex
	loadedAs string
)

// loadMPI dlopens Open MPI: lib, or libmpi.so.40 then libmpi.so when lib
// is empty. A success is remembered for the life of the process.
func loadMPI(lib string) (string, error) {
	loadMu.Lock()
	defer loadMu.Unlock()
	if loadedAs != "" {
		return loadedAs, nil
	}
	names := []string{"libmpi.so.40", "libmpi.so"}
	if lib != "" {
		names = []string{lib}
	}
	var msgs []string
	for _, n := range names {
		cn := C.CString(n)
		var cerr *C.char
		rc := C.k_load(cn, &cerr)
		C.free(unsafe.Pointer(cn))
		if rc == 0 {
			loadedAs = n
			return n, nil
		}
		msgs = append(msgs, C.GoString(cerr))
		C.free(unsafe.Pointer(cerr))
	}
	return "", fmt.Errorf("%s", joinMsgs(msgs))
}

func joinMsgs(m []string) string {
	s := ""
	for i, x := range m {
		if i > 0 {
			s += "; "
		}
		s += x
	}
	return s
}

func mpiErr(call string, rc C.int) error {
	if rc == 0 {
		return nil
	}
	var buf [512]C.char
	C.k_error_string(rc, &buf[0], C.int(len(buf)))
	return fmt.Errorf("dist: %s failed: %s (error %d)", call, C.GoString(&buf[0]), int(rc))
}

func mpiInit() (rank, size, provided int, err error) {
	var p, r, s C.int
	if err = mpiErr("MPI_Init_thread", C.k_init(&p)); err != nil {
		return
	}
	if err = mpiErr("MPI_Comm_rank", C.k_rank(&r)); err != nil {
		return
	}
	err = mpiErr("MPI_Comm_size", C.k_size(&s))
	return int(r), int(s), int(p), err
}

func mpiIallreduceSum(buf uintptr, count, dtype int) (uintptr, error) {
	var req C.uintptr_t
	err := mpiErr("MPI_Iallreduce", C.k_iallreduce_sum(C.uintptr_t(buf), C.int(count), C.int(dtype), &req))
	return uintptr(req), err
}

func mpiIbcast(buf uintptr, count, root int) (uintptr, error) {
	var req C.uintptr_t
	err := mpiErr("MPI_Ibcast", C.k_ibcast(C.uintptr_t(buf), C.int(count), C.int(root), &req))
	return uintptr(req), err
}

func mpiIbarrier() (uintptr, error) {
	var req C.uintptr_t
	err := mpiErr("MPI_Ibarrier", C.k_ibarrier(&req))
	return uintptr(req), err
}

func mpiIsend(buf uintptr, bytes, dest, tag int) (uintptr, error) {
	var req C.uintptr_t
	err := mpiErr("MPI_Isend", C.k_isend(C.uintptr_t(buf), C.int(bytes), C.int(dest), C.int(tag), &req))
	return uintptr(req), err
}

func mpiIrecv(buf uintptr, bytes, src, tag int) (uintptr, error) {
	var req C.uintptr_t
	err := mpiErr("MPI_Irecv", C.k_irecv(C.uintptr_t(buf), C.int(bytes), C.int(src), C.int(tag), &req))
	return uintptr(req), err
}

// mpiTest reports whether *req has completed.
func mpiTest(req *uintptr) (bool, error) {
	r := C.uintptr_t(*req)
	var flag C.int
	err := mpiErr("MPI_Test", C.k_test(&r, &flag))
	*req = uintptr(r)
	return flag != 0, err
}

// mpiCancel cancels the receive req (mpiTest then completes it).
func mpiCancel(req uintptr) error { return mpiErr("MPI_Cancel", C.k_cancel(C.uintptr_t(req))) }

func mpiFinalize() error { return mpiErr("MPI_Finalize", C.k_finalize()) }
func mpiAbort(code int)  { C.k_abort(C.int(code)) }

// cAlloc returns n zeroed bytes of C memory (never freed by Go's GC).
func cAlloc(n int) unsafe.Pointer { return C.calloc(C.size_t(n), 1) }
func cFree(p unsafe.Pointer)      { C.free(p) }
