/* trainer/dist.h — MPI start-up and every collective ponder uses, each under a
 * watchdog.
 *
 * A process started by mpirun (Open MPI's OMPI_COMM_WORLD_SIZE, or PMI/PMIx
 * variables) initialises MPI; one started without it is a single rank and
 * never touches MPI, so `ponder train` works with or without mpirun.
 *
 * Determinism: sums are formed in rank order 0, 1, ..., P-1 by this module
 * (a reduce-scatter by all-to-all, a rank-ordered sum, an all-gather), never by
 * the MPI library's reduction trees, so a result depends only on the ranks'
 * inputs, not on timing or on which algorithm the library picks.
 *
 * Watchdog: every operation is non-blocking underneath and polled; one that
 * has not completed within `timeout_s` returns PONDER_ERR_TIMEOUT with the
 * rank, phase, step and what it waited for. The caller (the command) then
 * prints it and calls dist_abort, which ends every rank: a job never hangs. */
#ifndef PONDER_TRAINER_DIST_H
#define PONDER_TRAINER_DIST_H

#include <stddef.h> /* size_t */
#include <stdint.h> /* int64_t, uint64_t */

#include "model/model.h" /* Model */
#include "util/error.h"   /* PonderError */

typedef enum { DIST_SUM = 0, DIST_MAX = 1, DIST_MIN = 2 } DistOp;

/* dist_allreduce_grads' transport (the values match config's dist.grad_allreduce). */
typedef enum { DIST_GRADS_AUTO = 0, DIST_GRADS_MPI = 1, DIST_GRADS_NCCL = 2 } DistGradAllreduce;

typedef struct Dist {
    int rank, size;             /* in this communicator; 0 and 1 without MPI */
    int comm;                   /* the communicator (MPI's Fortran handle; world after dist_init) */
    int world_rank;             /* this process in MPI_COMM_WORLD (point-to-point addresses) */
    int local_rank, local_size; /* on this node (threads default to cores / local_size) */
    int mpi;                    /* 1 when this process initialised MPI */
    double timeout_s;           /* watchdog limit for one wait; <= 0 = wait forever */
    /* context named by watchdog messages */
    char phase[48];
    int64_t step;
    /* traffic counted by this rank: bytes it sent in collectives and messages */
    uint64_t bytes_sent, bytes_received;
    DistGradAllreduce grad_allreduce; /* inherited by splits */
    struct CudaNccl *nccl;            /* this communicator's NCCL twin, made on first use; not inherited */
} Dist;

/* Starts MPI when launched by mpirun (else a single rank). argc/argv may be NULL. */
int dist_init(Dist *d, int *argc, char ***argv, PonderError *err);
/* A single rank without MPI (library callers, tests). */
void dist_single(Dist *d);
/* Clean shut-down (MPI_Finalize when this process started MPI). */
void dist_finalize(Dist *d);
/* Ends every rank of the job with `code` (MPI_Abort); without MPI returns. */
void dist_abort(Dist *d, int code);

/* A sub-communicator of the ranks that pass the same color (ranks ordered as
 * in parent); inherits the timeout. Free with dist_free_split. */
int dist_split(Dist *parent, int color, Dist *child, PonderError *err);
void dist_free_split(Dist *child);

/* What the rank is doing, for watchdog messages. */
void dist_set_phase(Dist *d, const char *phase, int64_t step);

/* In-place all-reduce of n values, identical on every rank, in rank order. */
int dist_allreduce_f32(Dist *d, float *x, size_t n, const char *what, PonderError *err);
int dist_allreduce_f64(Dist *d, double *x, size_t n, DistOp op, const char *what,
                       PonderError *err);
/* Sums the model's gradients over ranks. On a device backend with NCCL (and
 * grad_allreduce auto or nccl) NCCL sums them in device memory (its own
 * order: deterministic for a fixed set of ranks and GPUs, not bit-identical
 * to the MPI path); else through the host mirror in rank order and back to
 * the device. The NCCL communicator is made here on first use, by all ranks
 * of d together (its id travels by MPI). */
int dist_allreduce_grads(Dist *d, Model *m, PonderError *err);
/* Every rank's `bytes` bytes, in rank order, into all[size * bytes]. */
int dist_allgather(Dist *d, const void *mine, void *all, size_t bytes, const char *what,
                   PonderError *err);
/* root's buf to every rank. */
int dist_bcast(Dist *d, void *buf, size_t bytes, int root, const char *what, PonderError *err);
int dist_barrier(Dist *d, const char *what, PonderError *err);

/* Point to point (disaggregated rollouts), addressed by world rank. A message
 * is `bytes` bytes with a tag; messages from one sender with one tag arrive
 * in the order sent. */
int dist_send(Dist *d, const void *buf, size_t bytes, int to, int tag, const char *what,
              PonderError *err);
/* Receives from `from` (or any rank when from < 0) a message of tag `tag`
 * into a malloc'd buffer *buf of *bytes; *source gets the sender. */
int dist_recv(Dist *d, void **buf, size_t *bytes, int from, int tag, int *source,
              const char *what, PonderError *err);

/* A send that completes in the background: buf must stay untouched until
 * dist_wait (which frees nothing). */
typedef struct DistRequest {
    int handle; /* MPI's Fortran handle; 0 when none */
    int active;
    char what[64];
} DistRequest;
int dist_isend(Dist *d, const void *buf, size_t bytes, int to, int tag, const char *what,
               DistRequest *req, PonderError *err);
int dist_wait(Dist *d, DistRequest *req, PonderError *err);
/* Is a message of `tag` from `from` (world rank, < 0 any) waiting? Never blocks. */
int dist_probe(Dist *d, int from, int tag, int *found, PonderError *err);

#endif
