/* rollout/evaluate.c — generation-based evaluation (see evaluate.h). */
#include "rollout/evaluate.h"

#include <ctype.h>  /* isspace */
#include <jansson.h> /* json_dumps for sample lines */
#include <stdlib.h> /* calloc, free */
#include <string.h> /* strstr, strlen */
#include <time.h>   /* clock_gettime */

#include "rollout/generate.h" /* rollout_generate */

static const char *last_occurrence(const char *hay, const char *needle) {
    const char *last = NULL;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) last = p;
    return last;
}

static void trim_into(const char *begin, const char *end, char *buf, size_t size) {
    while (begin < end && isspace((unsigned char)*begin)) begin++;
    while (end > begin && isspace((unsigned char)end[-1])) end--;
    size_t n = (size_t)(end - begin);
    if (n >= size) n = size - 1;
    memcpy(buf, begin, n);
    buf[n] = '\0';
}

int eval_extract_answer(const char *completion, char *buf, size_t size) {
    const char *open = last_occurrence(completion, "<answer>");
    if (!open) return 0;
    open += strlen("<answer>");
    const char *close = strstr(open, "</answer>");
    if (!close) return 0;
    trim_into(open, close, buf, size);
    return 1;
}

int eval_thinks(const char *completion) {
    const char *open = strstr(completion, "<think>");
    if (!open) return 0;
    open += strlen("<think>");
    const char *close = strstr(open, "</think>");
    if (!close) close = open + strlen(open); /* unterminated: whatever follows counts */
    for (const char *p = open; p < close; p++)
        if (!isspace((unsigned char)*p)) return 1;
    return 0;
}

double eval_pass_at_k(int64_t n, int64_t c, int64_t k) {
    if (n - c < k) return 1.0;
    double prod = 1.0; /* C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i) */
    for (int64_t i = n - c + 1; i <= n; i++) prod *= 1.0 - (double)k / (double)i;
    return 1.0 - prod;
}

static int answers_equal(const char *got, const char *want) {
    char a[256], b[256];
    trim_into(got, got + strlen(got), a, sizeof a);
    trim_into(want, want + strlen(want), b, sizeof b);
    return strcmp(a, b) == 0;
}

/* Per-item tallies before they are folded into buckets. */
typedef struct ItemTally {
    int64_t correct, thinks, length, majority_correct;
} ItemTally;

static void add_to_bucket(EvalBucket *b, const ItemTally *t, int64_t k) {
    b->items++;
    b->samples += k;
    b->accuracy += (double)t->correct;
    b->pass_at_k += eval_pass_at_k(k, t->correct, k);
    b->maj_at_k += (double)t->majority_correct;
    b->mean_length += (double)t->length;
    b->think_ratio += (double)t->thinks;
}

static void finish_bucket(EvalBucket *b) {
    if (b->items == 0) return;
    b->accuracy /= (double)b->samples;
    b->mean_length /= (double)b->samples;
    b->think_ratio /= (double)b->samples;
    b->pass_at_k /= (double)b->items;
    b->maj_at_k /= (double)b->items;
}

/* Majority vote over k answers (ties: the first to reach the top count). */
static int majority_is_correct(char (*answers)[64], const int *has, int64_t k, const char *want) {
    int64_t best = -1, best_count = 0;
    for (int64_t i = 0; i < k; i++) {
        if (!has[i]) continue;
        int64_t count = 0;
        for (int64_t j = 0; j < k; j++) count += has[j] && strcmp(answers[i], answers[j]) == 0;
        if (count > best_count) best = i, best_count = count;
    }
    return best >= 0 && answers_equal(answers[best], want);
}

static void write_sample_line(FILE *f, const DataItem *it, const char *text, const GenSample *s,
                              int correct) {
    json_t *o = json_pack("{s:s, s:s, s:s?, s:I, s:I, s:s, s:b, s:b}", "prompt", it->prompt,
                          "completion", text, "answer", it->answer, "sample", (json_int_t)s->sample,
                          "tokens", (json_int_t)s->n, "finish", gen_finish_name(s->finish),
                          "correct", correct, "thinks", eval_thinks(text));
    if (!o) return;
    char *line = json_dumps(o, JSON_COMPACT);
    if (line) fprintf(f, "%s\n", line);
    free(line);
    json_decref(o);
}

static int score_item(const Tokenizer *tok, const DataItem *it, const GenSample *samples, int64_t k,
                      ItemTally *t, FILE *samples_out, PonderError *err) {
    char (*answers)[64] = calloc((size_t)k, sizeof *answers);
    int *has = calloc((size_t)k, sizeof(int));
    if (!answers || !has) {
        free(answers), free(has);
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory in evaluation");
    }
    memset(t, 0, sizeof *t);
    int rc = PONDER_OK;
    for (int64_t g = 0; g < k && rc == PONDER_OK; g++) {
        char *text = NULL;
        rc = tokenizer_decode(tok, samples[g].tokens, samples[g].n, &text, err);
        if (rc) break;
        has[g] = eval_extract_answer(text, answers[g], sizeof answers[g]);
        int correct = has[g] && it->answer && answers_equal(answers[g], it->answer);
        t->correct += correct;
        t->thinks += eval_thinks(text);
        t->length += samples[g].n;
        if (samples_out) write_sample_line(samples_out, it, text, &samples[g], correct);
        free(text);
    }
    if (rc == PONDER_OK && it->answer)
        t->majority_correct = majority_is_correct(answers, has, k, it->answer);
    free(answers);
    free(has);
    return rc;
}

typedef struct EncodedPrompts {
    GenPrompt *prompts;
    int32_t **ids;
    DataItem *items;
    int64_t n;
} EncodedPrompts;

static void encoded_free(EncodedPrompts *e) {
    for (int64_t i = 0; i < e->n; i++) {
        free(e->ids[i]);
        data_item_free(&e->items[i]);
    }
    free(e->prompts), free(e->ids), free(e->items);
}

static int encode_prompts(const Tokenizer *tok, const Dataset *data, int64_t n,
                          EncodedPrompts *e, PonderError *err) {
    e->n = n;
    e->prompts = calloc((size_t)n, sizeof(GenPrompt));
    e->ids = calloc((size_t)n, sizeof(int32_t *));
    e->items = calloc((size_t)n, sizeof(DataItem));
    if (!e->prompts || !e->ids || !e->items)
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory in evaluation");
    for (int64_t i = 0; i < n; i++) {
        int rc = dataset_at(data, i, &e->items[i], err);
        if (rc) return rc;
        int64_t len = 1, cap = 64;
        e->ids[i] = malloc((size_t)cap * sizeof(int32_t));
        if (!e->ids[i]) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
        e->ids[i][0] = tokenizer_special(tok, TOK_BOS);
        rc = tokenizer_encode(tok, e->items[i].prompt, &e->ids[i], &len, &cap, err);
        if (rc) return rc;
        e->prompts[i] = (GenPrompt){e->ids[i], len, i};
    }
    return PONDER_OK;
}

int eval_run(Model *m, const Tokenizer *tok, const Dataset *data, int64_t n_items,
             const EvalSettings *s, EvalResult *out, FILE *samples_out, PonderError *err) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    memset(out, 0, sizeof *out);
    int64_t size = dataset_size(data);
    if (size >= 0 && n_items > size) n_items = size;
    const int64_t k = s->num_samples;
    EncodedPrompts e = {0};
    GenSample *samples = calloc((size_t)(n_items * k), sizeof(GenSample));
    int rc = samples ? encode_prompts(tok, data, n_items, &e, err)
                     : ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
    GenConfig gc = {.sampling = s->sampling,
                    .num_generations = k,
                    .max_batch = s->max_batch,
                    .seed = s->seed,
                    .eos_id = tokenizer_special(tok, TOK_EOS),
                    .tokenizer = tok,
                    .stop = {"</answer>"},
                    .n_stop = 1};
    if (rc == PONDER_OK) rc = rollout_generate(m, e.prompts, n_items, &gc, samples, err);
    for (int64_t i = 0; i < n_items && rc == PONDER_OK; i++) {
        ItemTally t = {0};
        rc = score_item(tok, &e.items[i], samples + i * k, k, &t, samples_out, err);
        if (rc) break;
        add_to_bucket(&out->all, &t, k);
        int d = e.items[i].difficulty;
        if (d >= 0 && d <= EVAL_MAX_DIFFICULTY) add_to_bucket(&out->by_difficulty[d], &t, k);
    }
    finish_bucket(&out->all);
    for (int d = 0; d <= EVAL_MAX_DIFFICULTY; d++) finish_bucket(&out->by_difficulty[d]);
    if (samples) gen_samples_free(samples, n_items * k);
    free(samples);
    encoded_free(&e);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    out->seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return rc;
}

static void write_bucket(const EvalBucket *b, FILE *f) {
    fprintf(f,
            "{\"items\":%lld,\"samples\":%lld,\"accuracy\":%.6f,\"pass_at_k\":%.6f,"
            "\"maj_at_k\":%.6f,\"mean_length\":%.3f,\"think_ratio\":%.6f}",
            (long long)b->items, (long long)b->samples, b->accuracy, b->pass_at_k, b->maj_at_k,
            b->mean_length, b->think_ratio);
}

void eval_write_json(const EvalResult *r, FILE *f) {
    fprintf(f, "{\"all\":");
    write_bucket(&r->all, f);
    fprintf(f, ",\"by_difficulty\":{");
    int first = 1;
    for (int d = 0; d <= EVAL_MAX_DIFFICULTY; d++) {
        if (r->by_difficulty[d].items == 0) continue;
        fprintf(f, "%s\"%d\":", first ? "" : ",", d);
        write_bucket(&r->by_difficulty[d], f);
        first = 0;
    }
    fprintf(f, "},\"seconds\":%.3f}", r->seconds);
}
