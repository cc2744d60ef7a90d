/* runtime/commands.h - the subcommands of the dstrain binary; main.c dispatches to these.
 * Each takes the arguments after the subcommand name (argv[0] is the subcommand) and returns
 * the process exit status. Each prints its own --help. */
#ifndef DSTRAIN_COMMANDS_H
#define DSTRAIN_COMMANDS_H

int cmd_train(int argc, char **argv);     /* runtime/train_cmd.c */
int cmd_prepare(int argc, char **argv);   /* runtime/prepare.c */
int cmd_sample(int argc, char **argv);    /* runtime/sample.c */
int cmd_eval(int argc, char **argv);      /* runtime/eval.c */
int cmd_plan(int argc, char **argv);      /* runtime/plan.c */
int cmd_inspect(int argc, char **argv);   /* runtime/inspect.c */
int cmd_export(int argc, char **argv);    /* runtime/export.c */
int cmd_plot(int argc, char **argv);      /* runtime/plot.c */
int cmd_topo(int argc, char **argv);      /* runtime/topo.c */

#endif
