/* util/error.h — the error value every fallible ponder function fills in.
 *
 * Library code never prints or exits: it returns a non-zero code and writes a
 * human-readable message (file, line, key or tensor, what was expected, what was
 * found, a hint) into a PonderError owned by the caller. Only launch/ prints. */
#ifndef PONDER_UTIL_ERROR_H
#define PONDER_UTIL_ERROR_H

#include <stddef.h> /* size_t */

enum {
    PONDER_OK = 0,
    PONDER_ERR_IO = 1,      /* a file could not be read or written */
    PONDER_ERR_PARSE = 2,   /* malformed input text (YAML, JSONL, ...) */
    PONDER_ERR_CONFIG = 3,  /* well-formed input with a wrong value */
    PONDER_ERR_SHAPE = 4,   /* tensor names, shapes or dtypes disagree */
    PONDER_ERR_NOMEM = 5,   /* an allocation failed */
    PONDER_ERR_RUNTIME = 6, /* a backend, subprocess or numeric failure */
    PONDER_ERR_TIMEOUT = 7, /* a wait ran past its limit */
};

typedef struct PonderError {
    int code;
    char msg[2048];
} PonderError;

/* Sets err (when not NULL) and returns code, so callers can write
 * `return ponder_error(err, PONDER_ERR_IO, "...", ...);`. */
int ponder_error(PonderError *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends context ("while loading x.h5: ") to an existing message. */
int ponder_error_prefix(PonderError *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void ponder_error_clear(PonderError *err);

#endif
