/* tests/dist/dist_selftest.c — trainer/dist's collectives checked under
 * mpirun (any number of ranks; CTest runs 1, 2 and 3): each result is
 * compared with what every rank can compute alone from the known inputs of
 * all ranks, summed in rank order. A plain program rather than a Criterion
 * suite: Criterion forks each test, and a forked child cannot use MPI.
 * Prints one line per check; exits 1 on the first failure (on any rank). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/dist.h"

static int g_failed = 0;

static void check(const Dist *d, int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "rank %d: FAIL %s\n", d->rank, what);
        g_failed = 1;
    } else if (d->rank == 0) {
        printf("ok   %s\n", what);
    }
}

/* rank r's i-th value: magnitudes far apart so the order of a sum shows in
 * its bits */
static float value_of(int r, size_t i) {
    float big = (i % 3 == 0) ? 1e8f : 1.0f;
    return (r % 2 ? -big : big) + (float)(r + 1) * 0.37f + (float)(i % 11) * 1e-3f;
}

static void test_allreduce_f32(Dist *d, size_t n) {
    float *x = malloc((n + 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = value_of(d->rank, i);
    PonderError err = {0};
    int rc = dist_allreduce_f32(d, x, n, "test vector", &err);
    int ok = rc == PONDER_OK;
    for (size_t i = 0; ok && i < n; i++) {
        float want = value_of(0, i);
        for (int q = 1; q < d->size; q++) want += value_of(q, i);
        ok = memcmp(&want, &x[i], sizeof want) == 0; /* the same bits: rank order */
    }
    char what[96];
    snprintf(what, sizeof what, "allreduce_f32 of %zu floats equals the rank-ordered sum bit for bit", n);
    check(d, ok, what);
    free(x);
}

static void test_allreduce_f64(Dist *d) {
    double v[3] = {(double)d->rank, -(double)d->rank, 1.0};
    PonderError err = {0};
    double s[3] = {v[0], v[1], v[2]};
    int ok = dist_allreduce_f64(d, s, 3, DIST_SUM, "sum", &err) == PONDER_OK;
    double want = (double)d->size * (double)(d->size - 1) / 2.0;
    ok = ok && s[0] == want && s[1] == -want && s[2] == (double)d->size;
    check(d, ok, "allreduce_f64 sum");
    double m[2] = {(double)d->rank, -(double)d->rank};
    ok = dist_allreduce_f64(d, m, 2, DIST_MAX, "max", &err) == PONDER_OK;
    check(d, ok && m[0] == (double)(d->size - 1) && m[1] == 0.0, "allreduce_f64 max");
    double mn[1] = {(double)d->rank + 5};
    ok = dist_allreduce_f64(d, mn, 1, DIST_MIN, "min", &err) == PONDER_OK;
    check(d, ok && mn[0] == 5.0, "allreduce_f64 min");
}

static void test_gather_bcast(Dist *d) {
    PonderError err = {0};
    int64_t mine = 100 + d->rank, *all = calloc((size_t)d->size, sizeof(int64_t));
    int ok = dist_allgather(d, &mine, all, sizeof mine, "gather", &err) == PONDER_OK;
    for (int q = 0; ok && q < d->size; q++) ok = all[q] == 100 + q;
    check(d, ok, "allgather in rank order");
    free(all);
    char buf[32] = {0};
    if (d->rank == d->size - 1) snprintf(buf, sizeof buf, "from the last rank");
    ok = dist_bcast(d, buf, sizeof buf, d->size - 1, "bcast", &err) == PONDER_OK;
    check(d, ok && strcmp(buf, "from the last rank") == 0, "bcast from the last rank");
}

static void test_split_and_messages(Dist *d) {
    PonderError err = {0};
    Dist half;
    int color = d->rank % 2;
    int ok = dist_split(d, color, &half, &err) == PONDER_OK;
    double one[1] = {1.0};
    ok = ok && dist_allreduce_f64(&half, one, 1, DIST_SUM, "split sum", &err) == PONDER_OK;
    int expect = d->size / 2 + (color == 0 ? d->size % 2 : 0);
    check(d, ok && one[0] == (double)expect && half.size == expect, "split: sums over the half");
    dist_free_split(&half);
    if (d->size < 2) return;
    /* ring: every rank sends its rank to the next and receives from the previous */
    int64_t out = d->rank;
    DistRequest req;
    ok = dist_isend(d, &out, sizeof out, (d->rank + 1) % d->size, 7, "ring send", &req, &err) == PONDER_OK;
    void *in = NULL;
    size_t bytes = 0;
    int from = -1;
    ok = ok && dist_recv(d, &in, &bytes, (d->rank + d->size - 1) % d->size, 7, &from, "ring recv", &err) == PONDER_OK;
    ok = ok && dist_wait(d, &req, &err) == PONDER_OK;
    ok = ok && bytes == sizeof(int64_t) && *(int64_t *)in == (d->rank + d->size - 1) % d->size;
    check(d, ok, "isend / recv around a ring");
    free(in);
}

static void test_watchdog(Dist *d) {
    if (d->size < 2) return;
    /* rank 0 waits for a message nobody sends: the watchdog must answer */
    PonderError err = {0};
    if (d->rank == 0) {
        Dist w = *d;
        w.timeout_s = 0.3;
        dist_set_phase(&w, "self-test", 42);
        void *in = NULL;
        size_t bytes = 0;
        int rc = dist_recv(&w, &in, &bytes, 1, 99, NULL, "a message nobody sends", &err);
        check(d, rc == PONDER_ERR_TIMEOUT && strstr(err.msg, "watchdog: rank 0 of") &&
                     strstr(err.msg, "phase 'self-test' at step 42 for a message nobody sends"),
              "watchdog names rank, phase, step and what it waited for");
    }
    dist_barrier(d, "after the watchdog test", &err);
}

/* A CPU model's gradients: grad_allreduce nccl is refused with the reason
 * (before any communication, on every rank), auto and mpi sum through MPI in
 * rank order. */
static void test_grads_transport(Dist *d) {
    if (d->size < 2) return;
    ModelConfig cfg = model_config_default();
    cfg.vocab_size = 11, cfg.d_model = 8, cfg.n_layer = 1, cfg.n_head = 2, cfg.n_kv_head = 2,
    cfg.d_ff = 16;
    cfg.max_seq_len = 8;
    Model *m = NULL;
    PonderError err = {0};
    if (model_create(&m, &cfg, &err)) {
        check(d, 0, err.msg);
        return;
    }
    Dist n = *d;
    n.grad_allreduce = DIST_GRADS_NCCL;
    int rc = dist_allreduce_grads(&n, m, &err);
    check(d, rc == PONDER_ERR_CONFIG && strstr(err.msg, "dist.grad_allreduce: nccl, but the model is not on a GPU"),
          "grad_allreduce nccl refuses a CPU model, naming the key");
    for (int mode = DIST_GRADS_AUTO; mode <= DIST_GRADS_MPI; mode++) {
        Dist a = *d;
        a.grad_allreduce = (DistGradAllreduce)mode;
        float *g = model_grads(m);
        const size_t P = model_num_params(m);
        for (size_t i = 0; i < P; i++) g[i] = value_of(d->rank, i);
        rc = dist_allreduce_grads(&a, m, &err);
        int ok = rc == PONDER_OK;
        for (size_t i = 0; i < P && ok; i++) {
            float want = value_of(0, i);
            for (int r = 1; r < d->size; r++) want += value_of(r, i);
            ok = g[i] == want;
        }
        check(d, ok, mode == DIST_GRADS_AUTO ? "grad_allreduce auto on a CPU model: MPI, rank order"
                                             : "grad_allreduce mpi: rank order");
    }
    model_free(m);
}

int main(int argc, char **argv) {
    Dist d;
    PonderError err = {0};
    if (dist_init(&d, &argc, &argv, &err)) {
        fprintf(stderr, "dist_init: %s\n", err.msg);
        return 1;
    }
    d.timeout_s = 30;
    if (d.rank == 0) printf("dist self-test on %d rank(s)\n", d.size);
    const size_t sizes[] = {1, 2, 5, 1000, 100003};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) test_allreduce_f32(&d, sizes[k]);
    test_allreduce_f64(&d);
    test_gather_bcast(&d);
    test_split_and_messages(&d);
    test_watchdog(&d);
    test_grads_transport(&d);
    double failed = g_failed;
    dist_allreduce_f64(&d, &failed, 1, DIST_MAX, "failures", &err);
    if (d.rank == 0) printf("%s\n", failed ? "FAILED" : "all passed");
    dist_finalize(&d);
    return failed ? 1 : 0;
}
