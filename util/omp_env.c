/* util/omp_env.c — see omp_env.h. */
#include "util/omp_env.h"

#include <stdlib.h> /* getenv, setenv */
#include <unistd.h> /* execv */

void omp_env_use_short_spin(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("GOMP_SPINCOUNT", PONDER_GOMP_SPINCOUNT, 1) == 0) execv("/proc/self/exe", argv);
    /* exec failed: carry on with the default policy */
}
