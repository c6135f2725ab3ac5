/* bench/sgemm_ceiling.c — sgemm GFLOP/s of ponder's BLAS for the matmuls of a
 * GPT-2 124M training step, plus a 2048^3 square "ceiling".
 *
 *   sgemm_ceiling [--threads N] [--reps R] [--bt 256,1024] [--no-shapes]
 *                 [--no-ceiling] [--check] [--json]
 *
 * The library comes from blas_load(NULL): env PONDER_BLAS = auto |
 * openblas-pthread | openblas-openmp | blis | blis-pthread | /path/lib.so
 * (benchmarks only). Every shape gets one warm-up call, then R repetitions (each
 * a batch of calls lasting >= 50 ms); we print the median and min..max GFLOP/s.
 *
 * Layout as model/cpu/ops_cpu.c multiplies (weights [OC, C], llm.c style):
 *   fwd   out[BT,OC]  = inp[BT,C] . W^T            NT  M=BT N=OC K=C
 *   dinp  dinp[BT,C] += dout[BT,OC] . W[OC,C]      NN  M=BT N=C  K=OC (beta 1)
 *   dW    dW[OC,C]   += dout^T . inp[BT,C]         TN  M=OC N=C  K=BT (beta 1)
 * for c_attn (OC 2304), attn.c_proj (768), c_fc (3072), mlp.c_proj (C 3072,
 * OC 768) and the tied lm_head (wte [V, C], V = 50257). "step" sums one
 * training step's matmul FLOPs (12 layers x 4 weights x 3 GEMMs + lm_head x 3)
 * over the sum of median times: the matmul-only GFLOP/s a step could reach with
 * this library. The "lm_head/R" lines (R printed) are the same GEMMs on R-row chunks, as
 * ops_cpu.c runs the vocabulary projection today (R = 2M / V = 41 rows, keeping
 * a chunk's logits near 8 MB); they are not part of "step".
 *
 * --check compares sgemm against a double-precision triple loop on random
 * matrices (all transpose pairs, beta 0 and 1, odd sizes and model sizes) and
 * exits 1 on a mismatch. --json prints one JSON object per measurement with
 * every repetition (bench/blas_compare.py pools them across runs). */
#include <math.h>   /* fabs */
#include <stdio.h>  /* printf */
#include <stdlib.h> /* atoi, strtol */
#include <string.h> /* strcmp */

#include "bench/bench_util.h"
#include "model/cpu/blas.h"

typedef struct Shape {
    const char *layer; /* e.g. "c_attn" */
    const char *pass;  /* fwd, dinp, dW, ceiling */
    int ta, tb, acc;
    int64_t M, N, K;
    int count; /* how many times one training step runs it (0: not in "step") */
} Shape;

enum { GPT2_C = 768, GPT2_L = 12, GPT2_V = 50257 };

/* Rows per lm_head chunk, as model/cpu/ops_cpu.c computes them. */
static int64_t lm_head_chunk_rows(int64_t V) {
    int64_t r = (int64_t)(2 * 1024 * 1024) / V;
    return r < 8 ? 8 : (r > 1024 ? 1024 : r);
}

static int make_shapes(int64_t BT, Shape *out) {
    static const struct {
        const char *name;
        int64_t C, OC;
    } layers[] = {{"c_attn", 768, 2304}, {"attn.c_proj", 768, 768}, {"c_fc", 768, 3072},
                  {"mlp.c_proj", 3072, 768}};
    int n = 0;
    for (int i = 0; i < 4; i++) {
        int64_t C = layers[i].C, OC = layers[i].OC;
        out[n++] = (Shape){layers[i].name, "fwd", 0, 1, 0, BT, OC, C, GPT2_L};
        out[n++] = (Shape){layers[i].name, "dinp", 0, 0, 1, BT, C, OC, GPT2_L};
        out[n++] = (Shape){layers[i].name, "dW", 1, 0, 1, OC, C, BT, GPT2_L};
    }
    out[n++] = (Shape){"lm_head", "fwd", 0, 1, 0, BT, GPT2_V, GPT2_C, 1};
    out[n++] = (Shape){"lm_head", "dinp", 0, 0, 0, BT, GPT2_C, GPT2_V, 1};
    out[n++] = (Shape){"lm_head", "dW", 1, 0, 1, GPT2_V, GPT2_C, BT, 1};
    int64_t R = lm_head_chunk_rows(GPT2_V);
    static char chunk_name[32];
    snprintf(chunk_name, sizeof chunk_name, "lm_head/%lld", (long long)R);
    if (R < BT) {
        out[n++] = (Shape){chunk_name, "fwd", 0, 1, 0, R, GPT2_V, GPT2_C, 0};
        out[n++] = (Shape){chunk_name, "dinp", 0, 0, 0, R, GPT2_C, GPT2_V, 0};
        out[n++] = (Shape){chunk_name, "dW", 1, 0, 1, GPT2_V, GPT2_C, R, 0};
    }
    return n;
}

static const char *lib_name(void) {
    const BlasInfo *bi = blas_info();
    return bi ? bi->library : "?";
}

static void print_json(const Shape *s, int64_t BT, int threads, const double *g, int reps,
                       BenchStats st) {
    const BlasInfo *bi = blas_info();
    printf("{\"bench\":\"sgemm_ceiling\",\"library\":\"%s\",\"core\":\"%s\",\"threads\":%d,"
           "\"bt\":%lld,\"layer\":\"%s\",\"pass\":\"%s\",\"trans\":\"%c%c\",\"M\":%lld,"
           "\"N\":%lld,\"K\":%lld,\"count\":%d,\"median\":%.2f,\"min\":%.2f,\"max\":%.2f,"
           "\"gflops\":[",
           bi->library, bi->core, threads, (long long)BT, s->layer, s->pass, s->ta ? 'T' : 'N',
           s->tb ? 'T' : 'N', (long long)s->M, (long long)s->N, (long long)s->K, s->count,
           st.median, st.min, st.max);
    for (int r = 0; r < reps; r++) printf("%s%.2f", r ? "," : "", g[r]);
    printf("]}\n");
    fflush(stdout);
}

static BenchStats run_shape(const Shape *s, int64_t BT, int threads, int reps, int json) {
    double g[256];
    BenchStats st = bench_sgemm_gflops_ex(s->ta, s->tb, s->M, s->N, s->K, s->acc, reps, 0.05, g);
    if (json) print_json(s, BT, threads, g, reps, st);
    else
        printf("%-12s %-5s %c%c %6lld %6lld %6lld   %8.1f   %7.1f .. %7.1f\n", s->layer, s->pass,
               s->ta ? 'T' : 'N', s->tb ? 'T' : 'N', (long long)s->M, (long long)s->N,
               (long long)s->K, st.median, st.min, st.max);
    return st;
}

/* Max over C entries of |C - ref| / (sum_k |a||b| + |beta c0|): ~K * 2^-24 at
 * worst for a correct float sgemm, ~1 for a wrong one. */
static double check_one(int ta, int tb, int64_t M, int64_t N, int64_t K, float beta,
                        uint64_t seed) {
    float *A = bench_alloc_floats(M * K), *B = bench_alloc_floats(K * N);
    float *C = bench_alloc_floats(M * N), *C0 = bench_alloc_floats(M * N);
    bench_fill_uniform(A, M * K, seed);
    bench_fill_uniform(B, K * N, seed + 1);
    bench_fill_uniform(C0, M * N, seed + 2);
    memcpy(C, C0, (size_t)(M * N) * sizeof *C);
    int64_t lda = ta ? M : K, ldb = tb ? K : N;
    const float alpha = 0.75f;
    blas_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, N);
    double worst = 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double acc = 0, mag = 0;
            for (int64_t k = 0; k < K; k++) {
                double a = ta ? A[k * lda + i] : A[i * lda + k];
                double b = tb ? B[j * ldb + k] : B[k * ldb + j];
                acc += a * b;
                mag += fabs(a * b);
            }
            double ref = alpha * acc + (double)beta * C0[i * N + j];
            double scale = fabs(alpha) * mag + fabs((double)beta * C0[i * N + j]) + 1e-30;
            double e = fabs(C[i * N + j] - ref) / scale;
            if (e > worst) worst = e;
        }
    free(A);
    free(B);
    free(C);
    free(C0);
    return worst;
}

static int run_check(void) {
    static const int64_t sizes[][3] = {{1, 1, 1},     {7, 5, 3},      {67, 129, 301},
                                       {33, 2304, 768}, {256, 768, 3072}, {768, 768, 256},
                                       {256, 3072, 768}};
    int bad = 0;
    double worst_all = 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (int t = 0; t < 4; t++)
            for (int b = 0; b < 2; b++) {
                int64_t M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];
                double e = check_one(t >> 1, t & 1, M, N, K, (float)b, 100 + s * 8 + t * 2 + b);
                /* Accumulation error bound for float: K ulps of the magnitude. */
                double tol = 4.0 * (double)K * 0x1p-24 + 1e-6;
                if (e > worst_all) worst_all = e;
                if (e > tol || e != e) {
                    printf("check FAIL %c%c M=%lld N=%lld K=%lld beta=%d: rel err %.3g > %.3g\n",
                           t >> 1 ? 'T' : 'N', t & 1 ? 'T' : 'N', (long long)M, (long long)N,
                           (long long)K, b, e, tol);
                    bad++;
                }
            }
    printf("check %s: %s core %s, %d threads, worst normalised error %.3g over %zu cases\n",
           bad ? "FAIL" : "ok", lib_name(), blas_info()->core, blas_info()->threads, worst_all,
           sizeof sizes / sizeof sizes[0] * 8);
    return bad ? 1 : 0;
}

int main(int argc, char **argv) {
    int threads = 0, reps = 7, shapes = 1, ceiling = 1, check = 0, json = 0;
    int64_t bts[8] = {256, 1024};
    int nbt = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--bt") && i + 1 < argc) {
            char *p = argv[++i];
            nbt = 0;
            while (*p && nbt < 8) {
                bts[nbt++] = strtol(p, &p, 10);
                if (*p == ',') p++;
            }
        } else if (!strcmp(argv[i], "--no-shapes")) shapes = 0;
        else if (!strcmp(argv[i], "--no-ceiling")) ceiling = 0;
        else if (!strcmp(argv[i], "--check")) check = 1;
        else if (!strcmp(argv[i], "--json")) json = 1;
        else {
            fprintf(stderr,
                    "usage: %s [--threads N] [--reps R] [--bt 256,1024] [--no-shapes] "
                    "[--no-ceiling] [--check] [--json]\n",
                    argv[0]);
            return 2;
        }
    }
    if (reps < 1 || reps > 256) reps = 7;
    PonderError err = {0};
    if (blas_load(NULL, &err) != PONDER_OK) {
        fprintf(stderr, "sgemm_ceiling: %s\n", err.msg);
        return 1;
    }
    if (threads > 0) blas_set_threads(threads);
    const BlasInfo *bi = blas_info();
    threads = bi->threads;
    if (!json)
        printf("library %s\ncore %s\nthreads %d\nreps %d (median, min .. max GFLOP/s)\n",
               bi->library, bi->core, threads, reps);
    if (check) return run_check();

    if (shapes) {
        for (int b = 0; b < nbt; b++) {
            Shape sh[24];
            int n = make_shapes(bts[b], sh);
            double step_flop = 0, step_s = 0;
            if (!json)
                printf("\nBT=%lld\nlayer        pass  op      M      N      K     median   "
                       "min .. max\n",
                       (long long)bts[b]);
            for (int s = 0; s < n; s++) {
                BenchStats st = run_shape(&sh[s], bts[b], threads, reps, json);
                double flop = 2.0 * (double)sh[s].M * (double)sh[s].N * (double)sh[s].K;
                step_flop += flop * sh[s].count;
                step_s += flop * sh[s].count / (st.median * 1e9);
            }
            if (json)
                printf("{\"bench\":\"sgemm_ceiling\",\"library\":\"%s\",\"core\":\"%s\","
                       "\"threads\":%d,\"bt\":%lld,\"layer\":\"step\",\"pass\":\"all\","
                       "\"gflop\":%.2f,\"ms\":%.2f,\"median\":%.2f}\n",
                       bi->library, bi->core, threads, (long long)bts[b], step_flop / 1e9,
                       step_s * 1e3, step_flop / step_s / 1e9);
            else
                printf("step BT=%lld: %.1f GFLOP of matmuls in %.1f ms at median speeds = %.1f "
                       "GFLOP/s\n",
                       (long long)bts[b], step_flop / 1e9, step_s * 1e3,
                       step_flop / step_s / 1e9);
        }
    }
    if (ceiling) {
        Shape sq = {"square", "ceiling", 0, 0, 0, 2048, 2048, 2048, 1};
        if (!json)
            printf("\nlayer        pass  op      M      N      K     median   min .. max\n");
        run_shape(&sq, 0, threads, reps, json);
    }
    return 0;
}
