/* rewards/math_verify.c — finding a completion's final answer and comparing it
 * with the reference mathematically (the `math_verify` and `exact` rewards).
 *
 * A verifier decides what the policy learns, so every rule here is strict and
 * written down in rewards/README.md: an answer counts only when it is marked
 * (answer tag, \boxed, ####); a numeric answer may carry words around it
 * ("x = 12", "12 dollars") but no other digits, so "12 or 13" is not 12 and
 * the policy cannot hedge; integers and fractions compare exactly, with big
 * integers as digit strings (no double rounding: 10^30 + 1 is not 10^30);
 * only a side written as a non-integral decimal gets the relative tolerance,
 * as math-verify applies numeric precision only when one side is a float. Answers that are
 * not a single number compare as normalised strings. */
#include "rewards/reward.h"

#include <ctype.h>  /* isdigit, isalpha, isspace */
#include <math.h>   /* fabs, pow */
#include <stdlib.h> /* malloc, free, strtod */
#include <string.h> /* memcpy, memmove, strlen, strncmp, strstr */

/* ---------------------------------------------------------------- search ---*/

/* The last occurrence of needle lying wholly inside [hay, hay + n), or NULL. */
static const char *find_last(const char *hay, size_t n, const char *needle) {
    size_t k = strlen(needle);
    if (k > n) return NULL;
    for (size_t i = n - k + 1; i-- > 0;)
        if (memcmp(hay + i, needle, k) == 0) return hay + i;
    return NULL;
}

/* Length of the brace group opening at p ('{') and closing before end, or 0
 * when it does not close. \{ and \} are literal braces, not grouping. */
static size_t brace_group(const char *p, const char *end) {
    int depth = 0;
    for (const char *q = p; q < end; q++) {
        if (*q == '\\' && q + 1 < end) {
            q++;
            continue;
        }
        if (*q == '{') depth++;
        else if (*q == '}' && --depth == 0) return (size_t)(q - p) + 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- extract --*/

static bool last_answer_tag(const char *t, size_t n, const char **s, size_t *len) {
    const char *close = find_last(t, n, "</answer>");
    if (!close) return false;
    const char *open = find_last(t, (size_t)(close - t), "<answer>");
    if (!open) return false;
    *s = open + strlen("<answer>");
    *len = (size_t)(close - *s);
    return true;
}

/* The argument of a \boxed (or \fbox) whose name ends at p: a balanced {…}
 * group, or after a space one token ("\boxed 5"). */
static bool boxed_argument(const char *p, const char *end, const char **s, size_t *len) {
    if (p < end && isalpha((unsigned char)*p)) return false; /* another macro, e.g. \boxedx */
    const char *q = p;
    while (q < end && *q == ' ') q++;
    if (q < end && *q == '{') {
        size_t g = brace_group(q, end);
        if (!g) return false;
        *s = q + 1;
        *len = g - 2;
        return true;
    }
    if (q == p) return false;
    const char *e = q;
    while (e < end && !isspace((unsigned char)*e) && *e != '$') e++;
    if (e == q) return false;
    *s = q;
    *len = (size_t)(e - q);
    return true;
}

/* The last \boxed or \fbox in [t, t + n) whose argument is complete; an
 * unbalanced one (a truncated completion) is skipped for the one before. Only
 * the last MV_MAX_BOXES are tried: each try scans to the end, and a degenerate
 * completion repeating "\boxed{" must not cost quadratic time. */
#define MV_MAX_BOXES 64
static bool last_boxed(const char *t, size_t n, const char **s, size_t *len) {
    size_t limit = n;
    for (int tries = 0; tries < MV_MAX_BOXES; tries++) {
        const char *b = find_last(t, limit, "\\boxed");
        const char *f = find_last(t, limit, "\\fbox");
        const char *hit = (b && (!f || b > f)) ? b : f;
        if (!hit) return false;
        size_t name = hit == b ? strlen("\\boxed") : strlen("\\fbox");
        if (boxed_argument(hit + name, t + n, s, len)) return true;
        limit = (size_t)(hit - t);
    }
    return false;
}

/* GSM8K's "#### 72": the rest of the line after the last "####". */
static bool last_hashes(const char *t, size_t n, const char **s, size_t *len) {
    const char *h = find_last(t, n, "####");
    if (!h) return false;
    const char *p = h + 4, *end = t + n, *e = p;
    while (e < end && *e != '\n') e++;
    while (p < e && isspace((unsigned char)*p)) p++;
    while (e > p && isspace((unsigned char)e[-1])) e--;
    if (e == p) return false;
    *s = p;
    *len = (size_t)(e - p);
    return true;
}

bool reward_extract_answer(const char *text, const char **start, size_t *len) {
    if (!text) return false;
    size_t n = strlen(text);
    if (last_answer_tag(text, n, start, len)) {
        const char *bs;
        size_t bn;
        if (last_boxed(*start, *len, &bs, &bn)) { /* "<answer>\boxed{5}</answer>" */
            *start = bs;
            *len = bn;
        }
        return true;
    }
    return last_boxed(text, n, start, len) || last_hashes(text, n, start, len);
}

static bool has_answer_marker(const char *text) {
    return strstr(text, "<answer>") || strstr(text, "\\boxed") || strstr(text, "\\fbox") || strstr(text, "####");
}

/* ---------------------------------------------------------------- normalise */

/* Replaces every `from` by `to` in place; to is never longer than from. */
static void replace_all(char *s, const char *from, const char *to) {
    size_t nf = strlen(from), nt = strlen(to);
    char *r = s, *w = s;
    while (*r) {
        if (strncmp(r, from, nf) == 0) {
            memcpy(w, to, nt);
            w += nt;
            r += nf;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
}

/* \text{12 dollars} -> 12 dollars: keeps a wrapper macro's content. */
static void unwrap_macro(char *s, const char *macro) {
    size_t nm = strlen(macro);
    char *p = s;
    while ((p = strstr(p, macro))) {
        char *q = p + nm;
        if (isalpha((unsigned char)*q)) { /* \textbf when unwrapping \text */
            p = q;
            continue;
        }
        while (*q == ' ') q++;
        size_t g = *q == '{' ? brace_group(q, q + strlen(q)) : 0;
        if (!g) {
            p = q;
            continue;
        }
        char *close = q + g - 1;
        memmove(close, close + 1, strlen(close + 1) + 1);
        memmove(p, q + 1, strlen(q + 1) + 1);
    }
}

static void trim(char *s) {
    size_t n = strlen(s), a = 0;
    while (a < n && isspace((unsigned char)s[a])) a++;
    while (n > a && isspace((unsigned char)s[n - 1])) n--;
    memmove(s, s + a, n - a);
    s[n - a] = '\0';
}

/* Keeps what follows the last "=" ("x = 12" -> "12"); <=, >=, != are not "=". */
static void after_last_equals(char *s) {
    for (char *p = s + strlen(s); p-- > s;) {
        if (*p != '=') continue;
        if (p > s && (p[-1] == '<' || p[-1] == '>' || p[-1] == '!')) continue;
        memmove(s, p + 1, strlen(p + 1) + 1);
        return;
    }
}

static const char *const WRAPPERS[] = {"\\text", "\\textbf", "\\textit", "\\textrm", "\\textnormal",
                                       "\\mathrm", "\\mathbf", "\\mbox", "\\boxed"};

/* Spellings that mean nothing to the value, or the same thing; each `to` is no
 * longer than its `from` so the rewrite happens in place. Order matters: \$
 * before $, \, before \ . */
static const char *const REWRITES[][2] = {
    {"\\dfrac", "\\frac"}, {"\\tfrac", "\\frac"}, {"\\displaystyle", ""}, {"\\left", ""}, {"\\right", ""},
    {"\\!", ""},           {"\\,", ""},           {"\\;", ""},            {"\\:", ""},     {"\\ ", " "},
    {"~", " "},            {"\\$", ""},           {"$", ""},              {"{,}", ","},    {"\\%", "%"},
    {"^{\\circ}", ""},     {"^\\circ", ""},       {"\xc2\xb0", ""}, /* ° */
    {"\xe2\x88\x92", "-"},                                             /* U+2212 minus sign */
    {"\\(", ""},           {"\\)", ""},           {"\\[", ""},            {"\\]", ""},
};

/* The canonical text of an answer: wrappers and delimiters gone, after the
 * last "=", trimmed, without a sentence's final period. NULL without memory. */
static char *normalize(const char *s, size_t n) {
    char *b = malloc(n + 1);
    if (!b) return NULL;
    memcpy(b, s, n);
    b[n] = '\0';
    for (size_t i = 0; i < sizeof WRAPPERS / sizeof WRAPPERS[0]; i++) unwrap_macro(b, WRAPPERS[i]);
    for (size_t i = 0; i < sizeof REWRITES / sizeof REWRITES[0]; i++) replace_all(b, REWRITES[i][0], REWRITES[i][1]);
    after_last_equals(b);
    trim(b);
    size_t len = strlen(b);
    while (len > 0 && (b[len - 1] == '.' || isspace((unsigned char)b[len - 1]))) b[--len] = '\0';
    return b;
}

/* ---------------------------------------------------------------- numbers --*/

#define MV_MAX_DIGITS 400 /* per written number; longer ones compare as strings */
#define MV_BIG (2 * MV_MAX_DIGITS + 8)

/* A written number: sign * num / den, digit strings without leading zeros. */
typedef struct MathNum {
    int sign;
    char num[MV_BIG], den[MV_BIG];
    bool decimal; /* a decimal that is not an integer (0.333, 1e-3): compared with tolerance */
    bool percent;
} MathNum;

static void strip_leading_zeros(char *d) {
    size_t z = 0, n = strlen(d);
    while (z + 1 < n && d[z] == '0') z++;
    memmove(d, d + z, n - z + 1);
}

static bool append_zeros(char *d, long k, size_t cap) {
    size_t n = strlen(d);
    if (k < 0 || n + (size_t)k + 1 > cap) return false;
    if (n == 1 && d[0] == '0') return true;
    memset(d + n, '0', (size_t)k);
    d[n + (size_t)k] = '\0';
    return true;
}

/* out = x * y in decimal; out holds cap bytes. */
static bool big_mul(const char *x, const char *y, char *out, size_t cap) {
    size_t nx = strlen(x), ny = strlen(y), n = nx + ny;
    if (n + 1 > cap) return false;
    int acc[2 * MV_BIG] = {0};
    if (n > sizeof acc / sizeof acc[0]) return false;
    for (size_t i = 0; i < nx; i++)
        for (size_t j = 0; j < ny; j++) acc[i + j + 1] += (x[i] - '0') * (y[j] - '0');
    for (size_t k = n; k-- > 1;) { /* carries, least significant last */
        acc[k - 1] += acc[k] / 10;
        acc[k] %= 10;
    }
    for (size_t k = 0; k < n; k++) out[k] = (char)('0' + acc[k]);
    out[n] = '\0';
    strip_leading_zeros(out);
    return true;
}

/* Digits with optional thousands separators (1,234,567: first group 1-3
 * digits, then groups of exactly 3). Appends them to d; returns how many. */
static size_t read_integer_digits(const char **pp, char *d, size_t cap) {
    const char *p = *pp;
    size_t k = 0, n = strlen(d);
    while (isdigit((unsigned char)p[k])) k++;
    if (n + k + 1 > cap) return 0;
    memcpy(d + n, p, k);
    n += k;
    p += k;
    while (k > 0 && k <= 3 && p[0] == ',' && isdigit((unsigned char)p[1]) && isdigit((unsigned char)p[2]) &&
           isdigit((unsigned char)p[3]) && !isdigit((unsigned char)p[4]) && n + 4 <= cap) {
        memcpy(d + n, p + 1, 3);
        n += 3;
        p += 4;
    }
    d[n] = '\0';
    *pp = p;
    return k == 0 ? 0 : strlen(d);
}

/* Whether num / den is an integer, for den a power of ten: 3.0 and 1.5e3 are
 * integers and compare exactly, like the integers they equal. */
static bool is_integral(const char *num, const char *den) {
    size_t zeros = strlen(den) - 1, n = strlen(num), trailing = 0;
    while (trailing < n && num[n - 1 - trailing] == '0') trailing++;
    return strcmp(num, "0") == 0 || trailing >= zeros;
}

/* [sign] digits [. digits] [e[sign]digits] -> d->sign, num/den. */
static bool parse_decimal(const char **pp, MathNum *d) {
    const char *p = *pp;
    d->sign = 1;
    if (*p == '+' || *p == '-') d->sign = *p++ == '-' ? -1 : 1;
    char mant[MV_MAX_DIGITS + 8] = "";
    size_t int_digits = isdigit((unsigned char)*p) ? read_integer_digits(&p, mant, MV_MAX_DIGITS + 1) : 0;
    if (isdigit((unsigned char)*p)) return false; /* ran past the digit cap */
    long frac = 0;
    if (*p == '.' && isdigit((unsigned char)p[1])) {
        p++;
        size_t n = strlen(mant);
        while (isdigit((unsigned char)*p) && n < MV_MAX_DIGITS) mant[n++] = *p++, frac++;
        mant[n] = '\0';
        if (isdigit((unsigned char)*p)) return false;
    }
    if (int_digits == 0 && frac == 0) return false;
    long exp = 0;
    bool has_exp = false;
    if ((*p == 'e' || *p == 'E') &&
        (isdigit((unsigned char)p[1]) || ((p[1] == '+' || p[1] == '-') && isdigit((unsigned char)p[2])))) {
        char *end;
        exp = strtol(p + 1, &end, 10);
        if (exp > MV_MAX_DIGITS || exp < -MV_MAX_DIGITS) return false;
        p = end;
        has_exp = true;
    }
    strip_leading_zeros(mant);
    strcpy(d->num, mant);
    strcpy(d->den, "1");
    long scale = exp - frac;
    if (!append_zeros(scale >= 0 ? d->num : d->den, scale >= 0 ? scale : -scale, MV_MAX_DIGITS + 1)) return false;
    d->decimal = (frac > 0 || has_exp) && !is_integral(d->num, d->den);
    *pp = p;
    return true;
}

static void skip_spaces(const char **pp) {
    while (isspace((unsigned char)**pp)) (*pp)++;
}

/* "{decimal}" with optional spaces inside. */
static bool parse_braced_decimal(const char **pp, MathNum *d) {
    const char *p = *pp;
    if (*p != '{') return false;
    p++;
    skip_spaces(&p);
    if (!parse_decimal(&p, d)) return false;
    skip_spaces(&p);
    if (*p != '}') return false;
    *pp = p + 1;
    return true;
}

/* a / b into m; b must not be zero. */
static bool divide(const MathNum *a, const MathNum *b, MathNum *m) {
    if (strcmp(b->num, "0") == 0) return false;
    m->sign = a->sign * b->sign;
    m->decimal = a->decimal || b->decimal;
    return big_mul(a->num, b->den, m->num, sizeof m->num) && big_mul(a->den, b->num, m->den, sizeof m->den);
}

/* \frac{a}{b}, \frac12, a/b or a plain decimal. */
static bool parse_core(const char **pp, MathNum *m) {
    const char *p = *pp;
    MathNum a = {0}, b = {0};
    if (strncmp(p, "\\frac", 5) == 0) {
        p += 5;
        skip_spaces(&p);
        if (isdigit((unsigned char)p[0]) && isdigit((unsigned char)p[1])) { /* \frac12 */
            char two[] = {p[0], '\0', p[1], '\0'};
            const char *x = two, *y = two + 2;
            if (!parse_decimal(&x, &a) || !parse_decimal(&y, &b)) return false;
            p += 2;
        } else {
            if (!parse_braced_decimal(&p, &a)) return false;
            skip_spaces(&p);
            if (!parse_braced_decimal(&p, &b)) return false;
        }
    } else {
        if (!parse_decimal(&p, &a)) return false;
        const char *q = p;
        skip_spaces(&q);
        if (*q != '/') {
            *m = a;
            *pp = p;
            return true;
        }
        q++;
        skip_spaces(&q);
        if (*q == '+' || *q == '-' || !parse_decimal(&q, &b)) return false;
        p = q;
    }
    *pp = p;
    return divide(&a, &b, m);
}

/* Text allowed around a number: words, spaces, light punctuation, non-ASCII
 * (unit symbols) — but no digits or operators. */
static bool is_wordish(unsigned char c) {
    return isalpha(c) || isspace(c) || c >= 0x80 || strchr(".,;:!?", c);
}

static bool number_starts_at(const char *p) {
    if (*p == '+' || *p == '-') {
        p++;
        skip_spaces(&p);
    }
    return isdigit((unsigned char)*p) || (*p == '.' && isdigit((unsigned char)p[1])) || strncmp(p, "\\frac", 5) == 0;
}

/* The one number in s with only words around it ("x is 12 dollars",
 * "50 percent"), or false. */
static bool parse_number(const char *s, MathNum *m) {
    const char *p = s;
    while (*p && !number_starts_at(p)) {
        if (!is_wordish((unsigned char)*p)) return false;
        p++;
    }
    if (!*p || (p > s && isalpha((unsigned char)p[-1]))) return false; /* "x2" is not 2 */
    int sign = 1;
    if (*p == '+' || *p == '-') {
        sign = *p++ == '-' ? -1 : 1;
        skip_spaces(&p);
    }
    if (!parse_core(&p, m)) return false;
    m->sign *= sign;
    if (strcmp(m->num, "0") == 0) m->sign = 1; /* -0 == 0 */
    size_t glued = 0;
    while (isalpha((unsigned char)p[glued])) glued++;
    if (glued == 1) return false; /* "12x" is a term, not 12; "12cm" is a unit */
    const char *q = p;
    skip_spaces(&q);
    m->percent = false;
    if (*q == '%') m->percent = true, q++;
    else if (strncmp(q, "percent", 7) == 0 && !isalpha((unsigned char)q[7])) m->percent = true, q += 7;
    for (; *q; q++)
        if (!is_wordish((unsigned char)*q)) return false;
    return true;
}

/* ---------------------------------------------------------------- compare --*/

/* |x| ~ mant * 10^exp10 from a digit string, mant in [1, 10). */
static void to_scientific(const char *d, double *mant, long *exp10) {
    char head[24] = "";
    size_t n = strlen(d), k = n < 17 ? n : 17;
    head[0] = d[0];
    head[1] = '.';
    memcpy(head + 2, d + 1, k - 1);
    head[k + 1] = '\0';
    *mant = strtod(head, NULL);
    *exp10 = (long)n - 1;
}

/* |value| as mant * 10^exp10, divided by 100^pct for a percent reading. */
static void magnitude(const MathNum *m, int pct, double *mant, long *exp10) {
    double mn, md;
    long en, ed;
    to_scientific(m->num, &mn, &en);
    to_scientific(m->den, &md, &ed);
    *mant = mn / md;
    *exp10 = en - ed - 2L * pct;
}

static bool approx_equal(const MathNum *a, int pa, const MathNum *b, int pb, double tolerance) {
    bool za = strcmp(a->num, "0") == 0, zb = strcmp(b->num, "0") == 0;
    if (za || zb || a->sign != b->sign) return za && zb;
    double ma, mb;
    long ea, eb;
    magnitude(a, pa, &ma, &ea);
    magnitude(b, pb, &mb, &eb);
    if (labs(ea - eb) > 3) return false; /* a factor of >= 100 apart */
    double r = (ma / mb) * pow(10.0, (double)(ea - eb));
    double rel = r >= 1 ? (r - 1) / r : 1 - r; /* |a - b| / max(|a|, |b|) */
    return rel <= tolerance;
}

/* a / 100^pa == b / 100^pb exactly, by cross-multiplying digit strings. */
static bool exact_equal(const MathNum *a, int pa, const MathNum *b, int pb) {
    bool za = strcmp(a->num, "0") == 0, zb = strcmp(b->num, "0") == 0;
    if (za || zb || a->sign != b->sign) return za && zb;
    char left[2 * MV_BIG + 8], right[2 * MV_BIG + 8];
    if (!big_mul(a->num, b->den, left, sizeof left) || !big_mul(b->num, a->den, right, sizeof right)) return false;
    if (!append_zeros(left, 2L * pb, sizeof left) || !append_zeros(right, 2L * pa, sizeof right)) return false;
    return strcmp(left, right) == 0;
}

/* A percent may be read as a fraction (50% = 0.5) or as a bare number with a
 * unit (50% = 50) when only one side has it; with both, the numbers compare. */
static bool numbers_equal(const MathNum *a, const MathNum *b, double tolerance) {
    int readings[2][2] = {{0, 0}, {0, 0}}, n = 1;
    if (a->percent != b->percent) {
        readings[1][0] = a->percent;
        readings[1][1] = b->percent;
        n = 2;
    }
    bool inexact = a->decimal || b->decimal;
    for (int r = 0; r < n; r++) {
        int pa = readings[r][0], pb = readings[r][1];
        if (exact_equal(a, pa, b, pb)) return true;
        if (inexact && approx_equal(a, pa, b, pb, tolerance)) return true;
    }
    return false;
}

static void remove_spaces(char *s) {
    char *w = s;
    for (char *r = s; *r; r++)
        if (!isspace((unsigned char)*r)) *w++ = *r;
    *w = '\0';
}

static void trim_span(const char **s, size_t *n) {
    while (*n > 0 && isspace((unsigned char)**s)) (*s)++, (*n)--;
    while (*n > 0 && isspace((unsigned char)(*s)[*n - 1])) (*n)--;
}

/* Normalising is linear per rewrite but not per unwrapped macro; no real
 * answer is this long, so a longer one compares as trimmed text. */
#define MV_MAX_ANSWER 4096

static int math_equal_n(const char *a, size_t na, const char *b, size_t nb, double tolerance, bool *equal,
                        PonderError *err) {
    if (na > MV_MAX_ANSWER || nb > MV_MAX_ANSWER) {
        trim_span(&a, &na);
        trim_span(&b, &nb);
        *equal = na > 0 && na == nb && memcmp(a, b, na) == 0;
        return PONDER_OK;
    }
    char *x = normalize(a, na), *y = normalize(b, nb);
    MathNum *m = malloc(2 * sizeof *m);
    if (!x || !y || !m) {
        free(x), free(y), free(m);
        return ponder_error(err, PONDER_ERR_NOMEM, "math_verify: out of memory comparing answers");
    }
    if (parse_number(x, &m[0]) && parse_number(y, &m[1])) {
        *equal = numbers_equal(&m[0], &m[1], tolerance);
    } else {
        remove_spaces(x);
        remove_spaces(y);
        *equal = x[0] != '\0' && strcmp(x, y) == 0;
    }
    free(x), free(y), free(m);
    return PONDER_OK;
}

int reward_math_equal(const char *a, const char *b, double tolerance, bool *equal, PonderError *err) {
    return math_equal_n(a ? a : "", a ? strlen(a) : 0, b ? b : "", b ? strlen(b) : 0, tolerance, equal, err);
}

/* ---------------------------------------------------------------- rewards --*/

int reward_math_verify(const char *completion, const char *answer, double tolerance, RewardValue *out,
                       PonderError *err) {
    if (!answer) {
        *out = reward_not_applicable();
        return PONDER_OK;
    }
    const char *got, *want = answer;
    size_t n_got, n_want = strlen(answer);
    if (!reward_extract_answer(completion, &got, &n_got)) {
        *out = reward_value(0.0);
        return PONDER_OK;
    }
    if (has_answer_marker(answer) && !reward_extract_answer(answer, &want, &n_want)) {
        want = answer; /* a marker without content ("####" alone): use it whole */
        n_want = strlen(answer);
    }
    bool equal = false;
    int rc = math_equal_n(got, n_got, want, n_want, tolerance, &equal, err);
    if (rc) return rc;
    *out = reward_value(equal ? 1.0 : 0.0);
    return PONDER_OK;
}

RewardValue reward_exact(const char *completion, const char *answer) {
    if (!answer) return reward_not_applicable();
    if (!completion) completion = "";
    const char *got = completion, *want = answer;
    size_t n_got = strlen(completion), n_want = strlen(answer);
    if (!reward_extract_answer(completion, &got, &n_got)) {
        got = completion;
        n_got = strlen(completion);
    }
    trim_span(&got, &n_got);
    trim_span(&want, &n_want);
    return reward_value(n_got == n_want && memcmp(got, want, n_got) == 0 ? 1.0 : 0.0);
}
