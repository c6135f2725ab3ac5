/* model/cuda/cuda_backend.h — CUDA-specific helpers beside the ops table
 * (ops_cuda() itself is declared in model/ops.h). Only present in builds with
 * PONDER_HAVE_CUDA; callers guard their includes with #ifdef PONDER_HAVE_CUDA.
 * Used by tests/test_cuda.c and bench/gpu_bench.c. */
#ifndef PONDER_MODEL_CUDA_BACKEND_H
#define PONDER_MODEL_CUDA_BACKEND_H

#include <stddef.h> /* size_t */

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices, 0 when there is none or the driver is unusable; on 0
 * `why` (may be NULL) receives the reason. Never aborts. */
int cuda_device_count(char *why, size_t why_len);

/* One line describing the current device (name, compute capability, SMs,
 * memory, driver and runtime versions) into buf. 0 on success. */
int cuda_device_describe(char *buf, size_t len);

/* Waits for all work queued on the device. */
void cuda_synchronize(void);

/* Matmul precision of the CUDA backend's cuBLAS calls: 0 = fp32 (default,
 * the parity mode), 1 = TF32 tensor cores (faster, ~1e-3 relative error).
 * PONDER_CUDA_TF32=1 in the environment sets 1 at start-up. */
void cuda_set_tf32(int on);

/* bf16 products with fp32 master weights: on, every GEMM of the model (the
 * linear layers', the LM head's and attention's, forward and backward)
 * rounds both operands to bf16 and runs on the tensor cores with fp32
 * accumulation into fp32 outputs; weights, gradients, optimizer state,
 * activations, norms, softmax and losses stay fp32. Off by
 * default (fp32 is the parity mode); PONDER_CUDA_BF16=1 sets it at start-up,
 * model.precision: bf16 in a config sets it for the run. */
void cuda_set_bf16(int on);
int cuda_bf16_enabled(void);

/* cuBLAS GEMM ceiling: C[M,N] = A[M,K] B[K,N] repeated `iters` times after a
 * warm-up on random data; returns achieved TFLOP/s (2MNK per product), or a
 * negative number on failure. mode: 0 = fp32 SGEMM, 1 = TF32, 2 = bf16 inputs
 * with fp32 accumulation (cublasGemmEx). */
double cuda_gemm_tflops(int M, int N, int K, int mode, int iters);

/* Device-to-device copy bandwidth in GB/s (bytes read + written), or < 0. */
double cuda_copy_gbps(size_t bytes, int iters);

/* Bytes of device memory in use by the backend's own scratch buffers. */
size_t cuda_scratch_bytes(void);

/* CUDA graphs for KV-cache decode steps (ops.h graph_*): on by default,
 * PONDER_CUDA_GRAPHS=0 in the environment turns them off at start-up. Off,
 * graph_capture refuses and the model runs each step op by op. A KV cache
 * that saw a refusal for a step size retries once, then stops asking. */
void cuda_set_graphs(int on);
int cuda_graphs_enabled(void);
/* The fused small-N GEMV for matmuls of <= 8 rows instead of cuBLAS: on by
 * default, PONDER_CUDA_GEMV=0 turns it off at start-up. */
void cuda_set_gemv(int on);
int cuda_gemv_enabled(void);
/* The fused decode ops (ops.h linear_fused: norm + GEMV + bias/GELU/residual
 * in one kernel; attention_cached_write: cache write inside the attention):
 * on by default, PONDER_CUDA_FUSED=0 turns them off at start-up. Off, the
 * same table entries run the kernels of the ops they stand for one by one
 * (the step as it was before the fusion, for comparisons). */
void cuda_set_fused(int on);
int cuda_fused_enabled(void);
/* Counters since start-up: graphs captured, replays, captures that failed. */
void cuda_graph_stats(long long *captures, long long *launches, long long *refusals);

#ifdef __cplusplus
}
#endif

#endif
