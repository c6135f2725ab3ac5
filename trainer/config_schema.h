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
    CONFIG_LIST,   /* a list of mappings (stages, rewards): see ConfigList */
} ConfigType;

typedef struct ConfigKey {
    const char *path;            /* "model.d_model"; list item keys: "steps" */
    ConfigType type;
    size_t offset;               /* into PonderConfig, or the item struct for list item keys */
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

/* A top-level list of mappings, as `stages:` and `rewards:`. Each item is a
 * struct described by its own key table; the PonderConfig holds a fixed array
 * of max items and an int count. A list in a file replaces the list before it
 * whole (extends); overrides address "<path>.<i>.<key>", i == count appending. */
typedef struct ConfigList {
    const char *path;      /* "stages" */
    const char *item;      /* "stage", for messages */
    const ConfigKey *keys; /* one item's keys, offsets into the item struct */
    size_t n_keys;
    size_t offset;       /* of the item array in PonderConfig */
    size_t item_size;    /* sizeof one item */
    size_t count_offset; /* of the int count in PonderConfig */
    int min, max;        /* items allowed */
} ConfigList;

const ConfigKey *config_keys(size_t *count);        /* top level, schema order */
const ConfigKey *config_stage_keys(size_t *count);  /* one stage's keys */
const ConfigKey *config_reward_keys(size_t *count); /* one reward's keys */

const ConfigKey *config_find_key(const char *path);
const ConfigKey *config_find_stage_key(const char *name);
/* True when path names a section ("model"), i.e. is a proper prefix of keys. */
bool config_is_section(const char *path);

/* Lists, in schema order; the list named path ("stages"), or NULL. */
const ConfigList *config_lists(size_t *count);
const ConfigList *config_find_list(const char *path);
const ConfigKey *config_find_item_key(const ConfigList *list, const char *name);
int config_list_count(const ConfigList *list, const PonderConfig *cfg);
void config_list_set_count(const ConfigList *list, PonderConfig *cfg, int n);
void *config_list_item(const ConfigList *list, PonderConfig *cfg, int i);
const void *config_list_item_const(const ConfigList *list, const PonderConfig *cfg, int i);
/* Zeroes the item and sets every key's default. */
void config_list_item_defaults(const ConfigList *list, void *item);
/* Sets the list to n default items, zeroing the unused slots. */
void config_list_reset(const ConfigList *list, PonderConfig *cfg, int n);

/* ConfigLoc slots: the top-level keys, then for each list, each of its max
 * items' keys followed by one slot for the item itself ("rewards.1"). */
size_t config_loc_count(void);
/* The slot of a dotted path ("model.d_model", "stages.2.steps", "rewards.1"); -1 if none. */
long config_loc_index(const char *path);
/* The slots of a list's items: [first, first + count) */
void config_list_loc_slots(const ConfigList *list, size_t *first, size_t *count);
/* "file:line:col: " or "override 'k=v': " or "" into buf. */
void config_loc_format(const ConfigLoc *loc, char *buf, size_t size);

/* Parses text into the field of key inside base (a PonderConfig or a list
 * item). plain: the scalar was unquoted, so YAML null words mean "".
 * Errors read "<path>: expected an integer, found 'four'" (no location). */
int config_parse_value(const ConfigKey *key, const char *path, const char *text, bool plain,
                       void *base, PonderError *err);
/* Checks the field's current value against key->range; same message shape,
 * with `found` (the user's text when known, else NULL to format the value). */
int config_check_range(const ConfigKey *key, const char *path, const void *base,
                       const char *found, PonderError *err);
/* Room for any formatted value: a string field quoted with every byte escaped
 * (config_schema_check proves no string field is longer than CONFIG_TEXT_MAX). */
#define CONFIG_VALUE_TEXT_MAX (4 * CONFIG_TEXT_MAX + 8)
/* The field as YAML text that parses back to the same value. */
void config_format_value(const ConfigKey *key, const void *base, char *buf, size_t size);

void config_stage_defaults(ConfigStage *stage);

/* A "; did you mean 'x'?" suffix for an unknown key or enum value, or "". */
void config_suggest_key(const char *path, char *buf, size_t size);
void config_suggest_value(const char *text, const char *const *values, char *buf, size_t size);

/* One reward's RewardSpec (config.c); strings point into r. */
void config_reward_to_spec(const ConfigReward *r, RewardSpec *out);

/* Cross-field checks; locs (config_loc_count() slots) may be NULL. */
int config_validate_at(const PonderConfig *cfg, const ConfigLoc *locs, PonderError *err);

#endif
