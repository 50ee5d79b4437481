// membw times b[i] = 1.5·a[i] + 0.5 over two float arrays of MB MiB each,
// split between THREADS threads, five times, and prints the bytes read
// and written per second: how fast the machine streams a tensor of that
// size, the way a memory-bound training kernel (a BatchNorm) does. Sizes
// past what the last-level cache really holds for this process show the
// DRAM rate. BENCHMARKS.md (issue 9, nineteenth session) uses it.
//
//	clang-19 -O3 -march=native -o /tmp/membw bench/membw/membw.c -lpthread
//	for mb in 4 12 48 256 1024; do /tmp/membw $mb 2; done
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static size_t n;
static float *a, *b;

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct {
	size_t lo, hi;
} span;

static void *run(void *p) {
	span *s = p;
	for (size_t i = s->lo; i < s->hi; i++)
		b[i] = a[i] * 1.5f + 0.5f;
	return 0;
}

int main(int argc, char **argv) {
	if (argc != 3) {
		fprintf(stderr, "usage: membw MB THREADS\n");
		return 2;
	}
	size_t mb = strtoul(argv[1], 0, 10);
	int th = atoi(argv[2]);
	if (mb < 1 || mb > 8192 || th < 1 || th > 64) {
		fprintf(stderr, "membw: MB must be 1..8192 and THREADS 1..64\n");
		return 2;
	}
	n = mb * (1 << 20) / 4;
	a = aligned_alloc(64, n * 4);
	b = aligned_alloc(64, n * 4);
	if (!a || !b) {
		fprintf(stderr, "membw: out of memory\n");
		return 1;
	}
	memset(a, 1, n * 4);
	memset(b, 1, n * 4);
	pthread_t t[64];
	span s[64];
	for (int rep = 0; rep < 5; rep++) {
		double t0 = now();
		for (int i = 0; i < th; i++) {
			s[i].lo = n * i / th;
			s[i].hi = n * (i + 1) / th;
			pthread_create(&t[i], 0, run, &s[i]);
		}
		for (int i = 0; i < th; i++)
			pthread_join(t[i], 0);
		double d = now() - t0;
		printf("%zu MiB x %d threads: %.1f GB/s read + written\n", mb, th, 2.0 * n * 4 / d / 1e9);
	}
	return 0;
}
