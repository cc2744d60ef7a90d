/* tests/tools/pp_sim.c - the schedule simulator (runtime/pipeline/schedule.h) timed with
 * measured costs, for tests/tools/pp_bubble.py.
 * Usage: pp_sim KIND PP C F0 B0 W0 F1 B1 W1 ... (one triple per rank, seconds or any unit):
 *   F  a forward of one stage chunk, B  its full backward (input + weight gradient), W  the
 *   weight-gradient part. A stage's cost is the mean of the triples of the ranks that hold it
 *   (dualpipe holds each stage on two ranks); no communication, no transfer time.
 * Prints "makespan M" then "rank R busy X idle Y frac Z" per rank; exit 2 on bad usage or a
 * layout the schedule refuses. A test tool, not part of dstrain. */
#include <stdio.h>
#include <stdlib.h>

#include "runtime/pipeline/schedule.h"

int main(int argc, char **argv)
{
    SchedKind kind;
    if (argc < 4 || sched_kind_parse(argv[1], &kind)) {
        fprintf(stderr, "usage: pp_sim KIND PP C F0 B0 W0 ... (KIND: 1f1b, zb1p, dualpipe, dualpipev)\n");
        return 2;
    }
    const int pp = atoi(argv[2]), C = atoi(argv[3]);
    char err[SCHED_ERR_MAX];
    if (pp < 1 || argc != 4 + 3 * pp) {
        fprintf(stderr, "pp_sim: want 3 costs per rank for pp=%d, got %d numbers\n", pp, argc - 4);
        return 2;
    }
    if (sched_validate(kind, pp, C, -1, err, sizeof err)) {
        fprintf(stderr, "pp_sim: %s\n", err);
        return 2;
    }
    Schedule s;
    sched_build(&s, kind, pp, C);
    SchedCost *cost = calloc((size_t)s.n_stages, sizeof *cost);
    int *held = calloc((size_t)s.n_stages, sizeof *held);
    if (!cost || !held) return 2;
    for (int r = 0; r < pp; r++)
        for (int c = 0; c < s.n_chunks; c++) {
            const int st = sched_stage_of(&s, r, c);
            cost[st].f += atof(argv[4 + 3 * r]);
            cost[st].b += atof(argv[5 + 3 * r]);
            cost[st].w += atof(argv[6 + 3 * r]);
            held[st]++;
        }
    for (int st = 0; st < s.n_stages; st++) {
        cost[st].f /= held[st];
        cost[st].b /= held[st];
        cost[st].w /= held[st];
    }
    SchedSim sim;
    sched_simulate(&s, cost, 0.0, &sim);
    printf("makespan %.9g\n", sim.makespan);
    for (int r = 0; r < pp; r++)
        printf("rank %d busy %.9g idle %.9g frac %.6f\n", r, sim.busy[r], sim.idle[r],
               sim.makespan > 0 ? sim.idle[r] / sim.makespan : 0.0);
    sched_sim_free(&sim);
    sched_free(&s);
    free(cost);
    free(held);
    return 0;
}
