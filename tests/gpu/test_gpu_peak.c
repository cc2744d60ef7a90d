/* tests/gpu/test_gpu_peak.c - the datasheet peak table (runtime/gpu_peak.h) on the names the
 * CUDA runtime reports: form factors told apart (H100 SXM / PCIe / NVL), whole words only
 * ("GH200" is not an H200, "L40S" not an L4), unknown names give 0. CPU only. */
#include <stdio.h>
#include <string.h>

#include "../unit/testing.h"
#include "runtime/gpu_peak.h"

int main(void)
{
    static const struct { const char *name, *model; double tflops; } cases[] = {
        { "NVIDIA H100 80GB HBM3", "H100 SXM", 989 },
        { "NVIDIA H100 PCIe", "H100 PCIe", 756 },
        { "NVIDIA H100 NVL", "H100 NVL", 835 },
        { "NVIDIA H200", "H200 SXM", 989 },
        { "NVIDIA H200 NVL", "H200 NVL", 835 },
        { "NVIDIA GH200 480GB", "GH200", 989 },
        { "NVIDIA A100-SXM4-80GB", "A100", 312 },
        { "NVIDIA L40S", "L40S", 362 },
        { "NVIDIA L4", "L4", 121 },
        { "NVIDIA L40", NULL, 0 },
        { "NVIDIA GeForce RTX 4090", NULL, 0 },
        { "", NULL, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *model;
        double t = gpu_dense_bf16_tflops(cases[i].name, &model);
        printf("  '%s' -> %s %.0f\n", cases[i].name, model ? model : "(unknown)", t);
        EXPECT(t == cases[i].tflops, "'%s': %.0f TFLOP/s, want %.0f", cases[i].name, t, cases[i].tflops);
        EXPECT((model == NULL) == (cases[i].model == NULL) && (!model || !strcmp(model, cases[i].model)),
               "'%s': matched row %s", cases[i].name, model ? model : "(none)");
    }
    EXPECT(gpu_dense_bf16_tflops(NULL, NULL) == 0, "NULL name");
    return test_finish();
}
