/* model/cuda/cuda_nccl.h — NCCL for gradient all-reduce between ranks that
 * each run a model on their own GPU. MPI starts the job and carries the
 * communicator's id (trainer/dist.c); NCCL then sums the gradients in device
 * memory, so they never cross to the host.
 *
 * Part of the CUDA backend (builds with PONDER_HAVE_CUDA). A CUDA build
 * without NCCL (CMake did not find nccl.h and libnccl) still has these
 * functions: cuda_nccl_available() is 0 and the others fail saying so.
 * Not thread-safe. */
#ifndef PONDER_MODEL_CUDA_NCCL_H
#define PONDER_MODEL_CUDA_NCCL_H

#include <stddef.h> /* size_t */

#ifdef __cplusplus
extern "C" {
#endif

/* NCCL's communicator id is 128 bytes (ncclUniqueId). */
#define CUDA_NCCL_ID_BYTES 128

typedef struct CudaNccl CudaNccl;

/* 1 when this build has NCCL. */
int cuda_nccl_available(void);

/* On one rank (the lowest): a fresh communicator id into id[CUDA_NCCL_ID_BYTES],
 * to be sent to the others. 0 on success, else -1 and the reason in why. */
int cuda_nccl_unique_id(unsigned char *id, char *why, size_t why_len);

/* Every rank, together: joins communicator `id` as `rank` of `nranks`, on the
 * current CUDA device (the backend's: call after ops_cuda()). Waits for all
 * ranks, polling NCCL's non-blocking init, at most timeout_s seconds (<= 0:
 * no limit). 0 on success, 1 on timeout, -1 on an error (why says which). */
int cuda_nccl_create(CudaNccl **out, const unsigned char *id, int nranks, int rank,
                     double timeout_s, char *why, size_t why_len);

/* In-place sum of n floats of device memory over the ranks; waits for the
 * result, polling, and gives up after timeout_s seconds (<= 0: no limit) by
 * aborting the communicator (it is unusable afterwards): returns 1 then, 0 on
 * success, -1 on an NCCL or CUDA error (why says which). */
int cuda_nccl_allreduce_sum(CudaNccl *c, float *dev, size_t n, double timeout_s, char *why,
                            size_t why_len);

void cuda_nccl_free(CudaNccl *c);

#ifdef __cplusplus
}
#endif

#endif
