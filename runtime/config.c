/* runtime/config.c - defaults, file loading, --set overrides, the resolved-config
 * writer and --help, all driven by one table built from the X-macro key lists of config.h.
 *
 * Not here: what any key means to the trainer (each module reads its own fields), and the
 * meaning of the values beyond consistency (the planner judges whether a layout is wise);
 * validation (config_validate) is runtime/config_validate.c.
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
