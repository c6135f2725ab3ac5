/* model/cpu/blas.c — dlopen-based BLAS selection (why: see blas.h). */
#include "model/cpu/blas.h"

#include <dlfcn.h>   /* dlopen, dlsym */
#include <pthread.h> /* pthread_mutex_t */
#include <stdio.h>   /* fprintf, snprintf */
#include <stdlib.h>  /* getenv, setenv, abort */
#include <string.h>  /* strcmp, strstr */

/* CBLAS enums, row-major only (values fixed by the CBLAS standard). */
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };
typedef void (*SgemmFn)(int, int, int, int, int, int, float, const float *, int, const float *,
                        int, float, float *, int);
typedef char *(*CorenameFn)(void);
typedef void (*SetThreadsFn)(int);
typedef int (*GetThreadsFn)(void);
/* BLIS's thread calls take and return dim_t, which is int64_t in Debian's build
 * (and BLIS's default); calling them through an int prototype is undefined. */
typedef void (*BliSetThreadsFn)(int64_t);
typedef int64_t (*BliGetThreadsFn)(void);
typedef int (*BliArchIdFn)(void);
typedef const char *(*BliArchStringFn)(int);

static struct {
    pthread_mutex_t lock;
    int loaded;
    SgemmFn sgemm;
    SetThreadsFn set_threads;
    GetThreadsFn get_threads;
    BliSetThreadsFn bli_set_threads;
    BliGetThreadsFn bli_get_threads;
    BlasInfo info;
} g_blas = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int cpu_has_avx512_skx(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
}

/* Where Debian puts each build; the bare sonames are whatever the system's
 * alternatives point at. */
#define LIBDIR "/usr/lib/x86_64-linux-gnu/"
enum { OPENBLAS = 1, BLIS = 2 };
typedef struct Candidate {
    const char *path;
    int family;
} Candidate;

/* auto: OpenBLAS's OpenMP build first: it runs on ponder's own libgomp thread
 * pool instead of adding a second set of threads that compete with ponder's
 * OpenMP threads for the same cores. Then the pthread build (its idle workers
 * made to sleep at once, below), then BLIS. Measured on 2 Zen4 cores
 * (bench/RESULTS.md "BLAS choice"), ponder's GPT-2 124M training step at B=4,
 * T=64 runs at 138 tokens/s with OpenBLAS-openmp, 131 with OpenBLAS-pthread,
 * 129 with OpenBLAS-pthread at its default spin-wait, 121 with BLIS-openmp. */
static const Candidate AUTO[] = {{LIBDIR "openblas-openmp/libopenblas.so.0", OPENBLAS},
                                 {LIBDIR "openblas-pthread/libopenblas.so.0", OPENBLAS},
                                 {"libopenblas.so.0", OPENBLAS},
                                 {LIBDIR "blis-openmp/libblis.so.4", BLIS},
                                 {LIBDIR "blis-pthread/libblis.so.4", BLIS},
                                 {"libblis.so.4", BLIS},
                                 {NULL, 0}};
static const Candidate OPENBLAS_PTHREAD[] = {{LIBDIR "openblas-pthread/libopenblas.so.0", OPENBLAS},
                                             {"libopenblas.so.0", OPENBLAS},
                                             {NULL, 0}};
static const Candidate OPENBLAS_OPENMP[] = {{LIBDIR "openblas-openmp/libopenblas.so.0", OPENBLAS},
                                            {NULL, 0}};
static const Candidate BLIS_OPENMP[] = {{LIBDIR "blis-openmp/libblis.so.4", BLIS},
                                        {"libblis.so.4", BLIS},
                                        {NULL, 0}};
static const Candidate BLIS_PTHREAD[] = {{LIBDIR "blis-pthread/libblis.so.4", BLIS},
                                         {"libblis.so.4", BLIS},
                                         {NULL, 0}};

/* OpenBLAS reads these in its constructor, i.e. during dlopen; we never
 * override a value the user set.
 * - OPENBLAS_CORETYPE=SkylakeX on AVX-512 CPUs: 0.3.21 may not recognise new
 *   cores; the SkylakeX sgemm kernels are correct wherever AVX-512 F/CD/BW/DQ/VL
 *   exist and measured as fast as any other choice on Zen4.
 * - OPENBLAS_THREAD_TIMEOUT=4 (2^4 cycles): the pthread build's idle workers
 *   otherwise spin for ~2^28 cycles after every call, taking a core from
 *   ponder's OpenMP threads (the OpenMP build ignores it: it has no workers of
 *   its own). */
static void prepare_openblas_env(void) {
    if (!getenv("OPENBLAS_CORETYPE") && cpu_has_avx512_skx())
        setenv("OPENBLAS_CORETYPE", "SkylakeX", 0);
    if (!getenv("OPENBLAS_THREAD_TIMEOUT")) setenv("OPENBLAS_THREAD_TIMEOUT", "4", 0);
}

static void *open_first(const Candidate *c, const char **opened) {
    for (int i = 0; c[i].path; i++) {
        if (c[i].family == OPENBLAS) prepare_openblas_env();
        void *h = dlopen(c[i].path, RTLD_NOW | RTLD_LOCAL);
        if (h) {
            *opened = c[i].path;
            return h;
        }
    }
    return NULL;
}

/* Threads the library will use; BLIS reports -1 (unset) when it runs on one. */
static int query_threads(void) {
    if (g_blas.get_threads) return g_blas.get_threads();
    if (g_blas.bli_get_threads) {
        int64_t n = g_blas.bli_get_threads();
        return n < 1 ? 1 : (int)n;
    }
    return 0;
}

static int load_locked(const char *choice, PonderError *err) {
    if (!choice) choice = getenv("PONDER_BLAS");
    if (!choice || !*choice) choice = "auto";
    const Candidate *paths = NULL;
    /* An explicit path or library name (anything with ".so", for dlopen's own
     * search): treat it as OpenBLAS for the environment above when its name
     * says so. */
    const Candidate single[2] = {{choice, strstr(choice, "openblas") ? OPENBLAS : 0}, {NULL, 0}};
    if (strcmp(choice, "auto") == 0) paths = AUTO;
    else if (strcmp(choice, "openblas-pthread") == 0) paths = OPENBLAS_PTHREAD;
    else if (strcmp(choice, "openblas-openmp") == 0) paths = OPENBLAS_OPENMP;
    else if (strcmp(choice, "blis") == 0 || strcmp(choice, "blis-openmp") == 0)
        paths = BLIS_OPENMP;
    else if (strcmp(choice, "blis-pthread") == 0) paths = BLIS_PTHREAD;
    else if (choice[0] == '/' || strstr(choice, ".so")) paths = single;
    else
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "runtime.blas: unknown BLAS '%s'; expected auto, openblas-openmp, "
                            "openblas-pthread, blis, blis-pthread, or a library path or name "
                            "(e.g. libopenblas.so.0)",
                            choice);
    const char *opened = NULL;
    void *h = open_first(paths, &opened);
    if (!h)
        return ponder_error(err, PONDER_ERR_RUNTIME,
                            "could not load BLAS '%s' (%s); install it with launch/setup", choice,
                            dlerror());
    g_blas.sgemm = (SgemmFn)dlsym(h, "cblas_sgemm");
    if (!g_blas.sgemm)
        return ponder_error(err, PONDER_ERR_RUNTIME, "BLAS library %s has no cblas_sgemm",
                            opened);
    g_blas.set_threads = (SetThreadsFn)dlsym(h, "openblas_set_num_threads");
    g_blas.get_threads = (GetThreadsFn)dlsym(h, "openblas_get_num_threads");
    g_blas.bli_set_threads = (BliSetThreadsFn)dlsym(h, "bli_thread_set_num_threads");
    g_blas.bli_get_threads = (BliGetThreadsFn)dlsym(h, "bli_thread_get_num_threads");
    CorenameFn corename = (CorenameFn)dlsym(h, "openblas_get_corename");
    BliArchIdFn bli_arch = (BliArchIdFn)dlsym(h, "bli_arch_query_id");
    BliArchStringFn bli_arch_str = (BliArchStringFn)dlsym(h, "bli_arch_string");
    snprintf(g_blas.info.library, sizeof g_blas.info.library, "%s", opened);
    if (corename) snprintf(g_blas.info.core, sizeof g_blas.info.core, "%s", corename());
    else if (bli_arch && bli_arch_str) /* the BLIS sub-configuration, e.g. "blis zen3" */
        snprintf(g_blas.info.core, sizeof g_blas.info.core, "blis %s",
                 bli_arch_str(bli_arch()));
    else snprintf(g_blas.info.core, sizeof g_blas.info.core, "unknown");
    g_blas.info.threads = query_threads();
    g_blas.loaded = 1;
    return PONDER_OK;
}

int blas_load(const char *choice, PonderError *err) {
    pthread_mutex_lock(&g_blas.lock);
    int rc = g_blas.loaded ? PONDER_OK : load_locked(choice, err);
    pthread_mutex_unlock(&g_blas.lock);
    return rc;
}

const BlasInfo *blas_info(void) { return g_blas.loaded ? &g_blas.info : NULL; }

void blas_set_threads(int n) {
    if (blas_load(NULL, NULL) != PONDER_OK) return;
    if (g_blas.set_threads) g_blas.set_threads(n);
    else if (g_blas.bli_set_threads) g_blas.bli_set_threads(n);
    g_blas.info.threads = query_threads();
}

void blas_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                int64_t ldc) {
    if (!g_blas.loaded) {
        PonderError e = {0};
        if (blas_load(NULL, &e) != PONDER_OK) {
            fprintf(stderr, "ponder: %s\n", e.msg);
            abort();
        }
    }
    g_blas.sgemm(CBLAS_ROW_MAJOR, trans_a ? CBLAS_TRANS : CBLAS_NO_TRANS,
                 trans_b ? CBLAS_TRANS : CBLAS_NO_TRANS, (int)M, (int)N, (int)K, alpha, A,
                 (int)lda, B, (int)ldb, beta, C, (int)ldc);
}
