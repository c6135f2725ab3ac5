/* model/cpu/blas.h — the BLAS library the CPU backend multiplies with.
 *
 * ponder loads its BLAS with dlopen instead of linking it, so that it can choose
 * the library and, for OpenBLAS, the kernel set before the library's constructor
 * probes the CPU. Debian's OpenBLAS 0.3.21 does not recognise recent AMD cores
 * and falls back to slow SSE kernels; when the CPU has AVX-512 (F, CD, BW, DQ,
 * VL) and the user has not chosen, we select the SkylakeX kernels, which are
 * correct on any CPU with those extensions. See bench/RESULTS.md for the
 * measurements behind the choice. */
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
 * "auto", "openblas-pthread", "openblas-openmp", "blis" or an absolute path to a
 * shared library exporting cblas_sgemm; NULL means "auto" unless the
 * environment variable PONDER_BLAS says otherwise (used by benchmarks). */
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
