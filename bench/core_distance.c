/* bench/core_distance.c — how far apart two cores are, seen from memory.
 *
 * On this project's 2-vCPU machines the host sometimes puts the two vCPUs on
 * cores that share an L3 cache and sometimes on two different L3s. In the
 * second state ponder's two-thread steps run ~1.4x slower (bench/RESULTS.md,
 * tenth session), so a benchmark round means little without knowing which
 * state it ran in. This measures, with one thread pinned to each CPU:
 *   - the round trip of one cache line written in turn by the two threads;
 *   - the rate at which one thread reads a buffer the other has just written,
 *     against re-reading a buffer it wrote itself.
 *
 *   core_distance [cpu_a cpu_b]      (default: the first two CPUs allowed)
 * prints one JSON line. On this machine: 50-100 ns and ~70 GB/s on one L3,
 * 300-400 ns and ~25 GB/s on two. */
#define _GNU_SOURCE
#include <pthread.h>   /* pthread_* */
#include <sched.h>     /* cpu_set_t, sched_getaffinity */
#include <stdatomic.h> /* atomic_int */
#include <stdio.h>     /* printf */
#include <stdlib.h>    /* atoi, aligned_alloc */
#include <string.h>    /* memset */
#include <time.h>      /* clock_gettime */

#define ROUNDS 200000                 /* line hand-overs timed */
#define BUF_BYTES ((size_t)512 << 10) /* about an L2's share of a step's rows */
#define PASSES 200                    /* buffer hand-overs timed */

/* the line handed over, padded so that nothing else shares it */
static struct {
    _Alignas(64) atomic_int value;
    char pad[64 - sizeof(atomic_int)];
} turn;

typedef struct Shared {
    int cpu_b;
    float *buf;
    double cross_s, own_s; /* reading time, summed over passes */
} Shared;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static atomic_int b_failed; /* thread b could not run on its CPU */

/* Spins until the line holds `value`: 0, or -1 when thread b gave up. */
static int wait_turn(int value) {
    while (atomic_load_explicit(&turn.value, memory_order_acquire) != value)
        if (atomic_load_explicit(&b_failed, memory_order_relaxed)) return -1;
    return 0;
}

/* Sums a buffer in 16 lanes (the callers add it to a volatile sink, so the
 * reads are not optimised away). */
static float read_all(const float *b, size_t n) {
    float acc[16] = {0};
    for (size_t i = 0; i < n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] += b[i + l];
    float sum = 0.0f;
    for (int l = 0; l < 16; l++) sum += acc[l];
    return sum;
}

static void write_all(float *b, size_t n, float v) {
    for (size_t i = 0; i < n; i++) b[i] = v;
}

/* Thread b: answers each hand-over, then for each pass reads what thread a
 * wrote (cross) and reads it again (own, now in its cache). */
static void *side_b(void *arg) {
    Shared *s = arg;
    if (pin(s->cpu_b)) {
        atomic_store(&b_failed, 1);
        return arg;
    }
    for (int i = 0; i < ROUNDS; i++) {
        wait_turn(2 * i + 1);
        atomic_store_explicit(&turn.value, 2 * i + 2, memory_order_release);
    }
    const size_t n = BUF_BYTES / sizeof(float);
    volatile float sink = 0.0f;
    for (int p = 0; p < PASSES; p++) {
        wait_turn(2 * ROUNDS + 2 * p + 1);
        double t0 = now_s();
        sink += read_all(s->buf, n);
        double t1 = now_s();
        sink += read_all(s->buf, n);
        s->cross_s += t1 - t0, s->own_s += now_s() - t1;
        atomic_store_explicit(&turn.value, 2 * ROUNDS + 2 * p + 2, memory_order_release);
    }
    (void)sink;
    return NULL;
}

static int first_two_cpus(int *a, int *b) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set)) return -1;
    int found = 0;
    for (int c = 0; c < CPU_SETSIZE && found < 2; c++)
        if (CPU_ISSET(c, &set)) *(found++ ? b : a) = c;
    return found == 2 ? 0 : -1;
}

static int cpu_allowed(int cpu) {
    cpu_set_t set;
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof set, &set)) return 0;
    return CPU_ISSET(cpu, &set);
}

int main(int argc, char **argv) {
    int cpu_a, cpu_b;
    if (argc == 3) {
        cpu_a = atoi(argv[1]), cpu_b = atoi(argv[2]);
    } else if (argc != 1 || first_two_cpus(&cpu_a, &cpu_b)) {
        fprintf(stderr, "usage: core_distance [cpu_a cpu_b] (two CPUs must be allowed)\n");
        return 1;
    }
    if (cpu_a == cpu_b || !cpu_allowed(cpu_a) || !cpu_allowed(cpu_b)) {
        /* one CPU would hand the line over only at each context switch */
        fprintf(stderr, "core_distance: need two different CPUs this process may run on, got %d and %d\n",
                cpu_a, cpu_b);
        return 1;
    }
    static Shared s;
    s.cpu_b = cpu_b;
    s.buf = aligned_alloc(64, BUF_BYTES);
    if (!s.buf) return fprintf(stderr, "core_distance: out of memory\n"), 1;
    memset(s.buf, 0, BUF_BYTES);
    if (pin(cpu_a)) return fprintf(stderr, "core_distance: cannot run on CPU %d\n", cpu_a), 1;
    pthread_t t;
    if (pthread_create(&t, NULL, side_b, &s)) return fprintf(stderr, "core_distance: no thread\n"), 1;
    double t0 = now_s();
    for (int i = 0; i < ROUNDS; i++) {
        atomic_store_explicit(&turn.value, 2 * i + 1, memory_order_release);
        if (wait_turn(2 * i + 2)) break;
    }
    const double roundtrip_ns = (now_s() - t0) / ROUNDS * 1e9;
    for (int p = 0; p < PASSES; p++) {
        write_all(s.buf, BUF_BYTES / sizeof(float), (float)p);
        atomic_store_explicit(&turn.value, 2 * ROUNDS + 2 * p + 1, memory_order_release);
        if (wait_turn(2 * ROUNDS + 2 * p + 2)) break;
    }
    void *failed = NULL;
    pthread_join(t, &failed);
    if (failed) return fprintf(stderr, "core_distance: cannot run on CPU %d\n", cpu_b), 1;
    const double bytes = (double)BUF_BYTES * PASSES;
    printf("{\"bench\":\"core_distance\",\"cpus\":[%d,%d],\"roundtrip_ns\":%.0f,"
           "\"read_other_cores_writes_gb_per_s\":%.1f,\"reread_own_gb_per_s\":%.1f}\n",
           cpu_a, cpu_b, roundtrip_ns, bytes / s.cross_s / 1e9, bytes / s.own_s / 1e9);
    free(s.buf);
    return 0;
}
