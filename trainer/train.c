/* trainer/train.c — the learner loop (see train.h): set-up and resume, the
 * resolved plan, the SFT stage, metrics, evaluation and checkpoints. */
#include "trainer/train.h"

#include <errno.h>    /* errno */
#include <math.h>     /* isfinite */
#include <omp.h>      /* omp_set_num_threads */
#include <stdarg.h>   /* va_list */
#include <stdlib.h>   /* calloc, free */
#include <string.h>   /* strlen, strcmp */
#include <sys/stat.h> /* mkdir */
#include <time.h>     /* clock_gettime */
#include <unistd.h>   /* sysconf */

#include "algos/sft.h"          /* sft_batch_build, sft_loss */
#include "model/cpu/blas.h"     /* blas_load */
#include "model/ops.h"          /* ops_cpu, ops_cuda */
#ifdef PONDER_HAVE_CUDA
#include "model/cuda/cuda_backend.h" /* cuda_set_tf32, cuda_set_bf16 */
#endif
#include "model/tokenizer.h"    /* Tokenizer */
#include "rollout/dataset.h"    /* Dataset */
#include "rollout/evaluate.h"   /* eval_run */
#include "rollout/task_arith.h" /* ArithSpec */
#include "trainer/checkpoint.h" /* ckpt_save, ckpt_load */
#include "trainer/optim.h"      /* Optimizer */
#include "trainer/rl_stage.h"   /* RlStage */
#include "util/omp_env.h"       /* omp_env_cpus_allowed */

/* ------------------------------------------------------------ run state -- */

typedef struct TextBuf {
    char *s;
    size_t len, cap;
} TextBuf;

static int text_append(TextBuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int text_append(TextBuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (need < 0) return -1;
    if (b->len + (size_t)need + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + (size_t)need + 1) cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) return -1;
        b->s = s, b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)need + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)need;
    return 0;
}

typedef struct Run {
    const PonderConfig *cfg;
    const TrainOptions *opts;
    Dist *dist;         /* the ranks running the current stage loop: world, or this role's */
    Dist *world;        /* opts->dist, or `single` */
    Dist single;
    Dist role_comm;     /* disaggregated: the learners, or the rollout ranks */
    int disaggregated;  /* dist.mode disaggregated with more than one rank */
    RlRole role;
    int n_learners;
    char dir[CONFIG_PATH_MAX], ckpt_dir[CONFIG_PATH_MAX];
    Tokenizer *tok;
    Model *model;
    ModelConfig mcfg;
    Optimizer opt;
    int have_opt;
    Dataset *train, *eval;
    FILE *metrics;
    TextBuf history; /* every metrics line so far: stored in checkpoints */
    char *config_yaml;
    int64_t step;       /* global step: optimizer steps taken over all stages */
    int stage;          /* index of the running stage */
    int64_t stage_step; /* steps taken in the running stage */
    int64_t cursor;     /* data position of the running stage */
    int64_t bad_in_row, skipped;
    Rng rng;            /* stored in checkpoints; per-step streams are derived */
    double t_start, last_accuracy, last_think_ratio;
    TrainSummary *summary;
    RlStage rl;         /* the running RL stage's state */
    double bytes_weights, bytes_samples, rl_steps; /* traffic of ended RL stages */
    int rl_active;
} Run;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void say(const Run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const Run *r, const char *fmt, ...) {
    if (!r->opts->console || r->dist->rank != 0) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(r->opts->console, fmt, ap);
    va_end(ap);
    fflush(r->opts->console);
}

int train_make_dirs(const char *path, PonderError *err) {
    char buf[CONFIG_PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) && errno != EEXIST)
            return ponder_error(err, PONDER_ERR_IO, "cannot create directory %s: %s", buf,
                                strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) && errno != EEXIST)
        return ponder_error(err, PONDER_ERR_IO, "cannot create directory %s: %s", buf,
                            strerror(errno));
    return PONDER_OK;
}

static int64_t steps_before_stage(const PonderConfig *cfg, int stage) {
    int64_t s = 0;
    for (int i = 0; i < stage; i++) s += cfg->stages[i].steps;
    return s;
}

/* --------------------------------------------------------------- set-up -- */

/* runtime.threads 0: OMP_NUM_THREADS when set, else the node's cores shared
 * among the ranks on it. */
static void set_threads(const PonderConfig *cfg, const Dist *d) {
    int n = (int)cfg->runtime.threads;
    const char *env = getenv("OMP_NUM_THREADS");
    if (n <= 0 && env && atoi(env) > 0) n = atoi(env);
    if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN) / (d->local_size > 0 ? d->local_size : 1);
    if (n <= 0) n = 1;
    omp_set_num_threads(n);
    blas_set_threads(n);
}

static ArithSpec arith_spec(const PonderConfig *cfg, int eval) {
    ArithSpec s = {0};
    s.min_digits = (int)(eval ? cfg->data.eval_min_digits : cfg->data.min_digits);
    s.max_digits = (int)(eval ? cfg->data.eval_max_digits : cfg->data.max_digits);
    snprintf(s.ops, sizeof s.ops, "%.7s", cfg->data.ops);
    return s;
}

static int open_data(Run *r, PonderError *err) {
    const PonderConfig *cfg = r->cfg;
    const ConfigData *d = &cfg->data;
    if (d->task == CONFIG_TASK_ARITH) {
        ArithSpec tr = arith_spec(cfg, 0), ev = arith_spec(cfg, 1);
        int rc = dataset_open_arith(&r->train, &tr, (uint64_t)cfg->run.seed, DATA_SPLIT_TRAIN, 0, err);
        if (rc) return rc;
        return dataset_open_arith(&r->eval, &ev, (uint64_t)cfg->run.seed, DATA_SPLIT_EVAL,
                                  d->eval_size, err);
    }
    int rc = dataset_open_jsonl(&r->train, d->train, d->prompt_key, d->response_key,
                                d->answer_key, err);
    if (rc) return rc;
    if (d->eval[0])
        return dataset_open_jsonl(&r->eval, d->eval, d->prompt_key, d->response_key,
                                  d->answer_key, err);
    return PONDER_OK;
}

static OptimSettings stage_optim(const PonderConfig *cfg, int stage) {
    const ConfigOptim *o = &cfg->optim;
    OptimSettings s = optim_settings_default();
    s.lr = (float)config_stage_lr(cfg, stage);
    s.beta1 = (float)o->beta1, s.beta2 = (float)o->beta2, s.eps = (float)o->eps;
    s.weight_decay = (float)o->weight_decay;
    s.grad_clip = (float)o->grad_clip;
    s.schedule = o->schedule == CONFIG_SCHEDULE_CONSTANT ? LR_CONSTANT
                 : o->schedule == CONFIG_SCHEDULE_LINEAR ? LR_LINEAR
                                                         : LR_COSINE;
    s.warmup_steps = o->warmup_steps;
    s.total_steps = cfg->stages[stage].steps;
    s.min_lr_ratio = (float)o->min_lr_ratio;
    s.decay_norms_and_biases = o->decay_norms_and_biases;
    s.decay_embeddings = o->decay_embeddings;
    return s;
}

static int start_optimizer(Run *r, PonderError *err) {
    if (r->have_opt) optim_free(&r->opt);
    OptimSettings s = stage_optim(r->cfg, r->stage);
    int rc = optim_create(&r->opt, r->model, &s, err);
    r->have_opt = rc == PONDER_OK;
    return rc;
}

static int load_weights_from(Run *r, const char *path, PonderError *err) {
    CkptRead rd = {.model = r->model};
    int rc = ckpt_load(path, &rd, err);
    free(rd.config_yaml);
    free(rd.metrics_jsonl);
    return rc ? ponder_error_prefix(err, "model.init_from: ") : PONDER_OK;
}

/* Restores everything from the newest checkpoint of the run. */
static int resume_from_latest(Run *r, PonderError *err) {
    char path[1024];
    int rc = ckpt_find_latest(r->ckpt_dir, path, sizeof path, err);
    if (rc) return ponder_error_prefix(err, "--resume: ");
    ModelConfig saved;
    rc = ckpt_read_model_config(path, &saved, err);
    if (rc) return rc;
    int64_t cursor = 0;
    CkptRead rd = {.model = r->model, .rngs = &r->rng, .max_rngs = 1, .data_cursor = &cursor,
                   .max_cursor = 1};
    /* the step decides which stage we are in; moments only mid-stage */
    rc = ckpt_load(path, &rd, err);
    if (rc) return rc;
    r->step = rd.meta.step;
    r->stage = (int)rd.meta.stage_index;
    r->cursor = cursor;
    r->history.len = 0;
    if (rd.metrics_jsonl && text_append(&r->history, "%s", rd.metrics_jsonl))
        rc = ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
    if (rc == PONDER_OK && rd.config_yaml && strcmp(rd.config_yaml, r->config_yaml) != 0)
        say(r, "note: the configuration differs from the one in %s; continuing with the new one\n",
            path);
    free(rd.config_yaml);
    free(rd.metrics_jsonl);
    if (rc) return rc;
    if (r->stage >= r->cfg->n_stages)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "--resume: %s is past the last stage (stage %d of %d); nothing to do",
                            path, r->stage + 1, r->cfg->n_stages);
    r->stage_step = r->step - steps_before_stage(r->cfg, r->stage);
    rc = start_optimizer(r, err);
    if (rc == PONDER_OK && r->stage_step > 0) {
        CkptRead ro = {.model = r->model, .opt = &r->opt};
        rc = ckpt_load(path, &ro, err);
        free(ro.config_yaml);
        free(ro.metrics_jsonl);
    }
    say(r, "resumed from %s at step %lld (stage %s, step %lld of %lld)\n", path,
        (long long)r->step, config_stage_name(r->cfg, r->stage), (long long)r->stage_step,
        (long long)r->cfg->stages[r->stage].steps);
    return rc;
}

static int open_metrics(Run *r, PonderError *err) {
    if (r->dist->rank != 0) return PONDER_OK; /* rank 0 writes for the job */
    char path[CONFIG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/metrics.jsonl", r->dir);
    r->metrics = fopen(path, "w"); /* rewritten from the checkpoint's history on resume */
    if (!r->metrics)
        return ponder_error(err, PONDER_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    if (r->history.len) fwrite(r->history.s, 1, r->history.len, r->metrics);
    fflush(r->metrics);
    return PONDER_OK;
}

int train_backend(const PonderConfig *cfg, const struct ModelOps **out, PonderError *err) {
    const ModelOps *ops = ops_cpu();
    if (cfg->model.device == CONFIG_DEVICE_CPU && cfg->model.precision == CONFIG_PRECISION_BF16) {
        ops = ops_cpu_bf16();
        if (!ops)
            return ponder_error(err, PONDER_ERR_CONFIG,
                                "model.precision: bf16 on the CPU needs AVX512-BF16, which this CPU "
                                "lacks; use fp32 (or model.device: cuda)");
    }
    if (cfg->model.device == CONFIG_DEVICE_CUDA) {
        ops = ops_cuda();
        if (!ops)
            return ponder_error(err, PONDER_ERR_CONFIG, "model.device: cuda is not usable here: %s",
                                ops_cuda_status());
#ifdef PONDER_HAVE_CUDA
        /* fp32 (the default) leaves the backend as PONDER_CUDA_TF32/BF16 started it */
        if (cfg->model.precision == CONFIG_PRECISION_TF32) cuda_set_bf16(0), cuda_set_tf32(1);
        if (cfg->model.precision == CONFIG_PRECISION_BF16) cuda_set_tf32(0), cuda_set_bf16(1);
#endif
    }
    *out = ops;
    return PONDER_OK;
}

/* The policy on the configured device (model.device); ranks sharing a node
 * take one GPU each (node-local rank modulo the node's GPUs). */
static int create_model(const PonderConfig *cfg, const ModelConfig *mc, const Dist *world,
                        Model **out, PonderError *err) {
    if (cfg->model.device == CONFIG_DEVICE_CUDA && world->local_size > 1 &&
        ops_cuda_choose_device(world->local_rank) != 0)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "model.device: cuda: cannot put node-local rank %d on its own GPU "
                            "(the backend already runs on another device)", world->local_rank);
    const ModelOps *ops = NULL;
    int rc = train_backend(cfg, &ops, err);
    if (rc == PONDER_OK) rc = model_create_on(out, mc, ops, err);
    if (rc == PONDER_OK) model_share_prefixes(*out, cfg->model.share_prefixes);
    return rc;
}

/* dist.mode disaggregated: world ranks 0 .. n_learners-1 learn, the rest
 * generate (RL stages only; SFT stages use every rank). */
static int setup_roles(Run *r, PonderError *err) {
    const ConfigDist *d = &r->cfg->dist;
    r->role = RL_ROLE_COLOCATED;
    if (d->mode != CONFIG_DIST_DISAGGREGATED || r->world->size == 1) return PONDER_OK;
    if (d->rollout_ranks >= r->world->size)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "dist.rollout_ranks: %lld rollout ranks leave no learner among the job's %d "
                            "ranks (mpirun -np); use at most %d",
                            (long long)d->rollout_ranks, r->world->size, r->world->size - 1);
    r->disaggregated = 1;
    r->n_learners = r->world->size - (int)d->rollout_ranks;
    r->role = r->world->rank < r->n_learners ? RL_ROLE_LEARNER : RL_ROLE_ROLLOUT;
    return dist_split(r->world, (int)r->role, &r->role_comm, err);
}

static int setup(Run *r, PonderError *err) {
    const PonderConfig *cfg = r->cfg;
    int rc = blas_load(cfg->runtime.blas, err);
    if (rc) return rc;
    if ((rc = setup_roles(r, err))) return rc;
    set_threads(cfg, r->dist);
    if ((rc = config_run_dir(cfg, r->dir, sizeof r->dir, err))) return rc;
    if ((rc = config_checkpoint_dir(cfg, r->ckpt_dir, sizeof r->ckpt_dir, err))) return rc;
    if ((rc = train_make_dirs(r->dir, err)) || (rc = train_make_dirs(r->ckpt_dir, err))) return rc;
    if (cfg->tokenizer.type != CONFIG_TOKENIZER_CHAR)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "tokenizer.type: only 'char' is available in this build");
    if ((rc = tokenizer_create_char(&r->tok, err))) return rc;
    if ((rc = config_model(cfg, &r->mcfg, tokenizer_vocab_size(r->tok), err))) return rc;
    if ((rc = create_model(cfg, &r->mcfg, r->world, &r->model, err))) return rc;
    r->config_yaml = config_to_yaml_string(cfg);
    if (!r->config_yaml) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
    if ((rc = open_data(r, err))) return rc;
    r->rng = rng_from_seed((uint64_t)cfg->run.seed);
    r->last_accuracy = -1.0;
    if (r->opts->resume) return resume_from_latest(r, err);
    if (cfg->model.init_from[0]) rc = load_weights_from(r, cfg->model.init_from, err);
    else model_init_weights(r->model, (uint64_t)cfg->run.seed); /* uploads on a device */
    if (rc == PONDER_OK) rc = start_optimizer(r, err);
    return rc;
}

static void teardown(Run *r) {
    if (r->rl_active) rl_stage_end(&r->rl);
    if (r->disaggregated) dist_free_split(&r->role_comm);
    if (r->have_opt) optim_free(&r->opt);
    model_free(r->model);
    tokenizer_free(r->tok);
    dataset_free(r->train);
    dataset_free(r->eval);
    if (r->metrics) fclose(r->metrics);
    free(r->history.s);
    free(r->config_yaml);
}

/* ----------------------------------------------------------------- plan -- */

static double activation_bytes(const ModelConfig *c, int64_t B, int64_t T) {
    const double N = (double)(B * T), C = (double)c->d_model, F = (double)c->d_ff;
    const double hd = C / (double)c->n_head;
    const double qkv = (double)(c->n_head + 2 * c->n_kv_head) * hd;
    const double fc = c->arch == MODEL_ARCH_LLAMA ? 2 * F : F;
    double per_layer = N * (5 * C + 4 + qkv + C + fc + F) + (double)(B * c->n_head) * T * T;
    return 4.0 * ((double)c->n_layer * per_layer + N * (3 * C + 8 + qkv + fc + F));
}

static void print_plan(const Run *r) {
    const PonderConfig *cfg = r->cfg;
    const ModelConfig *c = &r->mcfg;
    size_t P = model_num_params(r->model);
    say(r, "ponder run '%s' -> %s\n", cfg->run.name, r->dir);
    say(r, "  model   %s, %zu parameters (%.2f M): d_model %lld, %lld layers, %lld heads "
           "(%lld kv), d_ff %lld, vocab %lld, context %lld%s%s\n",
        c->arch == MODEL_ARCH_LLAMA ? "llama" : "gpt2", P, (double)P / 1e6, (long long)c->d_model,
        (long long)c->n_layer, (long long)c->n_head, (long long)c->n_kv_head, (long long)c->d_ff,
        (long long)c->vocab_size, (long long)c->max_seq_len,
        c->tie_embeddings ? ", tied embeddings" : "", c->scalar_head ? ", scalar head" : "");
    const BlasInfo *bi = blas_info();
    const int threads = omp_get_max_threads(), cpus = omp_env_cpus_allowed();
    say(r, "  compute cpu, %d thread%s on %d CPUs, BLAS %s (%s)\n", threads,
        threads == 1 ? "" : "s", cpus, bi ? bi->library : "?", bi ? bi->core : "?");
    if (cpus > 0 && threads > cpus)
        say(r, "  warning: %d threads share %d CPUs (the process's CPU affinity); steps will be slower\n",
            threads, cpus);
    /* ranks on one node each run their own threads: 2 ranks x 2 threads on 2
     * cores ran the GRPO benchmark 8x slower than 2 x 1 (bench/RESULTS.md) */
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    const int here = r->world->local_size;
    if (here > 1 && online > 0 && (long)threads * here > online)
        say(r, "  warning: %d ranks on this node x %d threads = %ld threads on %ld CPUs; steps will "
               "be much slower (runtime.threads: 0 gives each rank its share of the cores)\n",
            here, threads, (long)threads * here, online);
    for (int s = 0; s < cfg->n_stages; s++) {
        const ConfigStage *st = &cfg->stages[s];
        if (st->type != CONFIG_STAGE_SFT) {
            int64_t S = st->prompts_per_step * st->num_generations;
            int64_t M = st->mini_batches;
            char micro[96] = "each mini-batch in one pass";
            if (st->micro_batch_tokens > 0)
                snprintf(micro, sizeof micro, "micro-batches of <= %lld padded tokens, rows sorted by length",
                         (long long)st->micro_batch_tokens);
            say(r, "  stage %d %-6s %s: %lld steps x %lld prompts x %lld generations = %lld samples "
                   "(<= %lld new tokens each); %lld mini-batches of %lld x %lld iterations = %lld "
                   "optimizer steps per rollout; %s; lr %.2e, temperature %.2f, beta %.3g\n",
                s + 1, config_stage_type_name(st->type), config_stage_name(cfg, s),
                (long long)st->steps, (long long)st->prompts_per_step,
                (long long)st->num_generations, (long long)S, (long long)st->max_new_tokens,
                (long long)M, (long long)(S / M), (long long)st->num_iterations,
                (long long)(M * st->num_iterations), micro, config_stage_lr(cfg, s), st->temperature,
                st->beta);
            continue;
        }
        int64_t T = config_stage_seq_len(cfg, s);
        double mem = 16.0 * (double)P + activation_bytes(c, st->batch_size / st->grad_accum, T);
        say(r, "  stage %d %-6s %s: %lld steps x %lld sequences (%lld micro-batches of %lld), "
               "<= %lld tokens/step, lr %.2e, thought_dropout %.2f; memory <= %.0f MiB\n",
            s + 1, config_stage_type_name(st->type), config_stage_name(cfg, s),
            (long long)st->steps, (long long)st->batch_size, (long long)st->grad_accum,
            (long long)(st->batch_size / st->grad_accum), (long long)(st->batch_size * T),
            config_stage_lr(cfg, s), st->thought_dropout, mem / (1024.0 * 1024.0));
    }
    say(r, "  checkpoints every %lld steps in %s (keep %lld); eval every %lld steps on %lld items\n",
        (long long)cfg->checkpoint.every, r->ckpt_dir, (long long)cfg->checkpoint.keep_last,
        (long long)cfg->eval.every,
        (long long)(r->eval ? (dataset_size(r->eval) > 0 ? dataset_size(r->eval) : 0) : 0));
}

/* ---------------------------------------------------------- checkpoints -- */

static int save_checkpoint(Run *r, PonderError *err) {
    char path[1024];
    ckpt_path_for_step(r->ckpt_dir, r->step, path, sizeof path);
    snprintf(r->summary->last_checkpoint, sizeof r->summary->last_checkpoint, "%s", path);
    if (r->dist->rank != 0) return PONDER_OK; /* every rank holds the same state */
    CkptWrite w = {.model = r->model,
                   .opt = r->have_opt ? &r->opt : NULL,
                   .rngs = &r->rng,
                   .n_rngs = 1,
                   .data_cursor = &r->cursor,
                   .n_cursor = 1,
                   .stage = config_stage_name(r->cfg, r->stage < r->cfg->n_stages ? r->stage : r->cfg->n_stages - 1),
                   .stage_index = r->stage,
                   .step = r->step,
                   .config_yaml = r->config_yaml,
                   .metrics_jsonl = r->history.s ? r->history.s : ""};
    int rc = ckpt_save(path, &w, err);
    if (rc == PONDER_OK && r->rl_active) rc = rl_stage_save(&r->rl, r->ckpt_dir, r->step, err);
    if (rc == PONDER_OK) rc = ckpt_prune(r->ckpt_dir, r->cfg->checkpoint.keep_last, err);
    if (rc == PONDER_OK) say(r, "  checkpoint %s\n", path);
    return rc;
}

/* -------------------------------------------------------------- metrics -- */

static int emit_metrics(Run *r, const char *json_line, PonderError *err) {
    if (text_append(&r->history, "%s\n", json_line))
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory for metrics");
    if (r->metrics) {
        fprintf(r->metrics, "%s\n", json_line);
        fflush(r->metrics);
    }
    return PONDER_OK;
}

/* Rank 0 evaluates; the others wait for its accuracy (so every rank's
 * summary agrees). */
static int run_eval_rank0(Run *r, PonderError *err);
static int run_eval(Run *r, PonderError *err) {
    if (!r->eval) return PONDER_OK;
    dist_set_phase(r->dist, "evaluation", r->step);
    int rc = r->dist->rank == 0 ? run_eval_rank0(r, err) : PONDER_OK;
    double v[2] = {r->last_accuracy, r->last_think_ratio};
    if (rc == PONDER_OK) rc = dist_bcast(r->dist, v, sizeof v, 0, "rank 0's evaluation", err);
    r->last_accuracy = v[0], r->last_think_ratio = v[1];
    return rc;
}

static int run_eval_rank0(Run *r, PonderError *err) {
    const ConfigEval *e = &r->cfg->eval;
    EvalSettings s = {.sampling = {(float)e->temperature, e->top_k, (float)e->top_p,
                                   (float)e->min_p, e->max_new_tokens},
                      .num_samples = e->num_samples,
                      .max_batch = e->max_batch,
                      .seed = (uint64_t)r->cfg->run.seed};
    int64_t n = dataset_size(r->eval);
    if (n < 0 || n > r->cfg->data.eval_size) n = r->cfg->data.eval_size;
    EvalResult res;
    int rc = eval_run(r->model, r->tok, r->eval, n, &s, &res, NULL, err);
    if (rc) return rc;
    r->last_accuracy = res.all.accuracy;
    r->last_think_ratio = res.all.think_ratio;
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (!mem) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
    fprintf(mem, "{\"kind\":\"eval\",\"stage\":\"%s\",\"step\":%lld,\"eval\":",
            config_stage_name(r->cfg, r->stage), (long long)r->step);
    eval_write_json(&res, mem);
    fprintf(mem, "}");
    fclose(mem);
    rc = emit_metrics(r, buf, err);
    free(buf);
    say(r, "  eval @%lld: accuracy %.4f (", (long long)r->step, res.all.accuracy);
    for (int d = 0; d <= EVAL_MAX_DIFFICULTY; d++)
        if (res.by_difficulty[d].items)
            say(r, "%dd %.3f ", d, res.by_difficulty[d].accuracy);
    say(r, "), think_ratio %.3f, mean length %.1f, %lld items in %.1fs\n", res.all.think_ratio,
        res.all.mean_length, (long long)res.all.items, res.seconds);
    return rc;
}

/* ------------------------------------------------------------- SFT step -- */

typedef struct StepStats {
    double loss, grad_norm, seconds;
    float lr;
    int64_t target_tokens, real_tokens, padded_tokens, dropped;
    int finite;
} StepStats;

static int fetch_items(Run *r, DataItem *items, int64_t n, PonderError *err) {
    for (int64_t i = 0; i < n; i++) {
        int rc = dataset_get(r->train, (uint64_t)r->cfg->run.seed, r->cursor + i, &items[i], err);
        if (rc) return rc;
    }
    return PONDER_OK;
}

/* Forward and backward over this rank's rows of one micro-batch (all of
 * them with one rank); accumulates into the grads. */
static int sft_micro(Run *r, const SftBatch *b, double norm, StepStats *st, PonderError *err) {
    const int64_t R = r->dist->size, me = r->dist->rank;
    const int64_t row0 = b->B * me / R, rows = b->B * (me + 1) / R - row0;
    if (rows == 0) return PONDER_OK;
    const int64_t N = rows * b->T, o = row0 * b->T;
    float *logp = malloc((size_t)N * sizeof(float)), *dlogp = malloc((size_t)N * sizeof(float));
    int rc = (!logp || !dlogp) ? ponder_error(err, PONDER_ERR_NOMEM, "out of memory") : PONDER_OK;
    ModelBatch mb = {rows, b->T, b->tokens + o, b->targets + o, b->mask + o, NULL, 1.0f};
    if (rc == PONDER_OK) rc = model_forward(r->model, &mb, logp, NULL, NULL, err);
    if (rc == PONDER_OK) {
        double loss = sft_loss(logp, b->mask + o, N, norm, dlogp);
        st->loss += loss;
        if (!isfinite(loss)) st->finite = 0;
        else rc = model_backward(r->model, dlogp, NULL, NULL, err);
    }
    free(logp);
    free(dlogp);
    return rc;
}

static int sft_step(Run *r, StepStats *st, PonderError *err) {
    const ConfigStage *cs = &r->cfg->stages[r->stage];
    const int64_t n = cs->batch_size, micro = n / cs->grad_accum;
    const int64_t maxT = config_stage_seq_len(r->cfg, r->stage);
    DataItem *items = calloc((size_t)n, sizeof(DataItem));
    SftBatch *mb = calloc((size_t)cs->grad_accum, sizeof(SftBatch));
    int rc = (!items || !mb) ? ponder_error(err, PONDER_ERR_NOMEM, "out of memory") : PONDER_OK;
    if (rc == PONDER_OK) rc = fetch_items(r, items, n, err);
    Rng step_rng = rng_derive((uint64_t)r->cfg->run.seed, (uint64_t)r->stage, (uint64_t)r->stage_step, 1);
    for (int64_t k = 0; k < cs->grad_accum && rc == PONDER_OK; k++) {
        rc = sft_batch_build(&mb[k], r->tok, items + k * micro, micro, maxT, cs->thought_dropout,
                             &step_rng, err);
        if (rc) break;
        st->target_tokens += mb[k].target_tokens;
        st->real_tokens += mb[k].real_tokens;
        st->padded_tokens += mb[k].B * mb[k].T;
        st->dropped += mb[k].dropped;
    }
    st->finite = 1;
    model_zero_grad(r->model);
    for (int64_t k = 0; k < cs->grad_accum && rc == PONDER_OK && st->finite; k++)
        rc = sft_micro(r, &mb[k], (double)(st->target_tokens > 0 ? st->target_tokens : 1), st, err);
    /* every rank built the whole batch (so the token counts are global);
     * the loss parts and gradients of the ranks' rows are summed */
    double v[2] = {st->loss, st->finite ? 0.0 : 1.0};
    if (rc == PONDER_OK) rc = dist_allreduce_f64(r->dist, v, 2, DIST_SUM, "SFT loss", err);
    st->loss = v[0], st->finite = v[1] == 0.0;
    if (rc == PONDER_OK && st->finite) rc = dist_allreduce_grads(r->dist, r->model, err);
    for (int64_t k = 0; mb && k < cs->grad_accum; k++) sft_batch_free(&mb[k]);
    for (int64_t i = 0; items && i < n; i++) data_item_free(&items[i]);
    free(mb);
    free(items);
    return rc;
}

/* Applies the update unless the step was non-finite; counts bad steps. */
static int apply_update(Run *r, StepStats *st, PonderError *err) {
    if (st->finite) {
        OptimStepInfo info;
        PonderError local = {0};
        if (optim_step(&r->opt, r->model, &info, &local) == PONDER_OK) {
            st->lr = info.lr;
            st->grad_norm = info.grad_norm;
            r->bad_in_row = 0;
            return PONDER_OK;
        }
        st->finite = 0; /* non-finite gradient norm: parameters were not touched */
    }
    r->bad_in_row++;
    r->skipped++;
    st->lr = optim_lr_at(&r->opt.s, r->opt.step);
    say(r, "  step %lld skipped: non-finite loss or gradients (%lld in a row)\n",
        (long long)r->step + 1, (long long)r->bad_in_row);
    if (r->bad_in_row >= r->cfg->stages[r->stage].max_bad_steps)
        return ponder_error(err, PONDER_ERR_RUNTIME,
                            "%lld non-finite steps in a row (stages.%d.max_bad_steps); stopping",
                            (long long)r->bad_in_row, r->stage);
    return PONDER_OK;
}

/* RL stages apply their own updates; a non-finite one was skipped there. */
static int count_bad_step(Run *r, const StepStats *st, PonderError *err) {
    if (st->finite) {
        r->bad_in_row = 0;
        return PONDER_OK;
    }
    r->bad_in_row++;
    r->skipped++;
    say(r, "  step %lld: a non-finite update was skipped (%lld in a row)\n", (long long)r->step + 1,
        (long long)r->bad_in_row);
    if (r->bad_in_row >= r->cfg->stages[r->stage].max_bad_steps)
        return ponder_error(err, PONDER_ERR_RUNTIME,
                            "%lld non-finite steps in a row (stages.%d.max_bad_steps); stopping",
                            (long long)r->bad_in_row, r->stage);
    return PONDER_OK;
}

static void log_step(Run *r, const StepStats *st, PonderError *err) {
    const ConfigStage *cs = &r->cfg->stages[r->stage];
    double tps = (double)st->real_tokens / st->seconds;
    char line[1024];
    snprintf(line, sizeof line,
             "{\"kind\":\"train\",\"stage\":\"%s\",\"step\":%lld,\"stage_step\":%lld,"
             "\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6f,\"finite\":%s,\"tokens\":%lld,"
             "\"target_tokens\":%lld,\"pad_share\":%.4f,\"thought_dropped\":%lld,"
             "\"tokens_per_s\":%.1f,\"step_s\":%.4f,\"elapsed_s\":%.2f}",
             config_stage_name(r->cfg, r->stage), (long long)r->step, (long long)r->stage_step,
             st->loss, (double)st->lr, st->grad_norm, st->finite ? "true" : "false",
             (long long)st->real_tokens, (long long)st->target_tokens,
             1.0 - (double)st->real_tokens / (double)(st->padded_tokens ? st->padded_tokens : 1),
             (long long)st->dropped, tps, st->seconds, now_s() - r->t_start);
    emit_metrics(r, line, err);
    if (r->stage_step % cs->log_every == 0 || r->stage_step == cs->steps) {
        double eta = st->seconds * (double)(cs->steps - r->stage_step);
        say(r, "[%s] step %lld/%lld loss %.4f lr %.2e gnorm %.3f tok/s %.0f eta %dm%02ds\n",
            config_stage_name(r->cfg, r->stage), (long long)r->stage_step, (long long)cs->steps,
            st->loss, (double)st->lr, st->grad_norm, tps, (int)(eta / 60), (int)eta % 60);
    }
}

/* ---------------------------------------------------------------- loop -- */

/* A signal reaches each rank at its own moment: the ranks agree (any rank
 * asked = all stop) so they stop at the same step. */
static int stop_requested(Run *r, PonderError *err, int *rc) {
    double v = (r->opts->stop_at_step > 0 && r->step >= r->opts->stop_at_step) ||
               (r->opts->stop_request && *r->opts->stop_request);
    *rc = dist_allreduce_f64(r->dist, &v, 1, DIST_MAX, "stop request", err);
    return *rc == PONDER_OK && v > 0;
}

/* One RL step: rollout, scoring, update; metrics line and console line. */
static int rl_step(Run *r, StepStats *st, PonderError *err) {
    RlStepStats rs;
    int rc = rl_stage_step(&r->rl, r->step, &r->cursor, &rs, err);
    if (rc) return rc;
    st->finite = rs.finite;
    st->lr = (float)rs.lr;
    st->grad_norm = rs.grad_norm;
    st->loss = rs.policy_loss;
    rs.elapsed_s = now_s() - r->t_start;
    char *line = rl_stats_json(&r->rl, &rs, r->step + 1, r->stage_step + 1);
    if (!line) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory for metrics");
    rc = emit_metrics(r, line, err);
    free(line);
    const ConfigStage *cs = &r->cfg->stages[r->stage];
    if ((r->stage_step + 1) % cs->log_every == 0 || r->stage_step + 1 == cs->steps) {
        double step_s = rs.t_generate + rs.t_score + rs.t_train;
        double eta = step_s * (double)(cs->steps - r->stage_step - 1);
        say(r, "[%s] step %lld/%lld reward %.3f acc %.3f len %.1f think %.2f kl %.4f clip %.3f/%.3f "
               "gnorm %.3f | gen %.1fs score %.2fs train %.1fs | eta %dm%02ds\n",
            config_stage_name(r->cfg, r->stage), (long long)r->stage_step + 1,
            (long long)cs->steps, rs.reward_mean, rs.accuracy, rs.completion_length,
            rs.think_ratio, rs.kl, rs.clip_low, rs.clip_high, rs.grad_norm, rs.t_generate,
            rs.t_score, rs.t_train, (int)(eta / 60), (int)eta % 60);
    }
    return rc;
}

static int run_stage_steps(Run *r, PonderError *err) {
    const PonderConfig *cfg = r->cfg;
    const ConfigStage *cs = &cfg->stages[r->stage];
    const int rl = cs->type != CONFIG_STAGE_SFT;
    const int64_t eval_every = config_stage_eval_every(cfg, r->stage);
    while (r->stage_step < cs->steps) {
        int stop_rc = PONDER_OK;
        dist_set_phase(r->dist, "step start", r->step);
        if (stop_requested(r, err, &stop_rc)) {
            r->summary->stopped_early = true;
            say(r, "stop requested: writing a checkpoint at step %lld\n", (long long)r->step);
            return save_checkpoint(r, err);
        }
        if (stop_rc) return stop_rc;
        dist_set_phase(r->dist, rl ? "rl step" : "sft step", r->step);
        StepStats st = {0};
        double t0 = now_s();
        int rc = rl ? rl_step(r, &st, err) : sft_step(r, &st, err);
        if (rc == PONDER_OK) rc = rl ? count_bad_step(r, &st, err) : apply_update(r, &st, err);
        if (rc) {
            /* A failing step (a reward process that crashed, bad data, too
             * many non-finite steps) leaves the state of the last completed
             * step: keep it, so the run can be resumed once the cause is fixed. */
            PonderError ignored = {0};
            if (save_checkpoint(r, &ignored) == PONDER_OK)
                say(r, "stopped by an error at step %lld; the checkpoint above holds the last "
                       "completed step\n", (long long)r->step + 1);
            return rc;
        }
        if (!rl) r->cursor += cs->batch_size;
        else r->rl_steps++;
        r->stage_step++;
        r->step++;
        st.seconds = now_s() - t0;
        if (!rl) log_step(r, &st, err);
        if (eval_every > 0 && r->stage_step % eval_every == 0 && r->stage_step < cs->steps &&
            (rc = run_eval(r, err)))
            return rc;
        if (cfg->checkpoint.every > 0 && r->step % cfg->checkpoint.every == 0 &&
            (rc = save_checkpoint(r, err)))
            return rc;
    }
    return PONDER_OK;
}

/* Sets up an RL stage's ranks and state, then runs the steps. Disaggregated:
 * rollout ranks serve samples for the whole stage while the learners run the
 * step loop among themselves. */
static int run_stage(Run *r, PonderError *err) {
    const PonderConfig *cfg = r->cfg;
    if (cfg->stages[r->stage].type == CONFIG_STAGE_SFT) return run_stage_steps(r, err);
    RlRanks ranks = {r->world, r->world, RL_ROLE_COLOCATED, 0, 0};
    if (r->disaggregated)
        ranks = (RlRanks){&r->role_comm, r->world, r->role, r->n_learners, cfg->dist.max_staleness};
    int rc = rl_stage_begin(&r->rl, &ranks, cfg, r->stage, r->model, &r->opt, r->tok, r->train,
                            r->ckpt_dir, r->stage_step > 0, r->step, err);
    if (rc) return rc;
    r->rl_active = 1;
    if (r->role == RL_ROLE_ROLLOUT) return rl_stage_serve(&r->rl, err);
    if (r->role == RL_ROLE_LEARNER) {
        r->dist = &r->role_comm;
        rc = rl_stage_remote_start(&r->rl, r->step, r->cursor, err);
    }
    if (rc == PONDER_OK) rc = run_stage_steps(r, err);
    /* after an error the job is ended (launch/ponder_main.c), not wound down */
    if (r->role == RL_ROLE_LEARNER && rc == PONDER_OK) rc = rl_stage_remote_finish(&r->rl, err);
    r->dist = r->world;
    return rc;
}

/* Disaggregated: after an RL stage the rollout ranks take the learners'
 * state (weights, step, cursor, whether the run stopped) from rank 0. */
static int sync_after_stage(Run *r, PonderError *err) {
    if (!r->disaggregated || r->cfg->stages[r->stage].type == CONFIG_STAGE_SFT) return PONDER_OK;
    int64_t v[6] = {r->step, r->stage_step, r->cursor, r->summary->stopped_early, r->bad_in_row,
                    r->skipped};
    int rc = dist_bcast(r->world, v, sizeof v, 0, "the learners' state after the stage", err);
    float *p = model_params(r->model);
    if (rc == PONDER_OK)
        rc = dist_bcast(r->world, p, model_num_params(r->model) * sizeof(float), 0,
                        "the learners' weights after the stage", err);
    if (rc == PONDER_OK && r->world->rank != 0) {
        model_params_upload(r->model);
        r->step = v[0], r->stage_step = v[1], r->cursor = v[2];
        r->summary->stopped_early = v[3] != 0;
        r->bad_in_row = v[4], r->skipped = v[5];
    }
    return rc;
}

static int run_all(Run *r, PonderError *err) {
    int rc = open_metrics(r, err);
    print_plan(r);
    while (rc == PONDER_OK && r->stage < r->cfg->n_stages) {
        rc = run_stage(r, err);
        if (rc == PONDER_OK) rc = sync_after_stage(r, err);
        if (rc || r->summary->stopped_early) return rc;
        rc = run_eval(r, err);
        if (r->rl_active) {
            r->bytes_weights += (double)r->rl.bytes_weights;
            r->bytes_samples += (double)r->rl.bytes_samples;
            rl_stage_end(&r->rl);
            r->rl_active = 0;
        }
        if (rc) return rc;
        r->stage++;
        r->stage_step = 0;
        r->cursor = 0;
        if (r->stage < r->cfg->n_stages) rc = start_optimizer(r, err);
        if (rc == PONDER_OK) rc = save_checkpoint(r, err);
    }
    return rc;
}

/* The job's traffic, summed over ranks (a collective over every rank). */
static int gather_traffic(Run *r, PonderError *err) {
    if (r->world->size == 1) return PONDER_OK;
    double v[4] = {(double)r->world->bytes_sent + (double)r->role_comm.bytes_sent, r->bytes_weights,
                   r->bytes_samples, r->world->rank == 0 ? r->rl_steps : 0.0};
    if (r->rl_active) v[1] += (double)r->rl.bytes_weights, v[2] += (double)r->rl.bytes_samples;
    int rc = dist_allreduce_f64(r->world, v, 4, DIST_SUM, "traffic counters", err);
    /* point-to-point messages are counted in bytes_sent too: keep them apart */
    r->summary->bytes_collectives = v[0] - v[1] - v[2];
    r->summary->bytes_weights = v[1];
    r->summary->bytes_samples = v[2];
    r->summary->rl_steps = v[3];
    return rc;
}

int train_run(const PonderConfig *cfg, const TrainOptions *opts, TrainSummary *summary,
              PonderError *err) {
    memset(summary, 0, sizeof *summary);
    Run r = {.cfg = cfg, .opts = opts, .summary = summary};
    dist_single(&r.single);
    r.world = opts->dist ? opts->dist : &r.single;
    r.dist = r.world;
    r.t_start = now_s();
    int rc = setup(&r, err);
    if (rc == PONDER_OK) rc = run_all(&r, err);
    if (rc == PONDER_OK) rc = gather_traffic(&r, err);
    summary->steps_done = r.step;
    summary->skipped_steps = r.skipped;
    summary->final_accuracy = r.last_accuracy;
    summary->final_think_ratio = r.last_think_ratio;
    summary->seconds = now_s() - r.t_start;
    teardown(&r);
    return rc;
}
