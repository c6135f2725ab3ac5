/* rewards/external.c — the `external` reward: a child process that scores
 * samples over JSON lines (protocol in reward_external.h).
 *
 * One poll() loop writes requests and reads answers at the same time, so
 * neither side can block the other however many requests are batched; the
 * child's stderr is drained in the same loop (a child blocked on a full stderr
 * pipe would look like a hang) and its tail kept for messages. SIGPIPE is
 * blocked around the writes and a write to a dead child reports EPIPE, which
 * becomes "the process exited/died" with its status — the library must not
 * kill the trainer with a signal, nor change its signal dispositions. */
#define _GNU_SOURCE /* pipe2, strsignal */
#include "rewards/reward_external.h"

#include <errno.h>    /* errno, EAGAIN, EINTR, EPIPE */
#include <fcntl.h>    /* fcntl, O_CLOEXEC, O_NONBLOCK */
#include <jansson.h>  /* request / answer JSON */
#include <math.h>     /* ceil, fmin */
#include <poll.h>     /* poll */
#include <pthread.h>  /* pthread_sigmask */
#include <signal.h>   /* kill, sigset_t, sigtimedwait */
#include <spawn.h>    /* posix_spawn, posix_spawnp */
#include <stdio.h>    /* snprintf */
#include <stdlib.h>   /* calloc, free, malloc, realloc */
#include <string.h>   /* memchr, memcpy, strerror, strlen */
#include <sys/wait.h> /* waitpid, WIFEXITED */
#include <time.h>     /* clock_gettime */
#include <unistd.h>   /* close, read, write */

extern char **environ;

#define STDERR_TAIL 600 /* bytes of the child's stderr kept for messages */
#define QUOTE_MAX 160   /* characters of a quoted line in a message */

struct RewardExternal {
    char name[REWARD_NAME_MAX];
    char *command; /* for messages: the shell line, or argv joined by spaces */
    double timeout_s;
    int n_outputs;
    char **outputs;
    pid_t pid;                 /* -1 once reaped */
    int in_fd, out_fd, err_fd; /* our ends of the child's stdin, stdout, stderr; -1 closed */
    char *line;                /* bytes of answers not yet ended by '\n' */
    size_t line_len, line_cap;
    char tail[STDERR_TAIL]; /* last bytes of stderr */
    size_t tail_len;
    char *failure; /* message of the failure that stopped the process, or NULL */
};

/* ---------------------------------------------------------------- text -----*/

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* "text" with escapes, cut to QUOTE_MAX characters ("..." then says so). */
static void quote(char *dst, size_t cap, const char *s, size_t n) {
    size_t w = 0;
    dst[w++] = '"';
    for (size_t i = 0; i < n && w + 8 < cap; i++) {
        if (i == QUOTE_MAX) {
            w += (size_t)snprintf(dst + w, cap - w, "...");
            break;
        }
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') w += (size_t)snprintf(dst + w, cap - w, "\\%c", c);
        else if (c == '\n') w += (size_t)snprintf(dst + w, cap - w, "\\n");
        else if (c < 0x20 || c == 0x7f) w += (size_t)snprintf(dst + w, cap - w, "\\x%02x", c);
        else dst[w++] = (char)c;
    }
    if (n > QUOTE_MAX) snprintf(dst + w, cap - w, "\" (%zu bytes)", n);
    else snprintf(dst + w, cap - w, "\"");
}

/* Signal names for the usual deaths; strsignal gives the description. */
static const char *signal_abbrev(int sig) {
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGKILL: return "SIGKILL";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGPIPE: return "SIGPIPE";
    case SIGHUP: return "SIGHUP";
    case SIGQUIT: return "SIGQUIT";
    default: return "signal";
    }
}

static void describe_status(char *dst, size_t cap, int status) {
    if (WIFEXITED(status)) {
        int code = WEXITSTATUS(status);
        snprintf(dst, cap, "exited with status %d%s", code,
                 code == 127 ? " (the shell could not find the command)"
                 : code == 126 ? " (the command is not executable)"
                               : "");
    } else if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        snprintf(dst, cap, "was killed by signal %d (%s, %s)", sig, signal_abbrev(sig), strsignal(sig));
    } else {
        snprintf(dst, cap, "stopped with wait status %d", status);
    }
}

/* Sets err to "external reward "x" (command: ...): <what>[; stderr ends with: "..."]"
 * and remembers it: the reward refuses further calls. */
static int fail(RewardExternal *x, PonderError *err, int code, const char *what) {
    char tail[2 * QUOTE_MAX + 64] = "";
    size_t t = x->tail_len;
    while (t > 0 && (x->tail[t - 1] == '\n' || x->tail[t - 1] == ' ')) t--;
    if (t > 0) {
        size_t from = t > QUOTE_MAX ? t - QUOTE_MAX : 0;
        char q[2 * QUOTE_MAX + 16];
        quote(q, sizeof q, x->tail + from, t - from);
        snprintf(tail, sizeof tail, "; stderr ends with: %s", q);
    }
    ponder_error(err, code, "external reward \"%s\" (command: %.200s): %s%s", x->name, x->command, what, tail);
    free(x->failure);
    x->failure = strdup(err ? err->msg : what);
    return code;
}

/* ---------------------------------------------------------------- process --*/

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

static void keep_tail(RewardExternal *x, const char *buf, size_t n) {
    if (n >= STDERR_TAIL) {
        memcpy(x->tail, buf + n - STDERR_TAIL, STDERR_TAIL);
        x->tail_len = STDERR_TAIL;
        return;
    }
    if (x->tail_len + n > STDERR_TAIL) {
        size_t drop = x->tail_len + n - STDERR_TAIL;
        memmove(x->tail, x->tail + drop, x->tail_len - drop);
        x->tail_len -= drop;
    }
    memcpy(x->tail + x->tail_len, buf, n);
    x->tail_len += n;
}

/* Reads what stderr has now; closes it at EOF. */
static void drain_stderr(RewardExternal *x) {
    char buf[4096];
    while (x->err_fd >= 0) {
        ssize_t r = read(x->err_fd, buf, sizeof buf);
        if (r > 0) keep_tail(x, buf, (size_t)r);
        else if (r < 0 && errno == EINTR) continue;
        else {
            if (r == 0) close_fd(&x->err_fd);
            return;
        }
    }
}

/* Waits up to seconds for the child to exit, draining its output meanwhile
 * (a child blocked on a full pipe never exits). */
static bool wait_exit(RewardExternal *x, double seconds, int *status) {
    *status = 0;
    if (x->pid <= 0) return true; /* never waitpid(-1): that would reap someone else's child */
    double deadline = now_s() + seconds;
    for (;;) {
        pid_t r = waitpid(x->pid, status, WNOHANG);
        if (r == x->pid || (r < 0 && errno != EINTR)) { /* ECHILD: reaped elsewhere, status unknown */
            if (r < 0) *status = 0;
            x->pid = -1;
            drain_stderr(x);
            return true;
        }
        if (now_s() >= deadline) return false;
        struct pollfd fds[2] = {{x->out_fd, POLLIN, 0}, {x->err_fd, POLLIN, 0}};
        if (poll(fds, 2, 10) > 0) {
            char sink[4096];
            if (x->out_fd >= 0 && (fds[0].revents & (POLLIN | POLLHUP)) && read(x->out_fd, sink, sizeof sink) == 0)
                close_fd(&x->out_fd);
            drain_stderr(x);
        }
    }
}

/* Kills the child's whole process group (a shell's children too) and reaps it. */
static void kill_child(RewardExternal *x) {
    if (x->pid <= 0) return;
    kill(-x->pid, SIGKILL);
    kill(x->pid, SIGKILL);
    int status;
    while (waitpid(x->pid, &status, 0) < 0 && errno == EINTR) {
    }
    x->pid = -1;
    drain_stderr(x);
}

static void close_all(RewardExternal *x) {
    close_fd(&x->in_fd);
    close_fd(&x->out_fd);
    close_fd(&x->err_fd);
}

/* The child died or closed a pipe: report its exit status. */
static int fail_exited(RewardExternal *x, PonderError *err, const char *context) {
    close_fd(&x->in_fd);
    int status = 0;
    char how[160], what[1400];
    if (wait_exit(x, 1.0, &status)) {
        describe_status(how, sizeof how, status);
    } else {
        kill_child(x);
        snprintf(how, sizeof how, "closed its pipes but kept running (so it was killed)");
    }
    char partial[2 * QUOTE_MAX + 16] = "";
    if (x->line_len) quote(partial, sizeof partial, x->line, x->line_len);
    snprintf(what, sizeof what, "the process %s %s%s%s", how, context, x->line_len ? "; its unfinished line: " : "",
             partial);
    close_all(x);
    return fail(x, err, PONDER_ERR_RUNTIME, what);
}

static int set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

static int spawn_child(RewardExternal *x, const RewardExternalSpec *spec, int pipes[3][2]) {
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pipes[0][0], 0);
    posix_spawn_file_actions_adddup2(&fa, pipes[1][1], 1);
    posix_spawn_file_actions_adddup2(&fa, pipes[2][1], 2);
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 34)
    posix_spawn_file_actions_addclosefrom_np(&fa, 3); /* no leaked MPI sockets or HDF5 files in the child */
#endif
    posix_spawnattr_init(&attr);
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGPIPE); /* the trainer may ignore SIGPIPE; the child should not inherit that */
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGTERM);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setpgroup(&attr, 0); /* own group: Ctrl-C reaches ponder, which stops the child */
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int rc;
    if (spec->command && spec->command[0]) {
        char *const sh[] = {"/bin/sh", "-c", (char *)spec->command, NULL};
        rc = posix_spawn(&x->pid, "/bin/sh", &fa, &attr, sh, environ);
    } else {
        rc = posix_spawnp(&x->pid, spec->argv[0], &fa, &attr, (char *const *)spec->argv, environ);
    }
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    return rc;
}

static char *join_command(const RewardExternalSpec *spec) {
    if (spec->command && spec->command[0]) return strdup(spec->command);
    size_t n = 1;
    for (int i = 0; spec->argv[i]; i++) n += strlen(spec->argv[i]) + 1;
    char *s = malloc(n);
    if (!s) return NULL;
    s[0] = '\0';
    for (int i = 0; spec->argv[i]; i++) {
        if (i) strcat(s, " ");
        strcat(s, spec->argv[i]);
    }
    return s;
}

static int copy_spec(RewardExternal *x, const RewardExternalSpec *spec) {
    snprintf(x->name, sizeof x->name, "%s", spec->name ? spec->name : "external");
    x->command = join_command(spec);
    x->timeout_s = spec->timeout_s;
    x->n_outputs = spec->n_outputs;
    x->outputs = calloc((size_t)(spec->n_outputs > 0 ? spec->n_outputs : 1), sizeof *x->outputs);
    if (!x->command || !x->outputs) return -1;
    for (int k = 0; k < spec->n_outputs; k++)
        if (!(x->outputs[k] = strdup(spec->outputs[k]))) return -1;
    return 0;
}

int reward_external_start(RewardExternal **out, const RewardExternalSpec *spec, PonderError *err) {
    *out = NULL;
    if ((!spec->command || !spec->command[0]) == (!spec->argv || !spec->argv[0]))
        return ponder_error(err, PONDER_ERR_CONFIG, "external reward \"%s\": give exactly one of command or argv",
                            spec->name ? spec->name : "");
    if (!(spec->timeout_s > 0))
        return ponder_error(err, PONDER_ERR_CONFIG, "external reward \"%s\": timeout_s must be > 0",
                            spec->name ? spec->name : "");
    RewardExternal *x = calloc(1, sizeof *x);
    if (!x) return ponder_error(err, PONDER_ERR_NOMEM, "external reward: out of memory");
    x->pid = -1;
    x->in_fd = x->out_fd = x->err_fd = -1;
    if (copy_spec(x, spec)) {
        reward_external_free(x);
        return ponder_error(err, PONDER_ERR_NOMEM, "external reward: out of memory");
    }
    int pipes[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}};
    int rc = 0;
    for (int p = 0; p < 3 && !rc; p++) rc = pipe2(pipes[p], O_CLOEXEC) ? errno : 0;
    if (!rc) rc = spawn_child(x, spec, pipes);
    x->in_fd = pipes[0][1], x->out_fd = pipes[1][0], x->err_fd = pipes[2][0];
    close_fd(&pipes[0][0]), close_fd(&pipes[1][1]), close_fd(&pipes[2][1]);
    if (!rc && (set_nonblocking(x->in_fd) || set_nonblocking(x->out_fd) || set_nonblocking(x->err_fd))) rc = errno;
    if (rc) {
        ponder_error(err, PONDER_ERR_RUNTIME, "external reward \"%s\": could not start \"%.200s\": %s", x->name,
                     x->command, strerror(rc));
        kill_child(x);
        reward_external_free(x);
        return PONDER_ERR_RUNTIME;
    }
    *out = x;
    return PONDER_OK;
}

pid_t reward_external_pid(const RewardExternal *x) { return x ? x->pid : -1; }

int reward_external_stop(RewardExternal *x, double grace_s, PonderError *err) {
    if (!x || x->pid <= 0) {
        if (x) close_all(x);
        return PONDER_OK;
    }
    close_fd(&x->in_fd); /* EOF on its stdin: the script's loop ends */
    int status = 0, rc = PONDER_OK;
    char how[160], what[400];
    if (!wait_exit(x, grace_s, &status)) {
        kill_child(x);
        snprintf(what, sizeof what, "did not exit within %g s after its input was closed, so it was killed", grace_s);
        rc = fail(x, err, PONDER_ERR_TIMEOUT, what);
    } else if (status != 0) {
        describe_status(how, sizeof how, status);
        snprintf(what, sizeof what, "the process %s at shutdown", how);
        rc = fail(x, err, PONDER_ERR_RUNTIME, what);
    }
    close_all(x);
    return rc;
}

void reward_external_free(RewardExternal *x) {
    if (!x) return;
    reward_external_stop(x, 1.0, NULL);
    for (int k = 0; x->outputs && k < x->n_outputs; k++) free(x->outputs[k]);
    free(x->outputs);
    free(x->command);
    free(x->line);
    free(x->failure);
    free(x);
}

/* ---------------------------------------------------------------- requests -*/

/* A JSON string for s; invalid UTF-8 (a completion cut inside a character)
 * becomes U+FFFD, since JSON text must be valid UTF-8. */
static json_t *json_text(const char *s) {
    json_t *j = json_string(s ? s : "");
    if (j || !s) return j;
    size_t n = strlen(s);
    char *clean = malloc(3 * n + 1);
    if (!clean) return NULL;
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++) ok = ((unsigned char)s[i + k] >> 6) == 2;
        if (ok && len > 1 && !json_stringn(s + i, len)) ok = false; /* overlong or surrogate */
        if (ok) {
            memcpy(clean + w, s + i, len);
            w += len, i += len;
        } else {
            memcpy(clean + w, "\xef\xbf\xbd", 3);
            w += 3, i += 1;
        }
    }
    j = json_stringn(clean, w);
    free(clean);
    return j;
}

/* One request line, '\n'-terminated, appended to *buf. */
static int append_request(RewardExternal *x, const RewardInput *in, int64_t i, char **buf, size_t *len,
                          size_t *cap, PonderError *err) {
    json_t *row = json_null();
    if (in->row_json) {
        json_error_t je;
        row = json_loads(in->row_json, JSON_DECODE_ANY, &je);
        if (!row || !json_is_object(row)) {
            json_decref(row);
            return ponder_error(err, PONDER_ERR_PARSE, "external reward \"%s\": the row of sample %lld is not a JSON "
                                "object (%s)", x->name, (long long)i, row ? "not an object" : je.text);
        }
    }
    json_t *req = json_object();
    if (req) {
        json_object_set_new(req, "prompt", json_text(in->prompt));
        json_object_set_new(req, "completion", json_text(in->completion));
        json_object_set_new(req, "row", row);
        json_object_set_new(req, "answer", in->answer ? json_text(in->answer) : json_null());
    }
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    size_t n = text ? strlen(text) : 0;
    if (text && *len + n + 2 > *cap) {
        size_t c = (*cap + n + 2) * 2;
        char *b = realloc(*buf, c);
        if (b) *buf = b, *cap = c;
    }
    if (!text || *len + n + 2 > *cap) {
        free(text);
        return ponder_error(err, PONDER_ERR_NOMEM, "external reward \"%s\": out of memory for requests", x->name);
    }
    memcpy(*buf + *len, text, n);
    (*buf)[*len + n] = '\n';
    *len += n + 1;
    free(text);
    return PONDER_OK;
}

/* ---------------------------------------------------------------- answers --*/

static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "not a number";
    }
}

/* number -> value, null -> not applicable, else names what it is. */
static const char *value_from_json(const json_t *v, RewardValue *out) {
    if (json_is_null(v)) *out = reward_not_applicable();
    else if (json_is_number(v)) *out = reward_value(json_number_value(v));
    else return json_kind(v);
    return NULL;
}

static int fail_answer(RewardExternal *x, PonderError *err, int code, const char *why, const char *line, size_t n,
                       int64_t i, int64_t total) {
    char q[2 * QUOTE_MAX + 32], what[1200];
    quote(q, sizeof q, line, n);
    snprintf(what, sizeof what, "answer %lld of %lld %s: %s; expected one line %s", (long long)i + 1,
             (long long)total, why, q,
             x->n_outputs ? "{\"rewards\": {\"<output>\": number|null, ...}}" : "{\"reward\": number|null}");
    kill_child(x);
    close_all(x);
    return fail(x, err, code, what);
}

static int shape_error(RewardExternal *x, PonderError *err, const char *line, size_t n, int64_t i, int64_t total,
                       const char *fmt, const char *a, const char *b) {
    char why[300];
    snprintf(why, sizeof why, fmt, a, b);
    return fail_answer(x, err, PONDER_ERR_PARSE, why, line, n, i, total);
}

static int read_outputs(RewardExternal *x, json_t *obj, const char *line, size_t len, int64_t i, int64_t n,
                        RewardValue *out, PonderError *err) {
    json_t *rs = json_object_get(obj, "rewards");
    if (!json_is_object(rs))
        return shape_error(x, err, line, len, i, n, "has no \"rewards\" object%s%s",
                           json_object_get(obj, "reward") ? " (it gave one \"reward\"; this reward declares outputs)"
                                                          : "",
                           "");
    for (int k = 0; k < x->n_outputs; k++) {
        json_t *v = json_object_get(rs, x->outputs[k]);
        const char *bad = v ? value_from_json(v, &out[(int64_t)k * n + i]) : "missing";
        if (bad)
            return shape_error(x, err, line, len, i, n, "has \"rewards\".\"%s\" %s, not a number or null",
                               x->outputs[k], bad);
    }
    return PONDER_OK;
}

/* Parses answer line i of n into out. */
static int parse_answer(RewardExternal *x, const char *line, size_t len, int64_t i, int64_t n, RewardValue *out,
                        PonderError *err) {
    if (len > 0 && line[len - 1] == '\r') len--;
    json_error_t je;
    json_t *obj = json_loadb(line, len, 0, &je);
    if (!obj) {
        char why[300];
        snprintf(why, sizeof why, "is not valid JSON (%s, column %d)", je.text, je.column);
        return fail_answer(x, err, PONDER_ERR_PARSE, why, line, len, i, n);
    }
    int rc = PONDER_OK;
    if (x->n_outputs) {
        rc = read_outputs(x, obj, line, len, i, n, out, err);
    } else {
        json_t *v = json_object_get(obj, "reward");
        const char *bad = v ? value_from_json(v, &out[i]) : "missing";
        if (bad)
            rc = shape_error(x, err, line, len, i, n, "has \"reward\" %s%s, not a number or null", bad,
                             json_object_get(obj, "rewards") ? " (it gave \"rewards\"; declare outputs in the config)"
                                                             : "");
    }
    json_decref(obj);
    return rc;
}

/* ---------------------------------------------------------------- exchange */

typedef struct Exchange {
    const char *req; /* all request lines */
    size_t req_len, written;
    const size_t *starts; /* [n + 1] offsets of each request line */
    int64_t n, answered;
    RewardValue *out;
    double deadline;
} Exchange;

/* "while ponder waited for answer k of n to request: {...}" */
static void waiting_for(const Exchange *e, char *dst, size_t cap) {
    int64_t k = e->answered < e->n ? e->answered : e->n - 1;
    char q[2 * QUOTE_MAX + 32];
    size_t a = e->starts[k], b = e->starts[k + 1] - 1; /* without its '\n' */
    quote(q, sizeof q, e->req + a, b - a);
    snprintf(dst, cap, "while ponder waited for answer %lld of %lld, to the request %s", (long long)k + 1,
             (long long)e->n, q);
}

static int grow_line(RewardExternal *x, size_t extra) {
    if (x->line_len + extra <= x->line_cap) return 0;
    size_t cap = (x->line_len + extra) * 2;
    char *l = realloc(x->line, cap);
    if (!l) return -1;
    x->line = l;
    x->line_cap = cap;
    return 0;
}

/* Takes every complete line out of x->line and parses it as the next answer. */
static int consume_lines(RewardExternal *x, Exchange *e, PonderError *err) {
    size_t start = 0;
    char *nl;
    while ((nl = memchr(x->line + start, '\n', x->line_len - start))) {
        size_t len = (size_t)(nl - (x->line + start));
        if (e->answered == e->n)
            return fail_answer(x, err, PONDER_ERR_PARSE, "is one line too many (more answers than requests)",
                               x->line + start, len, e->answered, e->n);
        int rc = parse_answer(x, x->line + start, len, e->answered, e->n, e->out, err);
        if (rc) return rc;
        e->answered++;
        e->deadline = now_s() + x->timeout_s;
        start += len + 1;
    }
    memmove(x->line, x->line + start, x->line_len - start);
    x->line_len -= start;
    return PONDER_OK;
}

static int read_answers(RewardExternal *x, Exchange *e, PonderError *err) {
    for (;;) {
        if (grow_line(x, 4096)) return fail(x, err, PONDER_ERR_NOMEM, "out of memory for an answer line");
        ssize_t r = read(x->out_fd, x->line + x->line_len, 4096);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno == EAGAIN) return PONDER_OK;
        if (r <= 0) {
            char ctx[2 * QUOTE_MAX + 160];
            waiting_for(e, ctx, sizeof ctx);
            return fail_exited(x, err, ctx);
        }
        x->line_len += (size_t)r;
        int rc = consume_lines(x, e, err);
        if (rc) return rc;
    }
}

static int write_requests(RewardExternal *x, Exchange *e, bool *epipe, PonderError *err) {
    while (e->written < e->req_len) {
        ssize_t w = write(x->in_fd, e->req + e->written, e->req_len - e->written);
        if (w > 0) {
            e->written += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) return PONDER_OK;
        char ctx[2 * QUOTE_MAX + 160];
        waiting_for(e, ctx, sizeof ctx);
        if (w < 0 && errno == EPIPE) {
            *epipe = true;
            return fail_exited(x, err, ctx);
        }
        char what[2 * QUOTE_MAX + 260];
        snprintf(what, sizeof what, "writing requests failed (%s) %s", strerror(errno), ctx);
        kill_child(x);
        close_all(x);
        return fail(x, err, PONDER_ERR_IO, what);
    }
    return PONDER_OK;
}

static int fail_timeout(RewardExternal *x, Exchange *e, PonderError *err) {
    char ctx[2 * QUOTE_MAX + 160], what[2 * QUOTE_MAX + 300];
    waiting_for(e, ctx, sizeof ctx);
    kill_child(x);
    snprintf(what, sizeof what, "no answer within timeout_s = %g s %s; the process was killed", x->timeout_s, ctx);
    close_all(x);
    return fail(x, err, PONDER_ERR_TIMEOUT, what);
}

/* Writes and reads until every request has its answer line. */
static int exchange(RewardExternal *x, Exchange *e, bool *epipe, PonderError *err) {
    e->deadline = now_s() + x->timeout_s;
    while (e->answered < e->n) {
        double left = e->deadline - now_s();
        if (left <= 0) return fail_timeout(x, e, err);
        struct pollfd fds[3] = {{x->out_fd, POLLIN, 0}, {x->err_fd, POLLIN, 0}, {-1, POLLOUT, 0}};
        if (e->written < e->req_len) fds[2].fd = x->in_fd;
        int r = poll(fds, 3, (int)fmin(ceil(left * 1000.0), 1e9));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return fail(x, err, PONDER_ERR_IO, "poll() on the reward's pipes failed");
        if (fds[1].revents) drain_stderr(x);
        int rc = PONDER_OK;
        if (fds[2].revents) rc = write_requests(x, e, epipe, err);
        if (!rc && fds[0].revents) rc = read_answers(x, e, err);
        if (rc) return rc;
    }
    return PONDER_OK;
}

/* Output left over from an earlier call, or a child that died between calls,
 * is caught before new requests are sent. */
static int check_idle(RewardExternal *x, PonderError *err) {
    char q[2 * QUOTE_MAX + 32], what[2 * QUOTE_MAX + 100];
    if (x->line_len) { /* an unfinished extra line read with the last answers */
        quote(q, sizeof q, x->line, x->line_len);
        snprintf(what, sizeof what, "wrote output nobody asked for: %s", q);
        kill_child(x);
        close_all(x);
        return fail(x, err, PONDER_ERR_PARSE, what);
    }
    struct pollfd fd = {x->out_fd, POLLIN, 0};
    if (poll(&fd, 1, 0) <= 0 || !fd.revents) return PONDER_OK;
    char buf[512];
    ssize_t r = read(x->out_fd, buf, sizeof buf);
    if (r < 0 && errno == EAGAIN) return PONDER_OK;
    if (r <= 0) return fail_exited(x, err, "between two batches of requests");
    quote(q, sizeof q, buf, (size_t)r);
    snprintf(what, sizeof what, "wrote output nobody asked for: %s", q);
    kill_child(x);
    close_all(x);
    return fail(x, err, PONDER_ERR_PARSE, what);
}

static int build_requests(RewardExternal *x, const RewardInput *in, int64_t n, char **buf, size_t *len,
                          size_t *starts, PonderError *err) {
    size_t cap = 0;
    *buf = NULL;
    *len = 0;
    for (int64_t i = 0; i < n; i++) {
        starts[i] = *len;
        int rc = append_request(x, &in[i], i, buf, len, &cap, err);
        if (rc) return rc;
    }
    starts[n] = *len;
    return PONDER_OK;
}

int reward_external_score(RewardExternal *x, const RewardInput *in, int64_t n, RewardValue *out, PonderError *err) {
    if (x->failure)
        return ponder_error(err, PONDER_ERR_RUNTIME, "external reward \"%s\" is stopped after an earlier failure: %s",
                            x->name, x->failure);
    if (n <= 0) return PONDER_OK;
    if (x->pid <= 0)
        return ponder_error(err, PONDER_ERR_RUNTIME, "external reward \"%s\" is not running (it was stopped)",
                            x->name);
    int rc = check_idle(x, err);
    if (rc) return rc;
    size_t *starts = malloc((size_t)(n + 1) * sizeof *starts), len = 0;
    char *req = NULL;
    if (!starts) return ponder_error(err, PONDER_ERR_NOMEM, "external reward \"%s\": out of memory", x->name);
    rc = build_requests(x, in, n, &req, &len, starts, err);
    if (!rc) {
        Exchange e = {req, len, 0, starts, n, 0, out, 0};
        sigset_t pipe_set, old, pending;
        sigemptyset(&pipe_set);
        sigaddset(&pipe_set, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
        sigpending(&pending);
        bool was_pending = sigismember(&pending, SIGPIPE), epipe = false;
        rc = exchange(x, &e, &epipe, err);
        if (epipe && !was_pending) { /* take our own SIGPIPE before unblocking it */
            struct timespec zero = {0, 0};
            sigtimedwait(&pipe_set, NULL, &zero);
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    free(req);
    free(starts);
    return rc;
}
