/* util/omp_env.h — choosing libgomp's wait policy from inside a program.
 *
 * libgomp reads its wait policy once, when it is loaded, so it cannot be set
 * from a running process. Its default lets idle threads spin for a long time
 * at every barrier; when the cores are shared (another job, a BLAS thread, a
 * rollout rank) a spinning thread takes the core from the thread it waits
 * for and steps get several times slower. Programs (the `ponder` command and
 * the benchmarks) call this first thing in main(): unless the user chose a
 * policy, it sets a short spin and re-executes the program once. */
#ifndef PONDER_UTIL_OMP_ENV_H
#define PONDER_UTIL_OMP_ENV_H

#define PONDER_GOMP_SPINCOUNT "10000" /* iterations before an idle thread sleeps */

/* Returns only when no re-exec happened (policy already chosen, or exec failed).
 * With OMP_PROC_BIND set, the re-executed program starts on all of libgomp's
 * places, not only the one libgomp bound the first image to. */
void omp_env_use_short_spin(char **argv);

/* CPUs the program's threads may run on: those of libgomp's places with
 * OMP_PROC_BIND set, else the calling thread's affinity (-1 when the system
 * does not say). */
int omp_env_cpus_allowed(void);

#endif
