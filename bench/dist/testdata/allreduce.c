/*
 * Open MPI's own all-reduce throughput, the reference for dist's
 * (bench/dist -sweep): the same sizes (4 KB, then x16, up to the largest),
 * the same timing (REPS calls, 50 below 4 MB, each after a barrier, after
 * one warm-up call; the best and the median), in-place float32 sums, printed as rows
 * of the same Markdown table. Two implementations: the blocking
 * MPI_Allreduce, and MPI_Iallreduce completed by MPI_Test in a busy loop
 * (libnbc, the collective dist calls).
 *
 * bench/dist/run.sh compiles it with mpicc at bench time:
 *   mpicc -O2 -o allreduce allreduce.c && mpirun ... ./allreduce MAXFLOATS REPS
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
	int provided, rank, size;
	MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	long maxf = argc > 1 ? atol(argv[1]) : 42700000;
	int reps = argc > 2 ? atoi(argv[2]) : 3;
	long sizes[64];
	int ns = 0;
	for (long n = 1024; n < maxf && ns < 63; n *= 16) sizes[ns++] = n;
	sizes[ns++] = maxf;
	for (int mode = 0; mode < 2; mode++) {
		for (int si = 0; si < ns; si++) {
			long n = sizes[si];
			float *b = malloc(n * sizeof(float));
			if (b == NULL) {
				fprintf(stderr, "allreduce: out of memory for %ld floats\n", n);
				MPI_Abort(MPI_COMM_WORLD, 1);
			}
			for (long i = 0; i < n; i++) b[i] = 1;
			int r = (4 * n < (4 << 20) && reps < 50) ? 50 : reps;
			double *ts = malloc(r * sizeof(double));
			for (int k = -1; k < r; k++) { /* k = -1: warm-up */
				MPI_Barrier(MPI_COMM_WORLD);
				double t = MPI_Wtime();
				if (mode == 0) {
					MPI_Allreduce(MPI_IN_PLACE, b, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
				} else {
					MPI_Request q;
					int done = 0;
					MPI_Iallreduce(MPI_IN_PLACE, b, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &q);
					while (!done) MPI_Test(&q, &done, MPI_STATUS_IGNORE);
				}
				t = MPI_Wtime() - t;
				if (k >= 0) ts[k] = t;
			}
			qsort(ts, r, sizeof(double), cmp);
			double best = ts[0], med = ts[r / 2];
			free(ts);
			if (rank == 0)
				printf("| Open MPI %s | %d | %ld | %.3f | %.3f | %.2f |\n",
				       mode == 0 ? "MPI_Allreduce" : "MPI_Iallreduce + MPI_Test loop", size, 4 * n,
				       best * 1e3, med * 1e3, 2.0 * (size - 1) / size * 4 * n / best / 1e9);
			free(b);
		}
	}
	MPI_Finalize();
	return 0;
}
