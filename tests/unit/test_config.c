/* tests/unit/test_config.c - the configuration system (runtime/config.h).
 *
 * Checks: every default lands in its own field and validates; a file sets values (dotted
 * sections and keys, comments, quotes, long and CRLF lines, duplicates); --set overrides;
 * config_write output loads back to a byte-identical Config for random values of every key;
 * --help lists every key; configs/deepseek-v3-671b.toml loads, validates and agrees with the
 * TR's figures; and each error class ends the process with status 1 and one line naming the
 * key (run in a forked child whose stderr is captured).
 * Not here: what the trainer does with the values.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/common.h"
#include "runtime/config.h"
#include "testing.h"

/* ---- helpers ---- */

/* Writes text to a fresh temp file; path receives its name (caller unlinks). */
static void write_temp(const char *text, char path[64])
{
    snprintf(path, 64, "/tmp/dstrain-test-config-XXXXXX.toml");
    int fd = mkstemps(path, 5);
    CHECK(fd >= 0);
    FILE *f = fdopen(fd, "w");
    CHECK(f);
    CHECK(fputs(text, f) >= 0);
    CHECK(fclose(f) == 0);
}

static void load_text(Config *c, const char *text)
{
    char path[64];
    write_temp(text, path);
    config_load(c, path);
    unlink(path);
}

/* One run of the config calls in a child process. */
typedef struct Case {
    const char *text;       /* file contents loaded first, or NULL */
    const char *path;       /* a file to load instead of text, or NULL */
    const char *sets[5];    /* --set assignments after the file, NULL-terminated */
    int validate;           /* call config_validate last */
    const char *expect;     /* substring of the one-line error; NULL: must succeed */
    const char *expect2;    /* a second substring, or NULL */
    int line;               /* the message must name (file:line); 0: not checked */
} Case;

typedef struct CaseRun { const Case *k; const char *file; } CaseRun;

/* The child's part of run_case: load, override, validate; DIE exits non-zero. */
static void run_case_child(void *arg)
{
    const CaseRun *r = arg;
    Config c;
    config_defaults(&c);
    if (r->file) config_load(&c, r->file);
    for (int i = 0; r->k->sets[i]; i++) config_set(&c, r->k->sets[i]);
    if (r->k->validate) config_validate(&c);
}

/* Runs k in a forked child; returns whether every expectation held. */
static int run_case(const char *label, const Case *k)
{
    int failed_before = test_failed;
    char path[64] = "";
    const char *file = k->path;
    if (k->text) {
        write_temp(k->text, path);
        file = path;
    }
    CaseRun run = { k, file };
    char err[4096];
    int code = test_run_child(run_case_child, &run, err, sizeof err);
    size_t n = strlen(err);
    if (path[0]) unlink(path);

    if (!k->expect) {
        EXPECT(code == 0 && n == 0, "%s: expected success, got status %d: %s", label, code, err);
        return test_failed == failed_before;
    }
    char *nl = strchr(err, '\n');
    EXPECT(code == 1, "%s: exit status %d, expected 1 (stderr: %s)", label, code, err);
    EXPECT(nl && nl[1] == '\0', "%s: expected exactly one line on stderr, got: %s", label, err);
    EXPECT(strstr(err, "config: "), "%s: message lacks 'config: ': %s", label, err);
    EXPECT(strstr(err, k->expect), "%s: message lacks \"%s\": %s", label, k->expect, err);
    if (k->expect2)
        EXPECT(strstr(err, k->expect2), "%s: message lacks \"%s\": %s", label, k->expect2, err);
    if (k->line) {
        char where[128];
        snprintf(where, sizeof where, "(%s:%d)", path, k->line);
        EXPECT(strstr(err, where), "%s: message lacks \"%s\": %s", label, where, err);
    }
    return test_failed == failed_before;
}

/* ---- defaults: every field holds its X-macro default, parsed here independently ---- */

/* Field pointers arrive as void * so one row macro serves scalars and char arrays. */
static void expect_default_INT(const char *key, const void *p, const char *def)
{
    const int *v = p;
    EXPECT(*v == atoi(def), "default of %s: %d, expected %s", key, *v, def);
}
static void expect_default_I64(const char *key, const void *p, const char *def)
{
    const long long *v = p;
    EXPECT(*v == atoll(def), "default of %s: %lld, expected %s", key, *v, def);
}
static void expect_default_F64(const char *key, const void *p, const char *def)
{
    const double *v = p;
    EXPECT(*v == strtod(def, NULL), "default of %s: %.17g, expected %s", key, *v, def);
}
static void expect_default_BOOL(const char *key, const void *p, const char *def)
{
    const int *v = p;
    EXPECT(*v == !strcmp(def, "true"), "default of %s: %d, expected %s", key, *v, def);
}
static void expect_default_STR(const char *key, const void *p, const char *def)
{
    const char *v = p;
    EXPECT(!strcmp(v, def), "default of %s: '%s', expected '%s'", key, v, def);
}

static void test_defaults(void)
{
    Config c;
    memset(&c, 0xA5, sizeof c);   /* config_defaults must not depend on prior contents */
    config_defaults(&c);
#define DEFAULT_ROW(type, key, def, help) expect_default_##type(#key, &sec->key, def);
#define DEFAULT_SECTION(name, member, KEYS, Type) { const Type *sec = &c.member; KEYS(DEFAULT_ROW) }
    CONFIG_SECTIONS(DEFAULT_SECTION)
#undef DEFAULT_ROW
#undef DEFAULT_SECTION
    Config d;
    config_defaults(&d);
    EXPECT(!memcmp(&c, &d, sizeof c), "config_defaults is not deterministic down to padding");
    run_case("defaults validate", &(Case){ .validate = 1 });
}

/* ---- loading and --set ---- */

static void test_load(void)
{
    char long_name[251];
    memset(long_name, 'n', 250);
    long_name[250] = '\0';
    char *text = xasprintf(
        "\xEF\xBB\xBF# dstrain test config\n"
        "   # an indented comment\n"
        "\n"
        "[model]\n"
        "hidden_size = 96          # trailing comment\n"
        "  num_hidden_layers = 6   # indented key (inih would join it to the line above)\n"
        "rope_scaling.factor = 2   # dotted key: section model.rope_scaling\n"
        "[ model.rope_scaling ]\n"
        "type = 'yarn'\n"
        "beta_fast = 1e1\n"
        "\n"
        "[train]\n"
        "name = \"%s\"\n"
        "run_dir = 'a ; b # c \"d\"'   # inih alone would cut at \" ;\"\n"
        "seed = -5\n"
        "steps = 1_000\r\n"
        "bf16_moments = true\n"
        "[optim]\n"
        "lr = 5e-4        # exponent\n"
        "[data]\n"
        "dir = plain words#comment without a space\n"
        "[mtp]\n"
        "lambda_switch_tokens = 9_000_000_000_000\n",
        long_name);
    Config c, d;
    config_defaults(&c);
    config_defaults(&d);
    load_text(&c, text);
    free(text);
    EXPECT(c.model.hidden_size == 96, "hidden_size %d", c.model.hidden_size);
    EXPECT(c.model.num_hidden_layers == 6, "num_hidden_layers %d", c.model.num_hidden_layers);
    EXPECT(c.model.rope_scaling.factor == 2.0, "factor %g", c.model.rope_scaling.factor);
    EXPECT(!strcmp(c.model.rope_scaling.type, "yarn"), "type '%s'", c.model.rope_scaling.type);
    EXPECT(c.model.rope_scaling.beta_fast == 10.0, "beta_fast %g", c.model.rope_scaling.beta_fast);
    EXPECT(!strcmp(c.train.name, long_name), "a 250-character name did not survive a 260-byte line");
    EXPECT(!strcmp(c.train.run_dir, "a ; b # c \"d\""), "run_dir '%s'", c.train.run_dir);
    EXPECT(c.train.seed == -5, "seed %lld", c.train.seed);
    EXPECT(c.train.steps == 1000, "steps %d (underscores, CRLF)", c.train.steps);
    EXPECT(!strcmp(c.train.bf16_moments, "true"), "bf16_moments '%s' (an unquoted true)", c.train.bf16_moments);
    EXPECT(c.optim.lr == 5e-4, "lr %g", c.optim.lr);
    EXPECT(!strcmp(c.data.dir, "plain words"), "dir '%s'", c.data.dir);
    EXPECT(c.mtp.lambda_switch_tokens == 9000000000000LL, "lambda_switch_tokens %lld",
           c.mtp.lambda_switch_tokens);
    /* untouched keys keep their defaults */
    EXPECT(c.model.vocab_size == d.model.vocab_size && c.optim.beta2 == d.optim.beta2 &&
           !strcmp(c.parallel.schedule, d.parallel.schedule), "a key absent from the file changed");

    config_set(&c, "optim.lr=0.01");
    config_set(&c, "model.rope_scaling.factor = 4");
    config_set(&c, " train.name = my run ");
    config_set(&c, "train.run_dir='quoted'");
    config_set(&c, "data.dir=a#b");
    config_set(&c, "train.bf16_moments=false");
    EXPECT(c.optim.lr == 0.01, "--set lr %g", c.optim.lr);
    EXPECT(c.model.rope_scaling.factor == 4.0, "--set factor %g", c.model.rope_scaling.factor);
    EXPECT(!strcmp(c.train.name, "my run"), "--set name '%s'", c.train.name);
    EXPECT(!strcmp(c.train.run_dir, "quoted"), "--set run_dir '%s'", c.train.run_dir);
    EXPECT(!strcmp(c.data.dir, "a#b"), "--set dir '%s' ('#' is no comment in --set)", c.data.dir);
    EXPECT(!strcmp(c.train.bf16_moments, "false"), "--set bf16_moments '%s'", c.train.bf16_moments);
}

/* ---- write then load: identical bytes, for random values of every key ---- */

static double random_double(Rng *r)
{
    for (;;) {
        uint64_t bits = (uint64_t)rng_u32(r) << 32 | rng_u32(r);
        double d;
        memcpy(&d, &bits, sizeof d);
        if (isfinite(d)) return d;
    }
}

static void randomize_INT(Rng *r, void *p) { *(int *)p = (int)rng_u32(r); }
static void randomize_I64(Rng *r, void *p)
{
    *(long long *)p = (long long)((uint64_t)rng_u32(r) << 32 | rng_u32(r));
}
/* Special values (signed zero, the smallest denormal, the largest double, short decimals)
 * one time in four, else random bit patterns over the whole exponent range. */
static void randomize_F64(Rng *r, void *p)
{
    static const double SPECIAL[] = { 0.0, -0.0, 5e-324, 1.7976931348623157e308, 0.1, 1e-3 };
    uint32_t pick = rng_u32(r) % 24;
    *(double *)p = pick < 6 ? SPECIAL[pick] : random_double(r);
}
static void randomize_BOOL(Rng *r, void *p) { *(int *)p = (int)(rng_u32(r) & 1); }
/* Printable text of 0..255 bytes (spaces, '#', ';' included), one quote kind at most. */
static void randomize_STR(Rng *r, void *p)
{
    char *v = p;
    char banned = (rng_u32(r) & 1) ? '"' : '\'';
    int n = (int)(rng_u32(r) % CONFIG_STR_MAX);
    memset(v, 0, CONFIG_STR_MAX);
    for (int i = 0; i < n; i++) {
        char ch;
        do ch = (char)(' ' + rng_u32(r) % 95); while (ch == banned);
        v[i] = ch;
    }
}

static void test_round_trip(unsigned long long seed)
{
    Rng r;
    rng_seed(&r, seed);
    for (int trial = 0; trial < 20; trial++) {
        Config c;
        config_defaults(&c);
#define RANDOM_ROW(type, key, def, help) randomize_##type(&r, &sec->key);
#define RANDOM_SECTION(name, member, KEYS, Type) { Type *sec = &c.member; KEYS(RANDOM_ROW) }
        CONFIG_SECTIONS(RANDOM_SECTION)
#undef RANDOM_ROW
#undef RANDOM_SECTION
        char *text = NULL, *again = NULL;
        size_t len = 0, len2 = 0;
        FILE *f = open_memstream(&text, &len);
        config_write(&c, f);
        fclose(f);
        Config back;
        config_defaults(&back);
        load_text(&back, text);
        EXPECT(!memcmp(&c, &back, sizeof c), "trial %d: written config did not load back identically", trial);
        f = open_memstream(&again, &len2);
        config_write(&back, f);
        fclose(f);
        EXPECT(len == len2 && !strcmp(text, again),
               "trial %d: writing the reloaded config changed the text", trial);
        free(text);
        free(again);
    }
}

/* ---- --help: each section header, each key with type, default and meaning ---- */

static void expect_help_line(const char *help, const char *section, const char *key, const char *def,
                             const char *meaning)
{
    char header[64];
    snprintf(header, sizeof header, "[%s]\n", section);
    const char *s = strstr(help, header);
    EXPECT(s, "help lacks the section header %s", header);
    if (!s) return;
    char start[96];
    snprintf(start, sizeof start, "\n  %s ", key);
    const char *line = strstr(s, start);
    const char *next = strstr(s + strlen(header), "\n[");
    EXPECT(line && (!next || line < next), "help lacks key %s under [%s]", key, section);
    if (!line) return;
    const char *end = strchr(line + 1, '\n');
    size_t n = end ? (size_t)(end - line) : strlen(line);
    char *copy = strndup(line, n);
    EXPECT(strstr(copy, def) && strstr(copy, meaning), "help line of %s.%s lacks its default or meaning: %s",
           section, key, copy);
    free(copy);
}

static void test_help(void)
{
    char *help = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&help, &len);
    config_print_help(f);
    fclose(f);
#define HELP_ROW(type, key, def, meaning) expect_help_line(help, sec_name, #key, def, meaning);
#define HELP_SECTION(name, member, KEYS, Type) { const char *sec_name = name; KEYS(HELP_ROW) }
    CONFIG_SECTIONS(HELP_SECTION)
#undef HELP_ROW
#undef HELP_SECTION
    free(help);
}

/* ---- train.bf16_moments: auto, true or false ---- */

/* auto follows the precision (BF16 moments under bf16 and fp8, SPEC section 6); true and false
 * are honoured at every precision; config_write keeps the word; anything else is refused. */
static void test_bf16_moments(void)
{
    static const char *const precs[] = { "fp32", "bf16", "fp8" }, *const words[] = { "auto", "true", "false" };
    for (int w = 0; w < 3; w++)
        for (int p = 0; p < 3; p++) {
            Config c, d;
            config_defaults(&c);
            config_defaults(&d);
            char set[64];
            snprintf(set, sizeof set, "train.precision=%s", precs[p]);
            config_set(&c, set);
            if (w > 0) {    /* auto is the default: set only the others */
                snprintf(set, sizeof set, "train.bf16_moments=%s", words[w]);
                config_set(&c, set);
            }
            int want = w == 0 ? p > 0 : w == 1;
            EXPECT(train_bf16_moments(&c.train) == want, "bf16_moments %s at %s resolves to %d", words[w], precs[p],
                   train_bf16_moments(&c.train));
            char *text = NULL;
            size_t len = 0;
            FILE *f = open_memstream(&text, &len);
            config_write(&c, f);
            fclose(f);
            load_text(&d, text);
            EXPECT(!strcmp(d.train.bf16_moments, words[w]) && train_bf16_moments(&d.train) == want,
                   "bf16_moments %s at %s: written and read back as '%s'", words[w], precs[p], d.train.bf16_moments);
            free(text);
        }
    run_case("bf16_moments yes", &(Case){ .sets = { "train.bf16_moments=yes" }, .validate = 1,
             .expect = "'train.bf16_moments' = 'yes' is not one of: auto, true, false" });
    run_case("bf16_moments auto at fp8", &(Case){ .sets = { "train.precision=fp8" }, .validate = 1 });
}

/* ---- the DeepSeek-V3 671B config ---- */

static char *source_path(const char *rel)
{
    const char *dir = getenv("DSTRAIN_SOURCE_DIR");
    if (dir) return xasprintf("%s/%s", dir, rel);
    const char *me = __FILE__, *suffix = "tests/unit/test_config.c";
    size_t n = strlen(me), m = strlen(suffix);
    CHECK(n >= m && !strcmp(me + n - m, suffix));
    return xasprintf("%.*s%s", (int)(n - m), me, rel);
}

static void test_deepseek(void)
{
    char *path = source_path("configs/deepseek-v3-671b.toml");
    if (!run_case("deepseek-v3-671b.toml validates", &(Case){ .path = path, .validate = 1 })) {
        free(path);
        return;
    }
    Config c;
    config_defaults(&c);
    config_load(&c, path);
    const ModelConfig *m = &c.model;
    /* SPEC.md section 1 table */
    EXPECT(m->vocab_size == 129280 && m->hidden_size == 7168 && m->intermediate_size == 18432 &&
           m->moe_intermediate_size == 2048 && m->num_hidden_layers == 61 &&
           m->first_k_dense_replace == 3 && m->num_attention_heads == 128, "671B dense shape");
    EXPECT(m->n_routed_experts == 256 && m->n_shared_experts == 1 && m->num_experts_per_tok == 8 &&
           m->n_group == 8 && m->topk_group == 4 && m->routed_scaling_factor == 2.5 &&
           m->norm_topk_prob, "671B router");
    EXPECT(m->q_lora_rank == 1536 && m->kv_lora_rank == 512 && m->qk_nope_head_dim == 128 &&
           m->qk_rope_head_dim == 64 && m->v_head_dim == 128, "671B MLA dims");
    EXPECT(m->rms_norm_eps == 1e-6 && m->rope_theta == 10000 && m->num_nextn_predict_layers == 1 &&
           !m->tie_word_embeddings && m->initializer_range == 0.006, "671B misc model keys");
    EXPECT(!strcmp(m->rope_scaling.type, "yarn") && m->rope_scaling.factor == 40 &&
           m->rope_scaling.original_max_position_embeddings == 4096 && m->rope_scaling.beta_fast == 32 &&
           m->rope_scaling.beta_slow == 1, "671B YaRN");
    /* consistency the file's comments claim */
    EXPECT(m->max_position_embeddings == (int)m->rope_scaling.factor *
           m->rope_scaling.original_max_position_embeddings, "max_position_embeddings != factor * original");
    EXPECT(c.parallel.pp * c.parallel.dp == c.cluster.nodes * c.cluster.gpus_per_node,
           "pp * dp != GPUs of the cluster");
    EXPECT(c.train.micro_batch_size * c.train.grad_accum * c.parallel.dp == 15360,
           "global batch %d, TR 4.2 says 15360",
           c.train.micro_batch_size * c.train.grad_accum * c.parallel.dp);
    EXPECT(!strcmp(c.parallel.schedule, "dualpipe") && c.parallel.ep == 64, "671B parallel layout");
    free(path);
}

/* ---- every error class: status 1, one line, naming the key ---- */

static void test_input_errors(void)
{
    run_case("unknown key", &(Case){ .text = "[model]\nhiden_size = 3\n",
             .expect = "unknown key 'model.hiden_size'", .expect2 = "did you mean 'model.hidden_size'?",
             .line = 2 });
    run_case("key in a wrong section", &(Case){ .text = "[model]\nlr = 1\n",
             .expect = "unknown key 'model.lr'", .expect2 = "did you mean 'optim.lr'?", .line = 2 });
    run_case("unknown section", &(Case){ .text = "# c\n[modle]\n",
             .expect = "unknown section 'modle'", .expect2 = "did you mean 'model'?", .line = 2 });
    run_case("key outside a section", &(Case){ .text = "steps = 5\n",
             .expect = "'steps' names no section", .expect2 = "did you mean 'train.steps'?", .line = 1 });
    run_case("bad int", &(Case){ .text = "[train]\nsteps = ten\n",
             .expect = "'train.steps' = 'ten' is not an integer", .line = 2 });
    run_case("int overflow", &(Case){ .text = "[train]\n\nsteps = 3000000000\n",
             .expect = "'train.steps' = '3000000000' is out of range", .line = 3 });
    run_case("int64 overflow", &(Case){ .text = "[train]\nseed = 99999999999999999999\n",
             .expect = "'train.seed' = '99999999999999999999' is out of range", .line = 2 });
    run_case("bad float", &(Case){ .text = "[optim]\nlr = fast\n",
             .expect = "'optim.lr' = 'fast' is not a number", .line = 2 });
    run_case("float overflow", &(Case){ .text = "[optim]\nlr = 1e999\n",
             .expect = "'optim.lr' = '1e999' is not a finite number", .line = 2 });
    run_case("bad bool", &(Case){ .text = "[moe]\nbias_zero_mean = yes\n",
             .expect = "'moe.bias_zero_mean' = 'yes' is not a boolean", .line = 2 });
    run_case("missing file", &(Case){ .path = "/nonexistent-dir/none.toml",
             .expect = "cannot open '/nonexistent-dir/none.toml'" });
    run_case("syntax: no '='", &(Case){ .text = "[train]\nsteps = 5\nsteps 5\nbogus = 1\n",
             .expect = "syntax error", .line = 3 });
    run_case("syntax: ':' is not '='", &(Case){ .text = "[train]\nsteps: 5\n",
             .expect = "syntax error", .line = 2 });
    run_case("syntax: open section", &(Case){ .text = "[train\n", .expect = "syntax error", .line = 1 });
    run_case("syntax: text after section", &(Case){ .text = "[train] x\n",
             .expect = "syntax error", .line = 1 });
    /* a repeated key or section would silently override the earlier one (issue 12) */
    run_case("duplicate key", &(Case){ .text = "[optim]\nlr = 3e-4\n\nlr = 5e-4\n",
             .expect = "'optim.lr' is set twice", .expect2 = "first set at line 2", .line = 4 });
    run_case("duplicate section", &(Case){ .text = "[optim]\nlr = 3e-4\n[train]\n[optim]\n",
             .expect = "section '[optim]' appears twice", .expect2 = "first at line 1", .line = 4 });
    run_case("duplicate key, dotted", &(Case){
             .text = "[model]\nrope_scaling.factor = 2\n[model.rope_scaling]\nfactor = 3\n",
             .expect = "'model.rope_scaling.factor' is set twice", .expect2 = "first set at line 2", .line = 4 });
    run_case("unterminated string", &(Case){ .text = "[train]\nname = \"abc\n",
             .expect = "'train.name' has an unterminated string", .line = 2 });
    run_case("no value", &(Case){ .text = "[train]\nname =   # nothing\n",
             .expect = "'train.name' has no value", .line = 2 });
    char *long_text = xasprintf("[train]\nname = %0300d\n", 0);
    run_case("string too long", &(Case){ .text = long_text, .expect = "'train.name' is too long", .line = 2 });
    free(long_text);
    run_case("--set unknown key", &(Case){ .sets = { "optim.lrr=1" },
             .expect = "unknown key 'optim.lrr' (--set)", .expect2 = "did you mean 'optim.lr'?" });
    run_case("--set unknown section", &(Case){ .sets = { "modle.hidden_size=1" },
             .expect = "unknown section 'modle'", .expect2 = "did you mean 'model.hidden_size'?" });
    run_case("--set without '='", &(Case){ .sets = { "optim.lr" }, .expect = "--set 'optim.lr' has no '='" });
    run_case("--set bad int", &(Case){ .sets = { "train.steps=ten" },
             .expect = "'train.steps' = 'ten' is not an integer (--set)" });
    run_case("--set both quotes", &(Case){ .sets = { "train.name=a\"b'c" },
             .expect = "both quote characters" });
}

static void test_validation_errors(void)
{
    static const struct { const char *sets[5]; const char *expect; } BAD[] = {
        { { "model.n_group=3" }, "'model.n_group' = 3 does not divide 'model.n_routed_experts' = 8" },
        { { "model.qk_rope_head_dim=15" }, "'model.qk_rope_head_dim' = 15 must be even" },
        { { "model.tie_word_embeddings=true" }, "'model.tie_word_embeddings' = true is not supported" },
        { { "model.attention=mha" }, "'model.attention' = 'mha' is not one of: mla, gqa" },
        { { "model.rope_scaling.type=yarn", "model.rope_scaling.beta_fast=1" },
          "'model.rope_scaling.beta_fast' = 1 must be > 'model.rope_scaling.beta_slow' = 1" },
        { { "model.rope_scaling.factor=0.5" }, "'model.rope_scaling.factor' = 0.5 must be >= 1" },
        { { "model.rms_norm_eps=0" }, "'model.rms_norm_eps' = 0 must be > 0" },
        { { "model.vocab_size=1" }, "'model.vocab_size' = 1 must be >= 2" },
        { { "model.first_k_dense_replace=5" },
          "'model.first_k_dense_replace' = 5 is not in [0, 'model.num_hidden_layers' = 4]" },
        { { "model.topk_group=5" }, "'model.topk_group' = 5 is not in [1, 'model.n_group' = 4]" },
        { { "model.num_experts_per_tok=3" },
          "'model.topk_group' = 2 does not divide 'model.num_experts_per_tok' = 3" },
        { { "model.num_experts_per_tok=6" }, "'model.num_experts_per_tok' = 6 exceeds the 4 experts" },
        { { "model.attention=gqa", "model.num_key_value_heads=3" },
          "'model.num_key_value_heads' = 3 does not divide 'model.num_attention_heads' = 4" },
        { { "train.seq_len=8192" }, "'train.seq_len' = 8192 exceeds 'model.max_position_embeddings' = 4096" },
        { { "train.device=gpu" }, "'train.device' = 'gpu' is not one of: cpu, cuda" },
        { { "train.precision=fp16" }, "'train.precision' = 'fp16' is not one of: fp32, bf16, fp8" },
        { { "train.name=a/b" }, "'train.name' = 'a/b' must be one directory name" },
        { { "train.name=.hidden" }, "'train.name' = '.hidden' must be one directory name" },
        { { "train.keep_checkpoints=0" }, "'train.keep_checkpoints' = 0 must be >= 1" },
        { { "train.steps=0" }, "'train.steps' = 0 must be >= 1" },
        /* issue 12: 100000 threads crashed OpenMP; 1e8 micro-batches overflowed an int */
        { { "train.threads=100000" }, "'train.threads' = 100000 is not in [0, 1024]" },
        { { "train.threads=-1" }, "'train.threads' = -1 is not in [0, 1024]" },
        { { "train.grad_accum=100000000" }, "'train.grad_accum' = 100000000 is not in [1, 1048576]" },
        { { "train.val_batches=0" }, "'train.val_batches' = 0 must be >= 1" },
        { { "train.grad_accum=1048576", "train.micro_batch_size=65", "train.seq_len=64" },
          "= 4.362e+09 tokens per step exceeds 4.295e+09" },
        { { "train.micro_batch_size=100000000" }, "use a smaller micro-batch" },
        { { "train.steps=2147483647", "train.grad_accum=1048576", "train.micro_batch_size=64",
            "train.seq_len=64" }, "'train.steps' x tokens per step = 2147483647 x 4294967296" },
        { { "optim.lr_min=0.01" }, "'optim.lr_min' = 0.01 exceeds 'optim.lr' = 0.001" },
        { { "optim.beta2=1" }, "'optim.beta2' = 1 is not in [0, 1)" },
        { { "optim.eps=0" }, "'optim.eps' = 0 must be > 0" },
        { { "moe.max_nodes=0" }, "'moe.max_nodes' = 0 must be >= 1" },
        { { "mtp.lambda=-0.5" }, "'mtp.lambda' = -0.5 must be >= 0" },
        { { "data.synthetic_tokens=10" }, "'data.synthetic_tokens' = 10 must be >= 1000" },
        { { "data.dir=\"\"" }, "'data.dir' is empty" },
        { { "parallel.ep=2" }, "'parallel.ep' = 2 does not divide 'parallel.dp' = 1" },
        { { "parallel.dp=8", "parallel.ep=8", "model.n_routed_experts=12" },
          "'parallel.ep' = 8 does not divide 'model.n_routed_experts' = 12" },
        { { "parallel.schedule=dualpipe", "parallel.pp=3" },
          "'parallel.pp' = 3 must be even for schedule 'dualpipe'" },
        { { "parallel.schedule=dualpipev", "parallel.pp=2", "train.grad_accum=3" },
          "'train.grad_accum' = 3 micro-batches is below 2 * 'parallel.pp' = 4" },
        { { "parallel.schedule=dualpipe", "parallel.pp=2", "train.grad_accum=5" },
          "'train.grad_accum' = 5 must be even for schedule 'dualpipe'" },
        { { "parallel.schedule=gpipe" }, "'parallel.schedule' = 'gpipe' is not one of" },
        { { "cluster.mfu=1.5" }, "'cluster.mfu' = 1.5 is not in (0, 1]" },
        { { "cluster.ib_gbps=0" }, "'cluster.ib_gbps' = 0 must be > 0" },
        /* MTP blocks are MoE blocks, so router keys matter with every layer dense and D = 1 */
        { { "model.first_k_dense_replace=4", "model.n_group=3" }, "'model.n_group' = 3 does not divide" },
    };
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        Case k = { .validate = 1, .expect = BAD[i].expect };
        memcpy(k.sets, BAD[i].sets, sizeof k.sets);
        run_case(BAD[i].sets[0], &k);
    }
    /* Accepted: router keys unused without MoE layers; the zero-allowed sizes; DualPipeV's odd
     * micro-batch count; gqa with an explicit head_dim. */
    run_case("no MoE layer", &(Case){ .validate = 1, .sets = { "model.first_k_dense_replace=4",
             "model.num_nextn_predict_layers=0", "model.n_group=3" } });
    run_case("zero-allowed sizes", &(Case){ .validate = 1, .sets = { "model.q_lora_rank=0",
             "model.n_shared_experts=0", "model.num_nextn_predict_layers=0" } });
    run_case("limits at their bounds", &(Case){ .validate = 1, .sets = { "train.threads=1024",
             "train.grad_accum=1048576", "train.micro_batch_size=64", "train.seq_len=64" } });
    run_case("dualpipev odd grad_accum", &(Case){ .validate = 1, .sets = { "parallel.schedule=dualpipev",
             "parallel.pp=2", "train.grad_accum=5" } });
    run_case("gqa head_dim", &(Case){ .validate = 1, .sets = { "model.attention=gqa",
             "model.num_attention_heads=6", "model.head_dim=20", "model.num_key_value_heads=2" } });
}

/* config_fit_pipeline: the step's sequences split into the fewest micro-batches the schedule
 * takes that divide them; validation keeps its sequences; nothing changes where nothing needs
 * fitting or nothing fits. */
static void test_fit_pipeline(void)
{
    Config c;
    char note[512];
    config_defaults(&c);
    c.parallel.pp = 4;
    snprintf(c.parallel.schedule, sizeof c.parallel.schedule, "dualpipe");
    c.train.micro_batch_size = 16;
    c.train.grad_accum = 1;
    c.train.val_batches = 8;
    EXPECT(config_fit_pipeline(&c, note, sizeof note) == 1, "16 x 1 at dualpipe pp 4 fitted");
    EXPECT(c.train.micro_batch_size == 2 && c.train.grad_accum == 8 && c.train.val_batches == 64,
           "16 x 1 -> %d x %d, val %d (want 2 x 8, val 64)", c.train.micro_batch_size, c.train.grad_accum,
           c.train.val_batches);
    EXPECT(strstr(note, "8 micro-batches of 2") != NULL, "note: %s", note);
    EXPECT(config_fit_pipeline(&c, note, sizeof note) == 0, "a fitted step is left alone");
    c.train.micro_batch_size = 6;       /* 18 sequences: 9 is odd for dualpipe, 18 x 1 is the fewest */
    c.train.grad_accum = 3;
    c.train.val_batches = 1;
    EXPECT(config_fit_pipeline(&c, note, sizeof note) == 1 && c.train.grad_accum == 18 &&
           c.train.micro_batch_size == 1 && c.train.val_batches == 6, "6 x 3 -> %d x %d, val %d (want 1 x 18, val 6)",
           c.train.micro_batch_size, c.train.grad_accum, c.train.val_batches);
    c.train.micro_batch_size = 3;       /* 3 sequences cannot make 8 micro-batches */
    c.train.grad_accum = 1;
    EXPECT(config_fit_pipeline(&c, note, sizeof note) == 0 && c.train.micro_batch_size == 3 && c.train.grad_accum == 1,
           "3 x 1 left for config_validate to refuse");
    snprintf(c.parallel.schedule, sizeof c.parallel.schedule, "1f1b");     /* 1f1b runs any count */
    EXPECT(config_fit_pipeline(&c, note, sizeof note) == 0, "1f1b: nothing to fit");
    c.parallel.pp = 1;
    snprintf(c.parallel.schedule, sizeof c.parallel.schedule, "dualpipe");
    EXPECT(config_fit_pipeline(&c, note, sizeof note) == 0, "pp 1: nothing to fit");
}

int main(void)
{
    unsigned long long seed = test_seed();
    test_defaults();
    test_load();
    test_round_trip(seed);
    test_help();
    test_bf16_moments();
    test_deepseek();
    test_input_errors();
    test_validation_errors();
    test_fit_pipeline();
    return test_finish();
}
