/* model/cpu/gemm_bf16.h — matrix products with bf16 operands and fp32 sums.
 *
 * The CPU side of `model.precision: bf16`: both operands are rounded to bf16
 * (round to nearest even) and multiplied with AVX512-BF16's VDPBF16PS, which
 * sums pairs of products into fp32. On the CPUs that have it this doubles the
 * multiply-add rate of fp32 FMA, the limit ponder's fp32 training and batched
 * decoding sit at (bench/RESULTS.md, "bf16 on the CPU").
 *
 * The operands are converted into packed copies first: op(A) as bf16 rows
 * (two consecutive k in one 32-bit word), op(B) as panels of GEMM_BF16_NR
 * columns, pair-major. Those copies live in a GemmBf16 the caller owns and
 * reuses; a packed B can also be kept and multiplied by several A (the LM
 * head converts its [V,C] weight once per op call, not once per chunk). */
#ifndef PONDER_MODEL_CPU_GEMM_BF16_H
#define PONDER_MODEL_CPU_GEMM_BF16_H

#include <stddef.h> /* size_t */
#include <stdint.h> /* int64_t, uint32_t */

#define GEMM_BF16_NR 48 /* columns per packed B panel (three 16-float vectors) */

/* A packed operand: `words` holds pairs of bf16 values, low half = even k.
 * A is row-major (row i's pair p at i * pairs + p) when packed from A, and
 * pair-major (at p * rows + i) when packed from A^T: its pairs then come
 * from two rows of the source, converted and stored as they are read,
 * without a transpose. */
typedef struct GemmBf16Operand {
    uint32_t *words;
    size_t cap;     /* words allocated */
    int64_t rows;   /* A: M; B: N (columns of op(B)) */
    int64_t pairs;  /* ceil(K / 2) */
    int pair_major; /* A only */
} GemmBf16Operand;

typedef struct GemmBf16 {
    GemmBf16Operand a, b;
} GemmBf16;

/* 1 when this CPU can run the kernels (AVX-512 F/BW/VL and AVX512-BF16).
 * PONDER_CPU_BF16=0 in the environment makes it 0, as on a CPU without
 * them (used to test that path, which this project's machines lack). */
int gemm_bf16_supported(void);

/* 1 when the products run on AMX tiles (TDPBF16PS: Sapphire Rapids and
 * later, with the kernel's permission, asked once per process) instead of
 * VDPBF16PS registers. The two give different bits, each the same at any
 * thread count; PONDER_CPU_AMX=0 in the environment makes it 0. */
int gemm_bf16_amx(void);

/* Round to bf16 (nearest even) and back, as the packing does; denormals
 * become signed zero, as VCVTNEPS2BF16 makes them. */
float gemm_bf16_round(float x);

/* Packing. op(A)[i,k] = trans_a ? A[k*lda+i] : A[i*lda+k] for an [M,K] op(A);
 * op(B)[k,j] = trans_b ? B[j*ldb+k] : B[k*ldb+j] for a [K,N] op(B). Returns
 * -1 (operand unchanged) when memory cannot be allocated. */
int gemm_bf16_pack_a(GemmBf16Operand *pa, int trans_a, int64_t M, int64_t K, const float *A,
                     int64_t lda);
int gemm_bf16_pack_b(GemmBf16Operand *pb, int trans_b, int64_t K, int64_t N, const float *B,
                     int64_t ldb);

/* C[M,N] = alpha * op(A) op(B) + beta * C from packed operands (C is not read
 * when beta is 0). pa->pairs must equal pb->pairs. */
void gemm_bf16_packed(const GemmBf16Operand *pa, const GemmBf16Operand *pb, float alpha, float beta,
                      float *C, int64_t ldc);

/* Work that produces A, run by every thread of the product's parallel region
 * before packing, so that it costs no region of its own (a norm before a
 * linear layer). `run` may hold worksharing loops; it must end with every
 * thread's part of A written and visible (an `omp for` without nowait). */
typedef struct GemmBf16Prologue {
    void (*run)(void *ctx);
    void *ctx;
} GemmBf16Prologue;

/* Pack op(A) into pa and multiply it by an already packed B (one parallel
 * region for both, after `pro` when not NULL). Returns -1 when memory cannot
 * be allocated. */
int gemm_bf16_with_b(GemmBf16Operand *pa, int trans_a, int64_t M, int64_t K, const float *A,
                     int64_t lda, const GemmBf16Operand *pb, float alpha, float beta, float *C,
                     int64_t ldc);
int gemm_bf16_with_b_after(const GemmBf16Prologue *pro, GemmBf16Operand *pa, int trans_a,
                           int64_t M, int64_t K, const float *A, int64_t lda,
                           const GemmBf16Operand *pb, float alpha, float beta, float *C,
                           int64_t ldc);

/* gemm_bf16_with_b by the threads of a parallel region the caller opened,
 * every one of them calling it (or one thread outside any region): op(A)
 * packed, a barrier, the product, a barrier (C complete on return). pa must
 * have room for these sizes first (gemm_bf16_reserve_a, outside the region).
 * The same bits as gemm_bf16_with_b. */
int gemm_bf16_reserve_a(GemmBf16Operand *pa, int64_t M, int64_t K);
void gemm_bf16_with_b_in_region(GemmBf16Operand *pa, int trans_a, int64_t M, int64_t K,
                                const float *A, int64_t lda, const GemmBf16Operand *pb,
                                float alpha, float beta, float *C, int64_t ldc);

/* Rows r0..r1 of the same product by the calling thread alone, with no
 * barrier (A row-major, trans_a 0): those rows of op(A) packed into pa
 * (reserved for at least r1 rows) and multiplied into C's rows r0..r1. A
 * row's sums do not depend on the rows multiplied with it, so the bits are
 * gemm_bf16_with_b's; threads that own disjoint rows of a product run it
 * with no barrier between them. */
void gemm_bf16_rows_with_b(GemmBf16Operand *pa, int64_t r0, int64_t r1, int64_t K,
                           const float *A, int64_t lda, const GemmBf16Operand *pb, float alpha,
                           float beta, float *C, int64_t ldc);

/* The products of a linear layer's backward, y = x w^T with x [N,C] and w
 * [OC,C], in one region: dx = dy w + beta * dx and dw += dy^T x. dy [N,OC]
 * is read once for both of its packed forms (dy_rows, dy_cols). w comes
 * packed as the B of dy w (w_packed, e.g. a frozen weight) or, when that is
 * NULL, is packed into w_op; x is packed into x_op. The same bits as the two
 * products through gemm_bf16. Returns -1 when memory cannot be allocated
 * (dx and dw unchanged). */
int gemm_bf16_linear_backward(GemmBf16Operand *dy_rows, GemmBf16Operand *dy_cols,
                              GemmBf16Operand *w_op, GemmBf16Operand *x_op,
                              const GemmBf16Operand *w_packed, int64_t N, int64_t C, int64_t OC,
                              const float *dy, const float *x, const float *w, float beta,
                              float *dx, float *dw);

/* Rows of an operand computed on demand instead of read from memory:
 * fill(ctx, i, dst) writes row i's values (dst holds the row). Called from
 * any thread of the product's region, once per row. */
typedef struct GemmBf16RowSource {
    void (*fill)(void *ctx, int64_t row, float *dst);
    void *ctx;
} GemmBf16RowSource;

/* gemm_bf16_linear_backward with dy's rows from `src`, each formed once,
 * into a per-thread buffer of two rows, and packed from there (dy itself
 * never exists in memory). Returns -1 when memory cannot be allocated. */
int gemm_bf16_linear_backward_from(GemmBf16Operand *dy_rows, GemmBf16Operand *dy_cols,
                                   GemmBf16Operand *w_op, GemmBf16Operand *x_op,
                                   const GemmBf16Operand *w_packed, int64_t N, int64_t C,
                                   int64_t OC, const GemmBf16RowSource *src, const float *x,
                                   const float *w, float beta, float *dx, float *dw);

/* Pack both and multiply, with the packed copies kept in g for reuse.
 * Returns -1 when memory cannot be allocated (C unchanged). */
int gemm_bf16(GemmBf16 *g, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
              int64_t ldc);
int gemm_bf16_after(const GemmBf16Prologue *pro, GemmBf16 *g, int trans_a, int trans_b, int64_t M,
                    int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                    const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

void gemm_bf16_free(GemmBf16 *g);
void gemm_bf16_operand_free(GemmBf16Operand *op);

#endif
