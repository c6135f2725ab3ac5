/* model/cpu/blas.h — the BLAS library the CPU backend multiplies with.
 *
 * ponder loads its BLAS with dlopen instead of linking it, so that it can choose
 * the library and set OpenBLAS's environment before the library's constructor
 * reads it. "auto" prefers OpenBLAS's OpenMP build: it runs on ponder's own
 * libgomp thread pool, where a pthread build adds a second set of threads that
 * compete with ponder's OpenMP threads for the same cores; then OpenBLAS's
 * pthread build, then BLIS (OpenMP, then pthread). For
 * OpenBLAS, unless the user set them, we select the SkylakeX kernels on CPUs
 * with AVX-512 F/CD/BW/DQ/VL (0.3.21 may not recognise new cores; the kernels
 * are correct wherever those extensions exist) and make the pthread build's
 * idle workers sleep at once (OPENBLAS_THREAD_TIMEOUT=4). Both variables are
 * left in the environment, so child processes inherit them. Measurements
 * behind each choice: bench/RESULTS.md "BLAS choice".
 *
 * With an OpenMP build, BLAS threads and OpenMP threads are one setting:
 * OpenBLAS-openmp sizes each call by omp_get_max_threads() of the calling
 * thread, and its openblas_set_num_threads (blas_set_threads) also calls
 * omp_set_num_threads. */
#ifndef PONDER_MODEL_CPU_BLAS_H
#define PONDER_MODEL_CPU_BLAS_H

#include <stdint.h> /* int64_t */

#include "util/error.h" /* PonderError */

typedef struct BlasInfo {
    char library[256]; /* path that was loaded */
    char core[64];     /* OpenBLAS core name, or "blis <config>" (e.g. "blis zen3") */
    int threads;
} BlasInfo;

/* Loads the BLAS once per process (later calls return the same). `choice` is
 * "auto", "openblas-openmp", "openblas-pthread", "blis" (the OpenMP build),
 * "blis-pthread", or the path or name (anything containing ".so", searched by
 * dlopen) of a shared library exporting cblas_sgemm; NULL means "auto" unless
 * the environment variable PONDER_BLAS says otherwise (used by benchmarks). */
int blas_load(const char *choice, PonderError *err);
const BlasInfo *blas_info(void);
void blas_set_threads(int n);

/* Row-major C[M,N] = alpha * op(A) op(B) + beta * C, with op = transpose when
 * the flag is set; lda/ldb/ldc as in CBLAS row-major. Calls blas_load(NULL) on
 * first use; aborts with a message if no BLAS can be loaded (the backend's
 * create function loads it first and reports the error properly). */
void blas_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                int64_t ldc);

#endif
