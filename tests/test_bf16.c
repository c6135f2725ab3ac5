/* tests/test_bf16.c — bf16 products on the CPU (model/cpu/gemm_bf16.h) and
 * the cpu-bf16 ops table (model.precision: bf16 on model.device: cpu).
 *
 * The kernel is checked exactly where it can be: its rounding against
 * hand-worked round-to-nearest-even cases, its products against a double
 * sum of the rounded operands (only the fp32 summation may differ). The ops
 * table is checked against the same rounded reference for the linear layer
 * and against the fp32 table (1e-2) for the LM head and whole models, and a
 * bf16 model must still overfit one batch. On a CPU without AVX512-BF16 the
 * tests skip with that reason. */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/cpu/gemm_bf16.h"
#include "model/model.h"
#include "model/ops.h"
#include "trainer/optim.h"
#include "util/bf16.h"
#include "util/rng.h"

static void need_bf16(void) {
    if (!gemm_bf16_supported()) cr_skip_test("this CPU has no AVX512-BF16: bf16 products untested here");
}

static uint32_t bits_of(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float float_of(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static float *random_floats(Rng *r, int64_t n) {
    float *x = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = (float)rng_normal(r);
    return x;
}

/* --------------------------------------------------------- rounding --- */

Test(gemm_bf16, rounding_is_to_nearest_even) {
    static const uint32_t cases[][2] = {
        {0x3f800000u, 0x3f800000u}, /* 1 */
        {0x3f808000u, 0x3f800000u}, /* 1 + 2^-8: a tie, the even neighbour is 1 */
        {0x3f818000u, 0x3f820000u}, /* a tie whose even neighbour is above */
        {0x3f808001u, 0x3f810000u}, /* just above the tie */
        {0x3f807fffu, 0x3f800000u}, /* just below */
        {0xc0490fdbu, 0xc0490000u}, /* -pi */
        {0x7f7fffffu, 0x7f800000u}, /* the largest float rounds up to infinity */
        {0x7f800000u, 0x7f800000u}, /* inf */
        {0xff800000u, 0xff800000u}, /* -inf */
        {0x00000001u, 0x00000000u}, /* denormals become signed zero */
        {0x80400000u, 0x80000000u},
        {0x00800000u, 0x00800000u}, /* the smallest normal stays */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint32_t got = bits_of(gemm_bf16_round(float_of(cases[i][0])));
        cr_expect_eq(got, cases[i][1], "round(0x%08x) = 0x%08x, want 0x%08x", cases[i][0], got,
                     cases[i][1]);
    }
    cr_expect(isnan(gemm_bf16_round(float_of(0x7fc00001u))));
    cr_expect(isnan(gemm_bf16_round(float_of(0xff800001u))), "a NaN with a low payload stays NaN");
}

/* The vector packing (VCVTNEPS2BF16) and gemm_bf16_round agree bit for bit,
 * specials included; even k goes to the low half of each word. */
Test(gemm_bf16, packing_rounds_as_the_scalar_function) {
    need_bf16();
    enum { K = 4099 };
    Rng r = rng_from_seed(5);
    float *x = malloc(K * sizeof(float));
    for (int i = 0; i < K; i++) {
        uint32_t u = (uint32_t)rng_below(&r, UINT32_MAX);
        /* half random bit patterns (ties, NaNs, denormals all occur), half
         * ordinary values */
        x[i] = i % 2 ? float_of(u) : (float)rng_normal(&r);
    }
    x[0] = float_of(0x3f808000u), x[1] = float_of(0x00000001u), x[2] = INFINITY, x[3] = NAN;
    GemmBf16Operand a = {0};
    cr_assert_eq(gemm_bf16_pack_a(&a, 0, 1, K, x, K), 0);
    cr_assert_eq(a.pairs, (K + 1) / 2);
    int64_t bad = 0;
    for (int k = 0; k < K; k++) {
        uint32_t w = a.words[k / 2], half = k % 2 ? w >> 16 : w & 0xffffu;
        float want = gemm_bf16_round(x[k]);
        uint32_t want_hi = bits_of(want) >> 16;
        int same = isnan(want) ? isnan(float_of(half << 16)) : half == want_hi;
        if (!same && bad++ < 5)
            cr_log_error("k=%d: 0x%08x packed as 0x%04x, want 0x%04x", k, bits_of(x[k]), half, want_hi);
    }
    cr_expect_eq(bad, 0, "%lld of %d values packed differently", (long long)bad, K);
    cr_expect_eq(a.words[K / 2] >> 16, 0u, "the odd K's padding half is zero");
    gemm_bf16_operand_free(&a);
    free(x);
}

/* --------------------------------------------------------- products --- */

typedef struct Shape {
    int64_t M, N, K;
} Shape;

/* C = alpha op(A) op(B) + beta C against a double sum of the rounded
 * operands; lda/ldb/ldc have slack that must stay untouched. */
static void check_product(int ta, int tb, Shape s, float alpha, float beta, uint64_t seed) {
    const int64_t M = s.M, N = s.N, K = s.K;
    const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 5;
    const int64_t arows = ta ? K : M, brows = tb ? N : K;
    Rng r = rng_from_seed(seed);
    float *A = random_floats(&r, arows * lda), *B = random_floats(&r, brows * ldb);
    float *C = random_floats(&r, M * ldc), *C0 = malloc((size_t)(M * ldc) * sizeof(float));
    if (beta == 0.0f)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) C[i * ldc + j] = NAN; /* must not be read */
    memcpy(C0, C, (size_t)(M * ldc) * sizeof(float));
    GemmBf16 g = {0};
    cr_assert_eq(gemm_bf16(&g, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), 0);
    double worst = 0.0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < ldc; j++) {
            if (j >= N) {
                cr_assert_eq(bits_of(C[i * ldc + j]), bits_of(C0[i * ldc + j]),
                             "slack C[%lld,%lld] was written", (long long)i, (long long)j);
                continue;
            }
            double sum = 0.0, mag = 0.0;
            for (int64_t k = 0; k < K; k++) {
                double a = gemm_bf16_round(ta ? A[k * lda + i] : A[i * lda + k]);
                double b = gemm_bf16_round(tb ? B[j * ldb + k] : B[k * ldb + j]);
                sum += a * b;
                mag += fabs(a * b);
            }
            double want = alpha * sum + (beta != 0.0f ? beta * (double)C0[i * ldc + j] : 0.0);
            /* fp32 sums of K terms: a few ulps of the magnitude per term */
            double tol = (double)(K + 2) * 1.2e-7 *
                             (fabs(alpha) * mag + (beta != 0.0f ? fabs(beta * C0[i * ldc + j]) : 0.0)) + 1e-30;
            double e = fabs((double)C[i * ldc + j] - want) / tol;
            if (!(e <= worst)) worst = e; /* NaN propagates into worst */
        }
    cr_expect(worst <= 1.0, "ta=%d tb=%d M=%lld N=%lld K=%lld beta=%g: error %.3g of the tolerance",
              ta, tb, (long long)M, (long long)N, (long long)K, beta, worst);
    gemm_bf16_free(&g);
    free(A), free(B), free(C), free(C0);
}

Test(gemm_bf16, products_match_the_rounded_operands_in_double) {
    need_bf16();
    /* edges of the 8 x 48 register tile, odd K (a zero half in the last
     * pair), K = 1, and more than one 16 x 16 packing block each way */
    const Shape shapes[] = {{1, 1, 1},   {7, 5, 3},    {8, 48, 32},   {9, 49, 33},
                            {17, 100, 31}, {64, 130, 257}, {33, 47, 64}, {100, 20, 1000}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                check_product(ta, tb, shapes[i], i % 2 ? 0.5f : 1.0f, i % 2 ? 0.0f : 0.75f,
                              100 + i * 4 + (size_t)(ta * 2 + tb));
}

/* The same shapes on the VDPBF16PS register tiles where the CPU would
 * otherwise take AMX tiles (on a CPU without AMX this repeats the test
 * above, which then ran on the register tiles). */
Test(gemm_bf16, register_tiles_match_the_rounded_operands_where_amx_is_used) {
    need_bf16();
    cr_log_info("AMX %s on this CPU", gemm_bf16_amx() ? "is used" : "is not used");
    setenv("PONDER_CPU_AMX", "0", 1);
    cr_assert_eq(gemm_bf16_amx(), 0);
    const Shape shapes[] = {{1, 1, 1}, {9, 49, 33}, {17, 100, 31}, {64, 130, 257}, {100, 20, 1000}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int ta = 0; ta < 2; ta++)
            check_product(ta, 1 - ta, shapes[i], 1.0f, i % 2 ? 0.0f : 0.75f, 300 + i * 2 + (size_t)ta);
    unsetenv("PONDER_CPU_AMX");
}

Test(gemm_bf16, results_do_not_depend_on_the_thread_count) {
    need_bf16();
    const int64_t M = 100, N = 130, K = 257;
    Rng r = rng_from_seed(9);
    float *A = random_floats(&r, M * K), *B = random_floats(&r, N * K);
    float *C1 = calloc((size_t)(M * N), sizeof(float)), *C2 = calloc((size_t)(M * N), sizeof(float));
    GemmBf16 g = {0};
    int saved = omp_get_max_threads();
    /* op(A) from rows (A B^T, a forward) and from columns (A^T B, a weight
     * gradient: pair-major, which AMX transposes per block) */
    for (int ta = 0; ta < 2; ta++) {
        const int64_t lda = ta ? M : K;
        omp_set_num_threads(1);
        cr_assert_eq(gemm_bf16(&g, ta, 1, M, N, K, 1.0f, A, lda, B, K, 0.0f, C1, N), 0);
        omp_set_num_threads(2);
        cr_assert_eq(gemm_bf16(&g, ta, 1, M, N, K, 1.0f, A, lda, B, K, 0.0f, C2, N), 0);
        cr_expect_eq(memcmp(C1, C2, (size_t)(M * N) * sizeof(float)), 0, "trans_a %d", ta);
    }
    omp_set_num_threads(saved);
    gemm_bf16_free(&g);
    free(A), free(B), free(C1), free(C2);
}

/* A row of C has the same bits whatever rows are multiplied with it: one
 * decoded row gets the logits it would get in a batch of 64 (the cpu-bf16
 * table has no matrix-vector path for that reason). On AMX the rows share
 * 16-row tiles, so this checks that a short block (fewer tile rows) and the
 * copied blocks (pair-major A, K not a multiple of 32) sum each row as a
 * whole block does. */
Test(gemm_bf16, rows_do_not_depend_on_the_rows_multiplied_with_them) {
    need_bf16();
    enum { MMAX = 64, N = 100 };
    const int64_t Ks[] = {128, 70, 352};
    const int64_t Ms[] = {1, 5, 16, 17, 40};
    for (size_t k = 0; k < sizeof Ks / sizeof Ks[0]; k++)
        for (int ta = 0; ta < 2; ta++) {
            const int64_t K = Ks[k], lda = ta ? MMAX : K;
            Rng r = rng_from_seed(40 + k);
            float *A = random_floats(&r, MMAX * K), *B = random_floats(&r, N * K);
            float *all = calloc((size_t)(MMAX * N), sizeof(float));
            float *few = calloc((size_t)(MMAX * N), sizeof(float));
            GemmBf16 g = {0};
            cr_assert_eq(gemm_bf16(&g, ta, 1, MMAX, N, K, 1.0f, A, lda, B, K, 0.0f, all, N), 0);
            for (size_t m = 0; m < sizeof Ms / sizeof Ms[0]; m++) {
                const int64_t M = Ms[m];
                /* the first M rows of op(A): the same memory, fewer rows */
                cr_assert_eq(gemm_bf16(&g, ta, 1, M, N, K, 1.0f, A, lda, B, K, 0.0f, few, N), 0);
                cr_expect_eq(memcmp(all, few, (size_t)(M * N) * sizeof(float)), 0,
                             "K=%lld trans_a=%d: the first %lld rows differ from the same rows of %d",
                             (long long)K, ta, (long long)M, MMAX);
            }
            gemm_bf16_free(&g);
            free(A), free(B), free(all), free(few);
        }
}

/* Where the panels are many and deep (K 768: 73 KiB each), AMX walks a
 * thread's row blocks over chunks of panels that fit in L2: the rows of a
 * 64-row product keep the bits they get computed alone (one block, every
 * panel in turn), on 1 and 2 threads, N not a multiple of 48. */
Test(gemm_bf16, rows_keep_their_bits_when_panels_go_in_chunks) {
    need_bf16();
    enum { M = 64, N = 500, K = 768 };
    const int64_t Ms[] = {1, 16, 20};
    Rng r = rng_from_seed(60);
    float *A = random_floats(&r, M * K), *B = random_floats(&r, N * K);
    float *all = calloc((size_t)(M * N), sizeof(float)), *few = calloc((size_t)(M * N), sizeof(float));
    const int saved = omp_get_max_threads();
    for (int threads = 1; threads <= 2; threads++) {
        omp_set_num_threads(threads);
        GemmBf16 g = {0};
        cr_assert_eq(gemm_bf16(&g, 0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, all, N), 0);
        for (size_t m = 0; m < sizeof Ms / sizeof Ms[0]; m++) {
            cr_assert_eq(gemm_bf16(&g, 0, 1, Ms[m], N, K, 1.0f, A, K, B, K, 0.0f, few, N), 0);
            cr_expect_eq(memcmp(all, few, (size_t)(Ms[m] * N) * sizeof(float)), 0,
                         "%d threads: the first %lld rows differ from the same rows of %d", threads,
                         (long long)Ms[m], M);
        }
        gemm_bf16_free(&g);
    }
    omp_set_num_threads(saved);
    free(A), free(B), free(all), free(few);
}

/* A packed B multiplied by two different A gives what packing both does. */
Test(gemm_bf16, a_packed_b_can_be_reused) {
    need_bf16();
    const int64_t M = 21, N = 70, K = 45;
    Rng r = rng_from_seed(10);
    float *A1 = random_floats(&r, M * K), *A2 = random_floats(&r, M * K), *B = random_floats(&r, N * K);
    float *want = calloc((size_t)(M * N), sizeof(float)), *got = calloc((size_t)(M * N), sizeof(float));
    GemmBf16 g = {0}, h = {0};
    cr_assert_eq(gemm_bf16_pack_b(&h.b, 1, K, N, B, K), 0);
    const float *As[2] = {A1, A2};
    for (int t = 0; t < 2; t++) {
        cr_assert_eq(gemm_bf16(&g, 0, 1, M, N, K, 1.0f, As[t], K, B, K, 0.0f, want, N), 0);
        cr_assert_eq(gemm_bf16_pack_a(&h.a, 0, M, K, As[t], K), 0);
        gemm_bf16_packed(&h.a, &h.b, 1.0f, 0.0f, got, N);
        cr_expect_eq(memcmp(want, got, (size_t)(M * N) * sizeof(float)), 0, "A number %d", t);
    }
    gemm_bf16_free(&g), gemm_bf16_free(&h);
    free(A1), free(A2), free(B), free(want), free(got);
}

/* ------------------------------------------------- the cpu-bf16 table --- */

static double max_rel_diff(const float *a, const float *b, int64_t n) {
    double e = 0.0, m = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) e = d;
        if (fabs(b[i]) > m) m = fabs(b[i]);
    }
    return e / (m > 0 ? m : 1.0);
}

/* |got - (init + sum_k round(a[k sa]) round(b[k sb]))| in units of the fp32
 * summation tolerance (K + 1 terms, a few ulps of their magnitudes each). */
static double rounded_sum_error(float got, double init, const float *a, int64_t sa, const float *b,
                                int64_t sb, int64_t K) {
    double s = init, m = fabs(init);
    for (int64_t k = 0; k < K; k++) {
        double p = (double)gemm_bf16_round(a[k * sa]) * gemm_bf16_round(b[k * sb]);
        s += p, m += fabs(p);
    }
    return fabs((double)got - s) / (m * (double)(K + 1) * 1.2e-7);
}

/* The linear layer, forward and backward, at a decode-sized N (where the
 * fp32 table takes its matrix-vector path) and a training-sized one: exactly
 * the rounded operands' products, summed in fp32. */
Test(ops_bf16, linear_layer_uses_rounded_operands) {
    need_bf16();
    const ModelOps *o = ops_cpu_bf16();
    cr_assert(o != NULL);
    const int64_t C = 40, OC = 56, Ns[2] = {2, 37};
    for (int t = 0; t < 2; t++) {
        const int64_t N = Ns[t];
        Rng r = rng_from_seed(20 + (uint64_t)t);
        float *inp = random_floats(&r, N * C), *w = random_floats(&r, OC * C), *bias = random_floats(&r, OC);
        float *dout = random_floats(&r, N * OC), *dinp = random_floats(&r, N * C);
        float *dw = random_floats(&r, OC * C), *dbias = random_floats(&r, OC), *out = malloc((size_t)(N * OC) * sizeof(float));
        float *dinp0 = malloc((size_t)(N * C) * sizeof(float)), *dw0 = malloc((size_t)(OC * C) * sizeof(float));
        memcpy(dinp0, dinp, (size_t)(N * C) * sizeof(float));
        memcpy(dw0, dw, (size_t)(OC * C) * sizeof(float));
        o->matmul_forward(out, inp, w, bias, N, C, OC);
        o->matmul_backward(dinp, dw, dbias, dout, inp, w, N, C, OC);
        double e_out = 0, e_dinp = 0, e_dw = 0;
        for (int64_t n = 0; n < N; n++)
            for (int64_t j = 0; j < OC; j++)
                e_out = fmax(e_out, rounded_sum_error(out[n * OC + j], bias[j], inp + n * C, 1,
                                                      w + j * C, 1, C));
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < C; c++)
                e_dinp = fmax(e_dinp, rounded_sum_error(dinp[n * C + c], dinp0[n * C + c],
                                                        dout + n * OC, 1, w + c, C, OC));
        for (int64_t j = 0; j < OC; j++)
            for (int64_t c = 0; c < C; c++)
                e_dw = fmax(e_dw, rounded_sum_error(dw[j * C + c], dw0[j * C + c], dout + j, OC,
                                                    inp + c, C, N));
        cr_expect(e_out <= 1.0 && e_dinp <= 1.0 && e_dw <= 1.0,
                  "N=%lld: errors %.3g %.3g %.3g of the tolerance", (long long)N, e_out, e_dinp, e_dw);
        free(inp), free(w), free(bias), free(dout), free(dinp), free(dw), free(dbias), free(out);
        free(dinp0), free(dw0);
    }
}

/* An LM-head case over more rows than one chunk holds (V = 4096: 1024 rows
 * per chunk), with every `skip`-th row masked, and its five outputs. */
enum { LM_N = 1100, LM_C = 24, LM_V = 4096 };
typedef struct LmCase {
    float *h, *w, *dlogp, *dent, *mask;
    int32_t *targets;
    int64_t active; /* rows with mask != 0 */
} LmCase;

static LmCase lm_case(uint64_t seed, int64_t skip) {
    Rng r = rng_from_seed(seed);
    LmCase k = {random_floats(&r, LM_N * LM_C), random_floats(&r, LM_V * LM_C),
                random_floats(&r, LM_N), random_floats(&r, LM_N),
                malloc(LM_N * sizeof(float)), malloc(LM_N * sizeof(int32_t)), 0};
    for (int64_t i = 0; i < LM_V * LM_C; i++) k.w[i] *= 0.2f; /* logits of order 1, as in a trained model */
    for (int64_t n = 0; n < LM_N; n++) {
        k.targets[n] = (int32_t)rng_below(&r, LM_V);
        k.mask[n] = n % skip == skip / 2 ? 0.0f : 1.0f;
        k.active += k.mask[n] != 0.0f;
    }
    return k;
}

static void lm_case_free(LmCase *k) {
    free(k->h), free(k->w), free(k->dlogp), free(k->dent), free(k->mask), free(k->targets);
}

/* logp, entropy, lse, d(h), d(w), zero-filled */
static const char *const LM_NAMES[5] = {"logp", "entropy", "lse", "dh", "dw"};
static const int64_t LM_SIZES[5] = {LM_N, LM_N, LM_N, LM_N * LM_C, LM_V * LM_C};

static void lm_outputs(float *out[5]) {
    for (int i = 0; i < 5; i++) out[i] = calloc((size_t)LM_SIZES[i], sizeof(float));
}

static void lm_outputs_free(float *out[5]) {
    for (int i = 0; i < 5; i++) free(out[i]);
}

/* lm_head_forward then lm_head_backward of table o into out */
static void lm_forward_backward(const ModelOps *o, const LmCase *k, float *out[5]) {
    o->lm_head_forward(out[0], out[1], out[2], k->h, k->w, k->targets, k->mask, LM_N, LM_C, LM_V);
    o->lm_head_backward(out[3], out[4], k->dlogp, k->dent, k->h, k->w, k->targets, out[2], k->mask,
                        LM_N, LM_C, LM_V);
}

/* The LM head in bf16 stays within 1e-2 of fp32 (forward and backward), on
 * more rows than one chunk holds, and differs from it (the bf16 path ran). */
Test(ops_bf16, lm_head_follows_fp32) {
    need_bf16();
    LmCase k = lm_case(30, 7);
    float *out[2][5]; /* fp32, bf16 */
    const ModelOps *tables[2] = {ops_cpu(), ops_cpu_bf16()};
    for (int t = 0; t < 2; t++) {
        lm_outputs(out[t]);
        lm_forward_backward(tables[t], &k, out[t]);
    }
    for (int i = 0; i < 5; i++) {
        double e = max_rel_diff(out[1][i], out[0][i], LM_SIZES[i]);
        cr_log_info("lm head %s: bf16 vs fp32 max rel diff %.3g", LM_NAMES[i], e);
        cr_expect(e < 1e-2, "%s: bf16 differs from fp32 by %.3g (relative)", LM_NAMES[i], e);
        cr_expect(e > 1e-6, "%s: bf16 equals fp32 (%.3g): was bf16 used?", LM_NAMES[i], e);
    }
    lm_outputs_free(out[0]), lm_outputs_free(out[1]);
    lm_case_free(&k);
}

/* ----------------------------------------------------- bf16 models ---- */

static ModelConfig tiny_config(ModelArch arch) {
    ModelConfig c = model_config_default();
    c.arch = arch;
    c.vocab_size = 29;
    c.d_model = 32;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_kv_head = arch == MODEL_ARCH_GPT2 ? 4 : 2;
    c.d_ff = 64;
    c.max_seq_len = 16;
    c.scalar_head = true;
    c.init_std = 0.1f;
    return c;
}

/* Per-token logp, entropy, value and every gradient tensor of a bf16 model
 * against the same weights in fp32: within 3e-2 per tensor (relative to the
 * tensor's largest value; bf16 keeps 8 significant bits). */
static void check_model_follows_fp32(ModelArch arch) {
    ModelConfig c = tiny_config(arch);
    Model *m[2] = {NULL, NULL};
    PonderError err = {0};
    cr_assert_eq(model_create_on(&m[0], &c, ops_cpu(), &err), 0, "%s", err.msg);
    cr_assert_eq(model_create_on(&m[1], &c, ops_cpu_bf16(), &err), 0, "%s", err.msg);
    model_init_weights(m[0], 4);
    model_init_weights(m[1], 4);
    enum { B = 3, T = 12, N = B * T };
    int32_t tokens[N], targets[N];
    float mask[N], dl[N], de[N], dv[N], out[2][3][N];
    Rng r = rng_from_seed(40);
    for (int i = 0; i < N; i++) {
        tokens[i] = (int32_t)rng_below(&r, (uint64_t)c.vocab_size);
        targets[i] = (int32_t)rng_below(&r, (uint64_t)c.vocab_size);
        mask[i] = i % T < T - i / T ? 1.0f : 0.0f; /* right padding */
        dl[i] = (float)rng_normal(&r), de[i] = 0.3f * (float)rng_normal(&r), dv[i] = (float)rng_normal(&r);
    }
    for (int t = 0; t < 2; t++) {
        ModelBatch b = {B, T, tokens, targets, mask, NULL, 0.0f};
        cr_assert_eq(model_forward(m[t], &b, out[t][0], out[t][1], out[t][2], &err), 0, "%s", err.msg);
        model_zero_grad(m[t]);
        cr_assert_eq(model_backward(m[t], dl, de, dv, &err), 0, "%s", err.msg);
    }
    const char *names[3] = {"logp", "entropy", "value"};
    for (int i = 0; i < 3; i++) {
        float a[N], b[N];
        int n = 0;
        for (int k = 0; k < N; k++)
            if (mask[k] != 0.0f) a[n] = out[1][i][k], b[n++] = out[0][i][k];
        double e = max_rel_diff(a, b, n);
        cr_expect(e < 3e-2, "%s: bf16 vs fp32 %.3g", names[i], e);
    }
    size_t count;
    const ModelTensor *ts = model_tensors(m[0], &count);
    double worst = 0.0;
    for (size_t i = 0; i < count; i++) {
        double e = max_rel_diff(model_grads(m[1]) + ts[i].offset, model_grads(m[0]) + ts[i].offset,
                                (int64_t)ts[i].numel);
        worst = fmax(worst, e);
        cr_expect(e < 3e-2, "gradient of %s: bf16 vs fp32 %.3g", ts[i].name, e);
    }
    cr_log_info("%s: worst gradient tensor, bf16 vs fp32: %.3g", arch == MODEL_ARCH_GPT2 ? "gpt2" : "llama", worst);
    cr_expect(worst > 1e-6, "bf16 gradients equal fp32's: was bf16 used?");
    model_free(m[0]);
    model_free(m[1]);
}

Test(model_bf16, llama_follows_fp32) {
    need_bf16();
    check_model_follows_fp32(MODEL_ARCH_LLAMA);
}

Test(model_bf16, gpt2_follows_fp32) {
    need_bf16();
    check_model_follows_fp32(MODEL_ARCH_GPT2);
}

/* fp32 master weights with bf16 products still fit one batch (as the fp32
 * overfit test in test_model.c does). */
Test(model_bf16, overfits_one_batch) {
    need_bf16();
    ModelConfig c = tiny_config(MODEL_ARCH_LLAMA);
    c.scalar_head = false;
    c.init_std = 0.05f;
    Model *m = NULL;
    PonderError err = {0};
    cr_assert_eq(model_create_on(&m, &c, ops_cpu_bf16(), &err), 0, "%s", err.msg);
    model_init_weights(m, 1);
    enum { B = 4, T = 12, N = B * T };
    int32_t tokens[N], targets[N];
    float mask[N], lp[N], dl[N];
    Rng r = rng_from_seed(2);
    for (int i = 0; i < N; i++) {
        tokens[i] = (int32_t)rng_below(&r, (uint64_t)c.vocab_size);
        targets[i] = (int32_t)rng_below(&r, (uint64_t)c.vocab_size);
        mask[i] = 1.0f;
        dl[i] = -1.0f / N;
    }
    OptimSettings s = optim_settings_default();
    s.lr = 1e-2f;
    s.schedule = LR_CONSTANT;
    s.weight_decay = 0.0f;
    Optimizer opt;
    cr_assert_eq(optim_create(&opt, m, &s, &err), 0, "%s", err.msg);
    double loss = 0.0;
    for (int it = 0; it < 300; it++) {
        ModelBatch b = {B, T, tokens, targets, mask, NULL, 0.0f};
        cr_assert_eq(model_forward(m, &b, lp, NULL, NULL, &err), 0, "%s", err.msg);
        loss = 0.0;
        for (int i = 0; i < N; i++) loss -= lp[i] / N;
        model_zero_grad(m);
        cr_assert_eq(model_backward(m, dl, NULL, NULL, &err), 0, "%s", err.msg);
        cr_assert_eq(optim_step(&opt, m, NULL, &err), 0, "%s", err.msg);
    }
    cr_log_info("bf16 overfit loss after 300 steps: %.4f", loss);
    cr_expect(loss < 0.05, "loss %.4f is not below 0.05", loss);
    optim_free(&opt);
    model_free(m);
}

/* ------------------------------------------------- frozen weights ---- */

/* Prefill + two decode steps; logits of every call appended to out. */
static void decode_logits(Model *m, float *out) {
    PonderError err = {0};
    const int64_t V = model_config(m)->vocab_size;
    ModelKVCache *kv = NULL;
    cr_assert_eq(model_kv_create(&kv, m, 2, 12, &err), 0, "%s", err.msg);
    const int32_t prompt[5] = {3, 1, 4, 1, 5};
    for (int64_t s = 0; s < 2; s++)
        cr_assert_eq(model_prefill(m, kv, s, prompt, 5 - s, out + s * 5 * V, &err), 0, "%s", err.msg);
    float *o = out + 10 * V;
    const int64_t slots[2] = {0, 1};
    const int32_t step[2][2] = {{2, 7}, {8, 9}};
    for (int t = 0; t < 2; t++, o += 2 * V)
        cr_assert_eq(model_decode(m, kv, slots, step[t], 2, o, &err), 0, "%s", err.msg);
    model_kv_free(kv);
}

/* Inside a frozen window the kept bf16 weights give the same logits, bit for
 * bit, as packing on every call; a new window after the weights changed
 * packs them again (a stale copy would give the old logits). */
Test(model_bf16, frozen_weights_are_repacked_in_each_window) {
    need_bf16();
    ModelConfig c = tiny_config(MODEL_ARCH_LLAMA);
    c.scalar_head = false;
    Model *m = NULL;
    PonderError err = {0};
    cr_assert_eq(model_create_on(&m, &c, ops_cpu_bf16(), &err), 0, "%s", err.msg);
    model_init_weights(m, 6);
    const int64_t n = 14 * c.vocab_size;
    float *plain = calloc((size_t)n, sizeof(float)), *frozen = calloc((size_t)n, sizeof(float));
    decode_logits(m, plain);
    model_weights_frozen(m, 1);
    decode_logits(m, frozen);
    model_weights_frozen(m, 0);
    cr_expect_eq(memcmp(plain, frozen, (size_t)n * sizeof(float)), 0, "frozen logits differ");

    float *p = model_params(m);
    for (size_t i = 0; i < model_num_params(m); i++) p[i] *= 0.5f; /* new weights */
    decode_logits(m, plain);
    model_weights_frozen(m, 1);
    decode_logits(m, frozen);
    model_weights_frozen(m, 0);
    cr_expect_eq(memcmp(plain, frozen, (size_t)n * sizeof(float)), 0,
                 "a new window used the previous weights");
    free(plain), free(frozen);
    model_free(m);
}

/* ------------------------------------------------- kept LM logits ---- */

/* lm_head_forward_keep + lm_head_backward_kept give what lm_head_forward +
 * lm_head_backward give, bit for bit, over more rows than one chunk and
 * with masked rows, in both CPU tables (the fp32 one needs no AVX512-BF16). */
static void check_kept_logits(const ModelOps *o) {
    LmCase k = lm_case(50, 5);
    float *kept = malloc((size_t)(k.active * LM_V) * sizeof(float));
    float *out[2][5]; /* recomputed, kept */
    lm_outputs(out[0]), lm_outputs(out[1]);
    lm_forward_backward(o, &k, out[0]);
    o->lm_head_forward_keep(out[1][0], out[1][1], out[1][2], kept, k.h, k.w, k.targets, k.mask, LM_N,
                            LM_C, LM_V);
    o->lm_head_backward_kept(out[1][3], out[1][4], kept, k.dlogp, k.dent, k.h, k.w, k.targets,
                             out[1][2], k.mask, LM_N, LM_C, LM_V);
    for (int i = 0; i < 5; i++)
        cr_expect_eq(memcmp(out[0][i], out[1][i], (size_t)LM_SIZES[i] * sizeof(float)), 0,
                     "%s (%s): kept logits changed the result", LM_NAMES[i], o->name);
    lm_outputs_free(out[0]), lm_outputs_free(out[1]);
    lm_case_free(&k);
    free(kept);
}

Test(ops_bf16, kept_lm_logits_equal_recomputed_ones) {
    const ModelOps *f = ops_cpu();
    cr_assert(f->lm_head_forward_keep && f->lm_head_backward_kept);
    check_kept_logits(f);
    if (!ops_cpu_bf16()) cr_skip_test("this CPU has no AVX512-BF16: the bf16 table's pair untested");
    check_kept_logits(ops_cpu_bf16());
}

/* ---------------------------------------------------- bf16 KV cache --- */

/* The bf16 cached attention against the fp32 one reading the same values
 * (the caches rounded to bf16 first, and stored through kv_store_bf16 in the
 * backend's order): the same kernel where the head size has a register form
 * (32, 64, 128), so equal; within 1e-5 in the generic form (hd 8 and 48, the
 * latter one whole 32-value block and a plain tail), whose sums run in
 * another order. Rows attend to 20, 7 and 1 positions; 4 query heads share 2
 * kv heads. */
static void check_cached_attention(int64_t hd, double tol) {
    enum { N = 3, NH = 4, KV = 2, MAXL = 20 };
    const int64_t len[N] = {20, 7, 1}, block = KV * MAXL * hd;
    Rng r = rng_from_seed(70 + (uint64_t)hd);
    float *q = random_floats(&r, N * NH * hd), *kf[N], *vf[N];
    uint16_t *kh[N], *vh[N];
    for (int n = 0; n < N; n++) {
        kf[n] = random_floats(&r, block), vf[n] = random_floats(&r, block);
        kh[n] = malloc((size_t)block * sizeof(uint16_t)), vh[n] = malloc((size_t)block * sizeof(uint16_t));
        for (int64_t i = 0; i < block; i += hd) {
            ops_cpu_bf16()->kv_store_bf16(kh[n] + i, kf[n] + i, hd);
            ops_cpu_bf16()->kv_store_bf16(vh[n] + i, vf[n] + i, hd);
        }
        for (int64_t i = 0; i < block; i++)
            kf[n][i] = gemm_bf16_round(kf[n][i]), vf[n][i] = gemm_bf16_round(vf[n][i]);
    }
    float *want = calloc((size_t)(N * NH * hd), sizeof(float)), *got = calloc((size_t)(N * NH * hd), sizeof(float));
    OpsHeads qh = {q, NH * hd};
    ops_cpu()->attention_cached(want, qh, kf, vf, len, N, NH, KV, hd, MAXL);
    ops_cpu_bf16()->attention_cached_bf16(got, qh, (const uint16_t *const *)kh,
                                          (const uint16_t *const *)vh, len, N, NH, KV, hd, MAXL);
    double worst = 0.0;
    for (int64_t i = 0; i < N * NH * hd; i++) worst = fmax(worst, fabs((double)got[i] - want[i]));
    cr_log_info("cached attention hd %lld, bf16 cache vs fp32 of the same values: %.3g", (long long)hd, worst);
    cr_expect(worst <= tol, "hd %lld: bf16 cache differs by %.3g (allowed %.3g)", (long long)hd, worst, tol);
    for (int n = 0; n < N; n++) free(kf[n]), free(vf[n]), free(kh[n]), free(vh[n]);
    free(q), free(want), free(got);
}

Test(ops_bf16, cached_attention_reads_a_bf16_cache) {
    need_bf16();
    cr_assert(ops_cpu_bf16()->attention_cached_bf16 != NULL);
    cr_expect(ops_cpu()->attention_cached_bf16 == NULL, "the fp32 table must keep fp32 caches");
    check_cached_attention(32, 0.0);
    check_cached_attention(64, 0.0);
    check_cached_attention(128, 0.0);
    check_cached_attention(8, 1e-5);
    check_cached_attention(48, 1e-5);
}

/* attention_decode (fp32 caches) and attention_decode_bf16 against rope,
 * the cache stores and attention_cached(_bf16) in turn: the same outputs,
 * caches and rotated q and k rows, bit for bit. 40 rows of 1 to 40
 * positions (enough work for a parallel region), each its own cache whose
 * new position holds NaNs until stored. Head shapes where one work item
 * holds all of a row's heads (hd 32 x 4, hd 128 x 2: stores inside the
 * item) and where it does not (hd 64 x 12, the generic hd 8 with 4 query
 * heads on 2 kv heads: stores in a loop before); with RoPE and without.
 * A third side runs the one op with a prefix: row n's first pre[n]
 * positions (0 to len - 1) come from a block of their own, and hold NaNs
 * in the row's cache, so reading them there (or the prefix's other
 * positions) would show. */
static void check_attention_decode(const ModelOps *o, int bf16, int64_t hd, int64_t NH,
                                   int64_t KV, int rope) {
    enum { N = 40, MAXL = 41 };
    const int64_t W = (NH + 2 * KV) * hd, block = KV * MAXL * hd, vb = bf16 ? 2 : 4;
    Rng r = rng_from_seed(300 + (uint64_t)(hd * 16 + NH + rope));
    float *qkv[3] = {random_floats(&r, N * W), malloc((size_t)(N * W) * sizeof(float)),
                     malloc((size_t)(N * W) * sizeof(float))};
    memcpy(qkv[1], qkv[0], (size_t)(N * W) * sizeof(float));
    memcpy(qkv[2], qkv[0], (size_t)(N * W) * sizeof(float));
    float *cs = malloc((size_t)(MAXL * hd) * sizeof(float));
    for (int64_t p = 0; p < MAXL; p++)
        for (int64_t i = 0; i < hd / 2; i++) {
            const double a = (double)p * pow(10000.0, -2.0 * (double)i / (double)hd);
            cs[(p * hd / 2 + i) * 2] = (float)cos(a), cs[(p * hd / 2 + i) * 2 + 1] = (float)sin(a);
        }
    int64_t len[N], pre[N];
    int32_t pos[N];
    void *kc[3][N], *vc[3][N], *kp[N], *vp[N];
    for (int n = 0; n < N; n++) {
        len[n] = 1 + (n * 7) % MAXL, pos[n] = (int32_t)(len[n] - 1);
        pre[n] = pos[n] * (n % 3) / 2; /* none, about half, all but the new position */
        float *kf = random_floats(&r, block), *vf = random_floats(&r, block);
        for (int64_t h = 0; h < KV; h++)
            for (int64_t i = 0; i < hd; i++) /* the new position: NaN until stored */
                kf[(h * MAXL + pos[n]) * hd + i] = vf[(h * MAXL + pos[n]) * hd + i] = NAN;
        kp[n] = malloc((size_t)(block * vb)), vp[n] = malloc((size_t)(block * vb));
        for (int side = 0; side < 4; side++) { /* side 3: the prefix */
            void *kd = side < 3 ? kc[side][n] = malloc((size_t)(block * vb)) : kp[n];
            void *vd = side < 3 ? vc[side][n] = malloc((size_t)(block * vb)) : vp[n];
            for (int64_t i = 0; i < block; i += hd) {
                /* side 2 lacks the prefix's positions, the prefix has only them */
                const int64_t at = i / hd % MAXL;
                const int nan = (side == 2 && at < pre[n]) || (side == 3 && at >= pre[n]);
                float kx[128], vx[128];
                for (int64_t d = 0; d < hd; d++)
                    kx[d] = nan ? NAN : kf[i + d], vx[d] = nan ? NAN : vf[i + d];
                if (bf16) {
                    o->kv_store_bf16((uint16_t *)kd + i, kx, hd);
                    o->kv_store_bf16((uint16_t *)vd + i, vx, hd);
                } else {
                    memcpy((float *)kd + i, kx, (size_t)hd * sizeof(float));
                    memcpy((float *)vd + i, vx, (size_t)hd * sizeof(float));
                }
            }
        }
        free(kf), free(vf);
    }
    float *out[3];
    for (int side = 0; side < 3; side++) out[side] = calloc((size_t)(N * NH * hd), sizeof(float));
    /* side 0: the separate ops */
    OpsHeads q0 = {qkv[0], W};
    if (rope) o->rope(q0, pos, cs, N, NH + KV, hd, 0);
    for (int n = 0; n < N; n++)
        for (int64_t h = 0; h < KV; h++) {
            const float *k = qkv[0] + n * W + (NH + h) * hd, *v = qkv[0] + n * W + (NH + KV + h) * hd;
            const int64_t at = (h * MAXL + pos[n]) * hd;
            if (bf16) {
                o->kv_store_bf16((uint16_t *)kc[0][n] + at, k, hd);
                o->kv_store_bf16((uint16_t *)vc[0][n] + at, v, hd);
            } else {
                memcpy((float *)kc[0][n] + at, k, (size_t)hd * sizeof(float));
                memcpy((float *)vc[0][n] + at, v, (size_t)hd * sizeof(float));
            }
        }
    if (bf16)
        o->attention_cached_bf16(out[0], q0, (const uint16_t *const *)kc[0],
                                 (const uint16_t *const *)vc[0], len, N, NH, KV, hd, MAXL);
    else
        o->attention_cached(out[0], q0, (float *const *)kc[0], (float *const *)vc[0], len, N, NH,
                            KV, hd, MAXL);
    /* side 1: the one op */
    OpsHeads q1 = {qkv[1], W}, k1 = {qkv[1] + NH * hd, W}, v1 = {qkv[1] + (NH + KV) * hd, W};
    if (bf16)
        o->attention_decode_bf16(out[1], q1, k1, v1, rope ? cs : NULL, (uint16_t *const *)kc[1],
                                 (uint16_t *const *)vc[1], len, N, NH, KV, hd, MAXL, NULL);
    else
        o->attention_decode(out[1], q1, k1, v1, rope ? cs : NULL, (float *const *)kc[1],
                            (float *const *)vc[1], len, N, NH, KV, hd, MAXL, NULL);
    /* side 2: the one op, the prefix positions from their own blocks */
    OpsHeads q2 = {qkv[2], W}, k2 = {qkv[2] + NH * hd, W}, v2 = {qkv[2] + (NH + KV) * hd, W};
    const OpsPrefix prefix = {(const void *const *)kp, (const void *const *)vp, pre};
    if (bf16)
        o->attention_decode_bf16(out[2], q2, k2, v2, rope ? cs : NULL, (uint16_t *const *)kc[2],
                                 (uint16_t *const *)vc[2], len, N, NH, KV, hd, MAXL, &prefix);
    else
        o->attention_decode(out[2], q2, k2, v2, rope ? cs : NULL, (float *const *)kc[2],
                            (float *const *)vc[2], len, N, NH, KV, hd, MAXL, &prefix);
    const char *what = bf16 ? "attention_decode_bf16" : "attention_decode";
    cr_expect_eq(memcmp(out[0], out[1], (size_t)(N * NH * hd) * sizeof(float)), 0,
                 "%s hd %lld NH %lld KV %lld rope %d: outputs differ", what, (long long)hd,
                 (long long)NH, (long long)KV, rope);
    cr_expect_eq(memcmp(qkv[0], qkv[1], (size_t)(N * W) * sizeof(float)), 0,
                 "%s hd %lld: rotated q/k rows differ", what, (long long)hd);
    int caches_same = 1;
    for (int n = 0; n < N; n++)
        caches_same &= memcmp(kc[0][n], kc[1][n], (size_t)(block * vb)) == 0 &&
                       memcmp(vc[0][n], vc[1][n], (size_t)(block * vb)) == 0;
    cr_expect(caches_same, "%s hd %lld: caches differ", what, (long long)hd);
    cr_expect_eq(memcmp(out[0], out[2], (size_t)(N * NH * hd) * sizeof(float)), 0,
                 "%s hd %lld NH %lld KV %lld rope %d: outputs with a prefix differ", what,
                 (long long)hd, (long long)NH, (long long)KV, rope);
    cr_expect_eq(memcmp(qkv[0], qkv[2], (size_t)(N * W) * sizeof(float)), 0,
                 "%s hd %lld: rotated q/k rows differ with a prefix", what, (long long)hd);
    int stores_same = 1; /* the new position, in the row's own cache */
    for (int n = 0; n < N; n++)
        for (int64_t h = 0; h < KV; h++) {
            const size_t at = (size_t)((h * MAXL + pos[n]) * hd * vb);
            stores_same &= memcmp((char *)kc[0][n] + at, (char *)kc[2][n] + at, (size_t)(hd * vb)) == 0 &&
                           memcmp((char *)vc[0][n] + at, (char *)vc[2][n] + at, (size_t)(hd * vb)) == 0;
        }
    cr_expect(stores_same, "%s hd %lld: stores differ with a prefix", what, (long long)hd);
    for (int side = 0; side < 3; side++) {
        for (int n = 0; n < N; n++) free(kc[side][n]), free(vc[side][n]);
        free(qkv[side]), free(out[side]);
    }
    for (int n = 0; n < N; n++) free(kp[n]), free(vp[n]);
    free(cs);
}

static void check_attention_decode_shapes(const ModelOps *o, int bf16) {
    for (int rope = 0; rope < 2; rope++) {
        check_attention_decode(o, bf16, 32, 4, 4, rope);
        check_attention_decode(o, bf16, 128, 2, 1, rope);
        check_attention_decode(o, bf16, 64, 12, 12, rope);
        check_attention_decode(o, bf16, 8, 4, 2, rope);
    }
}

Test(ops_bf16, attention_decode_equals_rope_store_and_cached_attention) {
    cr_assert(ops_cpu()->attention_decode != NULL);
    check_attention_decode_shapes(ops_cpu(), 0);
    need_bf16();
    cr_assert(ops_cpu_bf16()->attention_decode_bf16 != NULL);
    check_attention_decode_shapes(ops_cpu_bf16(), 1);
}

/* A decode row's cached attention has the same bits alone (on 2 threads
 * its heads are then split between them) as in a batch of 6 rows (each
 * row's heads together): 300 positions, fp32 and bf16 caches, head sizes
 * 32, 64 and 128 (the last with 2 heads, split one each). */
static void check_row_alone_as_in_batch(const ModelOps *o, int bf16, int64_t hd, int64_t NH) {
    enum { N = 6, L = 300 };
    const int64_t KV = NH, block = KV * L * hd, vb = bf16 ? 2 : 4;
    Rng r = rng_from_seed(500 + (uint64_t)hd);
    float *q = random_floats(&r, N * NH * hd);
    void *kc[N], *vc[N];
    int64_t len[N];
    for (int n = 0; n < N; n++) {
        float *kf = random_floats(&r, block), *vf = random_floats(&r, block);
        kc[n] = malloc((size_t)(block * vb)), vc[n] = malloc((size_t)(block * vb));
        for (int64_t i = 0; i < block; i += hd) {
            if (bf16) {
                o->kv_store_bf16((uint16_t *)kc[n] + i, kf + i, hd);
                o->kv_store_bf16((uint16_t *)vc[n] + i, vf + i, hd);
            } else {
                memcpy((float *)kc[n] + i, kf + i, (size_t)hd * sizeof(float));
                memcpy((float *)vc[n] + i, vf + i, (size_t)hd * sizeof(float));
            }
        }
        len[n] = L - 7 * n;
        free(kf), free(vf);
    }
    float *batch = calloc((size_t)(N * NH * hd), sizeof(float)), *alone = calloc((size_t)(NH * hd), sizeof(float));
    omp_set_num_threads(2);
    OpsHeads qh = {q, NH * hd};
    if (bf16)
        o->attention_cached_bf16(batch, qh, (const uint16_t *const *)kc, (const uint16_t *const *)vc,
                                 len, N, NH, KV, hd, L);
    else
        o->attention_cached(batch, qh, (float *const *)kc, (float *const *)vc, len, N, NH, KV, hd, L);
    int64_t differ = 0;
    for (int n = 0; n < N; n++) {
        OpsHeads qn = {q + n * NH * hd, NH * hd};
        if (bf16)
            o->attention_cached_bf16(alone, qn, (const uint16_t *const *)&kc[n],
                                     (const uint16_t *const *)&vc[n], &len[n], 1, NH, KV, hd, L);
        else
            o->attention_cached(alone, qn, (float *const *)&kc[n], (float *const *)&vc[n], &len[n], 1,
                                NH, KV, hd, L);
        differ += memcmp(alone, batch + n * NH * hd, (size_t)(NH * hd) * sizeof(float)) != 0;
    }
    cr_expect_eq(differ, 0, "%s cache, hd %lld: %lld of %d rows differ alone from in a batch",
                 bf16 ? "bf16" : "fp32", (long long)hd, (long long)differ, N);
    for (int n = 0; n < N; n++) free(kc[n]), free(vc[n]);
    free(q), free(batch), free(alone);
}

Test(ops_bf16, cached_attention_row_alone_has_its_batch_bits) {
    for (int bf16 = 0; bf16 < 2; bf16++) {
        if (bf16) need_bf16();
        const ModelOps *o = bf16 ? ops_cpu_bf16() : ops_cpu();
        check_row_alone_as_in_batch(o, bf16, 32, 4);
        check_row_alone_as_in_batch(o, bf16, 64, 4);
        check_row_alone_as_in_batch(o, bf16, 128, 2);
    }
}

/* kv_store_bf16 rounds as bf16_from_float does, read back through the
 * cached attention at one position (whose output is then that position's
 * value: weight exp(0) = 1, divided by a sum of 1). The values include ties
 * to even both ways, a carry into the exponent, denormals (to zero), the
 * largest finite values (rounding to infinity), infinities and a NaN. */
static void check_kv_store_rounding(int64_t hd) {
    enum { MAXL = 2 };
    const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x3fffffffu, 0x00000001u,
                                0x807fffffu, 0x7f7fffffu, 0xff7f8000u, 0x7f800000u, 0xff800000u,
                                0x7fc00001u, 0x80000000u, 0x3f7f7fffu, 0xbf808001u};
    const int64_t ns = (int64_t)(sizeof special / sizeof special[0]);
    Rng r = rng_from_seed(90 + (uint64_t)hd);
    float *v = random_floats(&r, hd), *k = random_floats(&r, hd), *q = random_floats(&r, hd);
    for (int64_t i = 0; i < hd; i++) {
        uint32_t u = bits_of(v[i]) + (uint32_t)rng_below(&r, 65536); /* every rounding case */
        if (i % 3 == 0) u = special[(i / 3) % ns];
        memcpy(&v[i], &u, sizeof u);
    }
    uint16_t *kh = calloc((size_t)(MAXL * hd), sizeof(uint16_t)), *vh = calloc((size_t)(MAXL * hd), sizeof(uint16_t));
    ops_cpu_bf16()->kv_store_bf16(kh, k, hd);
    ops_cpu_bf16()->kv_store_bf16(vh, v, hd);
    float *got = calloc((size_t)hd, sizeof(float));
    const int64_t len[1] = {1};
    OpsHeads qh = {q, hd};
    ops_cpu_bf16()->attention_cached_bf16(got, qh, (const uint16_t *const *)&kh,
                                          (const uint16_t *const *)&vh, len, 1, 1, 1, hd, MAXL);
    int64_t wrong = 0;
    for (int64_t i = 0; i < hd; i++) {
        const float want = bf16_to_float(bf16_from_float(v[i]));
        const int same = isnan(want) ? isnan(got[i]) : got[i] == want;
        if (!same && wrong++ < 3)
            cr_log_error("hd %lld value %lld (bits %08x): read back %a, want %a", (long long)hd,
                         (long long)i, bits_of(v[i]), (double)got[i], (double)want);
    }
    cr_expect_eq(wrong, 0, "hd %lld: %lld values stored with the wrong rounding or place",
                 (long long)hd, (long long)wrong);
    free(v), free(k), free(q), free(kh), free(vh), free(got);
}

Test(ops_bf16, kv_store_rounds_like_bf16_from_float) {
    need_bf16();
    cr_assert(ops_cpu_bf16()->kv_store_bf16 != NULL);
    for (int64_t hd = 8; hd <= 128; hd += 8) check_kv_store_rounding(hd);
}

/* A bf16 model decodes from a bf16 cache: prefill then batched decode follow
 * the full forward (bf16 products, fp32 attention over unrounded keys) within
 * 3e-2 of the largest logit, not exactly (the cache is rounded); a copied slot
 * decodes exactly as its source. Head sizes 8 (generic) and 32. */
static void check_bf16_kv_decode(int64_t d_model, int64_t n_head) {
    ModelConfig c = tiny_config(MODEL_ARCH_LLAMA);
    c.d_model = d_model, c.n_head = n_head, c.n_kv_head = n_head / 2;
    Model *m = NULL;
    PonderError err = {0};
    cr_assert_eq(model_create_on(&m, &c, ops_cpu_bf16(), &err), 0, "%s", err.msg);
    model_init_weights(m, 6);
    enum { B = 3, T = 12, P = 5 };
    const int64_t V = c.vocab_size;
    int32_t tokens[B * T];
    float mask[B * T];
    Rng r = rng_from_seed(41);
    for (int i = 0; i < B * T; i++) tokens[i] = (int32_t)rng_below(&r, (uint64_t)V), mask[i] = 1.0f;
    float *full = malloc((size_t)(B * T * V) * sizeof(float)), *logits = malloc((size_t)(B * V) * sizeof(float));
    ModelBatch b = {B, T, tokens, tokens, mask, NULL, 0.0f};
    cr_assert_eq(model_forward_logits(m, &b, full, &err), 0, "%s", err.msg);
    ModelKVCache *kv = NULL;
    cr_assert_eq(model_kv_create(&kv, m, B + 1, T, &err), 0, "%s", err.msg);
    cr_expect_eq(model_kv_value_bytes(kv), 2);
    double worst = 0.0, scale = 0.0;
    for (int64_t i = 0; i < B * T * V; i++) scale = fmax(scale, fabs(full[i]));
    for (int64_t s = 0; s < B; s++) {
        cr_assert_eq(model_prefill(m, kv, s, tokens + s * T, P, logits, &err), 0, "%s", err.msg);
        for (int64_t v = 0; v < V; v++) worst = fmax(worst, fabs(logits[v] - full[(s * T + P - 1) * V + v]));
    }
    int64_t slots[B] = {0, 1, 2};
    int32_t toks[B];
    for (int64_t t = P; t < T; t++) {
        for (int64_t s = 0; s < B; s++) toks[s] = tokens[s * T + t];
        cr_assert_eq(model_decode(m, kv, slots, toks, B, logits, &err), 0, "%s", err.msg);
        for (int64_t s = 0; s < B; s++)
            for (int64_t v = 0; v < V; v++)
                worst = fmax(worst, fabs(logits[s * V + v] - full[(s * T + t) * V + v]));
    }
    cr_log_info("hd %lld: bf16 KV decode vs full forward: %.3g of the largest logit %.3g",
                (long long)(d_model / n_head), worst / scale, scale);
    cr_expect(worst <= 3e-2 * scale, "bf16 KV decode differs by %.3g (largest logit %.3g)", worst, scale);
    cr_expect(worst > 0.0, "decode equals the full forward exactly: is the cache bf16?");
    /* a slot copied from slot 0 decodes its next token exactly as slot 0 */
    model_kv_reset(kv, 0);
    cr_assert_eq(model_prefill(m, kv, 0, tokens, P, logits, &err), 0, "%s", err.msg);
    model_kv_copy_slot(kv, B, 0);
    int64_t two[2] = {0, B};
    int32_t same[2] = {tokens[P], tokens[P]};
    cr_assert_eq(model_decode(m, kv, two, same, 2, logits, &err), 0, "%s", err.msg);
    cr_expect_eq(memcmp(logits, logits + V, (size_t)V * sizeof(float)), 0, "copied slot diverges");
    model_kv_free(kv);
    free(full), free(logits);
    model_free(m);
    /* the fp32 table keeps fp32 caches */
    cr_assert_eq(model_create_on(&m, &c, ops_cpu(), &err), 0, "%s", err.msg);
    cr_assert_eq(model_kv_create(&kv, m, 2, T, &err), 0, "%s", err.msg);
    cr_expect_eq(model_kv_value_bytes(kv), 4);
    model_kv_free(kv);
    model_free(m);
}

Test(model_bf16, decodes_from_a_bf16_kv_cache) {
    need_bf16();
    check_bf16_kv_decode(32, 4);
    check_bf16_kv_decode(64, 2);
}

/* ------------------------------------------- fused linear (cpu-bf16) --- */

/* linear_fused against the ops it stands for, run one by one from the same
 * table, bit for bit: every norm (none, RMS, Layer), with and without bias
 * and GELU, with no residual, a residual in place (out += y) and a separate
 * one; 13 rows (a partial norm block), frozen and unfrozen weights. */
Test(ops_bf16, linear_fused_equals_the_separate_ops) {
    const ModelOps *o = ops_cpu_bf16();
    if (!o) cr_skip_test("this CPU has no AVX512-BF16");
    cr_assert(o->linear_fused != NULL);
    enum { N = 13, C = 64, OC = 40 };
    Rng r = rng_from_seed(80);
    float *inp = random_floats(&r, N * C), *w = random_floats(&r, OC * C);
    float *bias = random_floats(&r, OC), *nw = random_floats(&r, C), *nb = random_floats(&r, C);
    float *res = random_floats(&r, N * OC);
    float got[N * OC], want[N * OC], h[N * C], y[N * OC], mean[N], rstd[N];
    int64_t cases = 0, differ = 0;
    for (int frozen = 0; frozen < 2; frozen++) {
        o->weights_frozen(frozen);
        for (int norm = 0; norm < 3; norm++)
            for (int with_bias = 0; with_bias < 2; with_bias++)
                for (int act = 0; act < 2; act++)
                    for (int rmode = 0; rmode < 3; rmode++) { /* none, in place, separate */
                        const float *b = with_bias ? bias : NULL;
                        const float *a = inp;
                        if (norm == OPS_NORM_RMS) o->rmsnorm_forward(h, rstd, inp, nw, N, C, 1e-5f), a = h;
                        if (norm == OPS_NORM_LAYER)
                            o->layernorm_forward(h, mean, rstd, inp, nw, nb, N, C, 1e-5f), a = h;
                        o->matmul_forward(y, a, w, b, N, C, OC);
                        if (act) o->gelu_forward(y, y, N * OC);
                        memcpy(want, y, sizeof want);
                        if (rmode) o->add(want, res, y, N * OC);
                        if (rmode == 1) memcpy(got, res, sizeof got);
                        else memset(got, 0, sizeof got);
                        o->linear_fused(got, inp, rmode == 0 ? NULL : rmode == 1 ? got : res, w, b,
                                        nw, nb, N, C, OC, norm, 1e-5f, act);
                        cases++;
                        differ += memcmp(got, want, sizeof got) != 0;
                    }
        o->weights_frozen(0);
    }
    cr_expect(differ == 0, "%lld of %lld forms differ from the separate ops", (long long)differ,
              (long long)cases);
    free(inp), free(w), free(bias), free(nw), free(nb), free(res);
}

/* linear_swiglu against swiglu_forward then linear_fused (no norm, bias or
 * activation), bit for bit: no residual, one in place and a separate one,
 * frozen weights and not, 13 and 64 rows (one row block, and enough work
 * for a parallel region). */
Test(ops_bf16, linear_swiglu_equals_swiglu_then_linear) {
    const ModelOps *o = ops_cpu_bf16();
    if (!o) cr_skip_test("this CPU has no AVX512-BF16");
    cr_assert(o->linear_swiglu != NULL);
    enum { NMAX = 64, F = 88, OC = 48 };
    Rng r = rng_from_seed(81);
    float *gu = random_floats(&r, NMAX * 2 * F), *w = random_floats(&r, OC * F);
    float *res = random_floats(&r, NMAX * OC);
    float *act = malloc(sizeof(float) * NMAX * F), *want = malloc(sizeof(float) * NMAX * OC);
    float *got = malloc(sizeof(float) * NMAX * OC);
    int64_t cases = 0, differ = 0;
    const int64_t Ns[2] = {13, NMAX};
    for (int frozen = 0; frozen < 2; frozen++) {
        o->weights_frozen(frozen);
        for (int k = 0; k < 2; k++)
            for (int rmode = 0; rmode < 3; rmode++) { /* none, in place, separate */
                const int64_t N = Ns[k];
                const size_t bytes = (size_t)(N * OC) * sizeof(float);
                o->swiglu_forward(act, gu, N, F);
                if (rmode) memcpy(want, res, bytes);
                o->linear_fused(want, act, rmode ? want : NULL, w, NULL, NULL, NULL, N, F, OC,
                                OPS_NORM_NONE, 0.0f, OPS_ACT_NONE);
                if (rmode == 1) memcpy(got, res, bytes);
                else memset(got, 0, bytes);
                o->linear_swiglu(got, gu, rmode == 0 ? NULL : rmode == 1 ? got : res, w, N, F, OC);
                cases++;
                differ += memcmp(got, want, bytes) != 0;
            }
        o->weights_frozen(0);
    }
    cr_expect(differ == 0, "%lld of %lld forms differ from the separate ops", (long long)differ,
              (long long)cases);
    free(gu), free(w), free(res), free(act), free(want), free(got);
}

/* One llama block's weights, caches (per row, both sides of the check)
 * and read-only prefix blocks for check_decode_block. */
enum { DB_KV = 2, DB_HD = 32, DB_MAXL = 24 };
typedef struct DecodeBlockCase {
    float *ln1, *qkv_w, *qkv_b, *o_w, *ln2, *fc_w, *proj_w;
    uint16_t **kc[2], **vc[2]; /* [side][row] */
    uint16_t *pk, *pv;         /* N prefix blocks */
    const void **kp, **vp;     /* [row] */
} DecodeBlockCase;

static void decode_block_case(DecodeBlockCase *d, const ModelOps *o, Rng *r, int64_t N,
                              int64_t NH, int64_t C, int64_t F) {
    const int64_t QKV = (NH + 2 * DB_KV) * DB_HD, AD = NH * DB_HD, block = DB_KV * DB_MAXL * DB_HD;
    d->ln1 = random_floats(r, C), d->qkv_w = random_floats(r, QKV * C);
    d->qkv_b = random_floats(r, QKV), d->o_w = random_floats(r, C * AD);
    d->ln2 = random_floats(r, C), d->fc_w = random_floats(r, 2 * F * C);
    d->proj_w = random_floats(r, C * F);
    float *vals = random_floats(r, 2 * N * block);
    for (int side = 0; side < 2; side++) {
        d->kc[side] = malloc((size_t)N * sizeof(uint16_t *));
        d->vc[side] = malloc((size_t)N * sizeof(uint16_t *));
        for (int64_t n = 0; n < N; n++) {
            d->kc[side][n] = malloc((size_t)block * 2), d->vc[side][n] = malloc((size_t)block * 2);
            for (int64_t i = 0; i < block; i += DB_HD) {
                o->kv_store_bf16(d->kc[side][n] + i, vals + 2 * n * block + i, DB_HD);
                o->kv_store_bf16(d->vc[side][n] + i, vals + (2 * n + 1) * block + i, DB_HD);
            }
        }
    }
    d->pk = malloc((size_t)(N * block) * 2), d->pv = malloc((size_t)(N * block) * 2);
    for (int64_t i = 0; i < N * block; i += DB_HD) {
        o->kv_store_bf16(d->pk + i, vals + 2 * N * block - i - DB_HD, DB_HD);
        o->kv_store_bf16(d->pv + i, vals + i, DB_HD);
    }
    d->kp = malloc((size_t)N * sizeof(void *)), d->vp = malloc((size_t)N * sizeof(void *));
    for (int64_t n = 0; n < N; n++) d->kp[n] = d->pk + n * block, d->vp[n] = d->pv + n * block;
    free(vals);
}

static int decode_block_caches_same(const DecodeBlockCase *d, int64_t N) {
    const size_t bytes = (size_t)(DB_KV * DB_MAXL * DB_HD) * 2;
    int same = 1;
    for (int64_t n = 0; n < N; n++)
        same &= memcmp(d->kc[0][n], d->kc[1][n], bytes) == 0 &&
                memcmp(d->vc[0][n], d->vc[1][n], bytes) == 0;
    return same;
}

static void decode_block_case_free(DecodeBlockCase *d, int64_t N) {
    for (int side = 0; side < 2; side++) {
        for (int64_t n = 0; n < N; n++) free(d->kc[side][n]), free(d->vc[side][n]);
        free(d->kc[side]), free(d->vc[side]);
    }
    free(d->ln1), free(d->qkv_w), free(d->qkv_b), free(d->o_w), free(d->ln2), free(d->fc_w);
    free(d->proj_w), free(d->pk), free(d->pv), free(d->kp), free(d->vp);
}

/* decode_block against the ops it stands for, called one by one, bit for
 * bit: the residual stream and every cache after NB llama blocks (each its
 * own weights and caches) of N decode rows (NH heads of 32 on 2 kv heads,
 * contexts of 1 to 24 positions), with and without a QKV bias and a prefix
 * read from other blocks. Outside a weights_frozen window it declines and
 * changes nothing. */
static void check_decode_block(const ModelOps *o, int64_t N, int64_t NH, int64_t NB, int bias,
                               int prefixed, int64_t C, int64_t F) {
    const int64_t QKV = (NH + 2 * DB_KV) * DB_HD, AD = NH * DB_HD;
    const float eps = 1e-5f;
    Rng r = rng_from_seed(500 + (uint64_t)(N * 4 + bias * 2 + prefixed) + 1000 * (uint64_t)NH);
    DecodeBlockCase d[2];
    for (int64_t l = 0; l < NB; l++) decode_block_case(&d[l], o, &r, N, NH, C, F);
    float *x0 = random_floats(&r, N * C);
    float *cs = malloc((size_t)(DB_MAXL * DB_HD) * sizeof(float));
    for (int64_t i = 0; i < DB_MAXL * DB_HD; i++) cs[i] = (float)cos(0.1 * (double)i);
    float *xs[2], *qkv[2], *atty[2], *fc[2];
    for (int side = 0; side < 2; side++) {
        xs[side] = malloc((size_t)(N * C) * sizeof(float));
        memcpy(xs[side], x0, (size_t)(N * C) * sizeof(float));
        qkv[side] = malloc((size_t)(N * QKV) * sizeof(float));
        atty[side] = malloc((size_t)(N * AD) * sizeof(float));
        fc[side] = malloc((size_t)(N * 2 * F) * sizeof(float));
    }
    int64_t *len = malloc((size_t)N * sizeof(int64_t)), *pre = malloc((size_t)N * sizeof(int64_t));
    for (int64_t n = 0; n < N; n++)
        len[n] = 1 + (n * 5) % DB_MAXL, pre[n] = prefixed ? (len[n] - 1) / 2 : 0;
    OpsPrefix prefix[2];
    OpsDecodeBlock b[2];
    for (int64_t l = 0; l < NB; l++) {
        prefix[l] = (OpsPrefix){d[l].kp, d[l].vp, pre};
        b[l] = (OpsDecodeBlock){.ln1_w = d[l].ln1, .qkv_w = d[l].qkv_w,
                                .qkv_b = bias ? d[l].qkv_b : NULL, .o_w = d[l].o_w,
                                .ln2_w = d[l].ln2, .fc_w = d[l].fc_w, .proj_w = d[l].proj_w,
                                .C = C, .F = F, .NH = NH, .KV = DB_KV, .hd = DB_HD,
                                .eps = eps, .cos_sin = cs, .k_cache = d[l].kc[1],
                                .v_cache = d[l].vc[1], .len = len, .max_len = DB_MAXL,
                                .prefix = prefixed ? &prefix[l] : NULL, .qkv = qkv[1],
                                .atty = atty[1], .fc = fc[1]};
    }
    cr_expect_eq(o->decode_block(xs[1], N, b, NB), 0, "decode_block ran outside a frozen window");
    cr_expect_eq(memcmp(xs[1], x0, (size_t)(N * C) * sizeof(float)), 0);
    o->weights_frozen(1);
    for (int64_t l = 0; l < NB; l++) { /* side 0: the ops one by one */
        o->linear_fused(qkv[0], xs[0], NULL, d[l].qkv_w, b[l].qkv_b, d[l].ln1, NULL, N, C, QKV,
                        OPS_NORM_RMS, eps, OPS_ACT_NONE);
        OpsHeads q = {qkv[0], QKV}, k = {qkv[0] + AD, QKV}, v = {qkv[0] + AD + DB_KV * DB_HD, QKV};
        o->attention_decode_bf16(atty[0], q, k, v, cs, d[l].kc[0], d[l].vc[0], len, N, NH, DB_KV,
                                 DB_HD, DB_MAXL, b[l].prefix);
        o->linear_fused(xs[0], atty[0], xs[0], d[l].o_w, NULL, NULL, NULL, N, AD, C,
                        OPS_NORM_NONE, eps, OPS_ACT_NONE);
        o->linear_fused(fc[0], xs[0], NULL, d[l].fc_w, NULL, d[l].ln2, NULL, N, C, 2 * F,
                        OPS_NORM_RMS, eps, OPS_ACT_NONE);
        o->linear_swiglu(xs[0], fc[0], xs[0], d[l].proj_w, N, F, C);
    }
    cr_assert_eq(o->decode_block(xs[1], N, b, NB), 1); /* side 1: one op */
    o->weights_frozen(0);
    cr_expect_eq(memcmp(xs[0], xs[1], (size_t)(N * C) * sizeof(float)), 0,
                 "N %lld NH %lld blocks %lld bias %d prefix %d: the residual stream differs",
                 (long long)N, (long long)NH, (long long)NB, bias, prefixed);
    for (int64_t l = 0; l < NB; l++)
        cr_expect(decode_block_caches_same(&d[l], N),
                  "N %lld NH %lld bias %d prefix %d: block %lld's caches differ", (long long)N,
                  (long long)NH, bias, prefixed, (long long)l);
    for (int side = 0; side < 2; side++) free(xs[side]), free(qkv[side]), free(atty[side]), free(fc[side]);
    for (int64_t l = 0; l < NB; l++) decode_block_case_free(&d[l], N);
    free(x0), free(cs), free(len), free(pre);
}

Test(ops_bf16, decode_block_equals_the_ops_one_by_one) {
    const ModelOps *o = ops_cpu_bf16();
    if (!o) cr_skip_test("this CPU has no AVX512-BF16");
    cr_assert(o->decode_block != NULL);
    /* at 2 threads, from 2 rows each thread takes its own rows through the
     * whole block (3, 13 and 77: odd shares, blocks of 16 cut short); 1 row
     * of these narrow blocks fits an L2, so one thread runs it; 8 heads of 32
     * are two attention items per row; two blocks in one call */
    const int threads = omp_get_max_threads();
    omp_set_num_threads(2);
    const int64_t Ns[] = {1, 3, 13, 64, 77};
    for (size_t i = 0; i < sizeof Ns / sizeof Ns[0]; i++)
        for (int64_t NH = 4; NH <= 8; NH += 4)
            for (int64_t NB = 1; NB <= 2; NB++)
                for (int bias = 0; bias < 2; bias++)
                    for (int prefixed = 0; prefixed < 2; prefixed++)
                        check_decode_block(o, Ns[i], NH, NB, bias, prefixed, 128, 96);
    /* fewer rows than threads on a block of 14 MB of bf16 weights, more than
     * an L2 holds: the threads share each phase between barriers */
    check_decode_block(o, 1, 8, 1, 1, 1, 1024, 2048);
    omp_set_num_threads(4);
    check_decode_block(o, 3, 8, 1, 0, 1, 1024, 2048);
    omp_set_num_threads(threads);
}

/* matmul_backward_set against zeroing dinp and calling matmul_backward, bit
 * for bit, in both CPU tables; dw and dbias still accumulate onto what was
 * there. */
static void check_backward_set(const ModelOps *o) {
    enum { N = 37, C = 24, OC = 40 };
    Rng r = rng_from_seed(90);
    float *dout = random_floats(&r, N * OC), *inp = random_floats(&r, N * C);
    float *w = random_floats(&r, OC * C), *dw0 = random_floats(&r, OC * C), *db0 = random_floats(&r, OC);
    float *junk = random_floats(&r, N * C);
    float want_x[N * C], got_x[N * C], want_w[OC * C], got_w[OC * C], want_b[OC], got_b[OC];
    memset(want_x, 0, sizeof want_x);
    memcpy(got_x, junk, sizeof got_x); /* overwritten, whatever it held */
    memcpy(want_w, dw0, sizeof want_w), memcpy(got_w, dw0, sizeof got_w);
    memcpy(want_b, db0, sizeof want_b), memcpy(got_b, db0, sizeof got_b);
    o->matmul_backward(want_x, want_w, want_b, dout, inp, w, N, C, OC);
    o->matmul_backward_set(got_x, got_w, got_b, dout, inp, w, N, C, OC);
    cr_expect(memcmp(got_x, want_x, sizeof got_x) == 0, "%s: dinp differs", o->name);
    cr_expect(memcmp(got_w, want_w, sizeof got_w) == 0, "%s: dw differs", o->name);
    cr_expect(memcmp(got_b, want_b, sizeof got_b) == 0, "%s: dbias differs", o->name);
    free(dout), free(inp), free(w), free(dw0), free(db0), free(junk);
}

Test(ops_bf16, matmul_backward_set_equals_zero_then_accumulate) {
    cr_assert(ops_cpu()->matmul_backward_set != NULL);
    check_backward_set(ops_cpu());
    if (!ops_cpu_bf16()) cr_skip_test("this CPU has no AVX512-BF16: the bf16 table untested");
    check_backward_set(ops_cpu_bf16());
}

/* Both products of a linear backward in one call (dinp and dw together,
 * dout packed once for both, inside or outside a weights_frozen window)
 * against each product alone, bit for bit: an odd N with widths off the
 * 32-value blocks, and a 1024-token micro-batch's shape. */
static void check_backward_together(const ModelOps *o, int64_t N, int64_t C, int64_t OC,
                                    int frozen) {
    Rng r = rng_from_seed(95 + (uint64_t)N);
    float *dout = random_floats(&r, N * OC), *inp = random_floats(&r, N * C);
    float *w = random_floats(&r, OC * C), *x0 = random_floats(&r, N * C), *w0 = random_floats(&r, OC * C);
    const size_t xs = (size_t)(N * C) * sizeof(float), ws = (size_t)(OC * C) * sizeof(float);
    float *want_x = malloc(xs), *got_x = malloc(xs), *want_w = malloc(ws), *got_w = malloc(ws);
    memcpy(want_x, x0, xs), memcpy(got_x, x0, xs), memcpy(want_w, w0, ws), memcpy(got_w, w0, ws);
    o->matmul_backward(want_x, NULL, NULL, dout, inp, w, N, C, OC);
    o->matmul_backward(NULL, want_w, NULL, dout, inp, w, N, C, OC);
    if (frozen) o->weights_frozen(1);
    o->matmul_backward(got_x, got_w, NULL, dout, inp, w, N, C, OC);
    if (frozen) o->weights_frozen(0);
    cr_expect(memcmp(got_x, want_x, xs) == 0, "N %lld C %lld OC %lld frozen %d: dinp differs",
              (long long)N, (long long)C, (long long)OC, frozen);
    cr_expect(memcmp(got_w, want_w, ws) == 0, "N %lld C %lld OC %lld frozen %d: dw differs",
              (long long)N, (long long)C, (long long)OC, frozen);
    free(dout), free(inp), free(w), free(x0), free(w0), free(want_x), free(got_x), free(want_w),
        free(got_w);
}

Test(ops_bf16, linear_backward_together_equals_each_product_alone) {
    need_bf16();
    const ModelOps *o = ops_cpu_bf16();
    cr_assert(o != NULL && o->weights_frozen != NULL);
    for (int frozen = 0; frozen < 2; frozen++) {
        check_backward_together(o, 37, 40, 56, frozen);
        check_backward_together(o, 1024, 128, 352, frozen);
    }
}

/* swiglu_matmul_backward_set (d(gate_up) formed inside the product, never
 * stored) against swiglu_backward_set into a buffer and then
 * matmul_backward_set on it, bit for bit: an odd N, and a 1024-token
 * micro-batch of the tiny model's MLP inside a weights_frozen window. */
static void check_swiglu_matmul(const ModelOps *o, int64_t N, int64_t C, int64_t F, int frozen) {
    Rng r = rng_from_seed(97 + (uint64_t)N);
    float *dout = random_floats(&r, N * F), *gu = random_floats(&r, N * 2 * F);
    float *inp = random_floats(&r, N * C), *w = random_floats(&r, 2 * F * C);
    float *w0 = random_floats(&r, 2 * F * C), *junk = random_floats(&r, N * C);
    const size_t xs = (size_t)(N * C) * sizeof(float), ws = (size_t)(2 * F * C) * sizeof(float);
    float *dgu = malloc((size_t)(N * 2 * F) * sizeof(float));
    float *want_x = malloc(xs), *got_x = malloc(xs), *want_w = malloc(ws), *got_w = malloc(ws);
    memcpy(want_x, junk, xs), memcpy(got_x, junk, xs), memcpy(want_w, w0, ws), memcpy(got_w, w0, ws);
    if (frozen) o->weights_frozen(1);
    o->swiglu_backward_set(dgu, dout, gu, N, F);
    o->matmul_backward_set(want_x, want_w, NULL, dgu, inp, w, N, C, 2 * F);
    o->swiglu_matmul_backward_set(got_x, got_w, dout, gu, inp, w, N, C, F);
    if (frozen) o->weights_frozen(0);
    cr_expect(memcmp(got_x, want_x, xs) == 0 && memcmp(got_w, want_w, ws) == 0,
              "N %lld C %lld F %lld frozen %d: dinp %s, dw %s", (long long)N, (long long)C,
              (long long)F, frozen, memcmp(got_x, want_x, xs) ? "differs" : "same",
              memcmp(got_w, want_w, ws) ? "differs" : "same");
    free(dout), free(gu), free(inp), free(w), free(w0), free(junk), free(dgu), free(want_x),
        free(got_x), free(want_w), free(got_w);
}

Test(ops_bf16, swiglu_matmul_backward_equals_the_two_ops) {
    need_bf16();
    const ModelOps *o = ops_cpu_bf16();
    cr_assert(o != NULL && o->swiglu_matmul_backward_set != NULL);
    check_swiglu_matmul(o, 37, 40, 28, 0);
    check_swiglu_matmul(o, 1024, 128, 352, 1);
}
