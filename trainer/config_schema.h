/* trainer/config_schema.h — the config schema table and the helpers that walk it.
 * Private to trainer/config*.c: the public API is trainer/config.h.
 *
 * Every key is one ConfigKey line. Its default and range are text, written as a
 * user would write them, so the default goes through the same parser as a file
 * value and a range reads like its error message ("[0,1)" -> "must be in [0, 1)").
 * config_schema_check() proves every line well formed. */
#ifndef PONDER_TRAINER_CONFIG_SCHEMA_H
#define PONDER_TRAINER_CONFIG_SCHEMA_H

#include <stdbool.h> /* bool */
#include <stddef.h>  /* size_t */

#include "trainer/config.h" /* PonderConfig, ConfigStage */
#include "util/error.h"     /* PonderError */

typedef enum {
    CONFIG_INT,    /* int64_t */
    CONFIG_FLOAT,  /* double */
    CONFIG_BOOL,   /* bool */
    CONFIG_STRING, /* char[size] */
    CONFIG_ENUM,   /* a C enum (int-sized); values[] are its names in order */
    CONFIG_STAGES, /* the stages list: items follow config_stage_keys() */
} ConfigType;

typedef struct ConfigKey {
    const char *path;            /* "model.d_model"; stage keys: "steps" */
    ConfigType type;
    size_t offset;               /* into PonderConfig, or ConfigStage for stage keys */
    size_t size;                 /* sizeof the field */
    const char *def;             /* default, as YAML text */
    const char *range;           /* "[0,1)", "(0,inf)", NULL = any value */
    const char *const *values;   /* enum names, NULL-terminated; else NULL */
    const char *doc;             /* one line, written as a comment */
} ConfigKey;

/* Where a key got its value, for messages about contradictions found after
 * merging. file == NULL and override == NULL: the schema default. */
typedef struct ConfigLoc {
    const char *file;
    int line, col; /* 1-based */
    const char *override;
} ConfigLoc;

const ConfigKey *config_keys(size_t *count);       /* top level, schema order */
const ConfigKey *config_stage_keys(size_t *count); /* one stage's keys */

const ConfigKey *config_find_key(const char *path);
const ConfigKey *config_find_stage_key(const char *name);
/* True when path names a section ("model"), i.e. is a proper prefix of keys. */
bool config_is_section(const char *path);

/* Number of ConfigLoc slots: top-level keys, then each stage's keys. */
size_t config_loc_count(void);
/* The slot of a dotted path ("model.d_model", "stages.2.steps"); -1 if none. */
long config_loc_index(const char *path);
/* "file:line:col: " or "override 'k=v': " or "" into buf. */
void config_loc_format(const ConfigLoc *loc, char *buf, size_t size);

/* Parses text into the field of key inside base (a PonderConfig or a
 * ConfigStage). plain: the scalar was unquoted, so YAML null words mean "".
 * Errors read "<path>: expected an integer, found 'four'" (no location). */
int config_parse_value(const ConfigKey *key, const char *path, const char *text, bool plain,
                       void *base, PonderError *err);
/* Checks the field's current value against key->range; same message shape,
 * with `found` (the user's text when known, else NULL to format the value). */
int config_check_range(const ConfigKey *key, const char *path, const void *base,
                       const char *found, PonderError *err);
/* Room for any formatted value: a string field quoted with every byte escaped. */
#define CONFIG_VALUE_TEXT_MAX (4 * CONFIG_PATH_MAX + 8)
/* The field as YAML text that parses back to the same value. */
void config_format_value(const ConfigKey *key, const void *base, char *buf, size_t size);

void config_stage_defaults(ConfigStage *stage);

/* A "; did you mean 'x'?" suffix for an unknown key or enum value, or "". */
void config_suggest_key(const char *path, char *buf, size_t size);
void config_suggest_value(const char *text, const char *const *values, char *buf, size_t size);

/* Cross-field checks; locs (config_loc_count() slots) may be NULL. */
int config_validate_at(const PonderConfig *cfg, const ConfigLoc *locs, PonderError *err);

#endif
