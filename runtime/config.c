/* runtime/config.c - defaults, file loading, --set overrides, validation, the resolved-config
 * writer and --help, all driven by one table built from the X-macro key lists of config.h.
 *
 * Not here: what any key means to the trainer (each module reads its own fields), and the
 * meaning of the values beyond consistency (the planner judges whether a layout is wise).
 *
 * Format (a TOML subset): `[section]` lines (names may contain dots), `key = value` lines,
 * `#` comments on their own line or after a value; values are integers (TOML `_` digit
 * separators allowed), floats, true/false, "..." or '...' strings (no escapes) or bare words.
 * A dotted key `a.b = v` under [s] means key b of section s.a, as with --set.
 *
 * libinih does the section/key dispatch, fed through our own line reader. The reader exists
 * because of how inih is built: Debian's libinih 55 treats " ;" as an inline comment (it
 * would cut "a ; b" inside quotes), not "#"; takes an indented line as the continuation of
 * the previous value (so an indented `key = v` silently became part of another key); and
 * cuts lines longer than 200 bytes in two. The reader reads whole lines, checks the syntax
 * itself, and hands inih a normalised `[section]` or `key=` line; the handler takes the value
 * from the reader's copy of the line (inih calls the handler before it reads the next line). (Debian's runtime switches such as ini_allow_multiline
 * are not in upstream inih, so we do not use them.)
 */
#define _GNU_SOURCE
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "runtime/pipeline/schedule.h"
#include "runtime/pipeline/trace.h"

#define CONFIG_MAX_THREADS 1024                    /* upper limits of validate_train */
#define CONFIG_MAX_GRAD_ACCUM 1048576               /* 2^20 micro-batches per step and rank */
#define CONFIG_MAX_STEP_TOKENS 4294967296.0        /* 2^32: 68x DeepSeek-V3's 15360 x 4096 */
#define CONFIG_MAX_RUN_TOKENS 4611686018427387904.0 /* 2^62: the token counter is int64 */

typedef enum { CT_INT, CT_I64, CT_F64, CT_BOOL, CT_STR } ConfigType;

static const char *const TYPE_NAMES[] = { "int", "int64", "float", "bool", "string" };
static const size_t TYPE_SIZES[] = { sizeof(int), sizeof(long long), sizeof(double),
                                     sizeof(int), CONFIG_STR_MAX };

typedef struct ConfigSection {
    const char *name;       /* as written in files: "model.rope_scaling" */
} ConfigSection;

typedef struct ConfigKey {
    int section;            /* index into SECTIONS */
    const char *key;        /* "hidden_size" */
    char full[64];          /* "model.hidden_size" */
    ConfigType type;
    size_t offset;          /* byte offset of the field inside Config */
    const char *def;        /* default, as text parsed like a file value */
    const char *help;
} ConfigKey;

#define SECTION_ROW(name, member, KEYS, Type) { name },
static const ConfigSection SECTIONS[] = { CONFIG_SECTIONS(SECTION_ROW) };
#define N_SECTIONS (int)(sizeof SECTIONS / sizeof SECTIONS[0])

#define COUNT_KEY(type, key, def, help) + 1
#define COUNT_SECTION(name, member, KEYS, Type) KEYS(COUNT_KEY)
enum { N_KEYS = 0 CONFIG_SECTIONS(COUNT_SECTION) };

/* The key table, built on first use (at start-up, on one thread). Offsets need the section's
 * struct type, which a key row cannot see, so each section's rows are emitted inside a block
 * that names its type `Sec`; each row is one assignment and one size check. */
static const ConfigKey *key_table(void)
{
    static ConfigKey table[N_KEYS];
    static int built;
    if (built) return table;
    int n = 0, s = -1;
    size_t base = 0;
#define KEY_ROW(type, name, def_text, help_text) \
    table[n] = (ConfigKey){ s, #name, "", CT_##type, base + offsetof(Sec, name), def_text, help_text }; \
    CHECK(sizeof(((Sec *)0)->name) == TYPE_SIZES[CT_##type]); \
    n++;
#define SECTION_KEYS(name, member, KEYS, Type) \
    { typedef Type Sec; s++; base = offsetof(Config, member); KEYS(KEY_ROW) }
    CONFIG_SECTIONS(SECTION_KEYS)
#undef KEY_ROW
#undef SECTION_KEYS
    CHECK(n == N_KEYS && s == N_SECTIONS - 1);
    for (int i = 0; i < n; i++) {
        int len = snprintf(table[i].full, sizeof table[i].full, "%s.%s",
                           SECTIONS[table[i].section].name, table[i].key);
        CHECK(len > 0 && len < (int)sizeof table[i].full);
    }
    built = 1;
    return table;
}

/* ---- small string helpers ---- */

static char *skip_space(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    return s;
}

static void trim_end(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
}

/* Characters of a bare key or section name (dots join section parts). */
static int is_name(const char *s, size_t n)
{
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.') return 0;
    return 1;
}

/* Levenshtein distance; strings longer than 63 bytes are compared on their first 63. */
static int edit_distance(const char *a, const char *b)
{
    enum { MAXLEN = 63 };
    size_t na = strlen(a), nb = strlen(b);
    if (na > MAXLEN) na = MAXLEN;
    if (nb > MAXLEN) nb = MAXLEN;
    int row[MAXLEN + 1];
    for (size_t j = 0; j <= nb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        int diag = row[0];        /* row[i-1][j-1] */
        row[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[nb];
}

static int find_section(const char *name)
{
    for (int i = 0; i < N_SECTIONS; i++)
        if (!strcmp(SECTIONS[i].name, name)) return i;
    return -1;
}

static const char *nearest_section(const char *name)
{
    int best = 0, best_d = INT_MAX;
    for (int i = 0; i < N_SECTIONS; i++) {
        int d = edit_distance(name, SECTIONS[i].name);
        if (d < best_d) best_d = d, best = i;
    }
    return SECTIONS[best].name;
}

enum { NO_SECTION = -1, BAD_SECTION = -2 };

/* Nearest key over every section. In a known section: distance of the key part, doubled,
 * plus one when the section differs, so the right key in another section (distance 1) beats
 * a one-letter typo in this one (distance 2) and loses to an exact match. NO_SECTION: key
 * parts only; BAD_SECTION: the whole dotted names. */
static const char *nearest_key(int section, const char *key, const char *full)
{
    const ConfigKey *t = key_table();
    int best = 0, best_d = INT_MAX;
    for (int i = 0; i < N_KEYS; i++) {
        int d = section == BAD_SECTION ? edit_distance(full, t[i].full)
              : section == NO_SECTION ? edit_distance(key, t[i].key)
              : 2 * edit_distance(key, t[i].key) + (t[i].section != section);
        if (d < best_d) best_d = d, best = i;
    }
    return t[best].full;
}

/* The key named by "section.key" (section: everything before the last dot); DIE otherwise. */
static const ConfigKey *lookup_key(const char *full, const char *where)
{
    const char *dot = strrchr(full, '.');
    if (!dot)
        DIE("config: '%s' names no section (%s); did you mean '%s'?", full, where,
            nearest_key(NO_SECTION, full, full));
    char section[128];
    size_t n = (size_t)(dot - full);
    if (n >= sizeof section) n = sizeof section - 1;
    memcpy(section, full, n);
    section[n] = '\0';
    int s = find_section(section);
    if (s < 0)
        DIE("config: unknown section '%s' in '%s' (%s); did you mean '%s'?", section, full, where,
            nearest_key(BAD_SECTION, full, full));
    const ConfigKey *t = key_table();
    for (int i = 0; i < N_KEYS; i++)
        if (t[i].section == s && !strcmp(t[i].key, dot + 1)) return &t[i];
    DIE("config: unknown key '%s' (%s); did you mean '%s'?", full, where,
        nearest_key(s, dot + 1, full));
}

/* ---- values ---- */

/* Copies text without TOML digit separators into out; 0 if an '_' is not between digits. */
static int drop_underscores(const char *text, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; text[i]; i++) {
        if (text[i] == '_') {
            if (i == 0 || !isdigit((unsigned char)text[i - 1]) || !isdigit((unsigned char)text[i + 1]))
                return 0;
            continue;
        }
        if (n + 1 >= cap) return 0;
        out[n++] = text[i];
    }
    out[n] = '\0';
    return 1;
}

static long long parse_integer(const ConfigKey *k, const char *text, long long lo, long long hi,
                               const char *where)
{
    char digits[64];
    char *end = NULL;
    long long v = 0;
    int ok = drop_underscores(text, digits, sizeof digits) && digits[0] &&
             !isspace((unsigned char)digits[0]);
    if (ok) {
        errno = 0;
        v = strtoll(digits, &end, 10);
        ok = *end == '\0';
    }
    if (!ok) DIE("config: '%s' = '%.60s' is not an integer (%s)", k->full, text, where);
    if (errno == ERANGE || v < lo || v > hi)
        DIE("config: '%s' = '%.60s' is out of range for a %d-bit integer (%s)", k->full, text,
            hi == INT_MAX ? 32 : 64, where);
    return v;
}

static double parse_float(const ConfigKey *k, const char *text, const char *where)
{
    char digits[128];
    char *end = NULL;
    double v = 0;
    int ok = drop_underscores(text, digits, sizeof digits) && digits[0] &&
             !isspace((unsigned char)digits[0]);
    if (ok) {
        v = strtod(digits, &end);
        ok = *end == '\0';
    }
    if (!ok) DIE("config: '%s' = '%.60s' is not a number (%s)", k->full, text, where);
    if (!isfinite(v)) DIE("config: '%s' = '%.60s' is not a finite number (%s)", k->full, text, where);
    return v;
}

static void parse_string(const ConfigKey *k, const char *text, char *out, const char *where)
{
    size_t n = strlen(text);
    if (n >= CONFIG_STR_MAX)
        DIE("config: '%s' is too long (%zu characters, at most %d) (%s)", k->full, n,
            CONFIG_STR_MAX - 1, where);
    for (size_t i = 0; i < n; i++)
        if (iscntrl((unsigned char)text[i]))
            DIE("config: '%s' contains a control character (%s)", k->full, where);
    if (strchr(text, '"') && strchr(text, '\''))
        DIE("config: '%s' = '%.60s' holds both quote characters, which the format cannot write (%s)",
            k->full, text, where);
    memset(out, 0, CONFIG_STR_MAX);
    memcpy(out, text, n);
}

/* Stores text (already unquoted) into k's field of c; DIE naming the key if it does not parse. */
static void set_value(Config *c, const ConfigKey *k, const char *text, const char *where)
{
    char *field = (char *)c + k->offset;
    switch (k->type) {
    case CT_INT: {
        int v = (int)parse_integer(k, text, INT_MIN, INT_MAX, where);
        memcpy(field, &v, sizeof v);
        break;
    }
    case CT_I64: {
        long long v = parse_integer(k, text, LLONG_MIN, LLONG_MAX, where);
        memcpy(field, &v, sizeof v);
        break;
    }
    case CT_F64: {
        double v = parse_float(k, text, where);
        memcpy(field, &v, sizeof v);
        break;
    }
    case CT_BOOL: {
        int v;
        if (!strcmp(text, "true")) v = 1;
        else if (!strcmp(text, "false")) v = 0;
        else DIE("config: '%s' = '%.60s' is not a boolean; use true or false (%s)", k->full, text, where);
        memcpy(field, &v, sizeof v);
        break;
    }
    case CT_STR:
        parse_string(k, text, field, where);
        break;
    }
}

/* The value of a `key = value` right-hand side, unquoted, in place. comments: whether an
 * unquoted '#' starts a comment (files) or is part of the value (--set). */
static char *lex_value(char *s, int comments, const char *full, const char *where)
{
    s = skip_space(s);
    if (*s == '"' || *s == '\'') {
        char *end = strchr(s + 1, *s);
        if (!end) DIE("config: '%s' has an unterminated string (%s); close it with %c", full, where, *s);
        char *rest = skip_space(end + 1);
        if (*rest && !(comments && *rest == '#'))
            DIE("config: '%s' has text after its closing quote (%s)", full, where);
        *end = '\0';
        return s + 1;
    }
    if (comments) {
        char *hash = strchr(s, '#');
        if (hash) *hash = '\0';
    }
    trim_end(s);
    if (!*s) DIE("config: '%s' has no value (%s); write \"\" for an empty string", full, where);
    return s;
}

/* ---- defaults, --set, load ---- */

void config_defaults(Config *c)
{
    const ConfigKey *t = key_table();
    memset(c, 0, sizeof *c);
    for (int i = 0; i < N_KEYS; i++) set_value(c, &t[i], t[i].def, "built-in default");
}

void config_set(Config *c, const char *assignment)
{
    char *copy = xstrdup(assignment);
    char *eq = strchr(copy, '=');
    if (!eq) DIE("config: --set '%s' has no '='; expected section.key=value", assignment);
    *eq = '\0';
    char *name = skip_space(copy);
    trim_end(name);
    if (!*name) DIE("config: --set '%s' names no key; expected section.key=value", assignment);
    const ConfigKey *k = lookup_key(name, "--set");
    set_value(c, k, lex_value(eq + 1, 0, k->full, "--set"), "--set");
    free(copy);
}

typedef struct LoadState {
    Config *c;
    const char *path;
    FILE *f;
    char *line;             /* the current line (getline buffer) */
    size_t cap;
    int lineno;
    char *value;            /* right-hand side of the current key line, inside line */
    char where[512];        /* "path:line" of the current line */
    int key_line[N_KEYS];   /* line that set each key of the key table (0: not yet) */
    int section_line[N_SECTIONS]; /* line of each section's `[name]` header (0: not yet) */
} LoadState;

static _Noreturn void syntax_error(const LoadState *st, const char *hint)
{
    DIE("config: syntax error (%s); %s", st->where, hint);
}

/* A `[name]` line: checked and handed to inih as "[name]". */
static void read_section_line(LoadState *st, char *s, char *out, int size)
{
    char *close = strchr(s, ']');
    if (!close) syntax_error(st, "a section line needs a closing ']'");
    char *rest = skip_space(close + 1);
    if (*rest && *rest != '#') syntax_error(st, "only a '#' comment may follow ']'");
    *close = '\0';
    char *name = skip_space(s + 1);
    trim_end(name);
    if (!is_name(name, strlen(name))) syntax_error(st, "expected '[section]' with a plain name");
    int sec = find_section(name);
    if (sec < 0)
        DIE("config: unknown section '%s' (%s); did you mean '%s'?", name, st->where,
            nearest_section(name));
    /* a second [name] would silently override the first one's keys */
    if (st->section_line[sec])
        DIE("config: section '[%s]' appears twice (%s); first at line %d, merge them", name, st->where,
            st->section_line[sec]);
    st->section_line[sec] = st->lineno;
    snprintf(out, (size_t)size, "[%s]\n", name);
}

/* A `key = value` line: handed to inih as "key=", the value kept in st->value. */
static void read_key_line(LoadState *st, char *s, char *out, int size)
{
    char *eq = strchr(s, '=');
    if (!eq) syntax_error(st, "expected 'key = value', '[section]' or a '#' comment");
    st->value = eq + 1;
    *eq = '\0';
    trim_end(s);
    size_t n = strlen(s);
    if (!is_name(s, n)) syntax_error(st, "expected 'key = value' with a plain key name");
    if ((int)n + 3 > size) syntax_error(st, "key name too long");
    snprintf(out, (size_t)size, "%s=\n", s);
}

/* inih's line source: one whole line per call, so the handler runs for the line just read. */
static char *load_reader(char *out, int size, void *stream)
{
    LoadState *st = stream;
    errno = 0;
    ssize_t len = getline(&st->line, &st->cap, st->f);
    if (len < 0) {
        if (ferror(st->f)) DIE("config: cannot read '%s': %s", st->path, strerror(errno));
        return NULL;
    }
    st->lineno++;
    snprintf(st->where, sizeof st->where, "%s:%d", st->path, st->lineno);
    if (strlen(st->line) != (size_t)len)   /* the text after a NUL would be dropped unseen */
        syntax_error(st, "the line holds a NUL byte (is this a text file?)");
    char *s = st->line;
    if (st->lineno == 1 && !strncmp(s, "\xEF\xBB\xBF", 3)) s += 3;   /* UTF-8 byte-order mark */
    s = skip_space(s);
    trim_end(s);
    st->value = NULL;
    if (!*s || *s == '#') snprintf(out, (size_t)size, "\n");
    else if (*s == '[') read_section_line(st, s, out, size);
    else read_key_line(st, s, out, size);
    return out;
}

static int load_handler(void *user, const char *section, const char *name, const char *value)
{
    LoadState *st = user;
    CHECK(st->value);
    char full[256];
    int n = *section ? snprintf(full, sizeof full, "%s.%s", section, name)
                     : snprintf(full, sizeof full, "%s", name);
    CHECK(n > 0 && n < (int)sizeof full);
    const ConfigKey *k = lookup_key(full, st->where);
    /* a key twice (also `[model] rope_scaling.factor` + `[model.rope_scaling] factor`) */
    int *seen = &st->key_line[k - key_table()];
    if (*seen)
        DIE("config: '%s' is set twice (%s); first set at line %d, keep one", k->full, st->where, *seen);
    *seen = st->lineno;
    set_value(st->c, k, lex_value(st->value, 1, k->full, st->where), st->where);
    return 1;
}

/* Parse an open stream; `path` names it in messages. */
static void load_stream(Config *c, FILE *f, const char *path)
{
    LoadState st = { .c = c, .path = path, .f = f };
    int bad_line = ini_parse_stream(load_reader, &st, load_handler, &st);
    free(st.line);
    /* The reader hands inih only well-formed lines, so this is a safety net. */
    if (bad_line) DIE("config: syntax error (%s:%d)", path, bad_line);
}

void config_load(Config *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) DIE("config: cannot open '%s': %s", path, strerror(errno));
    load_stream(c, f, path);
    fclose(f);
}

void config_load_text(Config *c, const char *text, const char *origin)
{
    FILE *f = fmemopen((void *)text, strlen(text), "r");
    if (!f) DIE("config: cannot read the config of '%s': %s", origin, strerror(errno));
    load_stream(c, f, origin);
    fclose(f);
}

/* ---- write and help ---- */

/* Shortest of %.15g..%.17g that reads back to the same double (%.17g always does). */
static void format_double(double v, char *out, size_t cap)
{
    CHECK(isfinite(v));
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, v);
        double back = strtod(out, NULL);
        if (!memcmp(&back, &v, sizeof v)) return;
    }
    BUG("%%.17g did not read back exactly");
}

/* k's value of c in file syntax. */
static void format_value(const Config *c, const ConfigKey *k, char *out, size_t cap)
{
    const char *field = (const char *)c + k->offset;
    int i;
    long long ll;
    double d;
    switch (k->type) {
    case CT_INT: memcpy(&i, field, sizeof i); snprintf(out, cap, "%d", i); break;
    case CT_I64: memcpy(&ll, field, sizeof ll); snprintf(out, cap, "%lld", ll); break;
    case CT_F64: memcpy(&d, field, sizeof d); format_double(d, out, cap); break;
    case CT_BOOL: memcpy(&i, field, sizeof i); snprintf(out, cap, "%s", i ? "true" : "false"); break;
    case CT_STR: {
        char q = strchr(field, '"') ? '\'' : '"';
        CHECK(memchr(field, '\0', CONFIG_STR_MAX));
        snprintf(out, cap, "%c%s%c", q, field, q);
        break;
    }
    }
}

void config_write(const Config *c, FILE *f)
{
    const ConfigKey *t = key_table();
    char value[CONFIG_STR_MAX + 8];
    for (int s = 0; s < N_SECTIONS; s++) {
        fprintf(f, "%s[%s]\n", s ? "\n" : "", SECTIONS[s].name);
        for (int i = 0; i < N_KEYS; i++) {
            if (t[i].section != s) continue;
            format_value(c, &t[i], value, sizeof value);
            fprintf(f, "%s = %s\n", t[i].key, value);
        }
    }
}

void config_print_help(FILE *f)
{
    const ConfigKey *t = key_table();
    int wkey = 0, wdef = 0;
    for (int i = 0; i < N_KEYS; i++) {
        int kl = (int)strlen(t[i].key), dl = (int)strlen(t[i].def) + (t[i].type == CT_STR ? 2 : 0);
        if (kl > wkey) wkey = kl;
        if (dl > wdef) wdef = dl;
    }
    fprintf(f, "config keys (set in the file's [section], or --set section.key=value):\n");
    for (int s = 0; s < N_SECTIONS; s++) {
        fprintf(f, "\n[%s]\n", SECTIONS[s].name);
        for (int i = 0; i < N_KEYS; i++) {
            if (t[i].section != s) continue;
            char def[128];
            snprintf(def, sizeof def, t[i].type == CT_STR ? "\"%s\"" : "%s", t[i].def);
            fprintf(f, "  %-*s  %-6s  %-*s  %s\n", wkey, t[i].key, TYPE_NAMES[t[i].type], wdef, def,
                    t[i].help);
        }
    }
}

/* ---- validation: one DIE per inconsistency, naming key(s) and value(s) ---- */

static void need_at_least(const char *key, long long v, long long min)
{
    if (v < min) DIE("config: '%s' = %lld must be >= %lld", key, v, min);
}

static void need_above_f(const char *key, double v, double min)
{
    if (!(v > min)) DIE("config: '%s' = %.15g must be > %.15g", key, v, min);
}

static void need_at_least_f(const char *key, double v, double min)
{
    if (!(v >= min)) DIE("config: '%s' = %.15g must be >= %.15g", key, v, min);
}

/* a divides b (a >= 1 is checked by the caller first). */
static void need_divides(const char *ka, long long a, const char *kb, long long b)
{
    if (a < 1 || b % a) DIE("config: '%s' = %lld does not divide '%s' = %lld", ka, a, kb, b);
}

static void need_one_of(const char *key, const char *v, const char *const *options)
{
    char list[256] = "";
    for (int i = 0; options[i]; i++) {
        if (!strcmp(v, options[i])) return;
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", options[i]);
    }
    DIE("config: '%s' = '%s' is not one of: %s", key, v, list);
}

static int has_moe(const ModelConfig *m)
{
    return m->first_k_dense_replace < m->num_hidden_layers || m->num_nextn_predict_layers > 0;
}

static void validate_attention(const ModelConfig *m)
{
    static const char *const KINDS[] = { "mla", "gqa", NULL };
    need_one_of("model.attention", m->attention, KINDS);
    if (!strcmp(m->attention, "mla")) {
        need_at_least("model.q_lora_rank", m->q_lora_rank, 0);
        need_at_least("model.kv_lora_rank", m->kv_lora_rank, 1);
        need_at_least("model.qk_nope_head_dim", m->qk_nope_head_dim, 1);
        need_at_least("model.qk_rope_head_dim", m->qk_rope_head_dim, 2);
        need_at_least("model.v_head_dim", m->v_head_dim, 1);
        if (m->qk_rope_head_dim % 2)
            DIE("config: 'model.qk_rope_head_dim' = %d must be even (RoPE rotates pairs)",
                m->qk_rope_head_dim);
        return;
    }
    need_at_least("model.num_key_value_heads", m->num_key_value_heads, 0);
    if (m->num_key_value_heads > 0)
        need_divides("model.num_key_value_heads", m->num_key_value_heads, "model.num_attention_heads",
                     m->num_attention_heads);
    need_at_least("model.head_dim", m->head_dim, 0);
    if (m->head_dim == 0 && m->hidden_size % m->num_attention_heads)
        DIE("config: 'model.num_attention_heads' = %d does not divide 'model.hidden_size' = %d; "
            "set 'model.head_dim'", m->num_attention_heads, m->hidden_size);
    if (m->head_dim % 2)
        DIE("config: 'model.head_dim' = %d must be even (RoPE rotates pairs)", m->head_dim);
    if (m->head_dim == 0 && (m->hidden_size / m->num_attention_heads) % 2)
        DIE("config: 'model.hidden_size' / 'model.num_attention_heads' = %d / %d = %d is the gqa head "
            "dim and must be even (RoPE rotates pairs); set 'model.head_dim'", m->hidden_size,
            m->num_attention_heads, m->hidden_size / m->num_attention_heads);
}

static void validate_rope_scaling(const RopeScaling *r)
{
    static const char *const TYPES[] = { "none", "yarn", NULL };
    need_one_of("model.rope_scaling.type", r->type, TYPES);
    need_at_least_f("model.rope_scaling.factor", r->factor, 1);
    if (strcmp(r->type, "yarn")) return;
    need_at_least("model.rope_scaling.original_max_position_embeddings",
                  r->original_max_position_embeddings, 1);
    need_above_f("model.rope_scaling.beta_slow", r->beta_slow, 0);
    if (!(r->beta_fast > r->beta_slow))
        DIE("config: 'model.rope_scaling.beta_fast' = %.15g must be > 'model.rope_scaling.beta_slow' = %.15g",
            r->beta_fast, r->beta_slow);
}

static void validate_model(const ModelConfig *m)
{
    need_at_least("model.vocab_size", m->vocab_size, 2);
    need_at_least("model.hidden_size", m->hidden_size, 1);
    need_at_least("model.intermediate_size", m->intermediate_size, 1);
    need_at_least("model.num_hidden_layers", m->num_hidden_layers, 1);
    need_at_least("model.num_attention_heads", m->num_attention_heads, 1);
    need_at_least("model.max_position_embeddings", m->max_position_embeddings, 1);
    need_at_least("model.num_nextn_predict_layers", m->num_nextn_predict_layers, 0);
    if (m->first_k_dense_replace < 0 || m->first_k_dense_replace > m->num_hidden_layers)
        DIE("config: 'model.first_k_dense_replace' = %d is not in [0, 'model.num_hidden_layers' = %d]",
            m->first_k_dense_replace, m->num_hidden_layers);
    need_above_f("model.rms_norm_eps", m->rms_norm_eps, 0);
    need_above_f("model.rope_theta", m->rope_theta, 0);
    need_above_f("model.initializer_range", m->initializer_range, 0);
    if (m->tie_word_embeddings)
        DIE("config: 'model.tie_word_embeddings' = true is not supported (DeepSeek-V3 keeps "
            "embedding and output head separate); set it to false");
    validate_attention(m);
    validate_rope_scaling(&m->rope_scaling);
}

/* Router shape (SPEC section 4) and the [moe] keys; only called when some layer is MoE. */
static void validate_moe(const Config *c)
{
    const ModelConfig *m = &c->model;
    need_at_least("model.n_routed_experts", m->n_routed_experts, 1);
    need_at_least("model.moe_intermediate_size", m->moe_intermediate_size, 1);
    need_at_least("model.n_shared_experts", m->n_shared_experts, 0);
    need_at_least("model.num_experts_per_tok", m->num_experts_per_tok, 1);
    need_at_least("model.n_group", m->n_group, 1);
    need_divides("model.n_group", m->n_group, "model.n_routed_experts", m->n_routed_experts);
    if (m->topk_group < 1 || m->topk_group > m->n_group)
        DIE("config: 'model.topk_group' = %d is not in [1, 'model.n_group' = %d]", m->topk_group, m->n_group);
    need_divides("model.topk_group", m->topk_group, "model.num_experts_per_tok", m->num_experts_per_tok);
    int per_group = m->n_routed_experts / m->n_group;
    if (m->num_experts_per_tok > m->topk_group * per_group)
        DIE("config: 'model.num_experts_per_tok' = %d exceeds the %d experts of 'model.topk_group' = %d "
            "groups ('model.n_routed_experts' / 'model.n_group' = %d per group)",
            m->num_experts_per_tok, m->topk_group * per_group, m->topk_group, per_group);
    need_above_f("model.routed_scaling_factor", m->routed_scaling_factor, 0);
    need_at_least_f("moe.bias_update_speed", c->moe.bias_update_speed, 0);
    need_at_least("moe.bias_update_stop_tokens", c->moe.bias_update_stop_tokens, 0);
    need_at_least_f("moe.balance_alpha", c->moe.balance_alpha, 0);
    need_at_least("moe.max_nodes", c->moe.max_nodes, 1);
    need_divides("parallel.ep", c->parallel.ep, "model.n_routed_experts", m->n_routed_experts);
}

/* Token counts, bounded so every product the trainer forms is exact: the model indexes a
 * micro-batch's tokens (and their top-K rows) with an int, the run's token counter is int64.
 * Over 2^32 tokens a step is a typo (the largest published batch is 6.3e7), not a batch. */
static void validate_batch(const Config *c)
{
    const TrainConfig *t = &c->train;
    const int k = c->model.num_experts_per_tok > 1 ? c->model.num_experts_per_tok : 1;
    const double rows = (double)t->micro_batch_size * (t->seq_len + 1.0) * k;   /* exact < 2^53 */
    if (rows > INT_MAX)
        DIE("config: 'train.micro_batch_size' x ('train.seq_len' + 1) x 'model.num_experts_per_tok' "
            "= %d x %.0f x %d = %.4g exceeds %d; use a smaller micro-batch", t->micro_batch_size,
            t->seq_len + 1.0, k, rows, INT_MAX);
    const int dp = c->parallel.dp > 1 ? c->parallel.dp : 1;   /* dp < 1: validate_parallel */
    /* double: factors >= 1, so partial products <= the total: exact below 2^53 */
    const double per_step_f = (double)t->grad_accum * t->micro_batch_size * t->seq_len * dp;
    if (per_step_f > CONFIG_MAX_STEP_TOKENS)
        DIE("config: 'train.grad_accum' x 'micro_batch_size' x 'seq_len' x 'parallel.dp' = %d x %d x %d "
            "x %d = %.4g tokens per step exceeds %.4g", t->grad_accum, t->micro_batch_size, t->seq_len,
            dp, per_step_f, CONFIG_MAX_STEP_TOKENS);
    const long long per_step = (long long)per_step_f;
    if ((double)per_step * t->steps > CONFIG_MAX_RUN_TOKENS)
        DIE("config: 'train.steps' x tokens per step = %d x %lld = %.4g tokens exceeds %.4g", t->steps,
            per_step, (double)per_step * t->steps, CONFIG_MAX_RUN_TOKENS);
}

static void validate_train(const Config *c)
{
    static const char *const DEVICES[] = { "cpu", "cuda", NULL };
    static const char *const PRECISIONS[] = { "fp32", "bf16", "fp8", NULL };
    const TrainConfig *t = &c->train;
    if (!t->name[0]) DIE("config: 'train.name' is empty; give the run a name");
    if (strchr(t->name, '/') || t->name[0] == '.')
        DIE("config: 'train.name' = '%s' must be one directory name (no '/', no leading '.')", t->name);
    if (!t->run_dir[0]) DIE("config: 'train.run_dir' is empty; use \".\" for the current directory");
    need_at_least("train.steps", t->steps, 1);
    need_at_least("train.micro_batch_size", t->micro_batch_size, 1);
    need_at_least("train.seq_len", t->seq_len, 1);
    if (t->grad_accum < 1 || t->grad_accum > CONFIG_MAX_GRAD_ACCUM)
        DIE("config: 'train.grad_accum' = %d is not in [1, %d]", t->grad_accum, CONFIG_MAX_GRAD_ACCUM);
    validate_batch(c);
    if (t->seq_len > c->model.max_position_embeddings)
        DIE("config: 'train.seq_len' = %d exceeds 'model.max_position_embeddings' = %d",
            t->seq_len, c->model.max_position_embeddings);
    need_one_of("train.device", t->device, DEVICES);
    need_one_of("train.precision", t->precision, PRECISIONS);
    need_one_of("train.bf16_moments", t->bf16_moments, (const char *const[]){ "auto", "true", "false", NULL });
    /* 100000 OpenMP threads overflow the runtime's stacks (a crash); 1024 > any machine's cores */
    if (t->threads < 0 || t->threads > CONFIG_MAX_THREADS)
        DIE("config: 'train.threads' = %d is not in [0, %d] (0: all cores)", t->threads, CONFIG_MAX_THREADS);
    need_at_least("train.log_every", t->log_every, 1);
    need_at_least("train.val_every", t->val_every, 0);
    /* validation always runs at the end of the run (val_every = 0 means only there), so 0
     * batches would report the mean of nothing as a loss of 0 */
    need_at_least("train.val_batches", t->val_batches, 1);
    need_at_least("train.checkpoint_every", t->checkpoint_every, 0);
    need_at_least("train.keep_checkpoints", t->keep_checkpoints, 1);
    need_at_least("train.max_failed_saves", t->max_failed_saves, 1);
    need_at_least("train.max_bad_steps", t->max_bad_steps, 1);
    need_at_least_f("train.spike_factor", t->spike_factor, 0);
    need_at_least_f("train.watchdog_s", t->watchdog_s, 0);
    need_at_least("train.sdc_every", t->sdc_every, 0);
    if (!(t->ema_decay >= 0 && t->ema_decay < 1))
        DIE("config: 'train.ema_decay' = %.15g is not in [0, 1) (0 turns the EMA off)", t->ema_decay);
    need_at_least("train.batch_ramp_start", t->batch_ramp_start, 0);
    if (t->batch_ramp_start > t->grad_accum)
        DIE("config: 'train.batch_ramp_start' = %d exceeds 'train.grad_accum' = %d (the ramp grows to grad_accum)",
            t->batch_ramp_start, t->grad_accum);
    if (t->batch_ramp_tokens < 0) DIE("config: 'train.batch_ramp_tokens' = %lld is negative", t->batch_ramp_tokens);
    if (t->batch_ramp_start > 0 && t->batch_ramp_tokens == 0)
        DIE("config: 'train.batch_ramp_start' = %d needs 'train.batch_ramp_tokens' > 0 (the length of the ramp)",
            t->batch_ramp_start);
    int traced[TRACE_MAX_STEPS], n_traced;
    char why[256];
    if ((n_traced = trace_steps_parse(t->trace_steps, traced, TRACE_MAX_STEPS, why, sizeof why)) < 0)
        DIE("config: 'train.trace_steps' = \"%s\": %s", t->trace_steps, why);
    if (n_traced > 0 && traced[n_traced - 1] > t->steps)
        DIE("config: 'train.trace_steps' = \"%s\" names step %d, past 'train.steps' = %d", t->trace_steps,
            traced[n_traced - 1], t->steps);
}

static void validate_optim(const OptimConfig *o)
{
    need_above_f("optim.lr", o->lr, 0);
    need_at_least_f("optim.lr_min", o->lr_min, 0);
    if (o->lr_min > o->lr) DIE("config: 'optim.lr_min' = %.15g exceeds 'optim.lr' = %.15g", o->lr_min, o->lr);
    if (!(o->beta1 >= 0 && o->beta1 < 1)) DIE("config: 'optim.beta1' = %.15g is not in [0, 1)", o->beta1);
    if (!(o->beta2 >= 0 && o->beta2 < 1)) DIE("config: 'optim.beta2' = %.15g is not in [0, 1)", o->beta2);
    need_above_f("optim.eps", o->eps, 0);
    need_at_least_f("optim.weight_decay", o->weight_decay, 0);
    need_at_least_f("optim.grad_clip", o->grad_clip, 0);
    need_at_least("optim.warmup_steps", o->warmup_steps, 0);
    need_at_least("optim.constant_steps", o->constant_steps, 0);
    need_at_least("optim.decay_steps", o->decay_steps, 0);
}

/* The pipeline rules are the schedule's (runtime/pipeline/schedule.h), the ones plan applies;
 * micro-batches per step are 'train.grad_accum'. */
static void validate_parallel(const Config *c)
{
    static const char *const SCHEDULES[] = { "1f1b", "zb1p", "dualpipe", "dualpipev", NULL };
    const ParallelConfig *p = &c->parallel;
    need_at_least("parallel.pp", p->pp, 1);
    need_at_least("parallel.dp", p->dp, 1);
    need_at_least("parallel.ep", p->ep, 1);
    need_divides("parallel.ep", p->ep, "parallel.dp", p->dp);
    need_one_of("parallel.schedule", p->schedule, SCHEDULES);
    SchedKind kind;
    char err[SCHED_ERR_MAX];
    if (sched_kind_parse(p->schedule, &kind)) BUG("schedule '%s' passed need_one_of", p->schedule);
    if (sched_validate(kind, p->pp, c->train.grad_accum, c->model.num_hidden_layers, err, sizeof err))
        DIE("config: %s", err);
}

static void validate_cluster(const ClusterConfig *k)
{
    need_at_least("cluster.gpus_per_node", k->gpus_per_node, 1);
    need_at_least("cluster.nodes", k->nodes, 1);
    need_above_f("cluster.peak_tflops_bf16", k->peak_tflops_bf16, 0);
    need_above_f("cluster.peak_tflops_fp8", k->peak_tflops_fp8, 0);
    need_above_f("cluster.hbm_gib", k->hbm_gib, 0);
    need_above_f("cluster.nvlink_gbps", k->nvlink_gbps, 0);
    need_above_f("cluster.ib_gbps", k->ib_gbps, 0);
    need_above_f("cluster.nvlink_latency_us", k->nvlink_latency_us, 0);
    need_above_f("cluster.ib_latency_us", k->ib_latency_us, 0);
    if (!(k->mfu > 0 && k->mfu <= 1)) DIE("config: 'cluster.mfu' = %.15g is not in (0, 1]", k->mfu);
}

void config_validate(const Config *c)
{
    validate_model(&c->model);
    validate_train(c);
    validate_optim(&c->optim);
    need_at_least_f("mtp.lambda", c->mtp.lambda, 0);
    need_at_least_f("mtp.lambda_later", c->mtp.lambda_later, 0);
    need_at_least("mtp.lambda_switch_tokens", c->mtp.lambda_switch_tokens, 0);
    if (!c->data.dir[0]) DIE("config: 'data.dir' is empty; name the directory of token shards");
    need_at_least("data.synthetic_tokens", c->data.synthetic_tokens, 1000);
    validate_parallel(c);
    if (has_moe(&c->model)) validate_moe(c);
    if (c->moe.capacity_factor != 0 && !(c->moe.capacity_factor >= 1))
        DIE("config: 'moe.capacity_factor' = %.15g must be 0 (the worst case) or >= 1 (the mean load)",
            c->moe.capacity_factor);
    validate_cluster(&c->cluster);
}
