/* runtime/prepare.c - `dstrain prepare`: write a data directory of token shards.
 *
 *   --text FILE: byte-level tokens (each byte is its id, vocabulary 256, uint16 shards); the
 *     last --val-fraction of the file is the val split, the rest train. The file is streamed,
 *     never held in memory whole.
 *   --synthetic: the Markov source of runtime/synth.h, with its exact entropies in meta.json.
 * What it is not: a subword tokenizer. The formats are documented in runtime/data.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include "common.h"
#include "data.h"
#include "synth.h"

#define DEFAULT_VAL_FRACTION 0.1
#define DEFAULT_TOKENS 2000000LL   /* = config data.synthetic_tokens */
#define DEFAULT_SEED 1337          /* = config train.seed */
#define DEFAULT_VOCAB 256          /* = config model.vocab_size */

typedef struct PrepareArgs {
    const char *text, *out;
    int synthetic;
    double val_fraction;
    long long shard_tokens, tokens;
    SynthParams synth;
    int vocab;
    const char *synth_only;   /* the first synthetic-only option given, for the error */
    const char *text_only;    /* the first text-only option given */
} PrepareArgs;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: dstrain prepare --text FILE --out DIR [--val-fraction F] [--shard-tokens N]\n"
        "       dstrain prepare --synthetic --out DIR [--tokens N] [--seed S] [--vocab V]\n"
        "                       [--alphabet A] [--order K] [--successors S] [--shard-tokens N]\n"
        "\n"
        "Writes DIR/train_000000.bin ..., DIR/val_000000.bin ... (token shards: a 256-int32\n"
        "header, then the tokens) and DIR/meta.json (what made them), each durably.\n"
        "\n"
        "  --text FILE          byte-level tokens: each byte of FILE is one token (vocabulary\n"
        "                       256, uint16 shards); the last fraction of the file is val\n"
        "  --synthetic          tokens from a seeded order-K Markov chain whose entropy rate is\n"
        "                       known exactly; prints it beside the unigram entropy\n"
        "  --out DIR            the data directory (created; old shards there are replaced)\n"
        "  --val-fraction F     --text: share of the file (at its end) used as val, 0 < F < 1\n"
        "                       (default %g)\n"
        "  --shard-tokens N     most tokens per shard file (default %lld)\n"
        "  --tokens N           --synthetic: tokens in all, 10%% of them val (default %lld)\n"
        "  --seed S             --synthetic: seed of the table and the stream (default %d)\n"
        "  --vocab V            --synthetic: vocabulary size recorded, >= alphabet; the model's\n"
        "                       vocab_size (default %d)\n"
        "  --alphabet A         --synthetic: symbols the chain uses, ids 0..A-1 (default %d)\n"
        "  --order K            --synthetic: context length of the chain (default %d)\n"
        "  --successors S       --synthetic: possible next symbols per context (default %d)\n"
        "  -h, --help           this text\n",
        DEFAULT_VAL_FRACTION, SYNTH_DEFAULT_SHARD_TOKENS, DEFAULT_TOKENS, DEFAULT_SEED,
        DEFAULT_VOCAB, SYNTH_DEFAULT_ALPHABET, SYNTH_DEFAULT_ORDER, SYNTH_DEFAULT_SUCCESSORS);
}

static long long parse_count(const char *opt, const char *s, long long lo, long long hi)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        DIE("prepare: %s '%s' is not a whole number in %lld..%lld", opt, s, lo, hi);
    return v;
}

static double parse_fraction(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v > 0 && v < 1))
        DIE("prepare: %s '%s' is not a number strictly between 0 and 1", opt, s);
    return v;
}

/* Options that take a value, and which source they apply to: 'b' both, 't' --text only,
 * 's' --synthetic only. */
static const struct { const char *name; char mode; } OPTIONS[] = {
    { "--text", 't' }, { "--out", 'b' }, { "--val-fraction", 't' }, { "--shard-tokens", 'b' },
    { "--tokens", 's' }, { "--seed", 's' }, { "--vocab", 's' }, { "--alphabet", 's' },
    { "--order", 's' }, { "--successors", 's' },
};
#define N_OPTIONS (int)(sizeof OPTIONS / sizeof OPTIONS[0])

/* Applies one option with its value. */
static void apply_option(PrepareArgs *a, const char *opt, const char *val)
{
    if (!strcmp(opt, "--text")) a->text = val;
    else if (!strcmp(opt, "--out")) a->out = val;
    else if (!strcmp(opt, "--val-fraction")) a->val_fraction = parse_fraction(opt, val);
    else if (!strcmp(opt, "--shard-tokens")) a->shard_tokens = parse_count(opt, val, 1, INT32_MAX);
    else if (!strcmp(opt, "--tokens")) a->tokens = parse_count(opt, val, 20, (long long)1 << 50);
    else if (!strcmp(opt, "--seed")) a->synth.seed = (uint64_t)parse_count(opt, val, 0, INT64_MAX);
    else if (!strcmp(opt, "--vocab")) a->vocab = (int)parse_count(opt, val, 2, INT32_MAX);
    else if (!strcmp(opt, "--alphabet")) a->synth.alphabet = (int)parse_count(opt, val, 2, 65536);
    else if (!strcmp(opt, "--order")) a->synth.order = (int)parse_count(opt, val, 1, DATA_MAX_ORDER);
    else if (!strcmp(opt, "--successors")) a->synth.successors = (int)parse_count(opt, val, 2, 65536);
    else BUG("option '%s' has no handler", opt);
}

/* Parses argv (argv[0] is "prepare"); returns 1 when --help was asked for. DIEs on misuse. */
static int parse_args(int argc, char **argv, PrepareArgs *a)
{
    memset(a, 0, sizeof *a);
    a->val_fraction = DEFAULT_VAL_FRACTION;
    a->shard_tokens = SYNTH_DEFAULT_SHARD_TOKENS;
    a->tokens = DEFAULT_TOKENS;
    a->vocab = DEFAULT_VOCAB;
    a->synth = synth_default_params(DEFAULT_SEED);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) return 1;
        if (!strcmp(arg, "--synthetic")) {
            a->synthetic = 1;
            continue;
        }
        /* --opt=value or --opt value */
        char opt[64];
        const char *eq = strchr(arg, '='), *val = NULL;
        size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
        snprintf(opt, sizeof opt, "%.*s", (int)(len < sizeof opt ? len : sizeof opt - 1), arg);
        int k = 0;
        while (k < N_OPTIONS && strcmp(opt, OPTIONS[k].name) != 0) k++;
        if (k == N_OPTIONS)
            DIE("prepare: unknown %s '%s'; see dstrain prepare --help",
                arg[0] == '-' ? "option" : "argument", arg);
        if (eq) val = eq + 1;
        else if (i + 1 < argc) val = argv[++i];
        else DIE("prepare: option '%s' needs a value; see dstrain prepare --help", opt);
        apply_option(a, opt, val);
        if (OPTIONS[k].mode == 's' && !a->synth_only) a->synth_only = OPTIONS[k].name;
        if (OPTIONS[k].mode == 't' && strcmp(opt, "--text") != 0 && !a->text_only)
            a->text_only = OPTIONS[k].name;
    }
    if (!a->out) DIE("prepare: missing --out DIR (where the shards go)");
    if (!a->text == !a->synthetic)
        DIE("prepare: give exactly one of --text FILE or --synthetic (%s)",
            a->text ? "both were given" : "neither was given");
    if (a->text && a->synth_only)
        DIE("prepare: option '%s' applies to --synthetic only", a->synth_only);
    if (a->synthetic && a->text_only)
        DIE("prepare: option '%s' applies to --text only", a->text_only);
    return 0;
}

/* ---- text ---- */

typedef struct TextFill { FILE *f; const char *path; } TextFill;

static void text_fill(void *ctx, uint32_t *tokens, long long n)
{
    TextFill *t = ctx;
    unsigned char buf[65536];
    for (long long done = 0; done < n;) {
        size_t want = n - done < (long long)sizeof buf ? (size_t)(n - done) : sizeof buf;
        size_t got = fread(buf, 1, want, t->f);
        if (got != want)
            DIE("prepare: cannot read '%s': %s", t->path,
                ferror(t->f) ? strerror(errno) : "it became shorter while reading");
        for (size_t i = 0; i < got; i++) tokens[done + (long long)i] = buf[i];
        done += (long long)got;
    }
}

static void print_split(const char *dir, const char *split, int shards, long long tokens)
{
    char *first = data_shard_path(dir, split, 0), *last = data_shard_path(dir, split, shards - 1);
    printf("  %-5s %lld tokens in %d shard%s: %s%s%s\n", split, tokens, shards,
           shards == 1 ? "" : "s", first, shards > 1 ? " .. " : "", shards > 1 ? last : "");
    free(first);
    free(last);
}

static void print_shortest(const DataMeta *m)
{
    /* shards of a split differ by at most one token, so floor(tokens / shards) is the shortest */
    long long tr = m->train_tokens / m->train_shards, va = m->val_tokens / m->val_shards;
    long long shortest = tr < va ? tr : va;
    printf("  the shortest shard has %lld tokens, so seq_len can be at most %lld\n", shortest,
           shortest - 1);
}

static int prepare_text(const PrepareArgs *a)
{
    struct stat st;
    /* before the open: opening a FIFO would wait for a writer forever */
    if (stat(a->text, &st) == 0 && !S_ISREG(st.st_mode))
        DIE("prepare: text file '%s' is not a regular file", a->text);
    FILE *f = fopen(a->text, "rb");
    if (!f) DIE("prepare: cannot open text file '%s': %s", a->text, strerror(errno));
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode))
        DIE("prepare: text file '%s' is not a regular file", a->text);
    long long n = (long long)st.st_size;
    if (n <= 0) DIE("prepare: text file '%s' is empty", a->text);
    long long val = llround((double)n * a->val_fraction), train = n - val;
    if (val < 2 || train < 2)
        DIE("prepare: text file '%s' is too short for a val split: %lld bytes with val fraction "
            "%g give %lld train and %lld val tokens, and each split needs at least 2; give a "
            "longer text or change --val-fraction", a->text, n, a->val_fraction, train, val);

    DataMeta m;
    memset(&m, 0, sizeof m);
    TextFill t = { f, a->text };
    data_begin_write(a->out);
    m.train_shards = data_write_split(a->out, "train", train, a->shard_tokens, 1, 256, text_fill, &t);
    m.val_shards = data_write_split(a->out, "val", val, a->shard_tokens, 1, 256, text_fill, &t);
    fclose(f);
    m.format_version = DATA_META_FORMAT_VERSION;
    snprintf(m.tokenizer, sizeof m.tokenizer, "bytes");
    snprintf(m.text_file, sizeof m.text_file, "%s", a->text);
    m.vocab_size = 256;
    m.train_tokens = train;
    m.val_tokens = val;
    m.text_bytes = n;
    m.val_fraction = a->val_fraction;
    data_write_meta(a->out, &m);

    printf("wrote '%s': byte-level tokens of '%s' (vocab_size 256, uint16)\n", a->out, a->text);
    print_split(a->out, "train", m.train_shards, train);
    print_split(a->out, "val", m.val_shards, val);
    printf("  meta  %s/meta.json\n", a->out);
    print_shortest(&m);
    return 0;
}

/* ---- synthetic ---- */

static int prepare_synthetic(const PrepareArgs *a)
{
    DataMeta m;
    synth_prepare_params(a->out, a->tokens, &a->synth, a->vocab, a->shard_tokens, &m);
    printf("wrote '%s': synthetic order-%d Markov source, alphabet %d, %d successors per "
           "context, seed %llu (vocab_size %d, %s)\n", a->out, m.order, m.alphabet,
           m.successors, (unsigned long long)m.seed, m.vocab_size,
           data_shard_version(m.vocab_size) == 1 ? "uint16" : "uint32");
    print_split(a->out, "train", m.train_shards, m.train_tokens);
    print_split(a->out, "val", m.val_shards, m.val_tokens);
    printf("  meta  %s/meta.json\n", a->out);
    print_shortest(&m);
    printf("  %d of %d contexts recurrent (table draw %d)\n", m.recurrent_contexts,
           (int)lround(pow(m.alphabet, m.order)), m.table_draws);
    printf("                      nats/token  bits/token\n");
    printf("  entropy rate        %10.6f  %10.6f   (the best any model can do)\n",
           m.entropy_rate_nats, m.entropy_rate_nats / M_LN2);
    printf("  unigram entropy     %10.6f  %10.6f   (token frequencies only)\n",
           m.unigram_entropy_nats, m.unigram_entropy_nats / M_LN2);
    printf("  rate / unigram      %10.4f\n", m.entropy_rate_nats / m.unigram_entropy_nats);
    const int seq[] = { 64, 128, 256 };
    printf("  loss floor, mean over a window of T predictions (the first %d see less context):\n"
           "                     ", m.order - 1);
    for (int i = 0; i < 3; i++) printf(" T=%d %.6f", seq[i], data_meta_loss_floor(&m, seq[i]));
    printf(" nats\n");
    return 0;
}

int cmd_prepare(int argc, char **argv)
{
    PrepareArgs a;
    if (parse_args(argc, argv, &a)) {
        usage(stdout);
        return 0;
    }
    return a.text ? prepare_text(&a) : prepare_synthetic(&a);
}
