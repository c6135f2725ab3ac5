/* bench/blas_probe.c — what a BLAS library detects by itself: dlopens each
 * library given (default: the Debian OpenBLAS and BLIS builds) WITHOUT going
 * through model/cpu/blas.c, so OPENBLAS_CORETYPE is whatever the caller's
 * environment holds (run it with `env -u OPENBLAS_CORETYPE` to see the core
 * OpenBLAS picks on its own), and prints the core / BLIS configuration, the
 * build string and the default thread count.
 *
 *   env -u OPENBLAS_CORETYPE build/blas_probe [lib.so ...] */
#include <dlfcn.h>  /* dlopen, dlsym */
#include <stdint.h> /* int64_t */
#include <stdio.h>  /* printf */

static void probe(const char *path) {
    printf("%s\n", path);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("  not loadable: %s\n", dlerror());
        return;
    }
    char *(*corename)(void) = (char *(*)(void))dlsym(h, "openblas_get_corename");
    char *(*config)(void) = (char *(*)(void))dlsym(h, "openblas_get_config");
    int (*nthreads)(void) = (int (*)(void))dlsym(h, "openblas_get_num_threads");
    int (*arch_id)(void) = (int (*)(void))dlsym(h, "bli_arch_query_id");
    const char *(*arch_str)(int) = (const char *(*)(int))dlsym(h, "bli_arch_string");
    const char *(*version)(void) = (const char *(*)(void))dlsym(h, "bli_info_get_version_str");
    int64_t (*bthreads)(void) = (int64_t(*)(void))dlsym(h, "bli_thread_get_num_threads");
    int64_t (*omp)(void) = (int64_t(*)(void))dlsym(h, "bli_info_get_enable_openmp");
    int64_t (*pth)(void) = (int64_t(*)(void))dlsym(h, "bli_info_get_enable_pthreads");
    if (corename) printf("  openblas core: %s\n", corename());
    if (config) printf("  openblas config: %s\n", config());
    if (nthreads) printf("  openblas threads: %d\n", nthreads());
    if (arch_id && arch_str) printf("  blis configuration: %s\n", arch_str(arch_id()));
    if (version) printf("  blis version: %s\n", version());
    if (omp && pth) printf("  blis threading: openmp=%d pthreads=%d\n", (int)omp(), (int)pth());
    if (bthreads) printf("  blis threads: %lld (-1 = unset, runs on 1)\n", (long long)bthreads());
}

int main(int argc, char **argv) {
    static const char *defaults[] = {"/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
                                     "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0",
                                     "/usr/lib/x86_64-linux-gnu/blis-openmp/libblis.so.4",
                                     "/usr/lib/x86_64-linux-gnu/blis-pthread/libblis.so.4"};
    if (argc > 1)
        for (int i = 1; i < argc; i++) probe(argv[i]);
    else
        for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++) probe(defaults[i]);
    return 0;
}
