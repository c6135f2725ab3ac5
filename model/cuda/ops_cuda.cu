/* model/cuda/ops_cuda.cu — the CUDA backend: cuBLAS for every matmul, our
 * kernels for the rest, fp32 throughout. Implements model/ops.h's table with
 * the CPU backend (model/cpu/ops_cpu.c) as the reference: same formulas, same
 * accumulate-into-gradients conventions, same handling of masks and padding.
 *
 * Execution model: everything runs on the legacy default stream (cuBLAS too),
 * so ops are ordered as the model calls them; upload/download are synchronous
 * cudaMemcpy and give the host-facing model API its host semantics. The one
 * exception is graph capture (ops.h graph_*, used by KV-cache decode): while
 * a step is captured every launch goes to a capture stream (non-blocking, as
 * capture wants), and a captured graph is replayed on that stream between
 * two events that order it after the legacy stream's earlier work and the
 * legacy stream's later work after it. PONDER_CUDA_GRAPHS=0 turns graphs off.
 * Small matmuls (N <= GEMV_MAX_ROWS rows, decode) use our own GEMV kernel
 * (k_linear_small) with the bias fused instead of cuBLAS; PONDER_CUDA_GEMV=0
 * turns it off. The optional fused decode ops (linear_fused: norm + GEMV +
 * bias/GELU/residual; attention_cached_write: the cache write inside the
 * attention) run op by op with PONDER_CUDA_FUSED=0.
 *
 * Determinism: no floating-point atomics. Column reductions (bias, norm-weight
 * gradients) run in fixed-shape trees; embedding gradients add rows in row
 * order exactly as the CPU does; cuBLAS is deterministic for a given GPU and
 * library version. So a run is bit-reproducible on the same GPU and toolkit,
 * though not bit-identical to the CPU (summation orders differ).
 *
 * Debugging: PONDER_CUDA_SYNC=1 synchronises after every op and names the op
 * that failed, so an asynchronous fault is reported where it happened. */
extern "C" {
#include "model/ops.h" /* a C header: ops_cuda() has C linkage */
}
#include "model/cuda/cuda_backend.h"

/* the policy and value losses' per-token formulas, compiled for host and device */
#define ALGO_TOKEN_FN static __host__ __device__ __forceinline__
#include "algos/advantage_token.h"
#include "algos/loss_token.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ errors ----- */

static int g_capturing = 0;         /* a graph capture is under way */
static char g_capture_error[256];   /* its first failure; "" = none */

/* Aborts, except during a graph capture: there nothing has run yet, so the
 * failure is noted, the capture is discarded and the step runs eagerly. */
static void cuda_fail(const char *what, const char *msg, const char *file, int line) {
    if (g_capturing) {
        if (!g_capture_error[0])
            snprintf(g_capture_error, sizeof g_capture_error, "%.100s at %.60s:%d: %.60s", what, file, line,
                     msg);
        return;
    }
    fprintf(stderr, "ponder: CUDA error in %s at %s:%d: %s\n", what, file, line, msg);
    fflush(stderr);
    abort();
}

#define CUDA_CHECK(x)                                                                  \
    do {                                                                               \
        cudaError_t e_ = (x);                                                          \
        if (e_ != cudaSuccess) cuda_fail(#x, cudaGetErrorString(e_), __FILE__, __LINE__); \
    } while (0)

static const char *cublas_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cuBLAS error";
    }
}

#define CUBLAS_CHECK(x)                                                                \
    do {                                                                               \
        cublasStatus_t s_ = (x);                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS) cuda_fail(#x, cublas_name(s_), __FILE__, __LINE__); \
    } while (0)

/* ------------------------------------------------------------ state ------ */

static cublasHandle_t g_blas;
static int g_init = 0;     /* 0: not tried, 1: ready, -1: unavailable */
static int g_sync_each = 0; /* PONDER_CUDA_SYNC=1 */
static int g_tf32 = 0;
static int g_bf16 = 0; /* PONDER_CUDA_BF16=1 or cuda_set_bf16: every GEMM on bf16 copies */
static char g_status[512] = "the CUDA backend has not been initialised";
static int g_graphs = 1; /* PONDER_CUDA_GRAPHS=0 sets 0: graph_capture refuses */
static int g_gemv = 1;   /* PONDER_CUDA_GEMV=0 sets 0: every matmul through cuBLAS */
static int g_fused = 1;  /* PONDER_CUDA_FUSED=0 sets 0: linear_fused and attention_cached_write
                            run the kernels of the ops they stand for, one by one */
/* Where kernels launch: the legacy stream, or the capture stream during a
 * capture. Created at start-up: the capture stream and the cuBLAS workspace
 * used while capturing (so cuBLAS allocates nothing inside a capture). */
static cudaStream_t g_stream = 0;
static cudaStream_t g_capture_stream = NULL;
static cudaEvent_t g_ev_before = NULL, g_ev_after = NULL; /* order a replay with stream 0 */
static void *g_blas_workspace = NULL;
#define BLAS_WORKSPACE_BYTES ((size_t)32 << 20)
static long long g_graph_captures = 0, g_graph_launches = 0, g_graph_refusals = 0;

/* Called after each op's launches: reports launch errors, and with
 * PONDER_CUDA_SYNC=1 waits and reports execution errors, naming the op. */
static void op_done(const char *op) {
    cudaError_t e = cudaGetLastError();
    /* no waiting inside a capture: nothing runs, and the sync would break it */
    if (e == cudaSuccess && g_sync_each && !g_capturing) e = cudaDeviceSynchronize();
    if (e != cudaSuccess) cuda_fail(op, cudaGetErrorString(e), __FILE__, __LINE__);
}

/* Grow-only scratch: one buffer carved by each op for its temporaries; no two
 * ops overlap (all run in order on one stream). cudaFree synchronises, so
 * growing never frees memory a queued kernel still uses. */
typedef struct GrowBuf {
    void *p;
    size_t size;
    const char *name;
} GrowBuf;

static GrowBuf g_scratch = {NULL, 0, "scratch"};
/* bf16 copies of GEMM operands (cuda_set_bf16): a second buffer, because the
 * ops that call gemm_f32 / bmm_f32 already hold g_scratch for their own
 * temporaries (the LM head's gathered rows and logits, attention's packed heads). */
static GrowBuf g_scratch16 = {NULL, 0, "bf16 scratch"};
static unsigned g_scratch_gen = 0; /* bumped when a buffer moves: graphs made before are stale */

static void *grow(GrowBuf *b, size_t bytes) {
    if (bytes > b->size && g_capturing) { /* cannot allocate inside a capture */
        cuda_fail(b->name, "buffer too small during a graph capture", __FILE__, __LINE__);
        return b->p;
    }
    if (bytes > b->size) {
        g_scratch_gen++;
        CUDA_CHECK(cudaDeviceSynchronize()); /* queued kernels may still use the old buffer */
        if (b->p) CUDA_CHECK(cudaFree(b->p));
        b->p = NULL;
        size_t want = bytes + bytes / 4;
        CUDA_CHECK(cudaMalloc(&b->p, want));
        b->size = want;
    }
    return b->p;
}

static void *scratch(size_t bytes) { return grow(&g_scratch, bytes); }
static void *scratch16(size_t bytes) { return grow(&g_scratch16, bytes); }

/* Carves aligned pieces out of a scratch buffer. */
typedef struct Carve {
    char *base;
    size_t at;
} Carve;

static size_t align256(size_t b) { return (b + 255) & ~(size_t)255; }

static void *carve(Carve *c, size_t bytes) {
    void *p = c->base + c->at;
    c->at += align256(bytes);
    return p;
}

static unsigned grid_for(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 1048576) b = 1048576; /* kernels loop with a grid stride beyond this */
    return (unsigned)b;
}

/* ------------------------------------------------------------ memory ----- */

static void *cu_alloc(size_t bytes) {
    void *p = NULL;
    if (bytes == 0) bytes = 1;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky-free error so later calls work */
        return NULL;
    }
    CUDA_CHECK(cudaMemset(p, 0, bytes));
    return p;
}

static void cu_free(void *p) {
    if (p) CUDA_CHECK(cudaFree(p));
}

static void cu_zero(void *p, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, g_stream));
}

static void cu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_stream));
}

static void cu_upload(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

static void cu_download(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

/* ------------------------------------------------------- reductions ------ */

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over a block of blockDim.x threads (a multiple of 32, at most 1024);
 * every thread gets the result. `sh` holds 32 floats. Fixed order. */
__device__ float block_sum(float v, float *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* sh may still be read from a previous call */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float t = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(t);
}

__device__ float block_max(float v, float *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float t = lane < nw ? sh[lane] : -INFINITY;
    return warp_max(t);
}

/* ------------------------------------------------------------ linear ----- */

static float ONE = 1.0f, ZERO = 0.0f;

__global__ void k_fill_bias(float *out, const float *bias, int64_t N, int64_t OC) {
    const int64_t total = N * OC;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = bias[i % OC];
}

/* Column reductions over rows, two passes with fixed shapes (deterministic):
 * pass 1: block (32 columns x 8 row lanes) per (column tile, row chunk) writes
 * partial sums; pass 2 adds the chunks in order into the destination.
 * MODE 0: sum dout            (bias gradient)           -> out0
 * MODE 1: sum dout * x * rstd (RMSNorm weight gradient)  -> out0
 * MODE 2: sum dout * (x - mean) * rstd -> out0, sum dout -> out1 (LayerNorm) */
#define COLRED_ROWS 8
#define COLRED_MAX_CHUNKS 64

template <int MODE>
__global__ void k_colred_partial(float *part0, float *part1, const float *dout, const float *x,
                                 const float *mean, const float *rstd, int64_t N, int64_t C,
                                 int64_t rows_per_chunk) {
    __shared__ float s0[COLRED_ROWS][33], s1[COLRED_ROWS][33];
    const int64_t c = blockIdx.x * 32 + threadIdx.x;
    const int64_t chunk = blockIdx.y, r0 = chunk * rows_per_chunk;
    const int64_t r1 = r0 + rows_per_chunk < N ? r0 + rows_per_chunk : N;
    float a0 = 0.0f, a1 = 0.0f;
    if (c < C) {
        for (int64_t n = r0 + threadIdx.y; n < r1; n += COLRED_ROWS) {
            float d = dout[n * C + c];
            if (MODE == 0) a0 += d;
            if (MODE == 1) a0 += d * x[n * C + c] * rstd[n];
            if (MODE == 2) {
                a0 += d * (x[n * C + c] - mean[n]) * rstd[n];
                a1 += d;
            }
        }
    }
    s0[threadIdx.y][threadIdx.x] = a0;
    s1[threadIdx.y][threadIdx.x] = a1;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float t0 = 0.0f, t1 = 0.0f;
        for (int k = 0; k < COLRED_ROWS; k++) {
            t0 += s0[k][threadIdx.x];
            t1 += s1[k][threadIdx.x];
        }
        part0[chunk * C + c] = t0;
        if (MODE == 2) part1[chunk * C + c] = t1;
    }
}

__global__ void k_colred_final(float *dst, const float *part, int64_t chunks, int64_t C) {
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < C;
         c += (int64_t)gridDim.x * blockDim.x) {
        float t = 0.0f;
        for (int64_t k = 0; k < chunks; k++) t += part[k * C + c];
        dst[c] += t;
    }
}

template <int MODE>
static void column_reduce(float *dst0, float *dst1, const float *dout, const float *x,
                          const float *mean, const float *rstd, int64_t N, int64_t C) {
    if (N <= 0 || C <= 0) return;
    int64_t rpc = (N + COLRED_MAX_CHUNKS - 1) / COLRED_MAX_CHUNKS;
    if (rpc < 64) rpc = 64;
    const int64_t chunks = (N + rpc - 1) / rpc;
    Carve cv = {(char *)scratch(2 * align256((size_t)(chunks * C) * sizeof(float))), 0};
    float *p0 = (float *)carve(&cv, (size_t)(chunks * C) * sizeof(float));
    float *p1 = (float *)carve(&cv, (size_t)(chunks * C) * sizeof(float));
    dim3 grid((unsigned)((C + 31) / 32), (unsigned)chunks), block(32, COLRED_ROWS);
    k_colred_partial<MODE><<<grid, block, 0, g_stream>>>(p0, p1, dout, x, mean, rstd, N, C, rpc);
    k_colred_final<<<grid_for(C, 256), 256, 0, g_stream>>>(dst0, p0, chunks, C);
    if (MODE == 2) k_colred_final<<<grid_for(C, 256), 256, 0, g_stream>>>(dst1, p1, chunks, C);
}

/* Small-N linear layers (decode): out[n, oc] = (resid +) act(h[n] . w[oc] +
 * bias[oc]) for N <= GEMV_MAX_ROWS rows, h = inp or its RMSNorm/LayerNorm
 * (ops.h linear_fused; matmul_forward is the case without norm, act, resid).
 * At N = 1 this is a matrix-vector product bound by reading w once, so the
 * kernel is built for memory-level parallelism:
 *  - the N input rows are staged in shared memory once per block (normalised
 *    there when a norm is asked for: each block computes the rows' mean and
 *    rstd itself, in a fixed order, so every block gets the same values),
 *    or read from global memory when N*C is too large for shared memory;
 *  - W warps per output row (W = 1 for many rows, up to 8 for few), each
 *    lane loading GEMV_UNROLL float4 of the weight row before using any, with
 *    streaming loads (__ldcs: the weights are read once per token, keep the
 *    activations in L2 instead);
 *  - a persistent grid (as many blocks as fit on the GPU at once) walks the
 *    output rows, so the prologue is paid once per block, not per row;
 *  - sums in a fixed order: each lane in order of its loads, the warp by a
 *    shuffle tree, the W warps in warp order: deterministic for a given W,
 *    and W depends only on the shape.
 * VEC: float4 loads (C % 4 == 0, inp and w 16-byte aligned). XS: inputs
 * staged in shared memory (N*C <= GEMV_XS_FLOATS). */
#define GEMV_MAX_ROWS 8
#define GEMV_WARPS 8
#define GEMV_THREADS (32 * GEMV_WARPS)
#define GEMV_UNROLL 4
#define GEMV_XS_FLOATS 12288 /* 48 KB: the default limit of dynamic shared memory */
#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */

__device__ __forceinline__ float gelu_tanh(float x) {
    const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

template <int VEC, int XS>
__global__ void __launch_bounds__(GEMV_THREADS)
    k_linear_small(float *out, const float *inp, const float *resid, const float *w,
                   const float *bias, const float *norm_w, const float *norm_b, int N, int C,
                   int64_t OC, int norm, float eps, int act, int W) {
    extern __shared__ float4 xs4[]; /* [N, C] when XS */
    float *xs = (float *)xs4;
    __shared__ float part[GEMV_MAX_ROWS][GEMV_WARPS];
    __shared__ float stat_mean[GEMV_MAX_ROWS], stat_rstd[GEMV_MAX_ROWS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (XS) {
        const int total = N * C;
        for (int i = threadIdx.x; i < total; i += GEMV_THREADS) xs[i] = inp[i];
        if (norm != OPS_NORM_NONE) {
            __syncthreads();
            if (warp < N) { /* warp r: row r's statistics, as k_layernorm/k_rmsnorm_forward */
                const float *x = xs + warp * C;
                float m = 0.0f, r;
                if (norm == OPS_NORM_LAYER) {
                    float sum = 0.0f;
                    for (int c = lane; c < C; c += 32) sum += x[c];
                    m = warp_sum(sum) / (float)C;
                    float v = 0.0f;
                    for (int c = lane; c < C; c += 32) v += (x[c] - m) * (x[c] - m);
                    r = 1.0f / sqrtf(warp_sum(v) / (float)C + eps);
                } else {
                    float ss = 0.0f;
                    for (int c = lane; c < C; c += 32) ss += x[c] * x[c];
                    r = 1.0f / sqrtf(warp_sum(ss) / (float)C + eps);
                }
                if (lane == 0) stat_mean[warp] = m, stat_rstd[warp] = r;
            }
            __syncthreads();
            for (int i = threadIdx.x; i < total; i += GEMV_THREADS) {
                const int r = i / C, c = i - r * C;
                xs[i] = norm == OPS_NORM_LAYER
                            ? (xs[i] - stat_mean[r]) * stat_rstd[r] * norm_w[c] + norm_b[c]
                            : xs[i] * stat_rstd[r] * norm_w[c];
            }
        }
        __syncthreads();
    }
    const int per_block = GEMV_WARPS / W, slice = warp % W, step = W * 32;
    const int64_t units_stride = (int64_t)gridDim.x * per_block;
    /* base is the same for the whole block: every thread meets the barriers */
    for (int64_t base = (int64_t)blockIdx.x * per_block; base < OC; base += units_stride) {
        const int64_t oc = base + warp / W;
        float acc[GEMV_MAX_ROWS];
#pragma unroll
        for (int r = 0; r < GEMV_MAX_ROWS; r++) acc[r] = 0.0f;
        if (oc < OC) {
            if (VEC) {
                const int C4 = C >> 2;
                const float4 *w4 = (const float4 *)(w + oc * (int64_t)C);
                for (int c0 = slice * 32 + lane; c0 < C4; c0 += step * GEMV_UNROLL) {
                    float4 a[GEMV_UNROLL];
#pragma unroll
                    for (int u = 0; u < GEMV_UNROLL; u++) { /* all loads first */
                        const int c = c0 + u * step;
                        a[u] = c < C4 ? __ldcs(w4 + c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                    }
#pragma unroll
                    for (int u = 0; u < GEMV_UNROLL; u++) {
                        const int c = c0 + u * step;
                        if (c < C4) {
#pragma unroll
                            for (int r = 0; r < GEMV_MAX_ROWS; r++)
                                if (r < N) {
                                    const float4 x = XS ? xs4[r * C4 + c]
                                                        : __ldg((const float4 *)(inp + (int64_t)r * C) + c);
                                    acc[r] += a[u].x * x.x + a[u].y * x.y + a[u].z * x.z + a[u].w * x.w;
                                }
                        }
                    }
                }
            } else {
                const float *wr = w + oc * (int64_t)C;
                for (int c0 = slice * 32 + lane; c0 < C; c0 += step * GEMV_UNROLL) {
                    float a[GEMV_UNROLL];
#pragma unroll
                    for (int u = 0; u < GEMV_UNROLL; u++) {
                        const int c = c0 + u * step;
                        a[u] = c < C ? __ldcs(wr + c) : 0.0f;
                    }
#pragma unroll
                    for (int u = 0; u < GEMV_UNROLL; u++) {
                        const int c = c0 + u * step;
                        if (c < C) {
#pragma unroll
                            for (int r = 0; r < GEMV_MAX_ROWS; r++)
                                if (r < N) acc[r] += a[u] * (XS ? xs[r * C + c] : __ldg(inp + (int64_t)r * C + c));
                        }
                    }
                }
            }
        }
        /* N is the same for every thread, so whole warps take part in each sum */
#pragma unroll
        for (int r = 0; r < GEMV_MAX_ROWS; r++)
            if (r < N) {
                acc[r] = warp_sum(acc[r]);
                if (W > 1 && lane == 0) part[r][warp] = acc[r];
            }
        int row = -1; /* the row this lane writes, and its sum */
        float t = 0.0f;
        if (W > 1) {
            __syncthreads();
            if (oc < OC && slice == 0 && lane < N) {
                for (int k = 0; k < W; k++) t += part[lane][warp + k];
                row = lane;
            }
            __syncthreads(); /* part is written again by the next row */
        } else if (oc < OC && lane < N) {
#pragma unroll
            for (int r = 0; r < GEMV_MAX_ROWS; r++)
                if (r == lane) t = acc[r];
            row = lane;
        }
        if (row >= 0) {
            if (bias) t += bias[oc];
            if (act == OPS_ACT_GELU) t = gelu_tanh(t);
            const int64_t at = (int64_t)row * OC + oc;
            if (resid) t = resid[at] + t; /* resid may be out: this thread reads, then writes */
            out[at] = t;
        }
    }
}

/* Warps per output row: enough warps in all (>= 4096) for the loads in
 * flight to cover the memory latency, at most 8 (one block) and at most one
 * per 32 loads of a row (no idle lanes), a power of two. */
static int gemv_warps_per_output(int64_t OC, int64_t loads_per_row) {
    int W = 1;
    while (W < GEMV_WARPS && OC * W < 4096 && (int64_t)W * 2 * 32 <= loads_per_row) W *= 2;
    return W;
}

static int g_sm_count = 0; /* set at start-up */

/* Can k_linear_small take this shape? N rows within GEMV_MAX_ROWS, int
 * indexing, and a norm only when the rows fit in shared memory. */
static int linear_small_fits(int64_t N, int64_t C, int64_t OC, int norm) {
    if (!g_gemv || N < 1 || N > GEMV_MAX_ROWS || C < 1 || C > (1 << 26) || OC < 1) return 0;
    return N * C <= GEMV_XS_FLOATS || norm == OPS_NORM_NONE;
}

/* Blocks of a persistent grid: as many as can be resident at once, from
 * the register-limited occupancy of each kernel (queried once at start-up,
 * outside any graph capture) and the shared memory a launch asks for. Too
 * many blocks would only cost a second wave, never a wrong result. */
static int g_linear_occupancy[2][2]; /* [VEC][XS]: blocks per SM without dynamic shared memory */
static int g_smem_per_sm = 0;

template <int VEC, int XS>
static void linear_small_occupancy(void) {
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_linear_small<VEC, XS>,
                                                      GEMV_THREADS, 0) != cudaSuccess) {
        cudaGetLastError();
        per_sm = 0;
    }
    g_linear_occupancy[VEC][XS] = per_sm > 0 ? per_sm : 2;
}

static void linear_small_init(void) {
    linear_small_occupancy<0, 0>();
    linear_small_occupancy<0, 1>();
    linear_small_occupancy<1, 0>();
    linear_small_occupancy<1, 1>();
}

template <int VEC, int XS>
static unsigned linear_small_grid(size_t smem, int64_t units) {
    int64_t per_sm = g_linear_occupancy[VEC][XS] > 0 ? g_linear_occupancy[VEC][XS] : 2;
    if (smem > 0 && g_smem_per_sm > 0) { /* static part ~0.3 KB, plus ~1 KB the system keeps */
        const int64_t by_smem = (int64_t)g_smem_per_sm / (int64_t)(smem + 2048);
        if (by_smem < per_sm) per_sm = by_smem;
    }
    if (per_sm < 1) per_sm = 1;
    const int64_t max_blocks = per_sm * (g_sm_count > 0 ? g_sm_count : 1);
    const int64_t b = units < max_blocks ? units : max_blocks;
    return (unsigned)(b < 1 ? 1 : b);
}

template <int VEC, int XS>
static void launch_linear_small(float *out, const float *inp, const float *resid, const float *w,
                                const float *bias, const float *norm_w, const float *norm_b,
                                int64_t N, int64_t C, int64_t OC, int norm, float eps, int act) {
    const int W = gemv_warps_per_output(OC, VEC ? C / 4 : C);
    const int64_t per_block = GEMV_WARPS / W;
    const size_t smem = XS ? (size_t)(N * C) * sizeof(float) : 0;
    const unsigned blocks = linear_small_grid<VEC, XS>(smem, (OC + per_block - 1) / per_block);
    k_linear_small<VEC, XS><<<blocks, GEMV_THREADS, smem, g_stream>>>(
        out, inp, resid, w, bias, norm_w, norm_b, (int)N, (int)C, OC, norm, eps, act, W);
}

/* The kernel for a shape linear_small_fits() accepted. */
static void linear_small(float *out, const float *inp, const float *resid, const float *w,
                         const float *bias, const float *norm_w, const float *norm_b, int64_t N,
                         int64_t C, int64_t OC, int norm, float eps, int act) {
    const int xs = N * C <= GEMV_XS_FLOATS;
    const int vec = C % 4 == 0 && ((uintptr_t)inp % 16) == 0 && ((uintptr_t)w % 16) == 0;
    if (vec && xs)
        launch_linear_small<1, 1>(out, inp, resid, w, bias, norm_w, norm_b, N, C, OC, norm, eps, act);
    else if (vec)
        launch_linear_small<1, 0>(out, inp, resid, w, bias, norm_w, norm_b, N, C, OC, norm, eps, act);
    else if (xs)
        launch_linear_small<0, 1>(out, inp, resid, w, bias, norm_w, norm_b, N, C, OC, norm, eps, act);
    else
        launch_linear_small<0, 0>(out, inp, resid, w, bias, norm_w, norm_b, N, C, OC, norm, eps, act);
}

/* Row-major out[M,N] (ld N) = alpha * A[M,K] * op(B) + beta * out, written
 * through the column-major cuBLAS with the usual transpose trick. */
__global__ void k_to_bf16(__nv_bfloat16 *dst, const float *src, int64_t n);

/* Elements a column-major operand spans: rows x cols with leading dimension ld. */
static int64_t gemm_span(int rows, int cols, int ld) { return (int64_t)ld * (cols - 1) + rows; }

/* C = A B (+ beta C), column-major, fp32 in and out (cublasSgemm's contract).
 * In bf16 mode (cuda_set_bf16) both operands are rounded to bf16 copies and
 * multiplied on the tensor cores with fp32 accumulation into the fp32 C, so
 * the weights, their gradients and the optimizer stay fp32 (master weights)
 * and only the products are bf16. */
/* The bf16 form on a staging area of gemm_bf16_stage_bytes(): A is rounded
 * into it unless a16 (A already in bf16) is given; B always is. */
static size_t gemm_bf16_stage_bytes(cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                    int k, int lda, int ldb, int a_given) {
    const int64_t a_n = ta == CUBLAS_OP_N ? gemm_span(m, k, lda) : gemm_span(k, m, lda);
    const int64_t b_n = tb == CUBLAS_OP_N ? gemm_span(k, n, ldb) : gemm_span(n, k, ldb);
    return (a_given ? 0 : align256((size_t)a_n * sizeof(__nv_bfloat16))) +
           (size_t)b_n * sizeof(__nv_bfloat16);
}

static void gemm_bf16(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                      const float *A, const __nv_bfloat16 *a16, int lda, const float *B, int ldb,
                      const float *beta, float *Cm, int ldc, char *stage) {
    const int64_t b_n = tb == CUBLAS_OP_N ? gemm_span(k, n, ldb) : gemm_span(n, k, ldb);
    if (!a16) {
        const int64_t a_n = ta == CUBLAS_OP_N ? gemm_span(m, k, lda) : gemm_span(k, m, lda);
        __nv_bfloat16 *a_tmp = (__nv_bfloat16 *)stage;
        k_to_bf16<<<grid_for(a_n, 256), 256, 0, g_stream>>>(a_tmp, A, a_n);
        a16 = a_tmp;
        stage += align256((size_t)a_n * sizeof(__nv_bfloat16));
    }
    __nv_bfloat16 *b16 = (__nv_bfloat16 *)stage;
    k_to_bf16<<<grid_for(b_n, 256), 256, 0, g_stream>>>(b16, B, b_n);
    CUBLAS_CHECK(cublasGemmEx(g_blas, ta, tb, m, n, k, &ONE, a16, CUDA_R_16BF, lda, b16,
                              CUDA_R_16BF, ldb, beta, Cm, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
}

static void gemm_f32(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                     const float *A, int lda, const float *B, int ldb, const float *beta,
                     float *Cm, int ldc) {
    if (!g_bf16) {
        CUBLAS_CHECK(cublasSgemm(g_blas, ta, tb, m, n, k, &ONE, A, lda, B, ldb, beta, Cm, ldc));
        return;
    }
    char *stage = (char *)scratch16(gemm_bf16_stage_bytes(ta, tb, m, n, k, lda, ldb, 0));
    gemm_bf16(ta, tb, m, n, k, A, NULL, lda, B, ldb, beta, Cm, ldc, stage);
}

static void cu_matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                              int64_t N, int64_t C, int64_t OC) {
    /* out[N,OC] = inp[N,C] w[OC,C]^T (+ bias): column-major out^T = w * inp^T */
    if (linear_small_fits(N, C, OC, OPS_NORM_NONE)) {
        linear_small(out, inp, NULL, w, bias, NULL, NULL, N, C, OC, OPS_NORM_NONE, 0.0f,
                     OPS_ACT_NONE);
        op_done("matmul_forward (gemv)");
        return;
    }
    float *beta = &ZERO;
    if (bias) {
        k_fill_bias<<<grid_for(N * OC, 256), 256, 0, g_stream>>>(out, bias, N, OC);
        beta = &ONE;
    }
    gemm_f32(CUBLAS_OP_T, CUBLAS_OP_N, (int)OC, (int)N, (int)C, w, (int)C, inp, (int)C, beta, out,
             (int)OC);
    op_done("matmul_forward");
}

static void cu_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout,
                               const float *inp, const float *w, int64_t N, int64_t C,
                               int64_t OC) {
    /* dinp[N,C] += dout[N,OC] w[OC,C]: column-major dinp^T = w^T(as stored) * dout^T */
    if (dinp)
        gemm_f32(CUBLAS_OP_N, CUBLAS_OP_N, (int)C, (int)N, (int)OC, w, (int)C, dout, (int)OC, &ONE,
                 dinp, (int)C);
    /* dw[OC,C] += dout^T inp: column-major dw^T[C,OC] = inp^T[C,N] * dout[N,OC] */
    if (dw)
        gemm_f32(CUBLAS_OP_N, CUBLAS_OP_T, (int)C, (int)OC, (int)N, inp, (int)C, dout, (int)OC, &ONE,
                 dw, (int)C);
    if (dbias) column_reduce<0>(dbias, NULL, dout, NULL, NULL, NULL, N, OC);
    op_done("matmul_backward");
}

/* -------------------------------------------------------- embeddings ----- */

__global__ void k_embedding_forward(float *out, const int32_t *tokens, const int32_t *pos,
                                    const float *wte, const float *wpe, int64_t N, int64_t C) {
    const int64_t total = N * C;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t n = i / C, c = i % C;
        float e = wte[(int64_t)tokens[n] * C + c];
        if (wpe) e += wpe[(int64_t)pos[n] * C + c];
        out[i] = e;
    }
}

static void cu_embedding_forward(float *out, const int32_t *tokens, const int32_t *pos,
                                 const float *wte, const float *wpe, int64_t N, int64_t C) {
    k_embedding_forward<<<grid_for(N * C, 256), 256, 0, g_stream>>>(out, tokens, pos, wte, wpe, N, C);
    op_done("embedding_forward");
}

/* Deterministic scatter-add of rows: thread (column c, bucket p) walks all
 * rows in order and adds those whose index falls in bucket p, so each table
 * element receives its rows in row order, exactly as the CPU's serial loop. */
#define EMB_BUCKETS 64

__global__ void k_embedding_backward(float *dtable, const float *dout, const int32_t *index,
                                     int64_t N, int64_t C) {
    const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int p = blockIdx.y;
    if (c >= C) return;
    for (int64_t n = 0; n < N; n++) {
        int32_t id = index[n];
        if (id % EMB_BUCKETS != p) continue;
        dtable[(int64_t)id * C + c] += dout[n * C + c];
    }
}

static void cu_embedding_backward(float *dwte, float *dwpe, const float *dout,
                                  const int32_t *tokens, const int32_t *pos, int64_t N,
                                  int64_t C) {
    dim3 grid((unsigned)((C + 127) / 128), EMB_BUCKETS);
    k_embedding_backward<<<grid, 128, 0, g_stream>>>(dwte, dout, tokens, N, C);
    if (dwpe) k_embedding_backward<<<grid, 128, 0, g_stream>>>(dwpe, dout, pos, N, C);
    op_done("embedding_backward");
}

/* -------------------------------------------------------------- norms ---- */

/* One warp per row; 8 rows per block of 256 threads. */
#define ROWS_PER_BLOCK 8

__global__ void k_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w,
                                  int64_t N, int64_t C, float eps) {
    const int64_t n = blockIdx.x * (int64_t)ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (n >= N) return;
    const float *x = inp + n * C;
    float ss = 0.0f;
    for (int64_t c = lane; c < C; c += 32) ss += x[c] * x[c];
    ss = warp_sum(ss);
    const float r = 1.0f / sqrtf(ss / (float)C + eps);
    float *o = out + n * C;
    for (int64_t c = lane; c < C; c += 32) o[c] = x[c] * r * w[c];
    if (lane == 0) rstd[n] = r;
}

static unsigned row_blocks(int64_t N) { return (unsigned)((N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK); }

static void cu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w,
                               int64_t N, int64_t C, float eps) {
    if (N > 0) k_rmsnorm_forward<<<row_blocks(N), 32 * ROWS_PER_BLOCK, 0, g_stream>>>(out, rstd, inp, w, N, C, eps);
    op_done("rmsnorm_forward");
}

__global__ void k_rmsnorm_backward(float *dinp, const float *dout, const float *inp,
                                   const float *w, const float *rstd, int64_t N, int64_t C) {
    const int64_t n = blockIdx.x * (int64_t)ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (n >= N) return;
    const float *d = dout + n * C, *x = inp + n * C;
    const float r = rstd[n];
    float dot = 0.0f;
    for (int64_t c = lane; c < C; c += 32) dot += d[c] * w[c] * x[c] * r;
    dot = warp_sum(dot) / (float)C;
    float *di = dinp + n * C;
    for (int64_t c = lane; c < C; c += 32) di[c] += r * (d[c] * w[c] - x[c] * r * dot);
}

static void cu_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp,
                                const float *w, const float *rstd, int64_t N, int64_t C) {
    if (N > 0) k_rmsnorm_backward<<<row_blocks(N), 32 * ROWS_PER_BLOCK, 0, g_stream>>>(dinp, dout, inp, w, rstd, N, C);
    column_reduce<1>(dw, NULL, dout, inp, NULL, rstd, N, C);
    op_done("rmsnorm_backward");
}

__global__ void k_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                    const float *w, const float *b, int64_t N, int64_t C,
                                    float eps) {
    const int64_t n = blockIdx.x * (int64_t)ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (n >= N) return;
    const float *x = inp + n * C;
    float s = 0.0f;
    for (int64_t c = lane; c < C; c += 32) s += x[c];
    const float m = warp_sum(s) / (float)C;
    float v = 0.0f;
    for (int64_t c = lane; c < C; c += 32) v += (x[c] - m) * (x[c] - m);
    const float var = warp_sum(v) / (float)C;
    const float r = 1.0f / sqrtf(var + eps);
    float *o = out + n * C;
    for (int64_t c = lane; c < C; c += 32) o[c] = (x[c] - m) * r * w[c] + b[c];
    if (lane == 0) {
        mean[n] = m;
        rstd[n] = r;
    }
}

static void cu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                 const float *w, const float *b, int64_t N, int64_t C, float eps) {
    if (N > 0)
        k_layernorm_forward<<<row_blocks(N), 32 * ROWS_PER_BLOCK, 0, g_stream>>>(out, mean, rstd, inp, w, b, N, C, eps);
    op_done("layernorm_forward");
}

__global__ void k_layernorm_backward(float *dinp, const float *dout, const float *inp,
                                     const float *w, const float *mean, const float *rstd,
                                     int64_t N, int64_t C) {
    const int64_t n = blockIdx.x * (int64_t)ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (n >= N) return;
    const float *d = dout + n * C, *x = inp + n * C;
    const float m = mean[n], r = rstd[n];
    float a = 0.0f, bsum = 0.0f;
    for (int64_t c = lane; c < C; c += 32) {
        float xhat = (x[c] - m) * r, g = d[c] * w[c];
        a += g;
        bsum += g * xhat;
    }
    const float dnorm_mean = warp_sum(a) / (float)C;
    const float dnorm_norm_mean = warp_sum(bsum) / (float)C;
    float *di = dinp + n * C;
    for (int64_t c = lane; c < C; c += 32) {
        float xhat = (x[c] - m) * r, g = d[c] * w[c];
        di[c] += r * (g - dnorm_mean - xhat * dnorm_norm_mean);
    }
}

static void cu_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                                  const float *inp, const float *w, const float *mean,
                                  const float *rstd, int64_t N, int64_t C) {
    if (N > 0)
        k_layernorm_backward<<<row_blocks(N), 32 * ROWS_PER_BLOCK, 0, g_stream>>>(dinp, dout, inp, w, mean, rstd, N, C);
    column_reduce<2>(dw, db, dout, inp, mean, rstd, N, C);
    op_done("layernorm_backward");
}

/* --------------------------------------------------------------- RoPE ---- */

__global__ void k_rope(float *base, int64_t stride, const int32_t *pos, const float *cos_sin,
                       int64_t N, int64_t H, int64_t hd, float sign) {
    const int64_t half = hd / 2, total = N * H * half;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = t % half, h = (t / half) % H, n = t / (half * H);
        const float *cs = cos_sin + (int64_t)pos[n] * half * 2;
        float c = cs[2 * i], s = sign * cs[2 * i + 1];
        float *v = base + n * stride + h * hd;
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c - x2 * s;
        v[i + half] = x2 * c + x1 * s;
    }
}

static void cu_rope(OpsHeads x, const int32_t *pos, const float *cos_sin, int64_t N, int64_t H,
                    int64_t hd, int inverse) {
    k_rope<<<grid_for(N * H * (hd / 2), 256), 256, 0, g_stream>>>(x.base, x.row_stride, pos, cos_sin, N, H, hd,
                                                     inverse ? -1.0f : 1.0f);
    op_done("rope");
}

/* ---------------------------------------------------------- attention ---- */

/* dst[b, h, t, d] = src[(b*T + t), (h / group) heads in, d]: packs heads into
 * contiguous [B, H, T, hd] blocks (K and V are expanded to the query heads). */
__global__ void k_pack_heads(float *dst, const float *src, int64_t stride, int64_t B, int64_t T,
                             int64_t H, int64_t group, int64_t hd) {
    const int64_t total = B * H * T * hd;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t d = i % hd, t = (i / hd) % T, h = (i / (hd * T)) % H, b = i / (hd * T * H);
        dst[i] = src[(b * T + t) * stride + (h / group) * hd + d];
    }
}

/* out[(b*T + t), h*hd + d] = src[b, h, t, d] (overwrites); out rows are NH*hd. */
__global__ void k_unpack_heads(float *out, const float *src, int64_t B, int64_t T, int64_t H,
                               int64_t hd) {
    const int64_t total = B * H * T * hd;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t d = i % hd, t = (i / hd) % T, h = (i / (hd * T)) % H, b = i / (hd * T * H);
        out[(b * T + t) * (H * hd) + h * hd + d] = src[i];
    }
}

/* dst[(b*T + t), kvh*hd + d] (row stride `stride`) += sum over the group's
 * query heads g of src[b, kvh*group + g, t, d], in head order. */
__global__ void k_accumulate_heads(float *dst, int64_t stride, const float *src, int64_t B,
                                   int64_t T, int64_t KVH, int64_t group, int64_t hd) {
    const int64_t total = B * KVH * T * hd, H = KVH * group;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t d = i % hd, t = (i / hd) % T, kvh = (i / (hd * T)) % KVH, b = i / (hd * T * KVH);
        float s = 0.0f;
        for (int64_t g = 0; g < group; g++)
            s += src[((b * H + kvh * group + g) * T + t) * hd + d];
        dst[(b * T + t) * stride + kvh * hd + d] += s;
    }
}

/* Causal, start-masked softmax of each [T] row of att in place (scores are
 * already scaled). Row i of sequence b keeps keys [s, i]; rows before s (and
 * every key outside [s, i]) become 0. One warp per row. */
__global__ void k_softmax_causal(float *att, const int32_t *start, int64_t B, int64_t NH,
                                 int64_t T) {
    const int64_t row = blockIdx.x * (int64_t)ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= B * NH * T) return;
    const int64_t i = row % T, b = row / (NH * T);
    const int64_t s = start ? start[b] : 0;
    float *a = att + row * T;
    if (i < s) {
        for (int64_t j = lane; j < T; j += 32) a[j] = 0.0f;
        return;
    }
    float mx = -INFINITY;
    for (int64_t j = s + lane; j <= i; j += 32) mx = fmaxf(mx, a[j]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int64_t j = s + lane; j <= i; j += 32) {
        float e = expf(a[j] - mx);
        a[j] = e;
        sum += e;
    }
    const float inv = 1.0f / warp_sum(sum);
    __syncwarp(); /* the loop below touches keys another lane wrote */
    for (int64_t j = lane; j < T; j += 32) a[j] = (j >= s && j <= i) ? a[j] * inv : 0.0f;
}

/* datt -> d(pre-softmax scores) in place, times `scale` (the 1/sqrt(hd) of
 * the scores): dpre_ij = att_ij (datt_ij - sum_k att_ik datt_ik) scale. */
__global__ void k_softmax_backward(float *datt, const float *att, const int32_t *start,
                                   int64_t B, int64_t NH, int64_t T, float scale) {
    const int64_t row = blockIdx.x * (int64_t)ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= B * NH * T) return;
    const int64_t i = row % T, b = row / (NH * T);
    const int64_t s = start ? start[b] : 0;
    float *d = datt + row * T;
    const float *a = att + row * T;
    float dsum = 0.0f;
    if (i >= s)
        for (int64_t j = s + lane; j <= i; j += 32) dsum += d[j] * a[j];
    dsum = warp_sum(dsum);
    __syncwarp(); /* the loop below overwrites keys another lane read */
    for (int64_t j = lane; j < T; j += 32)
        d[j] = (i >= s && j >= s && j <= i) ? a[j] * (d[j] - dsum) * scale : 0.0f;
}

/* Strided-batched products over B*NH (b, h) blocks, row-major views:
 *  scores[T,T] = alpha * X[T,hd] Y[T,hd]^T        (nt)
 *  out[T,hd]   = P[T,T] Y[T,hd]                   (nn)
 *  out[T,hd]   = P[T,T]^T Y[T,hd]                 (tn) */
/* cublasSgemmStridedBatched's contract (C = alpha A B, beta 0), or in bf16
 * mode (cuda_set_bf16) the same products on bf16 copies of A and B with fp32
 * accumulation into the fp32 C, as gemm_f32. The operands are whole packed
 * buffers (batch blocks of sA / sB elements), converted in one launch each. */
static void bmm_f32(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                    const float *A, int lda, long long sA, const float *B, int ldb, long long sB,
                    float *Cm, int ldc, long long sC, int batch) {
    if (!g_bf16) {
        CUBLAS_CHECK(cublasSgemmStridedBatched(g_blas, ta, tb, m, n, k, &alpha, A, lda, sA, B, ldb,
                                               sB, &ZERO, Cm, ldc, sC, batch));
        return;
    }
    const int64_t a_n = (int64_t)sA * batch, b_n = (int64_t)sB * batch;
    const size_t a_b = align256((size_t)a_n * sizeof(__nv_bfloat16));
    char *buf = (char *)scratch16(a_b + (size_t)b_n * sizeof(__nv_bfloat16));
    __nv_bfloat16 *a16 = (__nv_bfloat16 *)buf, *b16 = (__nv_bfloat16 *)(buf + a_b);
    k_to_bf16<<<grid_for(a_n, 256), 256, 0, g_stream>>>(a16, A, a_n);
    k_to_bf16<<<grid_for(b_n, 256), 256, 0, g_stream>>>(b16, B, b_n);
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(g_blas, ta, tb, m, n, k, &alpha, a16, CUDA_R_16BF,
                                            lda, sA, b16, CUDA_R_16BF, ldb, sB, &ZERO, Cm,
                                            CUDA_R_32F, ldc, sC, batch, CUBLAS_COMPUTE_32F,
                                            CUBLAS_GEMM_DEFAULT));
}

static void bmm_scores(float *scores, const float *X, const float *Y, int64_t T, int64_t hd,
                       int64_t batch, float alpha) {
    bmm_f32(CUBLAS_OP_T, CUBLAS_OP_N, (int)T, (int)T, (int)hd, alpha, Y, (int)hd,
            (long long)(T * hd), X, (int)hd, (long long)(T * hd), scores, (int)T,
            (long long)(T * T), (int)batch);
}

static void bmm_pv(float *out, const float *P, const float *Y, int64_t T, int64_t hd,
                   int64_t batch) {
    bmm_f32(CUBLAS_OP_N, CUBLAS_OP_N, (int)hd, (int)T, (int)T, 1.0f, Y, (int)hd,
            (long long)(T * hd), P, (int)T, (long long)(T * T), out, (int)hd, (long long)(T * hd),
            (int)batch);
}

static void bmm_ptv(float *out, const float *P, const float *Y, int64_t T, int64_t hd,
                    int64_t batch) {
    bmm_f32(CUBLAS_OP_N, CUBLAS_OP_T, (int)hd, (int)T, (int)T, 1.0f, Y, (int)hd,
            (long long)(T * hd), P, (int)T, (long long)(T * T), out, (int)hd, (long long)(T * hd),
            (int)batch);
}

static void cu_attention_forward(float *out, float *att, OpsHeads q, OpsHeads k, OpsHeads v,
                                 const int32_t *start, int64_t B, int64_t T, int64_t NH,
                                 int64_t KV, int64_t hd) {
    const int64_t group = NH / KV, blk = B * NH * T * hd;
    const size_t bytes = (size_t)blk * sizeof(float);
    Carve cv = {(char *)scratch(4 * align256(bytes)), 0};
    float *Q = (float *)carve(&cv, bytes), *K = (float *)carve(&cv, bytes);
    float *V = (float *)carve(&cv, bytes), *Y = (float *)carve(&cv, bytes);
    const unsigned g = grid_for(blk, 256);
    k_pack_heads<<<g, 256, 0, g_stream>>>(Q, q.base, q.row_stride, B, T, NH, 1, hd);
    k_pack_heads<<<g, 256, 0, g_stream>>>(K, k.base, k.row_stride, B, T, NH, group, hd);
    k_pack_heads<<<g, 256, 0, g_stream>>>(V, v.base, v.row_stride, B, T, NH, group, hd);
    bmm_scores(att, Q, K, T, hd, B * NH, 1.0f / sqrtf((float)hd));
    const int64_t rows = B * NH * T;
    k_softmax_causal<<<row_blocks(rows), 32 * ROWS_PER_BLOCK, 0, g_stream>>>(att, start, B, NH, T);
    bmm_pv(Y, att, V, T, hd, B * NH);
    k_unpack_heads<<<g, 256, 0, g_stream>>>(out, Y, B, T, NH, hd);
    op_done("attention_forward");
}

static void cu_attention_backward(OpsHeads dq, OpsHeads dk, OpsHeads dv, const float *dout,
                                  const float *att, OpsHeads q, OpsHeads k, OpsHeads v,
                                  const int32_t *start, int64_t B, int64_t T, int64_t NH,
                                  int64_t KV, int64_t hd) {
    const int64_t group = NH / KV, blk = B * NH * T * hd;
    const size_t bytes = (size_t)blk * sizeof(float);
    const size_t att_bytes = (size_t)(B * NH * T * T) * sizeof(float);
    Carve cv = {(char *)scratch(7 * align256(bytes) + align256(att_bytes)), 0};
    float *Q = (float *)carve(&cv, bytes), *K = (float *)carve(&cv, bytes);
    float *V = (float *)carve(&cv, bytes), *dY = (float *)carve(&cv, bytes);
    float *dQ = (float *)carve(&cv, bytes), *dK = (float *)carve(&cv, bytes);
    float *dV = (float *)carve(&cv, bytes), *datt = (float *)carve(&cv, att_bytes);
    const unsigned g = grid_for(blk, 256);
    k_pack_heads<<<g, 256, 0, g_stream>>>(Q, q.base, q.row_stride, B, T, NH, 1, hd);
    k_pack_heads<<<g, 256, 0, g_stream>>>(K, k.base, k.row_stride, B, T, NH, group, hd);
    k_pack_heads<<<g, 256, 0, g_stream>>>(V, v.base, v.row_stride, B, T, NH, group, hd);
    k_pack_heads<<<g, 256, 0, g_stream>>>(dY, dout, NH * hd, B, T, NH, 1, hd);
    bmm_scores(datt, dY, V, T, hd, B * NH, 1.0f); /* datt_ij = dout_i . v_j */
    bmm_ptv(dV, att, dY, T, hd, B * NH);          /* dv_j = sum_i att_ij dout_i */
    const int64_t rows = B * NH * T;
    k_softmax_backward<<<row_blocks(rows), 32 * ROWS_PER_BLOCK, 0, g_stream>>>(datt, att, start, B, NH, T,
                                                                  1.0f / sqrtf((float)hd));
    bmm_pv(dQ, datt, K, T, hd, B * NH);  /* dq_i = sum_j dpre_ij k_j */
    bmm_ptv(dK, datt, Q, T, hd, B * NH); /* dk_j = sum_i dpre_ij q_i */
    k_accumulate_heads<<<g, 256, 0, g_stream>>>(dq.base, dq.row_stride, dQ, B, T, NH, 1, hd);
    const unsigned gkv = grid_for(B * KV * T * hd, 256);
    k_accumulate_heads<<<gkv, 256, 0, g_stream>>>(dk.base, dk.row_stride, dK, B, T, KV, group, hd);
    k_accumulate_heads<<<gkv, 256, 0, g_stream>>>(dv.base, dv.row_stride, dV, B, T, KV, group, hd);
    op_done("attention_backward");
}

/* Cached attention: one block of 512 threads per (row n, query head h). The
 * row's scores live in scratch [N*NH, max_len]. At decode batch 1 there are
 * only NH blocks, so each must keep many loads in flight: 16 warps share the
 * keys for the scores, and the weighted sum of V splits the keys over
 * CACHED_THREADS / hd thread groups (measured on an H200: with 128 threads
 * and one serial pass over the keys per output, decode at batch 1 took
 * ~1.1 ms/token whatever the launch overhead). */
#define CACHED_THREADS 512

/* Softmax of the block-shared scores s[0..L) in place (every thread of the
 * block calls it; sh is the reduction scratch of block_max/block_sum). */
__device__ static void block_softmax(float *s, int64_t L, float *sh) {
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x) mx = fmaxf(mx, s[j]);
    mx = block_max(mx, sh);
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
        float e = expf(s[j] - mx);
        s[j] = e;
        sum += e;
    }
    const float inv = 1.0f / block_sum(sum, sh);
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x) s[j] *= inv;
}

__global__ void __launch_bounds__(CACHED_THREADS) k_attention_cached(float *out, const float *qbase, int64_t qstride,
                                   float *const *k_cache, float *const *v_cache,
                                   const int64_t *len, float *scores, int64_t NH, int64_t KV,
                                   int64_t hd, int64_t max_len) {
    __shared__ float sh[32];
    const int64_t nh = blockIdx.x, n = nh / NH, h = nh % NH, kvh = h / (NH / KV);
    const int64_t L = len[n];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const float scale = 1.0f / sqrtf((float)hd);
    const float *qi = qbase + n * qstride + h * hd;
    const float *kc = k_cache[n] + kvh * max_len * hd, *vc = v_cache[n] + kvh * max_len * hd;
    float *s = scores + nh * max_len;
    for (int64_t j = warp; j < L; j += nw) { /* a warp per key */
        float dot = 0.0f;
        for (int64_t d = lane; d < hd; d += 32) dot += qi[d] * kc[j * hd + d];
        dot = warp_sum(dot);
        if (lane == 0) s[j] = dot * scale;
    }
    __syncthreads();
    block_softmax(s, L, sh);
    __syncthreads();
    float *o = out + n * NH * hd + h * hd;
    if (hd > (int64_t)blockDim.x) { /* heads wider than the block: a thread per output */
        for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
            float acc = 0.0f;
            for (int64_t j = 0; j < L; j++) acc += s[j] * vc[j * hd + d];
            o[d] = acc;
        }
        return;
    }
    /* thread t: output d = t % hd over keys j = g, g + G, ... (g = t / hd);
     * the G group sums are then added in group order (deterministic) */
    __shared__ float part[CACHED_THREADS];
    const int64_t G = (int64_t)blockDim.x / hd, t = threadIdx.x, d = t % hd, g = t / hd;
    float acc = 0.0f;
    if (g < G)
        for (int64_t j = g; j < L; j += G) acc += s[j] * vc[j * hd + d];
    part[t] = acc;
    __syncthreads();
    if (t < hd) {
        float sum_g = 0.0f;
        for (int64_t k = 0; k < G; k++) sum_g += part[k * hd + t];
        o[t] = sum_g;
    }
}

static void cu_attention_cached(float *out, OpsHeads q, float *const *k_cache,
                                float *const *v_cache, const int64_t *len, int64_t N, int64_t NH,
                                int64_t KV, int64_t hd, int64_t max_len) {
    if (N <= 0) return;
    float *scores = (float *)scratch((size_t)(N * NH * max_len) * sizeof(float));
    k_attention_cached<<<(unsigned)(N * NH), CACHED_THREADS, 0, g_stream>>>(
        out, q.base, q.row_stride, k_cache, v_cache, len, scores, NH, KV, hd, max_len);
    op_done("attention_cached");
}

__global__ void k_pos_to_len(int64_t *len, const int32_t *pos, int64_t N) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N;
         i += (int64_t)gridDim.x * blockDim.x)
        len[i] = (int64_t)pos[i] + 1;
}

__global__ void k_kv_write(float *const *k_cache, float *const *v_cache, const float *kbase,
                           int64_t kstride, const float *vbase, int64_t vstride,
                           const int32_t *pos, int64_t N, int64_t KV, int64_t hd,
                           int64_t max_len) {
    const int64_t total = N * KV * hd;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t d = t % hd, h = (t / hd) % KV, i = t / (hd * KV);
        int64_t at = (h * max_len + pos[i]) * hd + d;
        k_cache[i][at] = kbase[i * kstride + h * hd + d];
        v_cache[i][at] = vbase[i * vstride + h * hd + d];
    }
}

static void cu_kv_write(float *const *k_cache, float *const *v_cache, OpsHeads k, OpsHeads v,
                        const int32_t *pos, int64_t N, int64_t KV, int64_t hd, int64_t max_len) {
    if (N <= 0) return;
    k_kv_write<<<grid_for(N * KV * hd, 256), 256, 0, g_stream>>>(k_cache, v_cache, k.base, k.row_stride, v.base,
                                                    v.row_stride, pos, N, KV, hd, max_len);
    op_done("kv_write");
}

/* ops.h attention_cached_write: the cache write and the attention of a
 * decode step in one kernel, a block per (row n, query head h) as above.
 * Row n's new key and value (position pos[n]) are read from k/v, not from
 * the cache, so no block waits for another: the first query head of each
 * kv head writes them into the cache, and no block of this launch reads
 * that position from the cache (rows have pairwise different caches, the
 * op's precondition). Scores: a thread per key, its dot product over d in
 * order (float4 when hd % 4 == 0), so a key costs one round of independent
 * loads instead of a warp reduction per key. Softmax and the weighted sum
 * of V as in k_attention_cached. q is staged in shared memory (hd floats).
 * VEC (hd % 4 == 0, k 16-byte aligned) also reads the cache as float4: cache
 * blocks must then be 16-byte aligned, as the model's are (cudaMalloc base +
 * multiples of KV * max_len * hd floats). */
template <int VEC>
__global__ void __launch_bounds__(CACHED_THREADS)
    k_attention_cached_write(float *out, const float *qbase, int64_t qstride, const float *kbase,
                             int64_t kstride, const float *vbase, int64_t vstride,
                             float *const *k_cache, float *const *v_cache, const int32_t *pos,
                             float *scores, int64_t NH, int64_t KV, int64_t hd, int64_t max_len) {
    __shared__ float sh[32];
    __shared__ float part[CACHED_THREADS];
    extern __shared__ float4 q4[]; /* [hd] */
    float *qs = (float *)q4;
    const int64_t nh = blockIdx.x, n = nh / NH, h = nh % NH, group = NH / KV, kvh = h / group;
    const int64_t p = pos[n], L = p + 1;
    const float scale = 1.0f / sqrtf((float)hd);
    const float *qi = qbase + n * qstride + h * hd;
    const float *knew = kbase + n * kstride + kvh * hd, *vnew = vbase + n * vstride + kvh * hd;
    float *kc = k_cache[n] + kvh * max_len * hd, *vc = v_cache[n] + kvh * max_len * hd;
    for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = qi[d];
    if (h % group == 0)
        for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
            kc[p * hd + d] = knew[d];
            vc[p * hd + d] = vnew[d];
        }
    __syncthreads();
    float *s = scores + nh * max_len;
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
        const float *kj = j == p ? knew : kc + j * hd;
        float dot = 0.0f;
        if (VEC) {
            const float4 *k4 = (const float4 *)kj;
#pragma unroll 8
            for (int64_t d4 = 0; d4 < hd / 4; d4++) {
                const float4 a = k4[d4], b = q4[d4];
                dot += b.x * a.x + b.y * a.y + b.z * a.z + b.w * a.w;
            }
        } else {
#pragma unroll 8
            for (int64_t d = 0; d < hd; d++) dot += qs[d] * kj[d];
        }
        s[j] = dot * scale;
    }
    __syncthreads();
    block_softmax(s, L, sh);
    __syncthreads();
    float *o = out + n * NH * hd + h * hd;
    if (hd > (int64_t)blockDim.x) { /* heads wider than the block: a thread per output */
        for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
            float acc = 0.0f;
            for (int64_t j = 0; j < L; j++) acc += s[j] * (j == p ? vnew : vc + j * hd)[d];
            o[d] = acc;
        }
        return;
    }
    const int64_t G = (int64_t)blockDim.x / hd, t = threadIdx.x, d = t % hd, g = t / hd;
    float acc = 0.0f;
    if (g < G) {
#pragma unroll 4
        for (int64_t j = g; j < L; j += G) acc += s[j] * (j == p ? vnew : vc + j * hd)[d];
    }
    part[t] = acc;
    __syncthreads();
    if (t < hd) {
        float sum_g = 0.0f;
        for (int64_t k = 0; k < G; k++) sum_g += part[k * hd + t];
        o[t] = sum_g;
    }
}

static void cu_attention_cached_write(float *out, OpsHeads q, OpsHeads k, OpsHeads v,
                                      float *const *k_cache, float *const *v_cache,
                                      const int32_t *pos, int64_t N, int64_t NH, int64_t KV,
                                      int64_t hd, int64_t max_len) {
    if (N <= 0) return;
    if (!g_fused) { /* the two ops it stands for; row lengths pos + 1 into scratch */
        Carve cv = {(char *)scratch(align256((size_t)N * sizeof(int64_t)) +
                                    align256((size_t)(N * NH * max_len) * sizeof(float))), 0};
        int64_t *len = (int64_t *)carve(&cv, (size_t)N * sizeof(int64_t));
        float *scores = (float *)carve(&cv, (size_t)(N * NH * max_len) * sizeof(float));
        k_pos_to_len<<<grid_for(N, 256), 256, 0, g_stream>>>(len, pos, N);
        k_kv_write<<<grid_for(N * KV * hd, 256), 256, 0, g_stream>>>(k_cache, v_cache, k.base, k.row_stride,
                                                                   v.base, v.row_stride, pos, N, KV, hd, max_len);
        k_attention_cached<<<(unsigned)(N * NH), CACHED_THREADS, 0, g_stream>>>(
            out, q.base, q.row_stride, k_cache, v_cache, len, scores, NH, KV, hd, max_len);
        op_done("attention_cached_write (unfused)");
        return;
    }
    float *scores = (float *)scratch((size_t)(N * NH * max_len) * sizeof(float));
    const int vec = hd % 4 == 0 && (uintptr_t)k.base % 16 == 0 && k.row_stride % 4 == 0;
    const size_t smem = align256((size_t)hd * sizeof(float));
    if (vec)
        k_attention_cached_write<1><<<(unsigned)(N * NH), CACHED_THREADS, smem, g_stream>>>(
            out, q.base, q.row_stride, k.base, k.row_stride, v.base, v.row_stride, k_cache, v_cache,
            pos, scores, NH, KV, hd, max_len);
    else
        k_attention_cached_write<0><<<(unsigned)(N * NH), CACHED_THREADS, smem, g_stream>>>(
            out, q.base, q.row_stride, k.base, k.row_stride, v.base, v.row_stride, k_cache, v_cache,
            pos, scores, NH, KV, hd, max_len);
    op_done("attention_cached_write");
}

/* -------------------------------------------------------- activations ---- */

__global__ void k_swiglu_forward(float *out, const float *gu, int64_t N, int64_t F) {
    const int64_t total = N * F;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t n = i / F, f = i % F;
        float g = gu[n * 2 * F + f], u = gu[n * 2 * F + F + f];
        out[i] = g / (1.0f + expf(-g)) * u;
    }
}

__global__ void k_swiglu_backward(float *dgu, const float *dout, const float *gu, int64_t N,
                                  int64_t F) {
    const int64_t total = N * F;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t n = i / F, f = i % F;
        float g = gu[n * 2 * F + f], u = gu[n * 2 * F + F + f], d = dout[i];
        float sig = 1.0f / (1.0f + expf(-g)), silu = g * sig;
        dgu[n * 2 * F + f] += d * u * sig * (1.0f + g * (1.0f - sig));
        dgu[n * 2 * F + F + f] += d * silu;
    }
}

__global__ void k_gelu_forward(float *out, const float *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float xi = x[i], u = GELU_SCALE * (xi + 0.044715f * xi * xi * xi);
        out[i] = 0.5f * xi * (1.0f + tanhf(u));
    }
}

__global__ void k_gelu_backward(float *dinp, const float *x, const float *dout, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float xi = x[i], u = GELU_SCALE * (xi + 0.044715f * xi * xi * xi);
        float t = tanhf(u), sech2 = 1.0f - t * t;
        float local = 0.5f * (1.0f + t) +
                      0.5f * xi * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * xi * xi);
        dinp[i] += local * dout[i];
    }
}

__global__ void k_add(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

__global__ void k_accumulate(float *acc, const float *a, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        acc[i] += a[i];
}

__global__ void k_scale(float *out, const float *inp, float s, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = inp[i] * s;
}

static void cu_swiglu_forward(float *out, const float *gate_up, int64_t N, int64_t F) {
    k_swiglu_forward<<<grid_for(N * F, 256), 256, 0, g_stream>>>(out, gate_up, N, F);
    op_done("swiglu_forward");
}
static void cu_swiglu_backward(float *dgate_up, const float *dout, const float *gate_up,
                               int64_t N, int64_t F) {
    k_swiglu_backward<<<grid_for(N * F, 256), 256, 0, g_stream>>>(dgate_up, dout, gate_up, N, F);
    op_done("swiglu_backward");
}
static void cu_gelu_forward(float *out, const float *inp, int64_t n) {
    k_gelu_forward<<<grid_for(n, 256), 256, 0, g_stream>>>(out, inp, n);
    op_done("gelu_forward");
}
static void cu_gelu_backward(float *dinp, const float *inp, const float *dout, int64_t n) {
    k_gelu_backward<<<grid_for(n, 256), 256, 0, g_stream>>>(dinp, inp, dout, n);
    op_done("gelu_backward");
}
static void cu_add(float *out, const float *a, const float *b, int64_t n) {
    k_add<<<grid_for(n, 256), 256, 0, g_stream>>>(out, a, b, n);
    op_done("add");
}
static void cu_accumulate(float *acc, const float *a, int64_t n) {
    k_accumulate<<<grid_for(n, 256), 256, 0, g_stream>>>(acc, a, n);
    op_done("accumulate");
}
static void cu_scale(float *out, const float *inp, float s, int64_t n) {
    k_scale<<<grid_for(n, 256), 256, 0, g_stream>>>(out, inp, s, n);
    op_done("scale");
}

/* ------------------------------------------------- fused linear layer ---- */

/* ops.h linear_fused. Small N: one k_linear_small launch (norm in its
 * prologue, bias, GELU and the residual add in its epilogue). Otherwise, or
 * with PONDER_CUDA_FUSED=0, the ops it stands for, one kernel each, with
 * temporaries from the scratch buffer. */
static void cu_linear_fused(float *out, const float *inp, const float *resid, const float *w,
                            const float *bias, const float *norm_w, const float *norm_b,
                            int64_t N, int64_t C, int64_t OC, int norm, float eps, int act) {
    if (N <= 0 || OC <= 0) return;
    if (g_fused && linear_small_fits(N, C, OC, norm)) {
        linear_small(out, inp, resid, w, bias, norm_w, norm_b, N, C, OC, norm, eps, act);
        op_done("linear_fused (gemv)");
        return;
    }
    const size_t hbytes = norm != OPS_NORM_NONE ? (size_t)(N * C) * sizeof(float) : 0;
    const size_t ybytes = resid ? (size_t)(N * OC) * sizeof(float) : 0;
    const size_t sbytes = (size_t)N * sizeof(float);
    Carve cv = {(char *)scratch(align256(hbytes) + align256(ybytes) + 2 * align256(sbytes)), 0};
    const float *h = inp;
    if (norm != OPS_NORM_NONE) {
        float *hn = (float *)carve(&cv, hbytes);
        float *mean = (float *)carve(&cv, sbytes), *rstd = (float *)carve(&cv, sbytes);
        if (norm == OPS_NORM_RMS)
            k_rmsnorm_forward<<<row_blocks(N), 32 * ROWS_PER_BLOCK, 0, g_stream>>>(hn, rstd, inp, norm_w, N, C, eps);
        else
            k_layernorm_forward<<<row_blocks(N), 32 * ROWS_PER_BLOCK, 0, g_stream>>>(hn, mean, rstd, inp, norm_w,
                                                                                norm_b, N, C, eps);
        h = hn;
    }
    float *y = resid ? (float *)carve(&cv, ybytes) : out;
    cu_matmul_forward(y, h, w, bias, N, C, OC);
    if (act == OPS_ACT_GELU) k_gelu_forward<<<grid_for(N * OC, 256), 256, 0, g_stream>>>(y, y, N * OC);
    if (resid) k_add<<<grid_for(N * OC, 256), 256, 0, g_stream>>>(out, resid, y, N * OC);
    op_done("linear_fused");
}

/* ------------------------------------------------------------ LM head ---- */

/* Rows per chunk: the chunk's logits stay near 128 MB whatever V is. */
static int64_t lm_chunk_rows(int64_t V) {
    int64_t r = ((int64_t)32 * 1024 * 1024) / V;
    return r < 32 ? 32 : (r > 8192 ? 8192 : r);
}

#define ACTIVE_THREADS 1024

/* Indices of the rows with mask != 0 (every row when mask is NULL), in row
 * order, and their count. One block: thread j takes the j-th contiguous
 * segment of rows; thread 0 turns the segments' counts into offsets. */
__global__ void __launch_bounds__(ACTIVE_THREADS)
    k_active_rows(int32_t *idx, int64_t *count, const float *mask, int64_t N) {
    __shared__ int64_t off[ACTIVE_THREADS];
    const int64_t per = (N + blockDim.x - 1) / blockDim.x;
    const int64_t lo = (int64_t)threadIdx.x * per < N ? (int64_t)threadIdx.x * per : N;
    const int64_t hi = lo + per < N ? lo + per : N;
    int64_t c = 0;
    for (int64_t n = lo; n < hi; n++) c += !mask || mask[n] != 0.0f;
    off[threadIdx.x] = c;
    __syncthreads();
    if (threadIdx.x == 0) {
        int64_t sum = 0;
        for (unsigned j = 0; j < blockDim.x; j++) {
            const int64_t v = off[j];
            off[j] = sum;
            sum += v;
        }
        *count = sum;
    }
    __syncthreads();
    int64_t at = off[threadIdx.x];
    for (int64_t n = lo; n < hi; n++)
        if (!mask || mask[n] != 0.0f) idx[at++] = (int32_t)n;
}

/* Lists the active rows on the device; only their count comes to the host
 * (it sizes the chunk loop): no per-token copy, so an RL update whose losses
 * run on the device (ops.h policy_loss) moves nothing per-token to the host. */
static int64_t *g_active_count = NULL;

static int64_t active_rows(int32_t *d_idx, const float *mask, int64_t N) {
    if (!g_active_count) CUDA_CHECK(cudaMalloc((void **)&g_active_count, sizeof(int64_t)));
    k_active_rows<<<1, ACTIVE_THREADS, 0, g_stream>>>(d_idx, g_active_count, mask, N);
    int64_t a = 0;
    cu_download(&a, g_active_count, sizeof a);
    return a;
}

__global__ void k_gather_rows(float *dst, const float *src, const int32_t *idx, int64_t R,
                              int64_t C) {
    const int64_t total = R * C;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = src[(int64_t)idx[i / C] * C + i % C];
}

__global__ void k_scatter_add_rows(float *dst, const float *src, const int32_t *idx, int64_t R,
                                   int64_t C) {
    const int64_t total = R * C;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[(int64_t)idx[i / C] * C + i % C] += src[i];
}

#define HEAD_THREADS 256

/* One block per chunk row: log-sum-exp, target log-prob and entropy. Sums use
 * shifted logits (z - max), as on the CPU. */
__global__ void k_lm_head_rows(float *logp, float *entropy, float *lse, const float *z,
                               const int32_t *idx, const int32_t *targets, int64_t V) {
    __shared__ float sh[32];
    const int64_t r = blockIdx.x, n = idx[r];
    const float *zr = z + r * V;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, zr[j]);
    mx = block_max(mx, sh);
    float se = 0.0f, sz = 0.0f;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
        float d = zr[j] - mx, e = expf(d);
        se += e;
        sz += e * d;
    }
    const float sum = block_sum(se, sh);
    const float sum_pz = block_sum(sz, sh);
    if (threadIdx.x == 0) {
        float log_sum = logf(sum), l = mx + log_sum;
        lse[n] = l;
        logp[n] = zr[targets[n]] - l;
        if (entropy) entropy[n] = log_sum - sum_pz / sum;
    }
}

/* z (logits) -> d(logits) in place: dz_j = dlogp (onehot_j - p_j) - dent p_j (log p_j + H). */
__global__ void k_lm_head_dlogits(float *z, const int32_t *idx, const float *lse,
                                  const float *dlogp, const float *dentropy,
                                  const int32_t *targets, int64_t V) {
    __shared__ float sh[32];
    const int64_t r = blockIdx.x, n = idx[r];
    float *zr = z + r * V;
    const float l = lse[n], dl = dlogp ? dlogp[n] : 0.0f, de = dentropy ? dentropy[n] : 0.0f;
    const int32_t tgt = targets[n];
    float H = 0.0f;
    if (de != 0.0f) {
        float acc = 0.0f;
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
            float lp = zr[j] - l;
            acc -= expf(lp) * lp;
        }
        H = block_sum(acc, sh);
    }
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
        float lp = zr[j] - l, p = expf(lp);
        float g = -dl * p - de * p * (lp + H);
        if (j == tgt) g += dl;
        zr[j] = g;
    }
}

/* bf16 mode in the LM head: the [V,C] weight is rounded once per op call (it
 * is an operand of every chunk's products) into the front of the bf16
 * scratch, and each product's other operands into the staging area behind
 * it. w16 NULL: fp32 (or TF32) mode, the plain gemm_f32. */
typedef struct LmBf16 {
    __nv_bfloat16 *w16;
    char *stage;
} LmBf16;

/* backward: the staging area also holds hc for dw's product (both operands
 * rounded); forward: only the chunk's hc. */
static LmBf16 lm_bf16(const float *w, int64_t V, int64_t C, int64_t R, int backward) {
    LmBf16 b = {NULL, NULL};
    if (!g_bf16) return b;
    const size_t wb = align256((size_t)(V * C) * sizeof(__nv_bfloat16));
    const size_t hcb = align256((size_t)(R * C) * sizeof(__nv_bfloat16));
    const size_t zb = align256((size_t)(R * V) * sizeof(__nv_bfloat16));
    char *buf = (char *)scratch16(wb + (backward ? hcb + zb : hcb));
    b.w16 = (__nv_bfloat16 *)buf;
    b.stage = buf + wb;
    k_to_bf16<<<grid_for(V * C, 256), 256, 0, g_stream>>>(b.w16, w, V * C);
    return b;
}

/* A product whose A operand is the weight w. */
static void lm_gemm_w(const LmBf16 *b, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                      int k, const float *w, int lda, const float *B, int ldb, const float *beta,
                      float *Cm, int ldc) {
    if (!b->w16) gemm_f32(ta, tb, m, n, k, w, lda, B, ldb, beta, Cm, ldc);
    else gemm_bf16(ta, tb, m, n, k, w, b->w16, lda, B, ldb, beta, Cm, ldc, b->stage);
}

/* A product of two per-chunk operands (dw += dz^T hc), staged behind w16. */
static void lm_gemm_other(const LmBf16 *b, cublasOperation_t ta, cublasOperation_t tb, int m,
                          int n, int k, const float *A, int lda, const float *B, int ldb,
                          const float *beta, float *Cm, int ldc) {
    if (!b->w16) gemm_f32(ta, tb, m, n, k, A, lda, B, ldb, beta, Cm, ldc);
    else gemm_bf16(ta, tb, m, n, k, A, NULL, lda, B, ldb, beta, Cm, ldc, b->stage);
}

static void cu_lm_head_forward(float *logp, float *entropy, float *lse, const float *h,
                               const float *w, const int32_t *targets, const float *mask,
                               int64_t N, int64_t C, int64_t V) {
    cu_zero(logp, (size_t)N * sizeof(float));
    cu_zero(lse, (size_t)N * sizeof(float));
    if (entropy) cu_zero(entropy, (size_t)N * sizeof(float));
    const int64_t R = lm_chunk_rows(V);
    const size_t idx_b = (size_t)N * sizeof(int32_t), hc_b = (size_t)(R * C) * sizeof(float);
    const size_t z_b = (size_t)(R * V) * sizeof(float);
    Carve cv = {(char *)scratch(align256(idx_b) + align256(hc_b) + align256(z_b)), 0};
    int32_t *idx = (int32_t *)carve(&cv, idx_b);
    float *hc = (float *)carve(&cv, hc_b), *z = (float *)carve(&cv, z_b);
    const int64_t A = active_rows(idx, mask, N);
    LmBf16 b = lm_bf16(w, V, C, R, 0);
    for (int64_t r0 = 0; r0 < A; r0 += R) {
        const int64_t rows = A - r0 < R ? A - r0 : R;
        k_gather_rows<<<grid_for(rows * C, 256), 256, 0, g_stream>>>(hc, h, idx + r0, rows, C);
        lm_gemm_w(&b, CUBLAS_OP_T, CUBLAS_OP_N, (int)V, (int)rows, (int)C, w, (int)C, hc, (int)C,
                  &ZERO, z, (int)V);
        k_lm_head_rows<<<(unsigned)rows, HEAD_THREADS, 0, g_stream>>>(logp, entropy, lse, z, idx + r0, targets, V);
    }
    op_done("lm_head_forward");
}

static void cu_lm_head_backward(float *dh, float *dw, const float *dlogp, const float *dentropy,
                                const float *h, const float *w, const int32_t *targets,
                                const float *lse, const float *mask, int64_t N, int64_t C,
                                int64_t V) {
    const int64_t R = lm_chunk_rows(V);
    const size_t idx_b = (size_t)N * sizeof(int32_t), hc_b = (size_t)(R * C) * sizeof(float);
    const size_t z_b = (size_t)(R * V) * sizeof(float);
    Carve cv = {(char *)scratch(align256(idx_b) + 2 * align256(hc_b) + align256(z_b)), 0};
    int32_t *idx = (int32_t *)carve(&cv, idx_b);
    float *hc = (float *)carve(&cv, hc_b), *dhc = (float *)carve(&cv, hc_b);
    float *z = (float *)carve(&cv, z_b);
    const int64_t A = active_rows(idx, mask, N);
    LmBf16 b = lm_bf16(w, V, C, R, 1);
    for (int64_t r0 = 0; r0 < A; r0 += R) {
        const int64_t rows = A - r0 < R ? A - r0 : R;
        k_gather_rows<<<grid_for(rows * C, 256), 256, 0, g_stream>>>(hc, h, idx + r0, rows, C);
        lm_gemm_w(&b, CUBLAS_OP_T, CUBLAS_OP_N, (int)V, (int)rows, (int)C, w, (int)C, hc, (int)C,
                  &ZERO, z, (int)V);
        k_lm_head_dlogits<<<(unsigned)rows, HEAD_THREADS, 0, g_stream>>>(z, idx + r0, lse, dlogp, dentropy,
                                                           targets, V);
        /* dhc[rows,C] = dz[rows,V] w[V,C] */
        lm_gemm_w(&b, CUBLAS_OP_N, CUBLAS_OP_N, (int)C, (int)rows, (int)V, w, (int)C, z, (int)V,
                  &ZERO, dhc, (int)C);
        k_scatter_add_rows<<<grid_for(rows * C, 256), 256, 0, g_stream>>>(dh, dhc, idx + r0, rows, C);
        /* dw[V,C] += dz^T hc */
        lm_gemm_other(&b, CUBLAS_OP_N, CUBLAS_OP_T, (int)C, (int)V, (int)rows, hc, (int)C, z,
                      (int)V, &ONE, dw, (int)C);
    }
    op_done("lm_head_backward");
}

/* ---------------------------------------------------------- optimizer ---- */

#define SS_BLOCK 4096 /* values per block, as the CPU's ELEMENTWISE_BLOCK */

/* Float sum within each 4096-value block, stored as double. */
__global__ void k_sum_squares_blocks(double *part, const float *x, int64_t n) {
    __shared__ float sh[32];
    const int64_t b = blockIdx.x, i0 = b * SS_BLOCK;
    const int64_t i1 = i0 + SS_BLOCK < n ? i0 + SS_BLOCK : n;
    float s = 0.0f;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) s += x[i] * x[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) part[b] = (double)s;
}

/* Block j (of 256 threads): out[j] = sum_i part[j * n + i] in double, by a
 * fixed-shape tree, so the result repeats bit for bit. */
#define SUM_THREADS 256
__global__ void __launch_bounds__(SUM_THREADS) k_sum_columns(double *out, const double *part,
                                                             int64_t n) {
    __shared__ double sh[SUM_THREADS];
    const double *p = part + (int64_t)blockIdx.x * n;
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += p[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}

static double cu_sum_squares(const float *x, int64_t n) {
    if (n <= 0) return 0.0;
    const int64_t nb = (n + SS_BLOCK - 1) / SS_BLOCK;
    double *part = (double *)scratch((size_t)(nb + 1) * sizeof(double));
    k_sum_squares_blocks<<<(unsigned)nb, 256, 0, g_stream>>>(part, x, n);
    k_sum_columns<<<1, SUM_THREADS, 0, g_stream>>>(part + nb, part, nb);
    double total = 0.0;
    cu_download(&total, part + nb, sizeof total);
    op_done("sum_squares");
    return total;
}

__global__ void k_adamw(float *p, const float *g, float *m, float *v, int64_t n, float lr,
                        float b1, float b2, float eps, float wd, float grad_scale, float bc1,
                        float bc2) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float gi = g[i] * grad_scale;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float mhat = mi / bc1, vhat = vi / bc2;
        p[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p[i]);
    }
}

static void cu_adamw(float *param, const float *grad, float *m, float *v, int64_t n, float lr,
                     float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                     int64_t t) {
    if (n <= 0) return;
    float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    k_adamw<<<grid_for(n, 256), 256, 0, g_stream>>>(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay,
                                       grad_scale, bc1, bc2);
    op_done("adamw");
}

/* ---------------------------------------------------------- RL losses ---- */

/* The policy and value losses of algos/loss.h on per-token arrays [S,T]
 * (ops.h policy_loss / value_loss). Per-token arithmetic is algos/
 * loss_token.h itself, compiled for the device: the same formulas and tie
 * rules as the host, in double as there. One block per row: the row's token
 * count (grpo weights), its mean log-ratio (sequence level), every token's
 * gradient, and the row's partial sums by fixed-order block reductions; then
 * one block per sum adds the rows' partials in a fixed order. No atomics:
 * the result repeats bit for bit. Differences from the host come from the
 * summation order (the host adds tokens one by one) and from the device's
 * exp (CUDA's double exp need not round as glibc's does); a tie the host
 * reaches through exp of a nonzero argument may therefore fall the other way
 * here. exp(0) = 1 on both, so on-policy ties (rho = 1) agree. */

#define LOSS_THREADS 256
#define POLICY_PARTS (OPS_POLICY_NSUMS + 1) /* the sums, then sequence level's sum_t w dpg/drho */

/* Sum over a block (a multiple of 32 threads, at most 1024), in double;
 * every thread gets the result. `sh` holds 32 doubles. Fixed order. */
__device__ double block_sum_d(double v, double *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads(); /* sh may still be read from a previous call */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    double t = lane < nw ? sh[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    return t;
}

/* Mask-1 tokens of row `row` (a block's count). */
__device__ int64_t row_tokens(const float *mask, int64_t row, int64_t T, double *sh) {
    double c = 0.0;
    for (int64_t t = threadIdx.x; t < T; t += blockDim.x) c += mask[row + t] != 0.0f;
    return (int64_t)block_sum_d(c, sh);
}

/* One block per row i: dlogp / dentropy of its tokens, and its partial sums
 * in part[j * S + i] (j < POLICY_PARTS). The per-token steps follow
 * algos/loss_core.h algo_core_policy_row line by line. */
__global__ void __launch_bounds__(LOSS_THREADS)
    k_policy_loss_rows(float *dlogp, float *dentropy, double *part, const float *logp,
                       const float *entropy, const float *old_logp, const float *ref_logp,
                       const float *adv, const float *mask, OpsPolicyLoss c, int64_t S,
                       int64_t T) {
    __shared__ double sh[32];
    const int64_t i = blockIdx.x, row = i * T;
    const int64_t n_i = row_tokens(mask, row, T, sh);
    const double w = algo_token_row_weight(c.loss_type == 0, c.denom, n_i);
    const int seq = c.sequence_ratio;
    double seq_pass = 0.0, seq_lr = 0.0;
    if (seq) { /* GSPO: the row's clamped mean log-ratio */
        double s = 0.0;
        for (int64_t t = threadIdx.x; t < T; t += blockDim.x)
            if (mask[row + t] != 0.0f && old_logp)
                s += (double)logp[row + t] - (double)old_logp[row + t];
        s = block_sum_d(s, sh);
        seq_lr = algo_token_clamp_log_ratio(s / (n_i > 0 ? (double)n_i : 1.0), c.log_ratio_clamp,
                                            &seq_pass);
    }
    double acc[OPS_POLICY_NSUMS];
#pragma unroll
    for (int j = 0; j < OPS_POLICY_NSUMS; j++) acc[j] = 0.0;
    double seq_drho = 0.0;
    for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
        const int64_t k = row + t;
        if (mask[k] == 0.0f) {
            dlogp[k] = 0.0f;
            if (dentropy) dentropy[k] = 0.0f;
            continue;
        }
        double pass, lr = algo_token_clamp_log_ratio(
                         old_logp ? (double)logp[k] - (double)old_logp[k] : 0.0,
                         c.log_ratio_clamp, &pass);
        double rho = exp(seq ? seq_lr : lr);
        AlgoPgToken p = algo_token_pg(c.epsilon_low, c.epsilon_high, c.dual_clip_c, rho, adv[k]);
        acc[OPS_POLICY_PG] += w * p.value;
        acc[OPS_POLICY_TOKENS] += 1.0;
        acc[OPS_POLICY_LOW] += p.low, acc[OPS_POLICY_HIGH] += p.high;
        acc[OPS_POLICY_DUAL] += p.dual;
        acc[OPS_POLICY_RATIO] += rho;
        acc[OPS_POLICY_OLD_KL] += -lr;
        double g = 0.0; /* algo_core_token_extras */
        if (ref_logp) {
            double dk;
            double kv = algo_token_kl(c.kl_estimator, c.kl_clamp, logp[k], ref_logp[k], &dk);
            acc[OPS_POLICY_KL_SUM] += kv;
            if (c.kl_coef != 0.0) {
                acc[OPS_POLICY_KL] += w * kv;
                g += c.kl_coef * w * dk;
            }
        }
        if (entropy) {
            acc[OPS_POLICY_ENT_SUM] += entropy[k];
            acc[OPS_POLICY_ENT] += w * entropy[k];
        }
        if (dentropy) dentropy[k] = (float)(-c.entropy_coef * w);
        if (seq)
            seq_drho += w * p.drho;
        else
            g += w * p.drho * rho * pass;
        dlogp[k] = (float)g;
    }
#pragma unroll
    for (int j = 0; j < OPS_POLICY_NSUMS; j++) acc[j] = block_sum_d(acc[j], sh);
    if (seq) seq_drho = block_sum_d(seq_drho, sh);
    if (seq && n_i > 0) { /* each thread revisits the tokens it wrote above */
        const double g_seq = seq_drho * exp(seq_lr) * seq_pass / (double)n_i;
        for (int64_t t = threadIdx.x; t < T; t += blockDim.x)
            if (mask[row + t] != 0.0f) dlogp[row + t] = (float)((double)dlogp[row + t] + g_seq);
    }
    if (threadIdx.x == 0) {
        for (int j = 0; j < OPS_POLICY_NSUMS; j++) part[(int64_t)j * S + i] = acc[j];
        part[(int64_t)OPS_POLICY_NSUMS * S + i] = seq_drho;
    }
}


static void cu_policy_loss(float *dlogp, float *dentropy, double *sums, const float *logp,
                           const float *entropy, const float *old_logp, const float *ref_logp,
                           const float *advantages, const float *mask, OpsPolicyLoss cfg,
                           int64_t S, int64_t T) {
    if (S <= 0 || T <= 0) {
        cu_zero(sums, OPS_POLICY_NSUMS * sizeof(double));
        return;
    }
    double *part = (double *)scratch((size_t)(POLICY_PARTS * S) * sizeof(double));
    k_policy_loss_rows<<<(unsigned)S, LOSS_THREADS, 0, g_stream>>>(
        dlogp, dentropy, part, logp, entropy, old_logp, ref_logp, advantages, mask, cfg, S, T);
    k_sum_columns<<<OPS_POLICY_NSUMS, SUM_THREADS, 0, g_stream>>>(sums, part, S);
    op_done("policy_loss");
}

/* One block per row: dvalues and the row's partial sums (algo_core_value_loss). */
__global__ void __launch_bounds__(LOSS_THREADS)
    k_value_loss_rows(float *dvalues, double *part, const float *values, const float *old_values,
                      const float *returns, const float *mask, OpsValueLoss c, int64_t S,
                      int64_t T) {
    __shared__ double sh[32];
    const int64_t i = blockIdx.x, row = i * T;
    const int64_t n_i = row_tokens(mask, row, T, sh);
    const double w = algo_token_row_weight(c.loss_type == 0, c.denom, n_i);
    const int clip = c.clip_range > 0.0;
    double acc[OPS_VALUE_NSUMS] = {0.0, 0.0, 0.0, 0.0};
    for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
        const int64_t k = row + t;
        dvalues[k] = 0.0f;
        if (mask[k] == 0.0f) continue;
        double dv;
        int clipped;
        acc[OPS_VALUE_LOSS] += w * algo_token_value(values[k], returns[k],
                                                    clip ? old_values[k] : 0.0, c.clip_range,
                                                    clip, &dv, &clipped);
        dvalues[k] = (float)(0.5 * w * dv); /* loss = 0.5 * agg(...) */
        acc[OPS_VALUE_CLIPPED] += clipped;
        acc[OPS_VALUE_TOKENS] += 1.0;
        acc[OPS_VALUE_SUM] += values[k];
    }
#pragma unroll
    for (int j = 0; j < OPS_VALUE_NSUMS; j++) acc[j] = block_sum_d(acc[j], sh);
    if (threadIdx.x == 0)
        for (int j = 0; j < OPS_VALUE_NSUMS; j++) part[(int64_t)j * S + i] = acc[j];
}

static void cu_value_loss(float *dvalues, double *sums, const float *values,
                          const float *old_values, const float *returns, const float *mask,
                          OpsValueLoss cfg, int64_t S, int64_t T) {
    if (S <= 0 || T <= 0) {
        cu_zero(sums, OPS_VALUE_NSUMS * sizeof(double));
        return;
    }
    double *part = (double *)scratch((size_t)(OPS_VALUE_NSUMS * S) * sizeof(double));
    k_value_loss_rows<<<(unsigned)S, LOSS_THREADS, 0, g_stream>>>(dvalues, part, values, old_values,
                                                                  returns, mask, cfg, S, T);
    k_sum_columns<<<OPS_VALUE_NSUMS, SUM_THREADS, 0, g_stream>>>(sums, part, S);
    op_done("value_loss");
}

#define MAXDIFF_THREADS 1024

/* One block: the largest |a - b| over mask-1 positions (max is exact in any
 * order; `d > m` skips NaN as the host's comparison does). */
__global__ void __launch_bounds__(MAXDIFF_THREADS)
    k_masked_max_abs_diff(double *out, const float *a, const float *b, const float *mask,
                          int64_t n) {
    __shared__ double sh[MAXDIFF_THREADS];
    double m = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        if (mask[i] == 0.0f) continue;
        double d = fabs((double)a[i] - (double)b[i]);
        m = d > m ? d : m;
    }
    sh[threadIdx.x] = m;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w && sh[threadIdx.x + w] > sh[threadIdx.x])
            sh[threadIdx.x] = sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = sh[0];
}

static void cu_masked_max_abs_diff(double *out, const float *a, const float *b,
                                   const float *mask, int64_t n) {
    k_masked_max_abs_diff<<<1, MAXDIFF_THREADS, 0, g_stream>>>(out, a, b, mask, n);
    op_done("masked_max_abs_diff");
}

/* Token-level advantages (ops.h token_advantages): one thread per row runs
 * algos/advantage_token.h's row loops (the host's own code): token rewards
 * into `returns`, then GAE or the discounted returns over them in place. The
 * rows' KL means are added by k_sum_columns in a fixed order. Rows are short
 * and the work per token is small, so a thread per row is enough here. */
#define ADV_THREADS 128

__global__ void k_token_advantages(float *adv, float *returns, double *part, const double *scores,
                                   const float *old_logp, const float *ref_logp,
                                   const float *values, const float *mask, OpsAdvantage c,
                                   int64_t S, int64_t T) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= S) return;
    const int64_t row = i * T;
    const int use_kl = old_logp && ref_logp;
    int has_tokens;
    double kl_mean = algo_token_rewards_row(
        mask + row, T, scores[i], use_kl ? old_logp + row : NULL, use_kl ? ref_logp + row : NULL,
        use_kl, c.kl_estimator, c.kl_clamp, c.kl_coef, returns + row, &has_tokens);
    part[i] = has_tokens && use_kl ? kl_mean : 0.0;
    if (c.kind == OPS_ADV_GAE)
        algo_token_gae_row(mask + row, T, returns + row, values + row, c.gamma, c.lambda,
                           adv + row, returns + row);
    else
        algo_token_returns_row(mask + row, T, returns + row, c.gamma, returns + row);
}

static void cu_token_advantages(float *adv, float *returns, double *kl_sum, const double *scores,
                                const float *old_logp, const float *ref_logp, const float *values,
                                const float *mask, OpsAdvantage cfg, int64_t S, int64_t T) {
    if (S <= 0 || T <= 0) {
        cu_zero(kl_sum, sizeof(double));
        return;
    }
    double *part = (double *)scratch((size_t)S * sizeof(double));
    k_token_advantages<<<(unsigned)((S + ADV_THREADS - 1) / ADV_THREADS), ADV_THREADS, 0,
                         g_stream>>>(adv, returns, part, scores, old_logp, ref_logp, values, mask,
                                     cfg, S, T);
    k_sum_columns<<<1, SUM_THREADS, 0, g_stream>>>(kl_sum, part, S);
    op_done("token_advantages");
}

/* One block: count, sum and sum of squares over mask-1 positions, by
 * fixed-order block reductions in double (algo_moments_tokens adds them one
 * by one: the same sums in another order). */
__global__ void __launch_bounds__(MAXDIFF_THREADS)
    k_masked_moments(double *out, const float *x, const float *mask, int64_t n) {
    __shared__ double sh[32];
    double c = 0.0, s = 0.0, q = 0.0;
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
        if (mask[k] == 0.0f) continue;
        const double v = x[k];
        c += 1.0;
        s += v;
        q += v * v;
    }
    c = block_sum_d(c, sh);
    s = block_sum_d(s, sh);
    q = block_sum_d(q, sh);
    if (threadIdx.x == 0) out[0] = c, out[1] = s, out[2] = q;
}

static void cu_masked_moments(double *out, const float *x, const float *mask, int64_t n) {
    k_masked_moments<<<1, MAXDIFF_THREADS, 0, g_stream>>>(out, x, mask, n);
    op_done("masked_moments");
}

__global__ void k_whiten(float *out, const float *x, const float *mask, double mean, double scale,
                         int64_t n) {
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n;
         k += (int64_t)gridDim.x * blockDim.x)
        out[k] = algo_token_whiten(mask[k], x[k], mean, scale);
}

static void cu_whiten(float *out, const float *x, const float *mask, double mean, double scale,
                      int64_t n) {
    if (n <= 0) return;
    k_whiten<<<grid_for(n, 256), 256, 0, g_stream>>>(out, x, mask, mean, scale, n);
    op_done("whiten");
}

static void cu_copy_2d(float *dst, int64_t dst_stride, const float *src, int64_t src_stride,
                       int64_t rows, int64_t cols) {
    if (rows <= 0 || cols <= 0) return;
    CUDA_CHECK(cudaMemcpy2DAsync(dst, (size_t)dst_stride * sizeof(float), src,
                                 (size_t)src_stride * sizeof(float), (size_t)cols * sizeof(float),
                                 (size_t)rows, cudaMemcpyDeviceToDevice, g_stream));
    op_done("copy_2d");
}

/* ------------------------------------------------------------ graphs ----- */

/* A captured step: the instantiated graph, the scratch generation its
 * pointers belong to, and what to capture again if the scratch has moved. */
typedef struct CuGraph {
    cudaGraphExec_t exec;
    unsigned scratch_gen;
    void (*body)(void *);
    void *ctx;
} CuGraph;

/* Captures g->body(g->ctx) into g->exec; 0 (and g->exec NULL) on failure,
 * which is reported once per process and leaves no error pending. */
static int capture_into(CuGraph *g) {
    static int reported = 0;
    g->exec = NULL;
    if (!g_graphs || !g_capture_stream || !g_blas_workspace) {
        g_graph_refusals++;
        return 0;
    }
    cudaError_t e = cudaStreamBeginCapture(g_capture_stream, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
        cudaGetLastError();
        snprintf(g_capture_error, sizeof g_capture_error, "cudaStreamBeginCapture: %s",
                 cudaGetErrorString(e));
    } else {
        const unsigned gen = g_scratch_gen;
        g_capture_error[0] = '\0';
        g_capturing = 1;
        g_stream = g_capture_stream;
        /* cublasSetStream resets the workspace to cuBLAS's own pool, which
         * may allocate: inside a capture cuBLAS uses our preallocated one */
        CUBLAS_CHECK(cublasSetStream(g_blas, g_capture_stream));
        CUBLAS_CHECK(cublasSetWorkspace(g_blas, g_blas_workspace, BLAS_WORKSPACE_BYTES));
        g->body(g->ctx);
        cudaGraph_t graph = NULL;
        e = cudaStreamEndCapture(g_capture_stream, &graph);
        g_capturing = 0;
        g_stream = 0;
        CUBLAS_CHECK(cublasSetStream(g_blas, 0)); /* and cuBLAS's own workspace again */
        if (e != cudaSuccess && !g_capture_error[0])
            snprintf(g_capture_error, sizeof g_capture_error, "cudaStreamEndCapture: %s",
                     cudaGetErrorString(e));
        if (!g_capture_error[0] && gen != g_scratch_gen)
            snprintf(g_capture_error, sizeof g_capture_error, "scratch moved during the capture");
        if (!g_capture_error[0] && graph) {
            e = cudaGraphInstantiateWithFlags(&g->exec, graph, 0);
            if (e != cudaSuccess) {
                g->exec = NULL;
                snprintf(g_capture_error, sizeof g_capture_error, "cudaGraphInstantiate: %s",
                         cudaGetErrorString(e));
            }
        }
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError(); /* a failed capture leaves nothing pending for the next op */
    }
    if (!g->exec) {
        g_graph_refusals++;
        if (!reported++)
            fprintf(stderr, "ponder: CUDA graph capture failed, running steps without graphs: %s\n",
                    g_capture_error[0] ? g_capture_error : "unknown error");
        return 0;
    }
    g->scratch_gen = g_scratch_gen;
    g_graph_captures++;
    return 1;
}

static void *cu_graph_capture(void (*body)(void *), void *ctx) {
    if (!g_graphs) return NULL;
    CuGraph *g = (CuGraph *)calloc(1, sizeof *g);
    if (!g) return NULL;
    g->body = body, g->ctx = ctx;
    if (!capture_into(g)) {
        free(g);
        return NULL;
    }
    return g;
}

static void cu_graph_free(void *p) {
    CuGraph *g = (CuGraph *)p;
    if (!g) return;
    if (g->exec) CUDA_CHECK(cudaGraphExecDestroy(g->exec));
    free(g);
}

static void cu_graph_launch(void *p) {
    CuGraph *g = (CuGraph *)p;
    if (g->exec && g->scratch_gen != g_scratch_gen) { /* its scratch pointers are stale */
        CUDA_CHECK(cudaGraphExecDestroy(g->exec));
        g->exec = NULL;
    }
    if (!g->exec && !capture_into(g)) {
        g->body(g->ctx); /* eagerly: same ops, same results */
        return;
    }
    CUDA_CHECK(cudaEventRecord(g_ev_before, 0));
    CUDA_CHECK(cudaStreamWaitEvent(g_capture_stream, g_ev_before, 0));
    CUDA_CHECK(cudaGraphLaunch(g->exec, g_capture_stream));
    CUDA_CHECK(cudaEventRecord(g_ev_after, g_capture_stream));
    CUDA_CHECK(cudaStreamWaitEvent(0, g_ev_after, 0));
    g_graph_launches++;
    op_done("graph_launch");
}

/* ------------------------------------------------------------- table ----- */

static ModelOps make_table(void) {
    ModelOps o;
    memset(&o, 0, sizeof o);
    o.name = "cuda";
    o.alloc = cu_alloc;
    o.free = cu_free;
    o.zero = cu_zero;
    o.copy = cu_copy;
    o.device = 1;
    o.upload = cu_upload;
    o.download = cu_download;
    o.matmul_forward = cu_matmul_forward;
    o.matmul_backward = cu_matmul_backward;
    o.embedding_forward = cu_embedding_forward;
    o.embedding_backward = cu_embedding_backward;
    o.rmsnorm_forward = cu_rmsnorm_forward;
    o.rmsnorm_backward = cu_rmsnorm_backward;
    o.layernorm_forward = cu_layernorm_forward;
    o.layernorm_backward = cu_layernorm_backward;
    o.rope = cu_rope;
    o.attention_forward = cu_attention_forward;
    o.attention_backward = cu_attention_backward;
    o.attention_cached = cu_attention_cached;
    o.kv_write = cu_kv_write;
    o.attention_cached_write = cu_attention_cached_write;
    o.linear_fused = cu_linear_fused;
    o.swiglu_forward = cu_swiglu_forward;
    o.swiglu_backward = cu_swiglu_backward;
    o.gelu_forward = cu_gelu_forward;
    o.gelu_backward = cu_gelu_backward;
    o.add = cu_add;
    o.accumulate = cu_accumulate;
    o.scale = cu_scale;
    o.lm_head_forward = cu_lm_head_forward;
    o.lm_head_backward = cu_lm_head_backward;
    o.graph_capture = cu_graph_capture;
    o.graph_launch = cu_graph_launch;
    o.graph_free = cu_graph_free;
    o.policy_loss = cu_policy_loss;
    o.value_loss = cu_value_loss;
    o.masked_max_abs_diff = cu_masked_max_abs_diff;
    o.token_advantages = cu_token_advantages;
    o.masked_moments = cu_masked_moments;
    o.whiten = cu_whiten;
    o.copy_2d = cu_copy_2d;
    o.sum_squares = cu_sum_squares;
    o.adamw = cu_adamw;
    return o;
}

static ModelOps CUDA_OPS;

static void apply_math_mode(void) {
    CUBLAS_CHECK(cublasSetMathMode(g_blas, g_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
}

static int g_device_choice = -1; /* ops_cuda_choose_device, before init */
static int g_device = -1;        /* the device in use once initialised */

static int init_backend(void) {
    if (g_init) return g_init > 0;
    g_init = -1;
    char why[256];
    const int n_dev = cuda_device_count(why, sizeof why);
    if (n_dev <= 0) {
        snprintf(g_status, sizeof g_status, "%s", why);
        return 0;
    }
    const char *dev_env = getenv("PONDER_CUDA_DEVICE");
    int dev = g_device_choice >= 0 ? g_device_choice : dev_env ? atoi(dev_env) : 0;
    dev = (dev % n_dev + n_dev) % n_dev;
    g_device = dev;
    cudaError_t e = cudaSetDevice(dev);
    if (e != cudaSuccess) {
        snprintf(g_status, sizeof g_status, "cudaSetDevice(%d) failed: %s", dev,
                 cudaGetErrorString(e));
        cudaGetLastError();
        return 0;
    }
    cublasStatus_t s = cublasCreate(&g_blas);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(g_status, sizeof g_status, "cublasCreate failed: %s", cublas_name(s));
        return 0;
    }
    CUBLAS_CHECK(cublasSetStream(g_blas, 0));
    CUBLAS_CHECK(cublasSetPointerMode(g_blas, CUBLAS_POINTER_MODE_HOST));
    const char *sync = getenv("PONDER_CUDA_SYNC");
    g_sync_each = sync && sync[0] == '1';
    const char *tf32 = getenv("PONDER_CUDA_TF32");
    g_tf32 = tf32 && tf32[0] == '1';
    const char *bf16 = getenv("PONDER_CUDA_BF16");
    g_bf16 = bf16 && bf16[0] == '1';
    const char *graphs = getenv("PONDER_CUDA_GRAPHS"), *gemv = getenv("PONDER_CUDA_GEMV");
    g_graphs = !(graphs && graphs[0] == '0');
    g_gemv = !(gemv && gemv[0] == '0');
    const char *fused = getenv("PONDER_CUDA_FUSED");
    g_fused = !(fused && fused[0] == '0');
    if (cudaDeviceGetAttribute(&g_sm_count, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&g_smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) !=
            cudaSuccess) {
        cudaGetLastError();
        g_sm_count = 1, g_smem_per_sm = 0;
    }
    linear_small_init();
    /* for graph capture only; without them graphs stay off (not an error) */
    if (cudaStreamCreateWithFlags(&g_capture_stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&g_ev_before, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&g_ev_after, cudaEventDisableTiming) != cudaSuccess ||
        cudaMalloc(&g_blas_workspace, BLAS_WORKSPACE_BYTES) != cudaSuccess) {
        cudaGetLastError();
        g_capture_stream = NULL, g_blas_workspace = NULL; /* graphs stay off */
        g_graphs = 0;
    }
    apply_math_mode();
    CUDA_OPS = make_table();
    char desc[256];
    cuda_device_describe(desc, sizeof desc);
    snprintf(g_status, sizeof g_status, "ready: %s%s%s", desc, g_tf32 ? " (TF32 matmuls)" : "",
             g_bf16 ? " (bf16 GEMMs, fp32 master weights)" : "");
    g_init = 1;
    return 1;
}

extern "C" const ModelOps *ops_cuda(void) { return init_backend() ? &CUDA_OPS : NULL; }

extern "C" int ops_cuda_choose_device(int index) {
    if (g_init > 0) {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) return -1;
        return ((index % n + n) % n) == g_device ? 0 : -1;
    }
    g_device_choice = index < 0 ? 0 : index;
    return 0;
}

extern "C" const char *ops_cuda_status(void) {
    init_backend();
    return g_status;
}

/* --------------------------------------------------- helpers (bench) ----- */

extern "C" int cuda_device_count(char *why, size_t why_len) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        if (why && why_len) snprintf(why, why_len, "cudaGetDeviceCount: %s", cudaGetErrorString(e));
        cudaGetLastError();
        return 0;
    }
    if (n <= 0 && why && why_len) snprintf(why, why_len, "cudaGetDeviceCount found 0 devices");
    return n;
}

extern "C" int cuda_device_describe(char *buf, size_t len) {
    int dev = 0, drv = 0, rt = 0;
    cudaDeviceProp p;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
        cudaGetLastError();
        snprintf(buf, len, "no device");
        return 1;
    }
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    snprintf(buf, len, "%s (sm_%d%d, %d SMs, %.1f GiB, L2 %d MiB, driver %d.%d, runtime %d.%d)",
             p.name, p.major, p.minor, p.multiProcessorCount,
             (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), p.l2CacheSize / (1024 * 1024),
             drv / 1000, (drv % 1000) / 10, rt / 1000, (rt % 1000) / 10);
    return 0;
}

extern "C" void cuda_synchronize(void) { CUDA_CHECK(cudaDeviceSynchronize()); }

extern "C" void cuda_set_tf32(int on) {
    g_tf32 = on != 0;
    if (g_init > 0) apply_math_mode();
}

extern "C" void cuda_set_bf16(int on) { g_bf16 = on != 0; }
extern "C" int cuda_bf16_enabled(void) { return g_bf16; }

extern "C" size_t cuda_scratch_bytes(void) { return g_scratch.size + g_scratch16.size; }

extern "C" void cuda_set_graphs(int on) { g_graphs = on != 0 && g_capture_stream && g_blas_workspace; }
extern "C" int cuda_graphs_enabled(void) { return g_graphs; }
extern "C" void cuda_set_gemv(int on) { g_gemv = on != 0; }
extern "C" int cuda_gemv_enabled(void) { return g_gemv; }
extern "C" void cuda_set_fused(int on) { g_fused = on != 0; }
extern "C" int cuda_fused_enabled(void) { return g_fused; }

extern "C" void cuda_graph_stats(long long *captures, long long *launches, long long *refusals) {
    if (captures) *captures = g_graph_captures;
    if (launches) *launches = g_graph_launches;
    if (refusals) *refusals = g_graph_refusals;
}

__global__ void k_fill_random(float *x, int64_t n, uint32_t seed) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 16, h *= 0x7feb352du, h ^= h >> 15, h *= 0x846ca68bu, h ^= h >> 16;
        x[i] = (float)(h & 0xffffff) / 16777216.0f - 0.5f;
    }
}

__global__ void k_to_bf16(__nv_bfloat16 *dst, const float *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(src[i]);
}

extern "C" double cuda_gemm_tflops(int M, int N, int K, int mode, int iters) {
    if (!init_backend() || iters <= 0) return -1.0;
    const size_t a = (size_t)M * K, b = (size_t)K * N, c = (size_t)M * N;
    float *A = NULL, *B = NULL, *Cm = NULL;
    void *A16 = NULL, *B16 = NULL, *C16 = NULL;
    if (cudaMalloc(&A, a * 4) || cudaMalloc(&B, b * 4) || cudaMalloc(&Cm, c * 4)) {
        cudaGetLastError();
        cudaFree(A), cudaFree(B), cudaFree(Cm);
        return -1.0;
    }
    k_fill_random<<<grid_for((int64_t)a, 256), 256, 0, g_stream>>>(A, (int64_t)a, 1u);
    k_fill_random<<<grid_for((int64_t)b, 256), 256, 0, g_stream>>>(B, (int64_t)b, 2u);
    if (mode == 2) {
        if (cudaMalloc(&A16, a * 2) || cudaMalloc(&B16, b * 2) || cudaMalloc(&C16, c * 2)) {
            cudaGetLastError();
            cudaFree(A), cudaFree(B), cudaFree(Cm), cudaFree(A16), cudaFree(B16), cudaFree(C16);
            return -1.0;
        }
        k_to_bf16<<<grid_for((int64_t)a, 256), 256, 0, g_stream>>>((__nv_bfloat16 *)A16, A, (int64_t)a);
        k_to_bf16<<<grid_for((int64_t)b, 256), 256, 0, g_stream>>>((__nv_bfloat16 *)B16, B, (int64_t)b);
    }
    CUBLAS_CHECK(cublasSetMathMode(g_blas, mode == 1 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    double tflops = -1.0;
    for (int rep = 0; rep < 2; rep++) { /* rep 0 warms up */
        CUDA_CHECK(cudaEventRecord(e0, 0));
        for (int it = 0; it < (rep ? iters : 2); it++) {
            if (mode == 2)
                CUBLAS_CHECK(cublasGemmEx(g_blas, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &ONE, B16,
                                          CUDA_R_16BF, N, A16, CUDA_R_16BF, K, &ZERO, C16,
                                          CUDA_R_16BF, N, CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT));
            else
                CUBLAS_CHECK(cublasSgemm(g_blas, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &ONE, B, N, A,
                                         K, &ZERO, Cm, N));
        }
        CUDA_CHECK(cudaEventRecord(e1, 0));
        CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (rep) tflops = 2.0 * M * (double)N * K * iters / (ms * 1e-3) / 1e12;
    }
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    cudaFree(A), cudaFree(B), cudaFree(Cm), cudaFree(A16), cudaFree(B16), cudaFree(C16);
    apply_math_mode();
    op_done("gemm_tflops");
    return tflops;
}

extern "C" double cuda_copy_gbps(size_t bytes, int iters) {
    if (!init_backend() || iters <= 0) return -1.0;
    void *a = NULL, *b = NULL;
    if (cudaMalloc(&a, bytes) || cudaMalloc(&b, bytes)) {
        cudaGetLastError();
        cudaFree(a), cudaFree(b);
        return -1.0;
    }
    CUDA_CHECK(cudaMemset(a, 1, bytes));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    CUDA_CHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    CUDA_CHECK(cudaEventRecord(e0, 0));
    for (int i = 0; i < iters; i++) CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0));
    CUDA_CHECK(cudaEventRecord(e1, 0));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    cudaFree(a), cudaFree(b);
    return 2.0 * (double)bytes * iters / (ms * 1e-3) / 1e9;
}
