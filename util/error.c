/* util/error.c — formatting of PonderError messages. */
#include "util/error.h"

#include <stdarg.h> /* va_list */
#include <stdio.h>  /* vsnprintf */
#include <string.h> /* memcpy, strlen */

int ponder_error(PonderError *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int ponder_error_prefix(PonderError *err, const char *fmt, ...) {
    if (!err) return PONDER_ERR_RUNTIME;
    char prefix[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char old[sizeof err->msg];
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s%s", prefix, old);
    return err->code;
}

void ponder_error_clear(PonderError *err) {
    if (!err) return;
    err->code = PONDER_OK;
    err->msg[0] = '\0';
}
