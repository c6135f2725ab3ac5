/* trainer/config_load.c — reading YAML configs: files, `extends:` chains and
 * command-line overrides, onto a PonderConfig that starts at the defaults.
 *
 * Each file is parsed into a libyaml document (a node tree with marks) rather
 * than consumed as an event stream, because `extends:` may sit anywhere in a
 * file yet must be applied before that file's own keys. Applying the parent
 * before the child onto the same struct is exactly the deep merge we document
 * in config.h; only the lists (`stages:`, `rewards:`) reset first. Every key applied records
 * where it came from (ConfigLoc), so contradictions found after merging can
 * still point at a file, line and column. */
#include "trainer/config_schema.h"

#include <errno.h>  /* errno */
#include <limits.h> /* PATH_MAX */
#include <stdarg.h> /* va_list */
#include <stdio.h>  /* FILE, fopen, snprintf */
#include <stdlib.h> /* calloc, free, realpath, strtol */
#include <ctype.h>  /* isdigit */
#include <string.h> /* memset, strchr, strcmp, strdup, strerror, strlen, strncmp, strrchr */
#include <yaml.h>   /* yaml_parser_t, yaml_document_t */

/* Deeper chains are almost certainly a mistake, and a bound keeps the
 * bookkeeping in fixed arrays. */
#define CONFIG_MAX_EXTENDS 16
#define CONFIG_KEY_PATH_MAX 256

typedef struct Loader {
    PonderConfig *cfg;
    ConfigLoc *locs;                     /* config_loc_count() slots */
    char *names[CONFIG_MAX_EXTENDS];     /* files on the extends chain, as shown */
    char *canonical[CONFIG_MAX_EXTENDS]; /* the same, resolved, to detect cycles */
    int n_files;
    PonderError *err;
} Loader;

typedef struct Doc {
    yaml_document_t yaml;
    const char *file; /* display name, owned by the Loader */
} Doc;

static int load_file(Loader *L, const char *path, const Doc *from, const yaml_node_t *from_node);

/* ---------------------------------------------------------------- errors ----*/

static int error_at(const Doc *d, const yaml_node_t *node, PonderError *err, int code,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int error_at(const Doc *d, const yaml_node_t *node, PonderError *err, int code,
                    const char *fmt, ...) {
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ponder_error(err, code, "%s:%zu:%zu: %s", d->file, node->start_mark.line + 1,
                        node->start_mark.column + 1, msg);
}

static int parser_error(const yaml_parser_t *p, const char *file, PonderError *err) {
    if (p->error == YAML_MEMORY_ERROR)
        return ponder_error(err, PONDER_ERR_NOMEM, "%s: out of memory while parsing YAML", file);
    const char *problem = p->problem ? p->problem : "malformed YAML";
    if (p->error == YAML_READER_ERROR)
        return ponder_error(err, PONDER_ERR_PARSE, "%s: %s at byte %zu", file, problem, p->problem_offset);
    char context[256] = "";
    if (p->context)
        snprintf(context, sizeof context, " (%s at %zu:%zu)", p->context, p->context_mark.line + 1,
                 p->context_mark.column + 1);
    return ponder_error(err, PONDER_ERR_PARSE, "%s:%zu:%zu: %s%s", file, p->problem_mark.line + 1,
                        p->problem_mark.column + 1, problem, context);
}

/* ---------------------------------------------------------------- parsing ---*/

/* Loads the first document and insists there is no second: a stray `---`
 * would otherwise silently drop the rest of the file. */
static int parse_document(yaml_parser_t *p, Doc *d, PonderError *err) {
    if (!yaml_parser_load(p, &d->yaml)) return parser_error(p, d->file, err);
    yaml_document_t extra;
    if (!yaml_parser_load(p, &extra)) {
        yaml_document_delete(&d->yaml);
        return parser_error(p, d->file, err);
    }
    int rc = 0;
    yaml_node_t *root = yaml_document_get_root_node(&extra);
    if (root)
        rc = error_at(d, root, err, PONDER_ERR_PARSE, "expected one YAML document, found a second");
    yaml_document_delete(&extra);
    if (rc) yaml_document_delete(&d->yaml);
    return rc;
}

/* libyaml's getters take a mutable document though they only read it. */
static yaml_node_t *node_at(const Doc *d, int id) {
    return yaml_document_get_node((yaml_document_t *)&d->yaml, id);
}

static const char *node_kind(const yaml_node_t *node) {
    return node->type == YAML_MAPPING_NODE ? "a mapping" : node->type == YAML_SEQUENCE_NODE ? "a sequence" : "a scalar";
}

static bool is_null_node(const yaml_node_t *node) {
    if (node->type != YAML_SCALAR_NODE || node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
    const char *v = (const char *)node->data.scalar.value;
    return !v[0] || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL");
}

static int scalar_text(const Doc *d, const yaml_node_t *node, const char *path, const char *what,
                       const char **out, PonderError *err) {
    if (node->type != YAML_SCALAR_NODE)
        return error_at(d, node, err, PONDER_ERR_CONFIG, "%s: expected %s, found %s", path, what, node_kind(node));
    const char *text = (const char *)node->data.scalar.value;
    if (strlen(text) != node->data.scalar.length)
        return error_at(d, node, err, PONDER_ERR_CONFIG, "%s: contains a NUL character", path);
    *out = text;
    return 0;
}

/* ---------------------------------------------------------------- applying --*/

static const char *expected_noun(const ConfigKey *key) {
    switch (key->type) {
    case CONFIG_INT: return "an integer";
    case CONFIG_FLOAT: return "a number";
    case CONFIG_BOOL: return "true or false";
    case CONFIG_ENUM: return "one of its names";
    case CONFIG_STRING: return "a string";
    case CONFIG_LIST: break;
    }
    return "a list";
}

static int apply_value(Loader *L, const Doc *d, const ConfigKey *key, const char *path,
                       const yaml_node_t *value, void *base) {
    const char *text = "";
    if (scalar_text(d, value, path, expected_noun(key), &text, L->err)) return L->err->code;
    bool plain = value->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    if (config_parse_value(key, path, text, plain, base, L->err))
        return ponder_error_prefix(L->err, "%s:%zu:%zu: ", d->file, value->start_mark.line + 1,
                                   value->start_mark.column + 1);
    long slot = config_loc_index(path);
    if (slot >= 0)
        L->locs[slot] = (ConfigLoc){.file = d->file,
                                    .line = (int)value->start_mark.line + 1,
                                    .col = (int)value->start_mark.column + 1};
    return 0;
}

/* The key text of pair i, after checking it is a scalar seen once in the mapping. */
static int pair_key(const Doc *d, const yaml_node_t *map, const yaml_node_pair_t *pair,
                    const char *prefix, const char **out, PonderError *err) {
    const yaml_node_t *key = node_at(d, pair->key);
    if (key->type != YAML_SCALAR_NODE)
        return error_at(d, key, err, PONDER_ERR_CONFIG, "expected a key name, found %s", node_kind(key));
    const char *name = (const char *)key->data.scalar.value;
    for (const yaml_node_pair_t *p = map->data.mapping.pairs.start; p < pair; p++) {
        const yaml_node_t *other = node_at(d, p->key);
        if (other->type == YAML_SCALAR_NODE && !strcmp((const char *)other->data.scalar.value, name))
            return error_at(d, key, err, PONDER_ERR_CONFIG, "duplicate key '%s%s%s' (first at %zu:%zu)",
                            prefix, prefix[0] ? "." : "", name, other->start_mark.line + 1,
                            other->start_mark.column + 1);
    }
    *out = name;
    return 0;
}

static int unknown_key(const Doc *d, const yaml_node_t *key_node, const char *path, PonderError *err) {
    char hint[192];
    config_suggest_key(path, hint, sizeof hint);
    return error_at(d, key_node, err, PONDER_ERR_CONFIG, "unknown key '%s'%s", path, hint);
}

static int apply_item(Loader *L, const Doc *d, const ConfigList *list, int index, const yaml_node_t *map) {
    char path[CONFIG_KEY_PATH_MAX];
    snprintf(path, sizeof path, "%s.%d", list->path, index);
    if (map->type != YAML_MAPPING_NODE)
        return error_at(d, map, L->err, PONDER_ERR_CONFIG, "%s: expected a mapping of %s keys, found %s", path,
                        list->item, node_kind(map));
    long slot = config_loc_index(path); /* the item itself, for messages about keys it leaves out */
    if (slot >= 0)
        L->locs[slot] = (ConfigLoc){.file = d->file,
                                    .line = (int)map->start_mark.line + 1,
                                    .col = (int)map->start_mark.column + 1};
    void *item = config_list_item(list, L->cfg, index);
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const char *name;
        if (pair_key(d, map, p, path, &name, L->err)) return L->err->code;
        char key_path[CONFIG_KEY_PATH_MAX];
        snprintf(key_path, sizeof key_path, "%s.%d.%s", list->path, index, name);
        const ConfigKey *key = config_find_item_key(list, name);
        if (!key) return unknown_key(d, node_at(d, p->key), key_path, L->err);
        const yaml_node_t *value = node_at(d, p->value);
        if (apply_value(L, d, key, key_path, value, item)) return L->err->code;
    }
    return 0;
}

/* A list (`stages:`, `rewards:`) replaces whatever list came before (see
 * config.h); a null value is an empty list. */
static int apply_list(Loader *L, const Doc *d, const ConfigList *list, const yaml_node_t *seq) {
    long n = 0;
    if (!is_null_node(seq)) {
        if (seq->type != YAML_SEQUENCE_NODE)
            return error_at(d, seq, L->err, PONDER_ERR_CONFIG, "%s: expected a list of %ss, found %s", list->path,
                            list->item, node_kind(seq));
        n = seq->data.sequence.items.top - seq->data.sequence.items.start;
    }
    if (n < list->min && list->min == 1)
        return error_at(d, seq, L->err, PONDER_ERR_CONFIG, "%s: needs at least one %s", list->path, list->item);
    if (n < list->min)
        return error_at(d, seq, L->err, PONDER_ERR_CONFIG, "%s: needs at least %d %ss", list->path, list->min,
                        list->item);
    if (n > list->max)
        return error_at(d, seq, L->err, PONDER_ERR_CONFIG, "%s: at most %d %ss, found %ld", list->path, list->max,
                        list->item, n);
    /* Unused slots stay zero, as config_defaults leaves them, so equal configs memcmp equal. */
    config_list_reset(list, L->cfg, (int)n);
    size_t first, count;
    config_list_loc_slots(list, &first, &count);
    for (size_t i = first; i < first + count; i++) L->locs[i] = (ConfigLoc){0};
    for (int i = 0; i < (int)n; i++) {
        const yaml_node_t *item = node_at(d, seq->data.sequence.items.start[i]);
        if (apply_item(L, d, list, i, item)) return L->err->code;
    }
    return 0;
}

static int apply_mapping(Loader *L, const Doc *d, const yaml_node_t *map, const char *prefix);

static int apply_pair(Loader *L, const Doc *d, const yaml_node_t *key_node, const char *path,
                      const yaml_node_t *value) {
    if (!strcmp(path, "extends")) return 0; /* applied before the file's own keys */
    const ConfigKey *key = config_find_key(path);
    if (key && key->type == CONFIG_LIST) return apply_list(L, d, config_find_list(path), value);
    if (key) return apply_value(L, d, key, path, value, L->cfg);
    if (!config_is_section(path)) return unknown_key(d, key_node, path, L->err);
    if (is_null_node(value)) return 0; /* `model:` with nothing under it */
    if (value->type != YAML_MAPPING_NODE)
        return error_at(d, value, L->err, PONDER_ERR_CONFIG, "%s: expected a mapping of keys, found %s",
                        path, node_kind(value));
    return apply_mapping(L, d, value, path);
}

static int apply_mapping(Loader *L, const Doc *d, const yaml_node_t *map, const char *prefix) {
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const char *name;
        if (pair_key(d, map, p, prefix, &name, L->err)) return L->err->code;
        char path[CONFIG_KEY_PATH_MAX];
        snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", name);
        const yaml_node_t *key = node_at(d, p->key);
        const yaml_node_t *value = node_at(d, p->value);
        if (apply_pair(L, d, key, path, value)) return L->err->code;
    }
    return 0;
}

/* ---------------------------------------------------------------- extends ---*/

/* The parent's path: relative paths are taken from the including file's folder. */
static void extends_path(const char *file, const char *target, char *buf, size_t size) {
    const char *slash = strrchr(file, '/');
    if (target[0] == '/' || !slash)
        snprintf(buf, size, "%s", target);
    else
        snprintf(buf, size, "%.*s%s", (int)(slash - file + 1), file, target);
}

static int apply_extends(Loader *L, const Doc *d, const yaml_node_t *root) {
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        const yaml_node_t *key = node_at(d, p->key);
        if (key->type != YAML_SCALAR_NODE || strcmp((const char *)key->data.scalar.value, "extends")) continue;
        const yaml_node_t *value = node_at(d, p->value);
        const char *target = "";
        if (scalar_text(d, value, "extends", "a file path", &target, L->err)) return L->err->code;
        if (!target[0]) return error_at(d, value, L->err, PONDER_ERR_CONFIG, "extends: expected a file path, found ''");
        char path[PATH_MAX];
        extends_path(d->file, target, path, sizeof path);
        return load_file(L, path, d, value);
    }
    return 0;
}

static int apply_document(Loader *L, const Doc *d) {
    const yaml_node_t *root = yaml_document_get_root_node((yaml_document_t *)&d->yaml);
    if (!root || is_null_node(root)) return 0; /* an empty file: all defaults */
    if (root->type != YAML_MAPPING_NODE)
        return error_at(d, root, L->err, PONDER_ERR_CONFIG, "expected a mapping of sections at the top level, found %s",
                        node_kind(root));
    if (apply_extends(L, d, root)) return L->err->code;
    return apply_mapping(L, d, root, "");
}

/* ---------------------------------------------------------------- files -----*/

static bool on_chain(const Loader *L, const char *canonical) {
    for (int i = 0; i < L->n_files; i++)
        if (!strcmp(L->canonical[i], canonical)) return true;
    return false;
}

static int cycle_error(const Loader *L, const char *path, const Doc *from, const yaml_node_t *from_node) {
    char chain[2048] = "";
    for (int i = 0; i < L->n_files; i++)
        snprintf(chain + strlen(chain), sizeof chain - strlen(chain), "%s -> ", L->names[i]);
    return error_at(from, from_node, L->err, PONDER_ERR_CONFIG, "extends cycle: %s%s", chain, path);
}

/* Records the file on the extends chain; fails on a cycle or an over-long chain.
 * from is NULL only for the first file, which cannot close a cycle. */
static int push_file(Loader *L, const char *path, const Doc *from, const yaml_node_t *from_node) {
    char *canonical = realpath(path, NULL);
    if (!canonical) canonical = strdup(path); /* text without a file behind it */
    char *name = strdup(path);
    int rc = 0;
    if (!canonical || !name)
        rc = ponder_error(L->err, PONDER_ERR_NOMEM, "%s: out of memory", path);
    else if (on_chain(L, canonical))
        rc = cycle_error(L, path, from, from_node);
    else if (L->n_files == CONFIG_MAX_EXTENDS)
        rc = error_at(from, from_node, L->err, PONDER_ERR_CONFIG, "extends: more than %d files deep",
                      CONFIG_MAX_EXTENDS);
    if (rc) {
        free(canonical);
        free(name);
        return rc;
    }
    L->names[L->n_files] = name;
    L->canonical[L->n_files++] = canonical;
    return 0;
}

static int load_parsed(Loader *L, yaml_parser_t *parser) {
    Doc d = {.file = L->names[L->n_files - 1]};
    int rc = parse_document(parser, &d, L->err);
    yaml_parser_delete(parser);
    if (rc) return rc;
    rc = apply_document(L, &d);
    yaml_document_delete(&d.yaml);
    return rc;
}

static int load_file(Loader *L, const char *path, const Doc *from, const yaml_node_t *from_node) {
    FILE *f = fopen(path, "rb");
    if (!f && from)
        return error_at(from, from_node, L->err, PONDER_ERR_IO, "extends: cannot open '%s': %s", path, strerror(errno));
    if (!f) return ponder_error(L->err, PONDER_ERR_IO, "cannot open config '%s': %s", path, strerror(errno));
    int rc = push_file(L, path, from, from_node);
    yaml_parser_t parser;
    if (!rc && !yaml_parser_initialize(&parser)) rc = ponder_error(L->err, PONDER_ERR_NOMEM, "%s: out of memory", path);
    if (!rc) {
        yaml_parser_set_input_file(&parser, f);
        rc = load_parsed(L, &parser);
    }
    fclose(f);
    return rc;
}

static int load_text(Loader *L, const char *text, const char *name) {
    int rc = push_file(L, name, NULL, NULL);
    yaml_parser_t parser;
    if (!rc && !yaml_parser_initialize(&parser)) rc = ponder_error(L->err, PONDER_ERR_NOMEM, "%s: out of memory", name);
    if (rc) return rc;
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
    return load_parsed(L, &parser);
}

/* ---------------------------------------------------------------- overrides -*/

/* "<list>.<i>.<key>=value"; i == count appends a default item first. */
static int item_override(PonderConfig *cfg, const ConfigList *list, const char *path, const char *text,
                         PonderError *err) {
    const char *digits = path + strlen(list->path) + 1;
    char *end;
    errno = 0;
    long index = strtol(digits, &end, 10);
    if (!isdigit((unsigned char)digits[0]) || *end != '.' || errno)
        return ponder_error(err, PONDER_ERR_CONFIG, "%s: override one %s key, as %s.<i>.<key>", path, list->item,
                            list->path);
    int count = config_list_count(list, cfg);
    if (index > count || index >= list->max)
        return ponder_error(err, PONDER_ERR_CONFIG, "%s.%ld: no such %s; there are %d (%s.%d.* appends one, up to %d)",
                            list->path, index, list->item, count, list->path, count, list->max);
    const ConfigKey *key = config_find_item_key(list, end + 1);
    if (!key) {
        char hint[192];
        config_suggest_key(path, hint, sizeof hint);
        return ponder_error(err, PONDER_ERR_CONFIG, "unknown key '%s'%s", path, hint);
    }
    /* Parse into a copy, so a bad value leaves the config as it was. */
    union {
        ConfigStage stage;
        ConfigReward reward;
    } copy;
    if (list->item_size > sizeof copy)
        return ponder_error(err, PONDER_ERR_CONFIG, "%s: item larger than the override buffer", list->path);
    void *item = config_list_item(list, cfg, (int)index);
    if (index == count)
        config_list_item_defaults(list, &copy);
    else
        memcpy(&copy, item, list->item_size);
    if (config_parse_value(key, path, text, true, &copy, err)) return err->code;
    memcpy(item, &copy, list->item_size);
    if (index == count) config_list_set_count(list, cfg, count + 1);
    return 0;
}

static int set_by_path(PonderConfig *cfg, const char *path, const char *text, PonderError *err) {
    size_t n_lists;
    const ConfigList *lists = config_lists(&n_lists);
    for (size_t i = 0; i < n_lists; i++) {
        size_t len = strlen(lists[i].path);
        if (!strncmp(path, lists[i].path, len) && path[len] == '.') return item_override(cfg, &lists[i], path, text, err);
    }
    const ConfigKey *key = config_find_key(path);
    if (key && key->type == CONFIG_LIST) {
        const ConfigList *list = config_find_list(path);
        return ponder_error(err, PONDER_ERR_CONFIG, "%s: override one %s key, as %s.<i>.<key>", path, list->item, path);
    }
    if (key) return config_parse_value(key, path, text, true, cfg, err);
    if (config_is_section(path))
        return ponder_error(err, PONDER_ERR_CONFIG, "%s: is a section; override one of its keys, as %s.<key>", path, path);
    char hint[192];
    config_suggest_key(path, hint, sizeof hint);
    return ponder_error(err, PONDER_ERR_CONFIG, "unknown key '%s'%s", path, hint);
}

static int apply_override(PonderConfig *cfg, ConfigLoc *locs, const char *assignment, PonderError *err) {
    const char *eq = strchr(assignment, '=');
    char path[CONFIG_KEY_PATH_MAX];
    int rc = 0;
    if (!eq)
        rc = ponder_error(err, PONDER_ERR_CONFIG, "expected key=value, as model.n_layer=8");
    else if (eq == assignment || (size_t)(eq - assignment) >= sizeof path)
        rc = ponder_error(err, PONDER_ERR_CONFIG, "expected key=value with a key of 1 to %zu characters", sizeof path - 1);
    if (!rc) {
        snprintf(path, sizeof path, "%.*s", (int)(eq - assignment), assignment);
        rc = set_by_path(cfg, path, eq + 1, err);
    }
    if (rc) return ponder_error_prefix(err, "override '%s': ", assignment);
    long slot = config_loc_index(path);
    if (locs && slot >= 0) locs[slot] = (ConfigLoc){.override = assignment};
    return 0;
}

int config_apply_override(PonderConfig *cfg, const char *assignment, PonderError *err) {
    return apply_override(cfg, NULL, assignment, err);
}

/* ---------------------------------------------------------------- entry -----*/

static void loader_free(Loader *L) {
    for (int i = 0; i < L->n_files; i++) {
        free(L->names[i]);
        free(L->canonical[i]);
    }
    free(L->locs);
}

/* Runs after the file: overrides in order, then the cross-field checks. */
static int finish(Loader *L, int n_overrides, char *const *overrides) {
    for (int i = 0; i < n_overrides; i++)
        if (apply_override(L->cfg, L->locs, overrides[i], L->err)) return L->err->code;
    return config_validate_at(L->cfg, L->locs, L->err);
}

static int load(PonderConfig *cfg, const char *path, const char *text, int n_overrides,
                char *const *overrides, PonderError *err) {
    PonderError scratch;
    if (!err) err = &scratch; /* the loader reads err->code back */
    ponder_error_clear(err);
    config_defaults(cfg);
    Loader L = {.cfg = cfg, .err = err, .locs = calloc(config_loc_count(), sizeof(ConfigLoc))};
    if (!L.locs) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory loading a config");
    int rc = text ? load_text(&L, text, path) : load_file(&L, path, NULL, NULL);
    if (!rc) rc = finish(&L, n_overrides, overrides);
    loader_free(&L);
    return rc;
}

int config_load(PonderConfig *cfg, const char *path, int n_overrides, char *const *overrides,
                PonderError *err) {
    return load(cfg, path, NULL, n_overrides, overrides, err);
}

int config_load_string(PonderConfig *cfg, const char *yaml_text, const char *name_for_errors,
                       int n_overrides, char *const *overrides, PonderError *err) {
    return load(cfg, name_for_errors ? name_for_errors : "<string>", yaml_text, n_overrides, overrides, err);
}
