/* tests/test_rewards.c — the built-in rewards and their composition: the
 * math_verify table (the verifier decides what the policy learns, so each rule
 * of rewards/README.md has a row), answer extraction, think_format's accept /
 * reject table, exact, overlong, length, spec validation, and the combination
 * arithmetic on small arrays with not-applicable values, checked against
 * numbers derived by hand in the comments. External and plugin rewards are in
 * test_rewards_external.c. */
#include <criterion/criterion.h>

#include <jansson.h> /* metrics object */
#include <math.h>    /* fabs, sqrt */
#include <stdio.h>   /* snprintf */
#include <stdlib.h>  /* malloc, free */
#include <string.h>  /* memset, strstr */

#include "rewards/reward.h"
#include "rewards/reward_set.h"

#define NA (-999.0) /* "not applicable" in the tables below */

static void expect_value(RewardValue got, double want, const char *what) {
    if (want == NA) {
        cr_expect(!got.applicable, "%s: expected not applicable, got %g", what, got.value);
        return;
    }
    cr_expect(got.applicable, "%s: expected %g, got not applicable", what, want);
    cr_expect(fabs(got.value - want) < 1e-6, "%s: expected %.9g, got %.9g", what, want, got.value);
}

/* ---------------------------------------------------------------- math_verify */

typedef struct MathCase {
    const char *completion, *answer;
    double want; /* 1, 0 or NA */
} MathCase;

static const MathCase MATH_CASES[] = {
    /* the tricky cases */
    {"<answer>42</answer>", "42", 1},
    {"<answer>42</answer>", "43", 0},
    {"so \\boxed{\\frac{1}{2}}", "0.5", 1},
    {"\\boxed{0.5}", "\\frac{1}{2}", 1},
    {"<answer>1,000</answer>", "1000", 1},
    {"<answer>1000</answer>", "1,000", 1},
    {"<answer>-0</answer>", "0", 1},
    {"<answer>-0.0</answer>", "0", 1},
    {"<answer>0</answer>", "-0", 1},
    {"<answer>3.50</answer>", "3.5", 1},
    {"<answer>3.5</answer>", "3.50", 1},
    {"<answer>1</answer> wait, no: <answer>2</answer>", "2", 1}, /* the last tag wins */
    {"<answer>1</answer> wait, no: <answer>2</answer>", "1", 0},
    {"<answer>5</answer> hmm <answer>6", "5", 1}, /* an unclosed last tag is not an answer */
    {"no marked answer, it is 42", "42", 0},
    {"", "42", 0},
    {"\\boxed{\\frac{1}{2}", "0.5", 0},     /* unbalanced: no answer */
    {"\\boxed{3} then \\boxed{4", "3", 1}, /* the balanced one before it */
    {"<answer>123456789012345678901234567890</answer>", "123456789012345678901234567890", 1},
    {"<answer>123456789012345678901234567890</answer>", "123456789012345678901234567891", 0},
    {"<answer>123,456,789,012,345,678,901,234,567,890</answer>", "123456789012345678901234567890", 1},
    {"<answer>100000000000000000000000000000.0</answer>", "100000000000000000000000000001", 0},
    {"<answer>-123456789012345678901234567890</answer>", "123456789012345678901234567890", 0},
    /* fractions */
    {"\\boxed{\\dfrac{3}{4}}", "0.75", 1},
    {"\\boxed{\\tfrac{3}{4}}", "3/4", 1},
    {"\\boxed{\\frac34}", "0.75", 1},
    {"\\boxed{-\\frac{1}{2}}", "-0.5", 1},
    {"\\boxed{\\frac{-1}{2}}", "-1/2", 1},
    {"\\boxed{\\frac{1}{2}}", "-0.5", 0},
    {"<answer>2/4</answer>", "1/2", 1},
    {"<answer>4/2</answer>", "2", 1},
    {"<answer>0.3333333</answer>", "1/3", 1}, /* within the default 1e-6 */
    {"<answer>0.33</answer>", "1/3", 0},
    {"<answer>3.14159</answer>", "3.1416", 0}, /* 3e-6 apart */
    /* signs and spellings of numbers */
    {"<answer>-5</answer>", "5", 0},
    {"<answer>+5</answer>", "5", 1},
    {"<answer>\xe2\x88\x92" "5</answer>", "-5", 1}, /* U+2212 minus */
    {"<answer>1e3</answer>", "1000", 1},
    {"<answer>1.5e-3</answer>", "0.0015", 1},
    {"<answer>.5</answer>", "0.5", 1},
    {"<answer>007</answer>", "7", 1},
    {"<answer>12.</answer>", "12", 1},
    {"<answer>1,00</answer>", "100", 0}, /* not a thousands group */
    {"<answer>1,234.5</answer>", "1234.5", 1},
    {"<answer>1{,}234</answer>", "1234", 1},
    /* percentages */
    {"<answer>50%</answer>", "0.5", 1},
    {"<answer>50%</answer>", "50", 1},
    {"<answer>50\\%</answer>", "\\frac{1}{2}", 1},
    {"<answer>0.5</answer>", "50", 0},
    {"<answer>50%</answer>", "50%", 1},
    {"<answer>50%</answer>", "0.5%", 0},
    {"<answer>50 percent</answer>", "50", 1},
    /* surrounding text and units */
    {"<answer>$12</answer>", "12", 1},
    {"<answer>\\$12.00</answer>", "12", 1},
    {"<answer>12 dollars</answer>", "12", 1},
    {"<answer>x = 12</answer>", "12", 1},
    {"<answer>12\\text{ cm}</answer>", "12", 1},
    {"<answer>12cm</answer>", "12", 1},
    {"<answer>Answer: 17</answer>", "17", 1},
    {"<answer>90^\\circ</answer>", "90", 1},
    {"<answer> 42 </answer>", "42", 1},
    {"<answer>12x</answer>", "12", 0},    /* a term, not a unit */
    {"<answer>x2</answer>", "2", 0},
    {"<answer>x^2</answer>", "2", 0},
    {"<answer>12 or 13</answer>", "12", 0}, /* no hedging */
    {"<answer>0.1 + 0.2</answer>", "0.3", 0}, /* no arithmetic */
    /* markers and their priority */
    {"#### 72", "72", 1},
    {"so the total is\n#### 1,234\nthanks", "1234", 1},
    {"work \\boxed{7} then #### 8", "7", 1},       /* \boxed before #### */
    {"\\boxed{7} <answer>8</answer>", "8", 1},     /* the answer tag before \boxed */
    {"<answer>\\boxed{5}</answer>", "5", 1},        /* a box inside the tag is unwrapped */
    {"\\boxed 5", "5", 1},
    {"The answer is \\boxed{10}.", "#### 10", 1}, /* the reference is extracted too */
    {"<answer>10</answer>", "\\boxed{10}", 1},
    {"<answer></answer>", "0", 0},
    /* answers that are not one number compare as normalised text */
    {"<answer>\\sqrt{2}</answer>", "\\sqrt{ 2 }", 1},
    {"<answer>\\sqrt{2}</answer>", "\\sqrt{3}", 0},
    {"<answer>(1, 2)</answer>", "(1,2)", 1},
    {"<answer>\\text{B}</answer>", "B", 1},
    {"\\boxed{\\{1,2\\}}", "\\{1,2\\}", 1}, /* escaped braces do not group */
    {"\\boxed{\\left( 3, 4 \\right)}", "(3,4)", 1},
    /* no reference: not applicable */
    {"<answer>42</answer>", NULL, NA},
};

Test(math_verify, table) {
    size_t n = sizeof MATH_CASES / sizeof MATH_CASES[0];
    cr_assert_geq(n, 60);
    for (size_t i = 0; i < n; i++) {
        const MathCase *c = &MATH_CASES[i];
        RewardValue v;
        PonderError err = {0};
        cr_assert_eq(reward_math_verify(c->completion, c->answer, 1e-6, &v, &err), 0, "%s", err.msg);
        char what[512];
        snprintf(what, sizeof what, "case %zu: completion \"%s\" vs answer \"%s\"", i, c->completion,
                 c->answer ? c->answer : "(null)");
        expect_value(v, c->want, what);
    }
}

Test(math_verify, tolerance_is_configurable) {
    RewardValue v;
    cr_assert_eq(reward_math_verify("<answer>3.14159</answer>", "3.1416", 1e-4, &v, NULL), 0);
    expect_value(v, 1, "3.14159 vs 3.1416 at 1e-4");
    cr_assert_eq(reward_math_verify("<answer>0.3333333</answer>", "1/3", 0, &v, NULL), 0);
    expect_value(v, 0, "0.3333333 vs 1/3 at tolerance 0");
    /* integers never get the tolerance, however large */
    cr_assert_eq(reward_math_verify("<answer>1000000000</answer>", "1000000001", 0.5, &v, NULL), 0);
    expect_value(v, 0, "integers compare exactly");
}

/* Numbers longer than the numeric parser's limit still compare exactly, as
 * digit strings. */
Test(math_verify, very_long_integers_compare_as_digits) {
    char a[1200], b[1200], comp[1300];
    for (int i = 0; i < 1000; i++) a[i] = (char)('1' + i % 9);
    a[1000] = '\0';
    memcpy(b, a, sizeof a);
    snprintf(comp, sizeof comp, "<answer>%s</answer>", a);
    RewardValue v;
    cr_assert_eq(reward_math_verify(comp, b, 1e-6, &v, NULL), 0);
    expect_value(v, 1, "equal 1000-digit numbers");
    b[999] = b[999] == '9' ? '8' : (char)(b[999] + 1);
    cr_assert_eq(reward_math_verify(comp, b, 1e-6, &v, NULL), 0);
    expect_value(v, 0, "1000-digit numbers differing in the last digit");
}

/* A degenerate completion repeating an unclosed "\boxed{" costs linear time:
 * only the last 64 boxes are tried (README), so the early \boxed{5} is not
 * found; answers beyond 4096 bytes compare as trimmed text. */
Test(math_verify, degenerate_completions_stay_fast) {
    enum { REPEAT = 20000 };
    size_t unit = strlen("\\boxed{");
    char *text = malloc(16 + REPEAT * unit + 1), *w = text;
    w += sprintf(w, "\\boxed{5} ");
    for (int i = 0; i < REPEAT; i++, w += unit) memcpy(w, "\\boxed{", unit);
    *w = '\0';
    RewardValue v;
    cr_assert_eq(reward_math_verify(text, "5", 1e-6, &v, NULL), 0);
    expect_value(v, 0, "no balanced box among the last 64");
    free(text);

    char *big = malloc(6000 + 32), *ref = malloc(6000);
    strcpy(big, "<answer> ");
    for (int i = 0; i < 5000; i++) ref[i] = (char)('0' + i % 10);
    ref[5000] = '\0';
    strcat(big, ref);
    strcat(big, " </answer>");
    cr_assert_eq(reward_math_verify(big, ref, 1e-6, &v, NULL), 0);
    expect_value(v, 1, "5000-digit answers, equal as text");
    ref[4999] = 'x';
    cr_assert_eq(reward_math_verify(big, ref, 1e-6, &v, NULL), 0);
    expect_value(v, 0, "5000-digit answers, different");
    free(big), free(ref);
}

Test(math_verify, extract_answer) {
    const char *s;
    size_t n;
    cr_assert(reward_extract_answer("a <answer>x</answer> b <answer> y </answer>", &s, &n));
    cr_assert_eq(n, 3);
    cr_assert(strncmp(s, " y ", 3) == 0);
    cr_assert(reward_extract_answer("\\boxed{\\frac{a}{b}} and \\boxed{c}", &s, &n));
    cr_assert(n == 1 && s[0] == 'c');
    cr_assert(reward_extract_answer("\\boxed{\\frac{a}{b}}", &s, &n));
    cr_assert(n == strlen("\\frac{a}{b}") && strncmp(s, "\\frac{a}{b}", n) == 0);
    cr_assert(reward_extract_answer("x\n#### 12 \nmore", &s, &n));
    cr_assert(n == 2 && strncmp(s, "12", 2) == 0);
    cr_assert(!reward_extract_answer("nothing", &s, &n));
    cr_assert(!reward_extract_answer("####   \n", &s, &n));
    cr_assert(!reward_extract_answer("</answer><answer>", &s, &n));
    cr_assert(!reward_extract_answer(NULL, &s, &n));
}

Test(math_verify, math_equal_directly) {
    bool eq = false;
    cr_assert_eq(reward_math_equal("1/2", "0.5", 1e-6, &eq, NULL), 0);
    cr_assert(eq);
    cr_assert_eq(reward_math_equal("", "", 1e-6, &eq, NULL), 0);
    cr_assert(!eq, "two empty answers are not a match");
}

/* ---------------------------------------------------------------- exact ----*/

Test(exact, trimmed_equality_of_the_final_answer) {
    expect_value(reward_exact("<answer> B </answer>", "B"), 1, "tagged");
    expect_value(reward_exact(" B\n", "B "), 1, "whole completion, trimmed");
    expect_value(reward_exact("<answer>b</answer>", "B"), 0, "case matters");
    expect_value(reward_exact("<answer>1,000</answer>", "1000"), 0, "no maths");
    expect_value(reward_exact("B", NULL), NA, "no reference");
}

/* ---------------------------------------------------------------- think_format */

typedef struct FormatCase {
    const char *text;
    double want;
} FormatCase;

static const FormatCase FORMAT_CASES[] = {
    {"<think>a</think><answer>b</answer>", 1},
    {"<think></think><answer>b</answer>", 1},             /* empty thought (TON) */
    {"<think>\n\n</think><answer>5</answer>", 1},         /* TON's literal empty thought */
    {"<think>x</think>\n \t<answer>5</answer>", 1},       /* \s* between the blocks */
    {"<think>1\n2</think><answer>5</answer>\n", 1},       /* trailing whitespace allowed */
    {"<think>a</think><answer></answer>", 1},             /* empty answer */
    {"<think>a</think>b</think><answer>5</answer>", 1},   /* .*? expands as in re.fullmatch */
    {"<think>a</think><answer>1</answer><answer>2</answer>", 1}, /* likewise */
    {"<think>a<answer>b</answer></think><answer>5</answer>", 1},
    {"", 0},
    {"<answer>5</answer>", 0},                                /* no thought */
    {"<think>a</think>", 0},                                  /* no answer */
    {" <think>a</think><answer>5</answer>", 0},               /* nothing before <think> */
    {"<think>a</think>so<answer>5</answer>", 0},              /* text between the blocks */
    {"<think>a</think><answer>5</answer> ok", 0},             /* text after */
    {"<think>a</think><answer>5</answer><eos>", 0},           /* eos text: the caller strips it */
    {"<think>a<answer>5</answer>", 0},                        /* unclosed thought */
    {"<think>a</think><answer>5", 0},                         /* unclosed answer */
    {"<Think>a</Think><answer>5</answer>", 0},                /* case matters */
    {"<think>a</think><answer>5</answer></think>", 0},
    {"<think></answer>", 0},
    {"<think>a</think>\xc2\xa0<answer>5</answer>", 0}, /* NBSP is not ASCII whitespace */
};

Test(think_format, accept_reject_table) {
    for (size_t i = 0; i < sizeof FORMAT_CASES / sizeof FORMAT_CASES[0]; i++) {
        char what[256];
        snprintf(what, sizeof what, "case %zu \"%s\"", i, FORMAT_CASES[i].text);
        expect_value(reward_think_format(FORMAT_CASES[i].text), FORMAT_CASES[i].want, what);
    }
    expect_value(reward_think_format(NULL), 0, "NULL");
}

/* ---------------------------------------------------------------- overlong / length */

Test(overlong, dapo_soft_punishment) {
    /* max_len 20, buffer 5: free up to 15, then -1/5 per token, -1 from 20 on */
    expect_value(reward_overlong(10, 20, 5, 1.0), 0, "short");
    expect_value(reward_overlong(15, 20, 5, 1.0), 0, "at max_len - buffer");
    expect_value(reward_overlong(16, 20, 5, 1.0), -0.2, "one into the buffer");
    expect_value(reward_overlong(18, 20, 5, 1.0), -0.6, "three into the buffer");
    expect_value(reward_overlong(20, 20, 5, 1.0), -1.0, "at max_len");
    expect_value(reward_overlong(25, 20, 5, 1.0), -1.0, "beyond");
    expect_value(reward_overlong(20, 20, 5, 0.5), -0.5, "factor");
}

Test(length, tokens_and_steps) {
    expect_value(reward_length(50, 100), 0.5, "half");
    expect_value(reward_length(150, 100), 1.0, "capped");
    expect_value(reward_length(0, 100), 0.0, "empty");
    cr_expect_eq(reward_count_steps("<think>a\n\nb\n  \nc</think><answer>1\n2</answer>"), 3);
    cr_expect_eq(reward_count_steps("<think>a\nb"), 2, "an unclosed (truncated) thought counts");
    cr_expect_eq(reward_count_steps("<think></think><answer>1</answer>"), 0);
    cr_expect_eq(reward_count_steps("a\nb\nc"), 0, "no think block");
    cr_expect_eq(reward_count_steps(NULL), 0);
}

/* ---------------------------------------------------------------- specs ----*/

static void expect_create_error(const RewardSpec *spec, const char *needle) {
    Reward *r = NULL;
    PonderError err = {0};
    cr_assert_neq(reward_create(&r, spec, &err), 0, "expected an error containing \"%s\"", needle);
    cr_assert_null(r);
    cr_assert(strstr(err.msg, needle), "message \"%s\" lacks \"%s\"", err.msg, needle);
}

Test(reward_spec, validation_names_the_reward_and_field) {
    RewardSpec s;
    reward_spec_defaults(&s, REWARD_OVERLONG, "too_long");
    s.max_len = 10, s.buffer = 20;
    expect_create_error(&s, "reward \"too_long\": overlong needs 0 < buffer <= max_len");
    reward_spec_defaults(&s, REWARD_LENGTH, "explore");
    expect_create_error(&s, "reward \"explore\": length needs cap > 0");
    reward_spec_defaults(&s, REWARD_MATH_VERIFY, "bad name");
    expect_create_error(&s, "may use only letters, digits");
    reward_spec_defaults(&s, REWARD_MATH_VERIFY, "");
    expect_create_error(&s, "reward name is empty");
    reward_spec_defaults(&s, REWARD_MATH_VERIFY, "acc");
    s.tolerance = 2;
    expect_create_error(&s, "tolerance must be in [0, 1)");
    reward_spec_defaults(&s, REWARD_EXTERNAL, "ext");
    expect_create_error(&s, "give exactly one of command");
    reward_spec_defaults(&s, REWARD_PLUGIN, "plug");
    expect_create_error(&s, "plugin needs path");
}

Test(reward_spec, type_and_mode_names) {
    RewardType t;
    PonderError err = {0};
    cr_assert_eq(reward_type_from_name("think_format", &t, &err), 0);
    cr_assert_eq(t, REWARD_THINK_FORMAT);
    cr_assert_str_eq(reward_type_name(REWARD_OVERLONG), "overlong");
    cr_assert_neq(reward_type_from_name("math", &t, &err), 0);
    cr_assert(strstr(err.msg, "unknown reward type \"math\": expected one of math_verify"), "%s", err.msg);
    RewardCombine m;
    cr_assert_eq(reward_combine_from_name("normalize_then_sum", &m, &err), 0);
    cr_assert_eq(m, REWARD_COMBINE_NORMALIZE_THEN_SUM);
    cr_assert_neq(reward_combine_from_name("mean", &m, &err), 0);
    cr_assert(strstr(err.msg, "expected sum, sum_then_normalize or normalize_then_sum"), "%s", err.msg);
}

Test(reward_object, built_ins_score_batches) {
    RewardSpec s;
    reward_spec_defaults(&s, REWARD_OVERLONG, "ovl");
    s.max_len = 20, s.buffer = 5;
    Reward *r;
    PonderError err = {0};
    cr_assert_eq(reward_create(&r, &s, &err), 0, "%s", err.msg);
    RewardInput in[2] = {{.completion = "x", .completion_tokens = 18}, {.completion = "y", .completion_tokens = -1}};
    RewardValue out[2];
    cr_assert_eq(reward_score(r, in, 1, out, &err), 0, "%s", err.msg);
    expect_value(out[0], -0.6, "overlong via the object");
    cr_assert_neq(reward_score(r, in, 2, out, &err), 0);
    cr_assert(strstr(err.msg, "reward \"ovl\" (overlong) needs the completion's token count, but sample 1 has none"),
              "%s", err.msg);
    reward_free(r);

    reward_spec_defaults(&s, REWARD_LENGTH, "steps");
    s.unit = REWARD_LENGTH_STEPS, s.cap = 4;
    cr_assert_eq(reward_create(&r, &s, &err), 0, "%s", err.msg);
    RewardInput one = {.completion = "<think>a\nb\nc</think><answer>1</answer>", .completion_tokens = -1};
    cr_assert_eq(reward_score(r, &one, 1, out, &err), 0, "%s", err.msg);
    expect_value(out[0], 0.75, "3 steps of 4");
    cr_assert_eq(reward_n_outputs(r), 1);
    cr_assert_str_eq(reward_output_name(r, 0), "steps");
    reward_free(r);
}

/* ---------------------------------------------------------------- composition */

/* Two components over two groups of three; NA marks not applicable.
 *   correctness (w 1): 1    0    1   | NA  0    1
 *   format      (w 2): 0.2  0.4  NA  | NA  0.9  0.3
 * weighted sums:       1.4  0.8  1.0 | NA  1.8  1.6   (NA adds nothing; all NA -> NA) */
static const double C0[6] = {1, 0, 1, NA, 0, 1};
static const double C1[6] = {0.2, 0.4, NA, NA, 0.9, 0.3};
static const double WEIGHTS[2] = {1, 2};

static void fill_components(RewardValue *x) {
    for (int i = 0; i < 6; i++) {
        x[i] = C0[i] == NA ? reward_not_applicable() : reward_value(C0[i]);
        x[6 + i] = C1[i] == NA ? reward_not_applicable() : reward_value(C1[i]);
    }
}

static void expect_combined(RewardCombine mode, double eps, RewardGroups groups, const double *want) {
    RewardValue x[12], combined[6], ws[6];
    fill_components(x);
    PonderError err = {0};
    cr_assert_eq(reward_combine(mode, eps, 2, WEIGHTS, 6, x, groups, combined, ws, &err), 0, "%s", err.msg);
    const double want_ws[6] = {1.4, 0.8, 1.0, NA, 1.8, 1.6};
    for (int i = 0; i < 6; i++) {
        char what[96];
        snprintf(what, sizeof what, "%s sample %d", reward_combine_name(mode), i);
        expect_value(combined[i], want[i], what);
        expect_value(ws[i], want_ws[i], "weighted sum");
    }
}

Test(composition, sum) {
    const double want[6] = {1.4, 0.8, 1.0, NA, 1.8, 1.6};
    expect_combined(REWARD_COMBINE_SUM, 0, (RewardGroups){NULL, 3}, want);
}

/* Group A sums 1.4 0.8 1.0: mean 3.2/3 = 1.0666667, squared deviations
 * 0.1111111 + 0.0711111 + 0.0044444 = 0.1866667, Bessel variance /2 =
 * 0.0933333, std 0.3055050 -> z = 1.0910895, -0.8728716, -0.2182179 (the
 * population std 0.2494438 would give 1.3363062, ...). Group B: NA 1.8 1.6:
 * mean 1.7, variance 0.02/1, std 0.1414214 -> z = 0.7071068, -0.7071068. */
Test(composition, sum_then_normalize_uses_bessel_std) {
    const double want[6] = {1.0910895, -0.8728716, -0.2182179, NA, 0.7071068, -0.7071068};
    expect_combined(REWARD_COMBINE_SUM_THEN_NORMALIZE, 0, (RewardGroups){NULL, 3}, want);
    /* eps joins the std: group B with eps 0.1 -> 0.1 / 0.2414214 = 0.4142136 */
    const double want_eps[6] = {0.8220202, -0.6576161, -0.1644040, NA, 0.4142136, -0.4142136};
    expect_combined(REWARD_COMBINE_SUM_THEN_NORMALIZE, 0.1, (RewardGroups){NULL, 3}, want_eps);
}

/* Each component normalised in its group first:
 *   correctness A: 1 0 1   mean 2/3, std sqrt((1/9+4/9+1/9)/2) = 0.5773503 -> 0.5773503 -1.1547005 0.5773503
 *   correctness B: NA 0 1  mean 0.5, std 0.7071068                    -> NA -0.7071068 0.7071068
 *   format A: 0.2 0.4 NA   mean 0.3, std 0.1414214                     -> -0.7071068 0.7071068 NA
 *   format B: NA 0.9 0.3   mean 0.6, std 0.4242641                     -> NA 0.7071068 -0.7071068
 * combined = z_correct + 2 z_format:
 *   0.5773503 - 1.4142136 = -0.8368633; -1.1547005 + 1.4142136 = 0.2595131; 0.5773503 (format NA);
 *   NA; -0.7071068 + 1.4142136 = 0.7071068; 0.7071068 - 1.4142136 = -0.7071068 */
Test(composition, normalize_then_sum) {
    const double want[6] = {-0.8368633, 0.2595131, 0.5773503, NA, 0.7071068, -0.7071068};
    expect_combined(REWARD_COMBINE_NORMALIZE_THEN_SUM, 0, (RewardGroups){NULL, 3}, want);
}

Test(composition, group_ids_in_any_order) {
    /* the same two groups, given by ids; the order of samples is unchanged */
    const int64_t ids[6] = {7, 7, 7, -2, -2, -2};
    const double want[6] = {-0.8368633, 0.2595131, 0.5773503, NA, 0.7071068, -0.7071068};
    expect_combined(REWARD_COMBINE_NORMALIZE_THEN_SUM, 0, (RewardGroups){ids, 0}, want);
    /* interleaved ids: group {0,2,4} = 1.4 1.0 1.8, group {1,3,5} = 0.8 NA 1.6 */
    const int64_t mixed[6] = {1, 2, 1, 2, 1, 2};
    RewardValue x[12], combined[6];
    fill_components(x);
    cr_assert_eq(reward_combine(REWARD_COMBINE_SUM_THEN_NORMALIZE, 0, 2, WEIGHTS, 6, x, (RewardGroups){mixed, 0},
                                combined, NULL, NULL),
                 0);
    /* {1.4, 1.0, 1.8}: mean 1.4, std 0.4 -> 0, -1, 1; {0.8, 1.6}: mean 1.2, std 0.5656854 -> -0.7071068, 0.7071068 */
    const double want_mixed[6] = {0, -0.7071068, -1, NA, 1, 0.7071068};
    for (int i = 0; i < 6; i++) expect_value(combined[i], want_mixed[i], "interleaved groups");
}

Test(composition, lone_and_constant_groups_normalise_to_zero) {
    RewardValue x[4] = {reward_value(5), reward_not_applicable(), reward_value(2), reward_value(2)}, out[4];
    cr_assert_eq(reward_group_normalize(x, 4, (RewardGroups){NULL, 2}, 0, out, NULL), 0);
    expect_value(out[0], 0, "one applicable member");
    expect_value(out[1], NA, "n/a stays n/a");
    expect_value(out[2], 0, "constant group, eps 0");
    expect_value(out[3], 0, "constant group, eps 0");
}

Test(composition, errors) {
    RewardValue x[3] = {reward_value(1), reward_value(2), reward_value(3)}, out[3];
    PonderError err = {0};
    cr_assert_neq(reward_group_normalize(x, 3, (RewardGroups){NULL, 2}, 1e-6, out, &err), 0);
    cr_assert(strstr(err.msg, "3 samples do not split into groups of 2"), "%s", err.msg);
    x[1] = reward_value(NAN);
    double w = 1;
    cr_assert_neq(reward_combine(REWARD_COMBINE_SUM, 0, 1, &w, 3, x, (RewardGroups){NULL, 1}, out, NULL, &err), 0);
    cr_assert(strstr(err.msg, "reward component 0 gave nan for sample 1"), "%s", err.msg);
}

Test(composition, means_exclude_not_applicable) {
    RewardValue x[4] = {reward_value(1), reward_not_applicable(), reward_value(0), reward_value(1)};
    RewardStat s = reward_stat(x, 4);
    cr_expect_eq(s.count, 3);
    cr_expect(fabs(s.mean - 2.0 / 3.0) < 1e-12, "mean %g, not 0.5 (n/a is not 0)", s.mean);
    RewardStat none = reward_stat(x + 1, 1);
    cr_expect(none.count == 0 && none.mean == 0);
}

/* ---------------------------------------------------------------- sets -----*/

Test(reward_set, scores_logs_and_combines) {
    RewardSpec specs[2];
    reward_spec_defaults(&specs[0], REWARD_MATH_VERIFY, "correct");
    reward_spec_defaults(&specs[1], REWARD_THINK_FORMAT, "format");
    specs[1].weight = 0.5;
    RewardSet *set;
    PonderError err = {0};
    cr_assert_eq(reward_set_create(&set, specs, 2, REWARD_COMBINE_SUM, REWARD_DEFAULT_EPS, &err), 0, "%s", err.msg);
    cr_assert_eq(reward_set_n_components(set), 2);
    cr_assert_str_eq(reward_set_component_name(set, 1), "format");
    cr_assert_eq(reward_set_component_weight(set, 1), 0.5);
    RewardInput in[4] = {
        {.completion = "<think>7+5=12</think><answer>12</answer>", .answer = "12"},
        {.completion = "<think></think><answer>13</answer>", .answer = "12"},
        {.completion = "12", .answer = "12"},                        /* no marker: 0, bad format: 0 */
        {.completion = "<think>x</think><answer>1</answer>", .answer = NULL}, /* correctness n/a */
    };
    RewardScores sc = {0};
    cr_assert_eq(reward_set_score(set, in, 4, (RewardGroups){NULL, 2}, &sc, &err), 0, "%s", err.msg);
    const double want[4] = {1.5, 0.5, 0, 0.5};
    for (int i = 0; i < 4; i++) expect_value(sc.combined[i], want[i], "combined");
    expect_value(sc.components[3], NA, "correctness without answer");
    cr_expect_eq(sc.component_stat[0].count, 3);
    cr_expect(fabs(sc.component_stat[0].mean - 1.0 / 3.0) < 1e-12);
    cr_expect(fabs(sc.component_stat[1].mean - 0.75) < 1e-12);
    cr_expect(fabs(sc.combined_stat.mean - 0.625) < 1e-12);

    json_t *m = json_object();
    cr_assert_eq(reward_set_metrics(set, &sc, m, &err), 0, "%s", err.msg);
    cr_expect(fabs(json_real_value(json_object_get(m, "reward")) - 0.625) < 1e-12);
    cr_expect(fabs(json_real_value(json_object_get(m, "reward/correct")) - 1.0 / 3.0) < 1e-12);
    cr_expect_eq(json_integer_value(json_object_get(m, "reward/correct/applicable")), 3);
    cr_expect(json_is_real(json_object_get(m, "reward/weighted_sum")));
    json_decref(m);

    /* reuse with another batch size */
    cr_assert_eq(reward_set_score(set, in, 2, (RewardGroups){NULL, 2}, &sc, &err), 0, "%s", err.msg);
    cr_expect_eq(sc.n, 2);
    reward_scores_free(&sc);
    reward_set_free(set);
}

Test(reward_set, all_not_applicable_is_not_applicable) {
    RewardSpec spec;
    reward_spec_defaults(&spec, REWARD_EXACT, "exact");
    RewardSet *set;
    cr_assert_eq(reward_set_create(&set, &spec, 1, REWARD_COMBINE_SUM_THEN_NORMALIZE, 1e-6, NULL), 0);
    RewardInput in[2] = {{.completion = "a"}, {.completion = "b"}};
    RewardScores sc = {0};
    cr_assert_eq(reward_set_score(set, in, 2, (RewardGroups){NULL, 2}, &sc, NULL), 0);
    expect_value(sc.combined[0], NA, "no component applies");
    expect_value(sc.combined[1], NA, "no component applies");
    cr_expect_eq(sc.combined_stat.count, 0);
    json_t *m = json_object();
    cr_assert_eq(reward_set_metrics(set, &sc, m, NULL), 0);
    cr_expect(json_is_null(json_object_get(m, "reward/exact")), "an all-n/a mean is logged as null");
    json_decref(m);
    reward_scores_free(&sc);
    reward_set_free(set);
}

Test(reward_set, errors) {
    RewardSpec specs[2];
    reward_spec_defaults(&specs[0], REWARD_EXACT, "same");
    reward_spec_defaults(&specs[1], REWARD_THINK_FORMAT, "same");
    RewardSet *set = NULL;
    PonderError err = {0};
    cr_assert_neq(reward_set_create(&set, specs, 2, REWARD_COMBINE_SUM, 1e-6, &err), 0);
    cr_assert(strstr(err.msg, "two components are named \"same\""), "%s", err.msg);
    cr_assert_null(set);
    cr_assert_neq(reward_set_create(&set, specs, 0, REWARD_COMBINE_SUM, 1e-6, &err), 0);
    cr_assert(strstr(err.msg, "none configured"), "%s", err.msg);
    cr_assert_neq(reward_set_create(&set, specs, 1, REWARD_COMBINE_SUM, -1, &err), 0);
    cr_assert(strstr(err.msg, "eps must be >= 0"), "%s", err.msg);
}
