/* checkpoint/ckpt_config.h - the resolved config a checkpoint carries, parsed.
 * Commands that start from a checkpoint (sample, export, resume checks) read the model's
 * shape from it. Not here: reading the raw text (ckpt_read_config in ckpt.h). */
#ifndef DSTRAIN_CKPT_CONFIG_H
#define DSTRAIN_CKPT_CONFIG_H

#include <stddef.h>

#include "../runtime/config.h"

/* Defaults, then the checkpoint's config text over them; not validated (the caller decides:
 * a resume compares it with the new config first). 0, or -1 with a one-line message in err
 * when the checkpoint has no readable config. A malformed stored config DIEs in the parser,
 * naming the checkpoint. */
int ckpt_load_config(const char *ckpt_dir, Config *c, char *err, size_t errlen);

#endif
