/* runtime/gpu_peak.c - see gpu_peak.h: datasheet dense BF16 peaks by device name. */
#include "runtime/gpu_peak.h"

#include <ctype.h>
#include <stddef.h>
#include <string.h>

/* NVIDIA datasheets, dense BF16 tensor TFLOP/s (the "with sparsity" figure halved). Order
 * matters: a more specific name (form factor) before the family. Token: the text that must
 * appear in the device name as a whole word (no letter or digit on either side). */
static const struct { const char *token, *also, *model; double tflops; } PEAKS[] = {
    { "H100", "PCIe", "H100 PCIe", 756 },
    { "H100", "NVL", "H100 NVL", 835 },
    { "H100", NULL, "H100 SXM", 989 },
    { "H200", "NVL", "H200 NVL", 835 },
    { "H200", NULL, "H200 SXM", 989 },
    { "GH200", NULL, "GH200", 989 },
    { "H800", "PCIe", "H800 PCIe", 756 },
    { "H800", NULL, "H800 SXM", 989 },
    { "H20", NULL, "H20", 148 },
    { "A100", NULL, "A100", 312 },
    { "A800", NULL, "A800", 312 },
    { "L40S", NULL, "L40S", 362 },
    { "L4", NULL, "L4", 121 },
    { "A10", NULL, "A10", 125 },
};

/* token occurs in s as a whole word */
static int has_word(const char *s, const char *token)
{
    size_t n = strlen(token);
    for (const char *p = strstr(s, token); p; p = strstr(p + 1, token)) {
        int left = p == s || !isalnum((unsigned char)p[-1]), right = !isalnum((unsigned char)p[n]);
        if (left && right) return 1;
    }
    return 0;
}

double gpu_dense_bf16_tflops(const char *device_name, const char **model)
{
    if (model) *model = NULL;
    if (!device_name) return 0;
    for (size_t i = 0; i < sizeof PEAKS / sizeof PEAKS[0]; i++) {
        if (!has_word(device_name, PEAKS[i].token)) continue;
        if (PEAKS[i].also && !has_word(device_name, PEAKS[i].also)) continue;
        if (model) *model = PEAKS[i].model;
        return PEAKS[i].tflops;
    }
    return 0;
}
