/* util/omp_env.c — see omp_env.h. */
#define _GNU_SOURCE /* sched_setaffinity, CPU_SET */
#include "util/omp_env.h"

#include <omp.h>    /* omp_get_proc_bind, omp_get_place_* */
#include <sched.h>  /* sched_setaffinity, sched_getaffinity, cpu_set_t */
#include <stdlib.h> /* getenv, setenv, malloc, free */
#include <unistd.h> /* execv */

/* The CPUs of all of libgomp's places, when OMP_PROC_BIND is set (0 when it
 * is not, or there are none). */
static int places_union(cpu_set_t *set) {
    if (omp_get_proc_bind() == omp_proc_bind_false) return 0;
    CPU_ZERO(set);
    int any = 0;
    for (int p = 0; p < omp_get_num_places(); p++) {
        const int n = omp_get_place_num_procs(p);
        int *ids = n > 0 ? malloc((size_t)n * sizeof *ids) : NULL;
        if (!ids) continue;
        omp_get_place_proc_ids(p, ids);
        for (int i = 0; i < n; i++)
            if (ids[i] >= 0 && ids[i] < CPU_SETSIZE) CPU_SET(ids[i], set), any = 1;
        free(ids);
    }
    return any;
}

/* With OMP_PROC_BIND set, libgomp binds the initial thread to its first
 * place as it loads, before main runs. The re-executed program would inherit
 * that one place and put every thread on it: the GRPO benchmark's steps took
 * twice as long. Give the process back the union of all places first. */
static void unbind_before_exec(void) {
    cpu_set_t set;
    if (places_union(&set)) sched_setaffinity(0, sizeof set, &set); /* failing: exec as we are */
}

void omp_env_use_short_spin(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("GOMP_SPINCOUNT", PONDER_GOMP_SPINCOUNT, 1) != 0) return;
    unbind_before_exec();
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the default policy */
}

int omp_env_cpus_allowed(void) {
    cpu_set_t set;
    if (places_union(&set)) return CPU_COUNT(&set); /* the team's CPUs, not this thread's place */
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    return CPU_COUNT(&set);
}
