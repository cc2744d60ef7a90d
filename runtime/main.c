/* runtime/main.c - the dstrain binary: starts the world (comm/world.h: MPI under an MPI
 * launcher, else one rank), dispatches to the subcommands of runtime/commands.h and finalises
 * the world at exit. Not here: any command's logic. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../comm/world.h"
#include "commands.h"
#include "topo.h"
#include "train.h"

typedef struct Command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *usage;
    const char *what;
} Command;

static const Command COMMANDS[] = {
    { "train", cmd_train, "train CONFIG [--set k=v ...] [--resume latest|DIR]", "train a model" },
    { "eval", cmd_eval, "eval CONFIG --ckpt DIR", "held-out loss of a checkpoint" },
    { "prepare", cmd_prepare, "prepare --text FILE|--synthetic --out DIR", "write token shards" },
    { "sample", cmd_sample, "sample --ckpt DIR --prompt TEXT", "generate text" },
    { "plan", cmd_plan, "plan CONFIG [--set ...] [--json]", "FLOPs, memory, communication, bubble" },
    { "inspect", cmd_inspect, "inspect CKPT", "tensors of a checkpoint; verify it" },
    { "export", cmd_export, "export --ckpt DIR --out DIR", "Hugging Face safetensors + config.json" },
    { "plot", cmd_plot, "plot RUN_DIR [--out FILE]", "a run's curves as an SVG (loss.svg)" },
    { "topo", cmd_topo, "topo", "ranks, hosts, GPUs, RDMA NICs and their pairing" },
};
#define N_COMMANDS (int)(sizeof COMMANDS / sizeof COMMANDS[0])

static void print_build(FILE *f)
{
    fprintf(f, "built with: cpu (OpenMP, OpenBLAS)");
#ifdef DSTRAIN_HAVE_MPI
    fprintf(f, ", mpi");
#endif
#ifdef DSTRAIN_HAVE_CUDA
    fprintf(f, ", cuda");
#endif
#ifdef DSTRAIN_HAVE_IBVERBS
    fprintf(f, ", ibverbs");
#endif
    fprintf(f, "\n");
}

static void usage(FILE *f)
{
    fprintf(f, "usage: dstrain COMMAND [ARGS]   (dstrain COMMAND --help for each)\n\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++) fprintf(f, "  dstrain %-45s %s\n", COMMANDS[i].usage, COMMANDS[i].what);
    fprintf(f, "\n");
    print_build(f);
}

/* OpenMP threads that spin-wait at barriers take the cores that other work on the machine
 * needs, and then wait for each other: on a 2-core machine with anything else running, a
 * small.toml step went from 0.5 s to 1.5-2.3 s; waiting passively kept it at 0.5 s idle and
 * 1.0 s beside a busy process (tests/bench/cpu_bench.sh). libgomp reads the policy once, when
 * it loads, so unless the user chose one (OMP_WAIT_POLICY or GOMP_SPINCOUNT) the program sets
 * passive and starts itself again, before anything else happens. */
static void prefer_passive_openmp(char **argv)
{
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc): carry on with the default policy */
}

static int dispatch(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        print_build(stdout);
        return 0;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) return COMMANDS[i].run(argc - 1, argv + 1);
    fprintf(stderr, "dstrain: unknown command '%s' (run 'dstrain --help' for the list)\n", argv[1]);
    return 2;
}

int main(int argc, char **argv)
{
    prefer_passive_openmp(argv);
    World *w = world_init(argc, argv);
    train_set_world(w);
    topo_set_world(w);
    int rc = dispatch(argc, argv);
    world_free(w);
    return rc;
}
