/* bench/omp_blas_contention.c — what BLAS threads and ponder's OpenMP threads
 * cost each other on a small machine.
 *
 * ponder runs its elementwise kernels in OpenMP (libgomp) regions and its
 * matmuls in BLAS. If either side's idle threads spin-wait, they steal cores
 * from the other side's next phase. This benchmark alternates an OpenMP
 * parallel tanh over a buffer (default 10 MB) with an sgemm shaped like a GPT-2
 * c_fc forward at BT=256 (M=256, N=3072, K=768, NT), and also times each phase
 * alone, so the interference is (alternating) - (tanh alone + sgemm alone).
 *
 *   omp_blas_contention [--threads N] [--iters I] [--reps R] [--mb MB]
 *                       [--gemm M,N,K] [--setenv-passive] [--reexec-passive] [--json]
 *
 * --gemm changes the sgemm shape (e.g. 1024,352,128: the tiny llama's MLP
 * projection at B=16, T=64; pair it with a smaller --mb).
 *
 * The BLAS comes from env PONDER_BLAS as in bench/sgemm_ceiling; wait policies
 * from the usual env (OMP_WAIT_POLICY, GOMP_SPINCOUNT, OPENBLAS_THREAD_TIMEOUT),
 * all echoed in the output. It also probes spinning directly: after a parallel
 * region (or an sgemm) the main thread sleeps 20 ms and we report the process
 * CPU time used meanwhile (~0 when idle threads sleep, ~20 ms per spinning
 * thread).
 *
 * Two ways ponder could set a wait policy itself, tested here:
 *   --setenv-passive  setenv("OMP_WAIT_POLICY", "passive") first thing in
 *                     main, before any OpenMP use (libgomp parses its
 *                     environment in a load-time constructor, so we expect no
 *                     effect; the idle probe shows whether it took).
 *   --reexec-passive  if OMP_WAIT_POLICY is unset, set it and execv() this
 *                     program again, so libgomp's constructor sees it. */
#include <math.h>         /* tanhf */
#include <omp.h>          /* omp_set_num_threads */
#include <stdio.h>        /* printf */
#include <stdlib.h>       /* atoi, getenv, setenv */
#include <string.h>       /* strcmp */
#include <sys/resource.h> /* getrusage */
#include <unistd.h>       /* execv, usleep */

#include "bench/bench_util.h"
#include "model/cpu/blas.h"

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
           (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

static void tanh_pass(float *y, const float *x, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = tanhf(x[i]);
}

typedef struct Work {
    float *x, *y, *A, *B, *C;
    int64_t n, M, N, K;
} Work;

static void gemm(const Work *w) {
    blas_sgemm(0, 1, w->M, w->N, w->K, 1.0f, w->A, w->K, w->B, w->K, 0.0f, w->C, w->N);
}

/* mode 0: alternate; 1: tanh only; 2: sgemm only. Returns ms per iteration and
 * adds the time spent in each phase to *t_tanh / *t_gemm. */
static double loop(const Work *w, int mode, int iters, double *t_tanh, double *t_gemm,
                   double *cpu_ratio) {
    double c0 = cpu_seconds(), t0 = bench_now();
    for (int i = 0; i < iters; i++) {
        if (mode != 2) {
            double a = bench_now();
            tanh_pass(w->y, w->x, w->n);
            *t_tanh += bench_now() - a;
        }
        if (mode != 1) {
            double a = bench_now();
            gemm(w);
            *t_gemm += bench_now() - a;
        }
    }
    double wall = bench_now() - t0;
    if (cpu_ratio) *cpu_ratio = (cpu_seconds() - c0) / wall;
    return wall * 1e3 / iters;
}

/* CPU ms the process burns while the main thread sleeps 20 ms right after `what`. */
static double idle_probe(const Work *w, int what) {
    double best = 1e9;
    for (int r = 0; r < 3; r++) {
        if (what == 0) tanh_pass(w->y, w->x, w->n);
        else gemm(w);
        double c0 = cpu_seconds();
        usleep(20000);
        double c = (cpu_seconds() - c0) * 1e3;
        if (c < best) best = c;
    }
    return best;
}

static const char *env_or(const char *name) {
    const char *v = getenv(name);
    return v ? v : "unset";
}

int main(int argc, char **argv) {
    int threads = 2, iters = 30, reps = 5, json = 0, setenv_passive = 0;
    double mb = 10;
    int64_t gm = 256, gn = 3072, gk = 768;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--setenv-passive")) {
            setenv("OMP_WAIT_POLICY", "passive", 1);
            setenv_passive = 1;
        }
        else if (!strcmp(argv[i], "--reexec-passive")) {
            if (!getenv("OMP_WAIT_POLICY")) {
                setenv("OMP_WAIT_POLICY", "passive", 1);
                execv("/proc/self/exe", argv);
                perror("execv");
                return 1;
            }
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = atof(argv[++i]);
        else if (!strcmp(argv[i], "--gemm") && i + 1 < argc) {
            long long m, n, k;
            if (sscanf(argv[++i], "%lld,%lld,%lld", &m, &n, &k) != 3 || m < 1 || n < 1 || k < 1) {
                fprintf(stderr, "--gemm expects M,N,K\n");
                return 2;
            }
            gm = m, gn = n, gk = k;
        }
        else if (!strcmp(argv[i], "--json")) json = 1;
        else {
            fprintf(stderr,
                    "usage: %s [--threads N] [--iters I] [--reps R] [--mb MB] "
                    "[--setenv-passive] [--reexec-passive] [--json]\n",
                    argv[0]);
            return 2;
        }
    }
    if (reps < 1 || reps > 64) reps = 5;
    PonderError err = {0};
    if (blas_load(NULL, &err) != PONDER_OK) {
        fprintf(stderr, "omp_blas_contention: %s\n", err.msg);
        return 1;
    }
    omp_set_num_threads(threads);
    blas_set_threads(threads);

    Work w = {.n = (int64_t)(mb * 1e6 / sizeof(float)), .M = gm, .N = gn, .K = gk};
    w.x = bench_alloc_floats(w.n);
    w.y = bench_alloc_floats(w.n);
    w.A = bench_alloc_floats(w.M * w.K);
    w.B = bench_alloc_floats(w.N * w.K);
    w.C = bench_alloc_floats(w.M * w.N);
    bench_fill_uniform(w.x, w.n, 1);
    bench_fill_uniform(w.A, w.M * w.K, 2);
    bench_fill_uniform(w.B, w.N * w.K, 3);
    double scratch = 0;
    loop(&w, 0, 3, &scratch, &scratch, NULL); /* warm up both pools and the pages */

    double alt[64], tanh_only[64], gemm_only[64], alt_tanh[64], alt_gemm[64], cpu[64];
    for (int r = 0; r < reps; r++) {
        /* Interleave the three loops inside each repetition. */
        double tt = 0, tg = 0;
        tanh_only[r] = loop(&w, 1, iters, &scratch, &scratch, NULL);
        gemm_only[r] = loop(&w, 2, iters, &scratch, &scratch, NULL);
        alt[r] = loop(&w, 0, iters, &tt, &tg, &cpu[r]);
        alt_tanh[r] = tt * 1e3 / iters;
        alt_gemm[r] = tg * 1e3 / iters;
    }
    double idle_omp = idle_probe(&w, 0), idle_blas = idle_probe(&w, 1);
    BenchStats a = bench_stats(alt, reps), to = bench_stats(tanh_only, reps);
    BenchStats go = bench_stats(gemm_only, reps), at = bench_stats(alt_tanh, reps);
    BenchStats ag = bench_stats(alt_gemm, reps), cr = bench_stats(cpu, reps);
    const BlasInfo *bi = blas_info();
    if (json) {
        printf("{\"bench\":\"omp_blas_contention\",\"library\":\"%s\",\"core\":\"%s\","
               "\"threads\":%d,\"OMP_WAIT_POLICY\":\"%s\",\"GOMP_SPINCOUNT\":\"%s\","
               "\"OPENBLAS_THREAD_TIMEOUT\":\"%s\",\"setenv_in_main\":%d,"
               "\"gemm\":\"%lldx%lldx%lld\",\"mb\":%.1f,\"iters\":%d,\"reps\":%d,"
               "\"alt_ms\":%.3f,\"alt_ms_min\":%.3f,\"alt_ms_max\":%.3f,"
               "\"alt_tanh_ms\":%.3f,\"alt_gemm_ms\":%.3f,\"tanh_only_ms\":%.3f,"
               "\"gemm_only_ms\":%.3f,\"alt_cpu_per_wall\":%.2f,\"idle_cpu_ms_after_omp\":%.2f,"
               "\"idle_cpu_ms_after_gemm\":%.2f,\"alt\":[",
               bi->library, bi->core, threads, env_or("OMP_WAIT_POLICY"),
               env_or("GOMP_SPINCOUNT"), env_or("OPENBLAS_THREAD_TIMEOUT"), setenv_passive,
               (long long)w.M, (long long)w.N, (long long)w.K, mb, iters, reps,
               a.median, a.min, a.max, at.median, ag.median, to.median, go.median, cr.median,
               idle_omp, idle_blas);
        for (int r = 0; r < reps; r++) printf("%s%.3f", r ? "," : "", alt[r]);
        printf("]}\n");
    } else {
        printf("library %s core %s threads %d\n", bi->library, bi->core, threads);
        printf("OMP_WAIT_POLICY=%s%s GOMP_SPINCOUNT=%s OPENBLAS_THREAD_TIMEOUT=%s\n",
               env_or("OMP_WAIT_POLICY"),
               setenv_passive ? " (set in main, after libgomp loaded)" : "",
               env_or("GOMP_SPINCOUNT"), env_or("OPENBLAS_THREAD_TIMEOUT"));
        printf("tanh %.1f MB, sgemm %lldx%lldx%lld (MxNxK, NT), %d iterations x %d reps "
               "(median, min .. max ms per iteration)\n",
               mb, (long long)w.M, (long long)w.N, (long long)w.K, iters, reps);
        printf("alternating      %7.2f  %7.2f .. %7.2f   (tanh part %.2f, sgemm part %.2f; "
               "cpu/wall %.2f)\n",
               a.median, a.min, a.max, at.median, ag.median, cr.median);
        printf("tanh alone       %7.2f  %7.2f .. %7.2f\n", to.median, to.min, to.max);
        printf("sgemm alone      %7.2f  %7.2f .. %7.2f\n", go.median, go.min, go.max);
        printf("interference     %7.2f ms per iteration\n", a.median - to.median - go.median);
        printf("idle probe: CPU ms burnt during a 20 ms sleep after an OpenMP region %.1f, "
               "after an sgemm %.1f\n",
               idle_omp, idle_blas);
    }
    return 0;
}
