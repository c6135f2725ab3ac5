/* trainer/dist.c — see dist.h. */
#define _POSIX_C_SOURCE 200809L
#include "trainer/dist.h"

#include <limits.h> /* INT_MAX */
#include <mpi.h>
#include <stdio.h>  /* snprintf */
#include <stdlib.h> /* getenv, malloc, free */
#include <string.h> /* memcpy, memset */
#include <time.h>   /* clock_gettime, nanosleep */

#include "model/ops.h" /* ModelOps.device */
#ifdef PONDER_HAVE_CUDA
#include "model/cuda/cuda_nccl.h" /* cuda_nccl_* */
#endif

/* Messages and collective pieces stay below INT_MAX elements (MPI counts are
 * int) and bound the scratch memory of the all-reduce. */
#define DIST_BLOCK ((size_t)1 << 26)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static MPI_Comm comm_of(const Dist *d) { return MPI_Comm_f2c(d->comm); }
static int mpi_error(const Dist *d, int code, const char *what, PonderError *err);

static int launched_by_mpirun(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK") ||
           getenv("PMI_SIZE");
}

void dist_single(Dist *d) {
    memset(d, 0, sizeof *d);
    d->size = 1;
    d->local_size = 1;
    d->timeout_s = 600.0;
    snprintf(d->phase, sizeof d->phase, "start-up");
}

int dist_init(Dist *d, int *argc, char ***argv, PonderError *err) {
    dist_single(d);
    if (!launched_by_mpirun()) return PONDER_OK;
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return ponder_error(err, PONDER_ERR_RUNTIME, "MPI_Init_thread failed");
    d->mpi = 1;
    /* errors come back as codes, so a failed call is reported, not fatal */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    d->comm = (int)MPI_Comm_c2f(MPI_COMM_WORLD);
    d->world_rank = d->rank;
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
        MPI_Comm_rank(node, &d->local_rank);
        MPI_Comm_size(node, &d->local_size);
        MPI_Comm_free(&node);
    }
    return PONDER_OK;
}

static void free_nccl(Dist *d) {
#ifdef PONDER_HAVE_CUDA
    cuda_nccl_free(d->nccl);
#endif
    d->nccl = NULL;
}

void dist_finalize(Dist *d) {
    free_nccl(d);
    if (d->mpi == 1) MPI_Finalize();
    d->mpi = 0;
}

void dist_abort(Dist *d, int code) {
    if (d->mpi) MPI_Abort(MPI_COMM_WORLD, code);
}

int dist_split(Dist *parent, int color, Dist *child, PonderError *err) {
    *child = *parent;
    child->nccl = NULL; /* the parent's communicator spans other ranks */
    if (!parent->mpi) return PONDER_OK; /* one rank: the split is itself */
    MPI_Comm c;
    int rc = MPI_Comm_split(comm_of(parent), color, parent->rank, &c);
    if (rc != MPI_SUCCESS) return mpi_error(parent, rc, "splitting the ranks", err);
    MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c, &child->rank);
    MPI_Comm_size(c, &child->size);
    child->comm = (int)MPI_Comm_c2f(c);
    child->mpi = 2; /* a split: freed by dist_free_split, never finalised */
    child->bytes_sent = child->bytes_received = 0;
    return PONDER_OK;
}

void dist_free_split(Dist *child) {
    free_nccl(child);
    if (child->mpi == 2) {
        MPI_Comm c = comm_of(child);
        MPI_Comm_free(&c);
    }
    child->mpi = 0;
}

void dist_set_phase(Dist *d, const char *phase, int64_t step) {
    snprintf(d->phase, sizeof d->phase, "%s", phase);
    d->step = step;
}

static int watchdog_error(const Dist *d, const char *what, double waited, PonderError *err) {
    return ponder_error(err, PONDER_ERR_TIMEOUT,
                        "watchdog: rank %d of %d waited %.1f s (dist.timeout_s %.0f) in phase "
                        "'%s' at step %lld for %s; another rank has stalled or died, so the job "
                        "is ended rather than left hanging",
                        d->rank, d->size, waited, d->timeout_s, d->phase, (long long)d->step, what);
}

static int mpi_error(const Dist *d, int code, const char *what, PonderError *err) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(code, msg, &len);
    return ponder_error(err, PONDER_ERR_RUNTIME, "rank %d: MPI failed in %s (phase '%s', step %lld): %s",
                        d->rank, what, d->phase, (long long)d->step, msg);
}

/* Polls a request until it completes or the watchdog fires. Sleeps between
 * polls (20 us doubling to 1 ms): a spinning rank would take the core from a
 * rank it waits for when ranks share cores. */
static int wait_request(const Dist *d, MPI_Request *req, MPI_Status *status, const char *what,
                        PonderError *err) {
    const double t0 = now_s();
    long sleep_ns = 20000;
    for (;;) {
        int done = 0;
        int rc = MPI_Test(req, &done, status ? status : MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_error(d, rc, what, err);
        if (done) return PONDER_OK;
        double waited = now_s() - t0;
        if (d->timeout_s > 0 && waited > d->timeout_s) return watchdog_error(d, what, waited, err);
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
        if (sleep_ns < 1000000) sleep_ns *= 2;
    }
}

/* -------------------------------------------------------- all-reduce ---- */

/* One block: all-to-all of the P slices, rank-ordered sum of my slice, then
 * all-gather of the summed slices. */
static int allreduce_block_f32(Dist *d, float *x, size_t n, float *scratch, const char *what,
                               PonderError *err) {
    const int P = d->size;
    const size_t chunk = (n + (size_t)P - 1) / (size_t)P;
    int sc[P], sd[P], rc_[P], rd[P];
    for (int q = 0; q < P; q++) {
        size_t lo = (size_t)q * chunk < n ? (size_t)q * chunk : n;
        size_t hi = lo + chunk < n ? lo + chunk : n;
        sc[q] = (int)(hi - lo);
        sd[q] = (int)lo;
    }
    const int mine = sc[d->rank];
    for (int q = 0; q < P; q++) rc_[q] = mine, rd[q] = q * mine;
    MPI_Request req;
    int rc = MPI_Ialltoallv(x, sc, sd, MPI_FLOAT, scratch, rc_, rd, MPI_FLOAT, comm_of(d), &req);
    if (rc != MPI_SUCCESS) return mpi_error(d, rc, what, err);
    if ((rc = wait_request(d, &req, NULL, what, err))) return rc;
    float *out = x + sd[d->rank];
    for (int i = 0; i < mine; i++) {
        float s = scratch[i];
        for (int q = 1; q < P; q++) s += scratch[(size_t)q * (size_t)mine + (size_t)i];
        out[i] = s;
    }
    d->bytes_sent += 2 * (n - (size_t)mine) * sizeof(float);
    d->bytes_received += 2 * (size_t)(P - 1) * (size_t)mine * sizeof(float);
    rc = MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, x, sc, sd, MPI_FLOAT, comm_of(d), &req);
    if (rc != MPI_SUCCESS) return mpi_error(d, rc, what, err);
    return wait_request(d, &req, NULL, what, err);
}

int dist_allreduce_f32(Dist *d, float *x, size_t n, const char *what, PonderError *err) {
    if (d->size == 1 || n == 0) return PONDER_OK;
    const size_t block = n < DIST_BLOCK ? n : DIST_BLOCK;
    float *scratch = malloc(block * sizeof(float));
    if (!scratch) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory (all-reduce of %s)", what);
    int rc = PONDER_OK;
    for (size_t o = 0; o < n && rc == PONDER_OK; o += block)
        rc = allreduce_block_f32(d, x + o, n - o < block ? n - o : block, scratch, what, err);
    free(scratch);
    return rc;
}

/* Should d sum m's gradients with NCCL? An error when it must but cannot. */
static int grads_by_nccl(const Dist *d, const Model *m, int *use, PonderError *err) {
    *use = 0;
    if (d->grad_allreduce == DIST_GRADS_MPI) return PONDER_OK;
    const int on_device = model_ops(m)->device != 0;
#ifdef PONDER_HAVE_CUDA
    const int have = cuda_nccl_available();
#else
    const int have = 0;
#endif
    if (d->grad_allreduce == DIST_GRADS_NCCL && (!on_device || !have))
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "dist.grad_allreduce: nccl, but %s; use auto or mpi",
                            !on_device ? "the model is not on a GPU"
                                       : "this build has no NCCL (CMake found no nccl.h / libnccl)");
    *use = on_device && have;
    return PONDER_OK;
}

#ifdef PONDER_HAVE_CUDA
/* All ranks of d: rank 0 makes the id, MPI carries it, every rank joins. */
static int nccl_join(Dist *d, PonderError *err) {
    unsigned char id[CUDA_NCCL_ID_BYTES] = {0};
    char why[256] = "";
    int ok = d->rank != 0 || cuda_nccl_unique_id(id, why, sizeof why) == 0;
    /* a failed id still goes out (zeros): the others then fail to join and time out */
    int rc = dist_bcast(d, id, sizeof id, 0, "the NCCL communicator id", err);
    if (rc) return rc;
    if (!ok) return ponder_error(err, PONDER_ERR_RUNTIME, "rank %d: %s", d->rank, why);
    int r = cuda_nccl_create(&d->nccl, id, d->size, d->rank, d->timeout_s, why, sizeof why);
    if (r == 1) return watchdog_error(d, why, d->timeout_s, err);
    if (r) return ponder_error(err, PONDER_ERR_RUNTIME, "rank %d: %s", d->rank, why);
    return PONDER_OK;
}

static int allreduce_grads_nccl(Dist *d, Model *m, PonderError *err) {
    if (!d->nccl) {
        int rc = nccl_join(d, err);
        if (rc) return rc;
    }
    char why[256] = "";
    const double t0 = now_s();
    int r = cuda_nccl_allreduce_sum(d->nccl, model_grads_backend(m), model_num_params(m),
                                    d->timeout_s, why, sizeof why);
    if (r == 1) return watchdog_error(d, why, now_s() - t0, err);
    if (r) return ponder_error(err, PONDER_ERR_RUNTIME, "rank %d: %s", d->rank, why);
    d->bytes_sent += model_num_params(m) * sizeof(float);
    return PONDER_OK;
}
#endif

int dist_allreduce_grads(Dist *d, Model *m, PonderError *err) {
    if (d->size == 1) return PONDER_OK;
    int nccl = 0, rc0 = grads_by_nccl(d, m, &nccl, err);
    if (rc0) return rc0;
#ifdef PONDER_HAVE_CUDA
    if (nccl) return allreduce_grads_nccl(d, m, err);
#endif
    float *g = model_grads(m);
    int rc = dist_allreduce_f32(d, g, model_num_params(m), "gradients", err);
    if (rc == PONDER_OK) model_grads_upload(m);
    return rc;
}

int dist_allgather(Dist *d, const void *mine, void *all, size_t bytes, const char *what,
                   PonderError *err) {
    if (d->size == 1) {
        memcpy(all, mine, bytes);
        return PONDER_OK;
    }
    if (bytes > (size_t)INT_MAX)
        return ponder_error(err, PONDER_ERR_CONFIG, "all-gather of %s: %zu bytes is too large", what, bytes);
    MPI_Request req;
    int rc = MPI_Iallgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, comm_of(d), &req);
    if (rc != MPI_SUCCESS) return mpi_error(d, rc, what, err);
    d->bytes_sent += bytes * (size_t)(d->size - 1);
    d->bytes_received += bytes * (size_t)(d->size - 1);
    return wait_request(d, &req, NULL, what, err);
}

/* Small vectors (metrics, moments, counts): all-gather then reduce locally in
 * rank order. */
int dist_allreduce_f64(Dist *d, double *x, size_t n, DistOp op, const char *what, PonderError *err) {
    if (d->size == 1 || n == 0) return PONDER_OK;
    double *all = malloc(n * (size_t)d->size * sizeof(double));
    if (!all) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory (all-reduce of %s)", what);
    int rc = dist_allgather(d, x, all, n * sizeof(double), what, err);
    for (size_t i = 0; i < n && rc == PONDER_OK; i++) {
        double acc = all[i];
        for (int q = 1; q < d->size; q++) {
            double v = all[(size_t)q * n + i];
            acc = op == DIST_SUM ? acc + v : op == DIST_MAX ? (v > acc ? v : acc) : (v < acc ? v : acc);
        }
        x[i] = acc;
    }
    free(all);
    return rc;
}

int dist_bcast(Dist *d, void *buf, size_t bytes, int root, const char *what, PonderError *err) {
    if (d->size == 1) return PONDER_OK;
    for (size_t o = 0; o < bytes; o += DIST_BLOCK) {
        size_t n = bytes - o < DIST_BLOCK ? bytes - o : DIST_BLOCK;
        MPI_Request req;
        int rc = MPI_Ibcast((char *)buf + o, (int)n, MPI_BYTE, root, comm_of(d), &req);
        if (rc != MPI_SUCCESS) return mpi_error(d, rc, what, err);
        if ((rc = wait_request(d, &req, NULL, what, err))) return rc;
        if (d->rank == root) d->bytes_sent += n * (size_t)(d->size - 1);
        else d->bytes_received += n;
    }
    return PONDER_OK;
}

int dist_barrier(Dist *d, const char *what, PonderError *err) {
    if (d->size == 1) return PONDER_OK;
    MPI_Request req;
    int rc = MPI_Ibarrier(comm_of(d), &req);
    if (rc != MPI_SUCCESS) return mpi_error(d, rc, what, err);
    return wait_request(d, &req, NULL, what, err);
}

/* ---------------------------------------------------- point to point ---- */

int dist_isend(Dist *d, const void *buf, size_t bytes, int to, int tag, const char *what,
               DistRequest *req, PonderError *err) {
    memset(req, 0, sizeof *req);
    snprintf(req->what, sizeof req->what, "%s", what);
    if (bytes > (size_t)INT_MAX)
        return ponder_error(err, PONDER_ERR_CONFIG, "send of %s: %zu bytes is too large", what, bytes);
    MPI_Request r;
    int rc = MPI_Isend(buf, (int)bytes, MPI_BYTE, to, tag, MPI_COMM_WORLD, &r);
    if (rc != MPI_SUCCESS) return mpi_error(d, rc, what, err);
    d->bytes_sent += bytes;
    req->handle = (int)MPI_Request_c2f(r);
    req->active = 1;
    return PONDER_OK;
}

int dist_wait(Dist *d, DistRequest *req, PonderError *err) {
    if (!req->active) return PONDER_OK;
    MPI_Request r = MPI_Request_f2c(req->handle);
    int rc = wait_request(d, &r, NULL, req->what, err);
    if (rc == PONDER_OK) req->active = 0;
    return rc;
}

/* A blocking send is a background send waited for at once. */
int dist_send(Dist *d, const void *buf, size_t bytes, int to, int tag, const char *what,
              PonderError *err) {
    DistRequest req;
    int rc = dist_isend(d, buf, bytes, to, tag, what, &req, err);
    return rc ? rc : dist_wait(d, &req, err);
}

int dist_probe(Dist *d, int from, int tag, int *found, PonderError *err) {
    *found = 0;
    int rc = MPI_Iprobe(from < 0 ? MPI_ANY_SOURCE : from, tag, MPI_COMM_WORLD, found, MPI_STATUS_IGNORE);
    return rc == MPI_SUCCESS ? PONDER_OK : mpi_error(d, rc, "probing for a message", err);
}

int dist_recv(Dist *d, void **buf, size_t *bytes, int from, int tag, int *source,
              const char *what, PonderError *err) {
    *buf = NULL, *bytes = 0;
    const double t0 = now_s();
    long sleep_ns = 20000;
    MPI_Message msg;
    MPI_Status st;
    for (;;) {
        int found = 0;
        int rc = MPI_Improbe(from < 0 ? MPI_ANY_SOURCE : from, tag, MPI_COMM_WORLD, &found, &msg, &st);
        if (rc != MPI_SUCCESS) return mpi_error(d, rc, what, err);
        if (found) break;
        double waited = now_s() - t0;
        if (d->timeout_s > 0 && waited > d->timeout_s) return watchdog_error(d, what, waited, err);
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
        if (sleep_ns < 1000000) sleep_ns *= 2;
    }
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    void *p = malloc(count > 0 ? (size_t)count : 1);
    if (!p) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory receiving %s (%d bytes)", what, count);
    MPI_Request req;
    int rc = MPI_Imrecv(p, count, MPI_BYTE, &msg, &req);
    if (rc == MPI_SUCCESS) rc = wait_request(d, &req, NULL, what, err);
    else rc = mpi_error(d, rc, what, err);
    if (rc) {
        free(p);
        return rc;
    }
    d->bytes_received += (size_t)count;
    *buf = p, *bytes = (size_t)count;
    if (source) *source = st.MPI_SOURCE;
    return PONDER_OK;
}
