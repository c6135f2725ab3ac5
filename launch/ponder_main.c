/* launch/ponder_main.c — the `ponder` command: picks a subcommand and calls the library.
 *
 * This is the only place that prints errors and chooses exit codes: 0 success,
 * 1 a failure while running, 2 a usage or configuration error. To add a
 * subcommand, write a `static int cmd_x(int argc, char **argv)` (argv[0] is the
 * subcommand's name) and add one line to COMMANDS. */
#include <stdio.h>  /* fprintf, fflush */
#include <string.h> /* strcmp */

#include "trainer/config.h" /* PonderConfig, config_load, config_write_yaml */
#include "util/error.h"     /* PonderError */

#define EXIT_USAGE 2

typedef struct Command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *args;
    const char *summary;
} Command;

/* ---------------------------------------------------------------- config ----*/

static int cmd_config(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: ponder config CONFIG [key=value ...]\n");
        return EXIT_USAGE;
    }
    PonderConfig cfg;
    PonderError err = {0};
    if (config_load(&cfg, argv[1], argc - 2, argv + 2, &err)) {
        fprintf(stderr, "ponder config: %s\n", err.msg);
        return EXIT_USAGE;
    }
    if (config_write_yaml(&cfg, stdout) || fflush(stdout)) {
        fprintf(stderr, "ponder config: cannot write to stdout\n");
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- pending ---*/

static int cmd_not_yet(int argc, char **argv) {
    fprintf(stderr, "ponder %s: not available yet\n", argv[0]);
    return EXIT_USAGE;
}

/* ---------------------------------------------------------------- dispatch --*/

static const Command COMMANDS[] = {
    {"config", cmd_config, "CONFIG [key=value ...]", "print the resolved config as YAML"},
    {"train", cmd_not_yet, "CONFIG [key=value ...]", "run the config's stages"},
    {"eval", cmd_not_yet, "CONFIG|CKPT [key=value ...]", "evaluate a model on the config's task"},
    {"generate", cmd_not_yet, "CKPT PROMPT", "sample completions from a checkpoint"},
    {"inspect", cmd_not_yet, "CKPT", "describe a checkpoint"},
};

#define N_COMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *f) {
    fprintf(f, "usage: ponder <command> [args]\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-9s %-28s %s\n", COMMANDS[i].name, COMMANDS[i].args, COMMANDS[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) return COMMANDS[i].run(argc - 1, argv + 1);
    fprintf(stderr, "ponder: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return EXIT_USAGE;
}
