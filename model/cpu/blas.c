/* model/cpu/blas.c — dlopen-based BLAS selection (why: see blas.h). */
#include "model/cpu/blas.h"

#include <dlfcn.h>   /* dlopen, dlsym */
#include <pthread.h> /* pthread_mutex_t */
#include <stdio.h>   /* fprintf, snprintf */
#include <stdlib.h>  /* getenv, setenv, abort */
#include <string.h>  /* strcmp */

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

static const char *const OPENBLAS_PTHREAD[] = {
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0", "libopenblas.so.0", NULL};
static const char *const OPENBLAS_OPENMP[] = {
    "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0", NULL};
static const char *const BLIS_OPENMP[] = {"/usr/lib/x86_64-linux-gnu/blis-openmp/libblis.so.4",
                                          "libblis.so.4", NULL};
static const char *const BLIS_PTHREAD[] = {"/usr/lib/x86_64-linux-gnu/blis-pthread/libblis.so.4",
                                           "libblis.so.4", NULL};

static void *open_first(const char *const *paths, const char **opened) {
    for (int i = 0; paths[i]; i++) {
        void *h = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
        if (h) {
            *opened = paths[i];
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
    int is_openblas = strncmp(choice, "openblas", 8) == 0 || strcmp(choice, "auto") == 0;
    /* Must happen before OpenBLAS's constructor runs, i.e. before dlopen. */
    if (is_openblas && !getenv("OPENBLAS_CORETYPE") && cpu_has_avx512_skx())
        setenv("OPENBLAS_CORETYPE", "SkylakeX", 0);

    const char *const *paths = NULL;
    const char *single[2] = {choice, NULL};
    if (strcmp(choice, "auto") == 0 || strcmp(choice, "openblas-pthread") == 0)
        paths = OPENBLAS_PTHREAD;
    else if (strcmp(choice, "openblas-openmp") == 0) paths = OPENBLAS_OPENMP;
    else if (strcmp(choice, "blis") == 0) paths = BLIS_OPENMP;
    else if (strcmp(choice, "blis-pthread") == 0) paths = BLIS_PTHREAD;
    else if (choice[0] == '/') paths = single;
    else
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "runtime.blas: unknown BLAS '%s'; expected auto, openblas-pthread, "
                            "openblas-openmp, blis or an absolute path to a library",
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
