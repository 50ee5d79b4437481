// A stand-in for libcuda.so.1 with the entry points runtime/cuda resolves,
// for TestLibcuda: device memory is malloc'ed host memory, stream work runs
// at once unless the stream is capturing, in which case it is recorded and
// replayed by cuGraphLaunch. Two kernels exist, by name, with the semantics
// of model_test.go's testPTX: add_one(a, b, n): b[i] = a[i] + 1 and
// mul_w(a, w, b, n): b[i] = a[i] * w[i]. A module whose text contains
// "syntax error" fails to load with a JIT log; FAKECUDA_NODEVICE=1 makes
// cuInit fail with CUDA_ERROR_NO_DEVICE. Built by the test with cc -shared.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;

enum { OP_HTOD, OP_DTOH, OP_LAUNCH, OP_EVENT };
typedef struct {
	int kind;
	void *dst;
	const void *src;
	size_t n;
	const char *kernel;
	uint64_t args[4];
	float *event;
} op;

typedef struct {
	op *ops;
	int n, cap;
} graph;

static graph *capturing = NULL;
static float clock_ms = 0;

static void run(op *o) {
	switch (o->kind) {
	case OP_HTOD:
	case OP_DTOH:
		memcpy(o->dst, o->src, o->n);
		break;
	case OP_EVENT:
		*o->event = clock_ms;
		break;
	case OP_LAUNCH:
		clock_ms += 0.25f;
		if (strcmp(o->kernel, "add_one") == 0) {
			float *a = (float *)(uintptr_t)o->args[0], *b = (float *)(uintptr_t)o->args[1];
			uint32_t n = (uint32_t)o->args[2];
			for (uint32_t i = 0; i < n; i++) b[i] = a[i] + 1;
		} else if (strcmp(o->kernel, "mul_w") == 0) {
			float *a = (float *)(uintptr_t)o->args[0], *w = (float *)(uintptr_t)o->args[1], *b = (float *)(uintptr_t)o->args[2];
			uint32_t n = (uint32_t)o->args[3];
			for (uint32_t i = 0; i < n; i++) b[i] = a[i] * w[i];
		}
		break;
	}
}

static CUresult submit(op o) {
	if (capturing == NULL) {
		run(&o);
		return 0;
	}
	if (capturing->n == capturing->cap) {
		capturing->cap = capturing->cap ? 2 * capturing->cap : 16;
		capturing->ops = realloc(capturing->ops, capturing->cap * sizeof(op));
	}
	capturing->ops[capturing->n++] = o;
	return 0;
}

CUresult cuInit(unsigned int flags) {
	const char *e = getenv("FAKECUDA_NODEVICE");
	return e != NULL && e[0] == '1' ? 100 : 0;
}
CUresult cuDriverGetVersion(int *v) { *v = 13000; return 0; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return 0; }
CUresult cuDeviceGet(int *d, int ordinal) { *d = ordinal; return ordinal == 0 ? 0 : 101; }
CUresult cuDeviceGetName(char *buf, int len, int dev) { strncpy(buf, "Fake libcuda", len); return 0; }
CUresult cuDeviceGetAttribute(int *v, int attr, int dev) {
	switch (attr) {
	case 75: *v = 9; break;   // compute capability major
	case 76: *v = 0; break;   // minor
	case 16: *v = 132; break; // SMs
	case 13: *v = 1980000; break;
	default: *v = 0;
	}
	return 0;
}
CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) { *ctx = (void *)0x1; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int dev) { return 0; }
CUresult cuCtxSetCurrent(void *ctx) { return ctx == (void *)0x1 ? 0 : 201; }
CUresult cuCtxSynchronize(void) { return 0; }
CUresult cuModuleLoadDataEx(void **mod, const void *image, unsigned int n, int *opts, void **vals) {
	if (strstr((const char *)image, "syntax error") != NULL) {
		for (unsigned int i = 0; i < n; i++) {
			if (opts[i] == 5) strcpy((char *)vals[i], "ptxas application ptx input, line 3; fatal   : Parsing error near 'syntax': syntax error");
		}
		return 218; // CUDA_ERROR_INVALID_PTX
	}
	*mod = (void *)0x2;
	return 0;
}
CUresult cuModuleUnload(void *mod) { return 0; }
CUresult cuModuleGetFunction(void **f, void *mod, const char *name) {
	if (strcmp(name, "add_one") != 0 && strcmp(name, "mul_w") != 0) return 500; // CUDA_ERROR_NOT_FOUND
	*f = strdup(name);
	return 0;
}
CUresult cuFuncSetAttribute(void *f, int attr, int v) { return 0; }
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) { *p = (CUdeviceptr)(uintptr_t)malloc(n); return 0; }
CUresult cuMemFree_v2(CUdeviceptr p) { free((void *)(uintptr_t)p); return 0; }
CUresult cuMemAllocHost_v2(void **p, size_t n) { *p = malloc(n); return 0; }
CUresult cuMemFreeHost(void *p) { free(p); return 0; }
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) { memcpy((void *)(uintptr_t)dst, src, n); return 0; }
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) { memset((void *)(uintptr_t)dst, v, n); return 0; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, void *s) {
	op o = {OP_HTOD, (void *)(uintptr_t)dst, src, n};
	return submit(o);
}
CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, void *s) {
	op o = {OP_DTOH, dst, (const void *)(uintptr_t)src, n};
	return submit(o);
}
CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void *s, void **params, void **extra) {
	op o = {OP_LAUNCH};
	o.kernel = (const char *)f;
	int nargs = strcmp(o.kernel, "add_one") == 0 ? 3 : 4;
	for (int i = 0; i < nargs; i++) {
		// Pointers are 8 bytes; the last parameter, n, is a .u32: read 4.
		o.args[i] = i == nargs - 1 ? *(uint32_t *)params[i] : *(uint64_t *)params[i];
	}
	if (gx * gy * gz == 0 || bx * by * bz == 0) return 1;
	return submit(o);
}
CUresult cuStreamCreate(void **s, unsigned flags) { *s = (void *)0x3; return 0; }
CUresult cuStreamDestroy_v2(void *s) { return 0; }
CUresult cuStreamSynchronize(void *s) { return 0; }
CUresult cuStreamBeginCapture_v2(void *s, int mode) {
	if (capturing != NULL) return 900;
	capturing = calloc(1, sizeof(graph));
	return 0;
}
CUresult cuStreamEndCapture(void *s, void **g) {
	*g = capturing;
	capturing = NULL;
	return *g == NULL ? 900 : 0;
}
CUresult cuGraphInstantiateWithFlags(void **e, void *g, unsigned long long flags) { *e = g; return 0; }
CUresult cuGraphLaunch(void *e, void *s) {
	graph *g = e;
	for (int i = 0; i < g->n; i++) run(&g->ops[i]);
	return 0;
}
CUresult cuGraphDestroy(void *g) {
	free(((graph *)g)->ops);
	free(g);
	return 0;
}
CUresult cuGraphExecDestroy(void *e) { return 0; }
CUresult cuEventCreate(void **e, unsigned flags) { *e = calloc(1, sizeof(float)); return 0; }
CUresult cuEventRecord(void *e, void *s) {
	op o = {OP_EVENT};
	o.event = e;
	return submit(o);
}
CUresult cuEventSynchronize(void *e) { return 0; }
CUresult cuEventElapsedTime_v2(float *ms, void *a, void *b) { *ms = *(float *)b - *(float *)a; return 0; }
CUresult cuEventDestroy_v2(void *e) { free(e); return 0; }
CUresult cuGetErrorName(CUresult r, const char **s) {
	switch (r) {
	case 100: *s = "CUDA_ERROR_NO_DEVICE"; return 0;
	case 218: *s = "CUDA_ERROR_INVALID_PTX"; return 0;
	case 500: *s = "CUDA_ERROR_NOT_FOUND"; return 0;
	}
	return 1;
}
CUresult cuGetErrorString(CUresult r, const char **s) {
	switch (r) {
	case 100: *s = "no CUDA-capable device is detected"; return 0;
	case 218: *s = "a PTX JIT compilation failed"; return 0;
	}
	return 1;
}
