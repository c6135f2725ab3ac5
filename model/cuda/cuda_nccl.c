/* model/cuda/cuda_nccl.c — see cuda_nccl.h. Every wait polls (NCCL's
 * non-blocking mode and cudaStreamQuery) so that a rank that never arrives
 * becomes a timeout, as with ponder's MPI collectives, instead of a hang. */
#define _POSIX_C_SOURCE 200809L
#include "model/cuda/cuda_nccl.h"

#include <stdio.h>  /* snprintf */
#include <stdlib.h> /* calloc, free */
#include <string.h> /* memcpy */
#include <time.h>   /* clock_gettime, nanosleep */

#ifdef PONDER_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

struct CudaNccl {
    ncclComm_t comm;
    int nranks, rank;
};

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* 20 us at first, up to 1 ms: short waits stay short, long ones leave the core. */
static void pause_poll(long *ns) {
    struct timespec t = {0, *ns};
    nanosleep(&t, NULL);
    if (*ns < 1000000) *ns *= 2;
}

static int nccl_failed(const char *what, ncclResult_t r, char *why, size_t why_len) {
    snprintf(why, why_len, "%s: %s", what, ncclGetErrorString(r));
    return -1;
}

/* Waits until the communicator's pending operation (init or an enqueue in
 * non-blocking mode) has left ncclInProgress. */
static int wait_comm(ncclComm_t comm, double t0, double timeout_s, const char *what, char *why,
                     size_t why_len) {
    long ns = 20000;
    for (;;) {
        ncclResult_t st = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(comm, &st);
        if (r != ncclSuccess) return nccl_failed(what, r, why, why_len);
        if (st == ncclSuccess) return 0;
        if (st != ncclInProgress) return nccl_failed(what, st, why, why_len);
        if (timeout_s > 0 && now_s() - t0 > timeout_s) {
            snprintf(why, why_len, "%s: no answer from every rank within %.0f s", what, timeout_s);
            return 1;
        }
        pause_poll(&ns);
    }
}

int cuda_nccl_available(void) { return 1; }

int cuda_nccl_unique_id(unsigned char *id, char *why, size_t why_len) {
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess) return nccl_failed("ncclGetUniqueId", r, why, why_len);
    _Static_assert(sizeof u == CUDA_NCCL_ID_BYTES, "ncclUniqueId size");
    memcpy(id, &u, sizeof u);
    return 0;
}

int cuda_nccl_create(CudaNccl **out, const unsigned char *id, int nranks, int rank,
                     double timeout_s, char *why, size_t why_len) {
    *out = NULL;
    CudaNccl *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0; /* polled below, under the timeout */
    const double t0 = now_s();
    ncclResult_t r = ncclCommInitRankConfig(&c->comm, nranks, u, rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        free(c);
        return nccl_failed("ncclCommInitRankConfig", r, why, why_len);
    }
    int rc = wait_comm(c->comm, t0, timeout_s, "NCCL communicator set-up", why, why_len);
    if (rc) {
        ncclCommAbort(c->comm);
        free(c);
        return rc;
    }
    c->nranks = nranks, c->rank = rank;
    *out = c;
    return 0;
}

int cuda_nccl_allreduce_sum(CudaNccl *c, float *dev, size_t n, double timeout_s, char *why,
                            size_t why_len) {
    const double t0 = now_s();
    /* the legacy stream: ordered after the backward's kernels and before AdamW's */
    ncclResult_t r = ncclAllReduce(dev, dev, n, ncclFloat, ncclSum, c->comm, 0);
    if (r != ncclSuccess && r != ncclInProgress)
        return nccl_failed("ncclAllReduce", r, why, why_len);
    int rc = wait_comm(c->comm, t0, timeout_s, "NCCL gradient all-reduce (enqueue)", why, why_len);
    long ns = 20000;
    while (rc == 0) {
        cudaError_t q = cudaStreamQuery(0);
        if (q == cudaSuccess) break;
        if (q != cudaErrorNotReady) {
            snprintf(why, why_len, "NCCL gradient all-reduce: %s", cudaGetErrorString(q));
            return -1;
        }
        ncclResult_t st = ncclSuccess, r2 = ncclCommGetAsyncError(c->comm, &st);
        if (r2 != ncclSuccess) return nccl_failed("ncclCommGetAsyncError", r2, why, why_len);
        if (st != ncclSuccess && st != ncclInProgress)
            return nccl_failed("NCCL gradient all-reduce", st, why, why_len);
        if (timeout_s > 0 && now_s() - t0 > timeout_s) {
            snprintf(why, why_len, "NCCL gradient all-reduce: not finished within %.0f s", timeout_s);
            rc = 1;
            break;
        }
        pause_poll(&ns);
    }
    if (rc == 1) ncclCommAbort(c->comm), c->comm = NULL;
    return rc;
}

void cuda_nccl_free(CudaNccl *c) {
    if (!c) return;
    if (c->comm) ncclCommDestroy(c->comm);
    free(c);
}

#else /* no NCCL in this build */

struct CudaNccl {
    int unused;
};

static int no_nccl(char *why, size_t why_len) {
    snprintf(why, why_len, "this build has no NCCL (CMake found no nccl.h / libnccl)");
    return -1;
}

int cuda_nccl_available(void) { return 0; }
int cuda_nccl_unique_id(unsigned char *id, char *why, size_t why_len) {
    (void)id;
    return no_nccl(why, why_len);
}
int cuda_nccl_create(CudaNccl **out, const unsigned char *id, int nranks, int rank,
                     double timeout_s, char *why, size_t why_len) {
    (void)id, (void)nranks, (void)rank, (void)timeout_s;
    *out = NULL;
    return no_nccl(why, why_len);
}
int cuda_nccl_allreduce_sum(CudaNccl *c, float *dev, size_t n, double timeout_s, char *why,
                            size_t why_len) {
    (void)c, (void)dev, (void)n, (void)timeout_s;
    return no_nccl(why, why_len);
}
void cuda_nccl_free(CudaNccl *c) { (void)c; }

#endif
