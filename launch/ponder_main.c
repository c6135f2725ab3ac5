/* launch/ponder_main.c — the `ponder` command: picks a subcommand and calls the library.
 *
 * This is the only place that prints errors and chooses exit codes: 0 success,
 * 1 a failure while running, 2 a usage or configuration error. To add a
 * subcommand, write a `static int cmd_x(int argc, char **argv)` (argv[0] is the
 * subcommand's name) and add one line to COMMANDS. */
#include <signal.h> /* sigaction */
#include <stdio.h>  /* fprintf, fflush */
#include <stdlib.h> /* strtof, strtoll, free, getenv, setenv */
#include <string.h> /* strcmp */

#include "model/cpu/blas.h"     /* blas_load */
#include "model/tokenizer.h"    /* tokenizer_create_char */
#include "rollout/evaluate.h"   /* eval_run */
#include "rollout/generate.h"   /* rollout_generate */
#include "rollout/task_arith.h" /* ArithSpec */
#include "trainer/checkpoint.h" /* ckpt_inspect, ckpt_load */
#include "trainer/config.h"     /* PonderConfig, config_load, config_write_yaml */
#include "trainer/dist.h"       /* dist_init, dist_abort */
#include "trainer/plot.h"       /* plot_run */
#include "trainer/train.h"      /* train_run */
#include "util/error.h"         /* PonderError */
#include "util/omp_env.h"       /* omp_env_use_short_spin */

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

/* ---------------------------------------------------------------- train -----*/

/* The number of the signal that asked for a stop: SIGINT/SIGTERM, or
 * SIGUSR1, the signal launch/ponder-mpi has mpirun forward to every rank on
 * Ctrl-C (mpirun's own SIGINT handling kills the ranks two seconds later,
 * before a real model's step and checkpoint are done); the trainer polls it
 * between steps, writes a checkpoint and returns. A signal handler can only
 * talk through a global. */
static volatile sig_atomic_t g_stop_request = 0;

static void on_stop_signal(int sig) { g_stop_request = sig; }

/* The exit status of a run that stopped before its last step: 130, as a
 * program ended by Ctrl-C, except when SIGUSR1 asked: then the launcher
 * forwarded the stop, and a non-zero status would make mpirun report the
 * ranks as failed; the launcher exits 130 itself. */
static int stopped_exit_status(void) { return g_stop_request == SIGUSR1 ? 0 : 130; }

static void install_stop_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

static int cmd_train(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: ponder train CONFIG [--resume] [--stop-at STEP] [key=value ...]\n");
        return EXIT_USAGE;
    }
    const char *path = argv[1];
    int resume = 0, n_over = 0;
    long long stop_at = 0;
    char **over = argv + 2;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--resume")) resume = 1;
        else if (!strcmp(argv[i], "--stop-at") && i + 1 < argc) stop_at = strtoll(argv[++i], NULL, 10);
        else if (argv[i][0] == '-') {
            fprintf(stderr, "ponder train: unknown option '%s'\n", argv[i]);
            return EXIT_USAGE;
        } else over[n_over++] = argv[i];
    }
    PonderConfig cfg;
    PonderError err = {0};
    if (config_load(&cfg, path, n_over, over, &err)) {
        fprintf(stderr, "ponder train: %s\n", err.msg);
        return EXIT_USAGE;
    }
    Dist dist;
    if (dist_init(&dist, NULL, NULL, &err)) {
        fprintf(stderr, "ponder train: %s\n", err.msg);
        return 1;
    }
    dist.timeout_s = cfg.dist.timeout_s;
    dist.grad_allreduce = (DistGradAllreduce)cfg.dist.grad_allreduce;
    install_stop_handlers();
    TrainOptions opts = {.resume = resume, .console = stdout, .stop_request = &g_stop_request,
                         .stop_at_step = stop_at, .dist = &dist};
    TrainSummary sum;
    if (train_run(&cfg, &opts, &sum, &err)) {
        int code = err.code == PONDER_ERR_CONFIG ? EXIT_USAGE : 1;
        if (dist.size > 1) { /* the other ranks may be waiting for this one: end them all */
            fprintf(stderr, "ponder train (rank %d of %d): %s\n", dist.rank, dist.size, err.msg);
            fflush(stderr);
            dist_abort(&dist, code);
        }
        fprintf(stderr, "ponder train: %s\n", err.msg);
        dist_finalize(&dist);
        return code;
    }
    const int rank = dist.rank;
    /* before MPI_Finalize: once a rank exits with 130 (--stop-at under
     * mpirun), mpirun may end the others, and rank 0's line would be lost in
     * its stdout buffer */
    if (rank == 0 && sum.stopped_early) {
        printf("stopped at step %lld; resume with: ponder train %s --resume\n",
               (long long)sum.steps_done, path);
        fflush(stdout);
    }
    dist_finalize(&dist);
    if (rank != 0 || sum.stopped_early) return sum.stopped_early ? stopped_exit_status() : 0;
    printf("done: %lld steps in %.1fs", (long long)sum.steps_done, sum.seconds);
    if (sum.final_accuracy >= 0)
        printf(", final accuracy %.4f, think_ratio %.3f", sum.final_accuracy, sum.final_think_ratio);
    printf("\n");
    if (sum.bytes_collectives + sum.bytes_weights + sum.bytes_samples > 0) {
        double per = sum.rl_steps > 0 ? 1.0 / sum.rl_steps : 0.0;
        printf("traffic between ranks: collectives %.2f MB, weights %.2f MB, samples %.2f MB "
               "(per RL step, over %.0f: collectives %.3f MB, weights %.3f MB, samples %.3f MB)\n",
               sum.bytes_collectives / 1e6, sum.bytes_weights / 1e6, sum.bytes_samples / 1e6,
               sum.rl_steps, sum.bytes_collectives * per / 1e6, sum.bytes_weights * per / 1e6,
               sum.bytes_samples * per / 1e6);
    }
    return 0;
}

/* ---------------------------------------------------------------- inspect ---*/

static int cmd_inspect(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: ponder inspect CKPT\n");
        return EXIT_USAGE;
    }
    PonderError err = {0};
    if (ckpt_inspect(argv[1], stdout, &err)) {
        fprintf(stderr, "ponder inspect: %s\n", err.msg);
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- compare ---*/

static int cmd_compare(int argc, char **argv) {
    double tol = 0.0;
    const char *paths[2] = {NULL, NULL};
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tol") && i + 1 < argc) {
            char *end;
            tol = strtod(argv[++i], &end);
            if (*end || tol < 0) {
                fprintf(stderr, "ponder compare: --tol expects a number >= 0, found '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
        } else if (n < 2 && argv[i][0] != '-') paths[n++] = argv[i];
        else n = 3;
    }
    if (n != 2) {
        fprintf(stderr, "usage: ponder compare A.h5 B.h5 [--tol REL]\n");
        return EXIT_USAGE;
    }
    PonderError err = {0};
    CkptDiff d;
    if (blas_load(NULL, &err) || ckpt_compare(paths[0], paths[1], &d, &err)) {
        fprintf(stderr, "ponder compare: %s\n", err.msg);
        return 1;
    }
    printf("steps %lld and %lld; %lld of %lld parameters differ in their bits; worst tensor %s: "
           "max|a-b|/max|a| = %.3g; largest |a-b| %.3g\n",
           (long long)d.step_a, (long long)d.step_b, (long long)d.differing, (long long)d.params,
           d.worst_tensor, d.worst_rel, d.max_abs);
    if (d.worst_rel > tol) {
        printf("DIFFERENT: %.3g is over the tolerance %.3g\n", d.worst_rel, tol);
        return 1;
    }
    printf("%s\n", d.differing ? "EQUAL within the tolerance" : "BIT-IDENTICAL");
    return 0;
}

/* ------------------------------------------------------- checkpoint model ---*/

/* ops NULL: the fp32 CPU backend. */
static int load_model(const char *path, const struct ModelOps *ops, Model **m, PonderError *err) {
    ModelConfig mc;
    int rc = blas_load(NULL, err);
    if (rc == PONDER_OK) rc = ckpt_read_model_config(path, &mc, err);
    if (rc == PONDER_OK) rc = ops ? model_create_on(m, &mc, ops, err) : model_create(m, &mc, err);
    if (rc == PONDER_OK) {
        CkptRead rd = {.model = *m};
        rc = ckpt_load(path, &rd, err);
        free(rd.config_yaml);
        free(rd.metrics_jsonl);
    }
    return rc;
}

/* ---------------------------------------------------------------- generate --*/

static int cmd_generate(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = NULL;
    SamplingParams sp = sampling_greedy(128);
    long long seed = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--ckpt")) ckpt = argv[i + 1];
        else if (!strcmp(argv[i], "--prompt")) prompt = argv[i + 1];
        else if (!strcmp(argv[i], "--temperature")) sp.temperature = strtof(argv[i + 1], NULL);
        else if (!strcmp(argv[i], "--top-p")) sp.top_p = strtof(argv[i + 1], NULL);
        else if (!strcmp(argv[i], "--top-k")) sp.top_k = strtoll(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--max-new-tokens")) sp.max_new_tokens = strtoll(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--seed")) seed = strtoll(argv[i + 1], NULL, 10);
        else {
            fprintf(stderr, "ponder generate: unknown option '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!ckpt || !prompt || argc % 2 == 0) {
        fprintf(stderr, "usage: ponder generate --ckpt FILE --prompt TEXT [--temperature T] "
                        "[--top-p P] [--top-k K] [--max-new-tokens N] [--seed S]\n");
        return EXIT_USAGE;
    }
    PonderError err = {0};
    Model *m = NULL;
    Tokenizer *tok = NULL;
    int32_t *ids = NULL;
    int64_t n = 1, cap = 64;
    GenSample out = {0};
    int rc = load_model(ckpt, NULL, &m, &err);
    if (rc == PONDER_OK) rc = tokenizer_create_char(&tok, &err);
    if (rc == PONDER_OK && !(ids = malloc((size_t)cap * sizeof(int32_t))))
        rc = ponder_error(&err, PONDER_ERR_NOMEM, "out of memory");
    if (rc == PONDER_OK) {
        ids[0] = tokenizer_special(tok, TOK_BOS);
        rc = tokenizer_encode(tok, prompt, &ids, &n, &cap, &err);
    }
    if (rc == PONDER_OK) {
        GenPrompt gp = {ids, n, 0};
        GenConfig gc = {.sampling = sp, .num_generations = 1, .max_batch = 1,
                        .seed = (uint64_t)seed, .eos_id = tokenizer_special(tok, TOK_EOS)};
        rc = rollout_generate(m, &gp, 1, &gc, &out, &err);
    }
    char *text = NULL;
    if (rc == PONDER_OK) rc = tokenizer_decode(tok, out.tokens, out.n, &text, &err);
    if (rc == PONDER_OK)
        printf("%s%s\n[%lld tokens, finish: %s]\n", prompt, text, (long long)out.n,
               gen_finish_name(out.finish));
    else fprintf(stderr, "ponder generate: %s\n", err.msg);
    free(text);
    gen_samples_free(&out, 1);
    free(ids);
    tokenizer_free(tok);
    model_free(m);
    return rc ? 1 : 0;
}

/* ---------------------------------------------------------------- eval ------*/

static int open_eval_set(const PonderConfig *cfg, Dataset **d, PonderError *err) {
    if (cfg->data.task == CONFIG_TASK_ARITH) {
        ArithSpec s = {0};
        s.min_digits = (int)cfg->data.eval_min_digits;
        s.max_digits = (int)cfg->data.eval_max_digits;
        snprintf(s.ops, sizeof s.ops, "%.7s", cfg->data.ops);
        return dataset_open_arith(d, &s, (uint64_t)cfg->run.seed, DATA_SPLIT_EVAL,
                                  cfg->data.eval_size, err);
    }
    if (!cfg->data.eval[0])
        return ponder_error(err, PONDER_ERR_CONFIG, "data.eval: no evaluation file configured");
    return dataset_open_jsonl(d, cfg->data.eval, cfg->data.prompt_key, cfg->data.response_key,
                              cfg->data.answer_key, err);
}

static int cmd_eval(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: ponder eval CONFIG --ckpt FILE [--out DIR] [key=value ...]\n");
        return EXIT_USAGE;
    }
    const char *ckpt = NULL, *outdir = ".";
    char **over = argv + 2;
    int n_over = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--ckpt") && i + 1 < argc) ckpt = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) outdir = argv[++i];
        else if (argv[i][0] == '-') {
            fprintf(stderr, "ponder eval: unknown option '%s'\n", argv[i]);
            return EXIT_USAGE;
        } else over[n_over++] = argv[i];
    }
    if (!ckpt) {
        fprintf(stderr, "ponder eval: --ckpt FILE is required\n");
        return EXIT_USAGE;
    }
    PonderConfig cfg;
    PonderError err = {0};
    if (config_load(&cfg, argv[1], n_over, over, &err)) {
        fprintf(stderr, "ponder eval: %s\n", err.msg);
        return EXIT_USAGE;
    }
    Model *m = NULL;
    Tokenizer *tok = NULL;
    Dataset *data = NULL;
    FILE *samples = NULL, *report = NULL;
    char path[1024];
    /* the config's device and precision, so that a bf16 run's checkpoint
     * scores as its in-run evaluations did */
    const struct ModelOps *ops = NULL;
    int rc = train_backend(&cfg, &ops, &err);
    if (rc == PONDER_OK) rc = train_make_dirs(outdir, &err);
    if (rc == PONDER_OK) rc = load_model(ckpt, ops, &m, &err);
    if (rc == PONDER_OK) rc = tokenizer_create_char(&tok, &err);
    if (rc == PONDER_OK) rc = open_eval_set(&cfg, &data, &err);
    snprintf(path, sizeof path, "%s/eval_samples.jsonl", outdir);
    if (rc == PONDER_OK && !(samples = fopen(path, "w")))
        rc = ponder_error(&err, PONDER_ERR_IO, "cannot write %s", path);
    EvalResult res;
    if (rc == PONDER_OK) {
        EvalSettings s = {.sampling = {(float)cfg.eval.temperature, cfg.eval.top_k,
                                       (float)cfg.eval.top_p, (float)cfg.eval.min_p,
                                       cfg.eval.max_new_tokens},
                          .num_samples = cfg.eval.num_samples,
                          .max_batch = cfg.eval.max_batch,
                          .seed = (uint64_t)cfg.run.seed};
        int64_t n = dataset_size(data);
        if (n < 0 || n > cfg.data.eval_size) n = cfg.data.eval_size;
        rc = eval_run(m, tok, data, n, &s, &res, samples, &err);
    }
    snprintf(path, sizeof path, "%s/eval_report.json", outdir);
    if (rc == PONDER_OK && !(report = fopen(path, "w")))
        rc = ponder_error(&err, PONDER_ERR_IO, "cannot write %s", path);
    if (rc == PONDER_OK) {
        eval_write_json(&res, report);
        fprintf(report, "\n");
        eval_write_json(&res, stdout);
        printf("\n");
    } else {
        fprintf(stderr, "ponder eval: %s\n", err.msg);
    }
    if (samples) fclose(samples);
    if (report) fclose(report);
    dataset_free(data);
    tokenizer_free(tok);
    model_free(m);
    return rc ? 1 : 0;
}

/* ---------------------------------------------------------------- plot ------*/

static int cmd_plot(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: ponder plot RUN_DIR\n");
        return EXIT_USAGE;
    }
    char out[1100];
    PonderError err = {0};
    if (plot_run(argv[1], out, sizeof out, &err)) {
        fprintf(stderr, "ponder plot: %s\n", err.msg);
        return 1;
    }
    printf("wrote %s\n", out);
    return 0;
}

/* ---------------------------------------------------------------- dispatch --*/

static const Command COMMANDS[] = {
    {"config", cmd_config, "CONFIG [key=value ...]", "print the resolved config as YAML"},
    {"train", cmd_train, "CONFIG [--resume] [--stop-at STEP] [k=v ...]", "run the config's stages"},
    {"eval", cmd_eval, "CONFIG --ckpt FILE [--out DIR] [k=v ...]", "evaluate a checkpoint on the config's task"},
    {"generate", cmd_generate, "--ckpt FILE --prompt TEXT [...]", "complete a prompt (KV cache)"},
    {"inspect", cmd_inspect, "CKPT", "describe a checkpoint"},
    {"compare", cmd_compare, "A.h5 B.h5 [--tol REL]", "how far apart two checkpoints' weights are"},
    {"plot", cmd_plot, "RUN_DIR", "draw the run's curves into RUN_DIR/curves.svg"},
};

#define N_COMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *f) {
    fprintf(f, "usage: ponder <command> [args]\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-9s %-28s %s\n", COMMANDS[i].name, COMMANDS[i].args, COMMANDS[i].summary);
}

int main(int argc, char **argv) {
    omp_env_use_short_spin(argv);
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
