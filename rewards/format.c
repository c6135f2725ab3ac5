/* rewards/format.c — rewards on the shape of a completion rather than its
 * answer: think_format (TON), overlong (DAPO) and length (RLSP).
 *
 * think_format is a hand-written matcher with exactly the semantics of Python's
 * re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", text, re.DOTALL)
 * that TON uses, plus one documented relaxation: trailing ASCII whitespace is
 * allowed (a tokenizer often decodes a final newline before eos). Under
 * fullmatch the lazy .*? still expands as far as needed, so the rule reads: the
 * text starts with <think>, ends with </answer>, and somewhere in between a
 * </think> is followed, after optional whitespace, by <answer>. */
#include "rewards/reward.h"

#include <ctype.h>  /* isspace */
#include <string.h> /* strlen, strncmp, memcmp */

/* ---------------------------------------------------------------- format ---*/

/* Python's \s on ASCII text. */
static bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

static bool starts_with(const char *s, size_t n, const char *prefix) {
    size_t k = strlen(prefix);
    return n >= k && memcmp(s, prefix, k) == 0;
}

RewardValue reward_think_format(const char *completion) {
    static const char OPEN_T[] = "<think>", CLOSE_T[] = "</think>", OPEN_A[] = "<answer>", CLOSE_A[] = "</answer>";
    const char *s = completion ? completion : "";
    size_t n = strlen(s);
    while (n > 0 && is_ascii_space(s[n - 1])) n--;
    size_t close_a = sizeof CLOSE_A - 1;
    if (!starts_with(s, n, OPEN_T) || n < close_a || memcmp(s + n - close_a, CLOSE_A, close_a) != 0)
        return reward_value(0.0);
    size_t body_end = n - close_a; /* the answer's .*? ends here */
    for (size_t p = sizeof OPEN_T - 1; p + sizeof CLOSE_T - 1 <= body_end; p++) {
        if (!starts_with(s + p, body_end - p, CLOSE_T)) continue;
        size_t q = p + sizeof CLOSE_T - 1;
        while (q < body_end && is_ascii_space(s[q])) q++;
        if (starts_with(s + q, body_end - q, OPEN_A)) return reward_value(1.0);
    }
    return reward_value(0.0);
}

/* ---------------------------------------------------------------- overlong -*/

RewardValue reward_overlong(int64_t tokens, int64_t max_len, int64_t buffer, double factor) {
    int64_t expected = max_len - buffer;
    if (tokens <= expected) return reward_value(0.0);
    if (tokens > max_len) return reward_value(-factor);
    return reward_value((double)(expected - tokens) / (double)buffer * factor);
}

/* ---------------------------------------------------------------- length ---*/

int64_t reward_count_steps(const char *completion) {
    const char *s = completion ? strstr(completion, "<think>") : NULL;
    if (!s) return 0;
    s += strlen("<think>");
    const char *end = strstr(s, "</think>");
    if (!end) end = s + strlen(s);
    int64_t steps = 0;
    bool blank = true;
    for (const char *p = s; p < end; p++) {
        if (*p == '\n') {
            steps += !blank;
            blank = true;
        } else if (!isspace((unsigned char)*p)) {
            blank = false;
        }
    }
    return steps + !blank;
}

RewardValue reward_length(int64_t count, int64_t cap) {
    if (count < 0) count = 0;
    return reward_value((double)(count < cap ? count : cap) / (double)cap);
}
