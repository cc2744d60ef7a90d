/* checkpoint/ckpt_config.c - parse the config stored in a checkpoint (see ckpt_config.h). */
#include "ckpt_config.h"

#include <stdlib.h>

#include "ckpt.h"

int ckpt_load_config(const char *ckpt_dir, Config *c, char *err, size_t errlen)
{
    char *text = ckpt_read_config(ckpt_dir, err, errlen);
    if (!text) return -1;
    config_defaults(c);
    config_load_text(c, text, ckpt_dir);
    free(text);
    return 0;
}
