/* kernels/cpu/cpu_wire.c - the FP8 and BF16 wire formats of the MoE exchanges (cpu_wire.h). */
#include "kernels/cpu/cpu_wire.h"

#include <string.h>

#include "kernels/fp8.h"

size_t wire_fp8_row_bytes(int C) { return (size_t)C + sizeof(float) * (size_t)((C + FP8_TILE - 1) / FP8_TILE); }

/* SPEC section 6: dispatched activations use power-of-two scales (pow2 = 1), so the expert's
 * GEMM can take the tiles as they arrive. */
void wire_fp8_pack(uint8_t *dst, const float *x, size_t rows, int C)
{
    const size_t rb = wire_fp8_row_bytes(C);
    for (size_t r = 0; r < rows; r++) {
        const float *src = x + r * C;     /* (C) */
        uint8_t *q = dst + r * rb;        /* C codes, then the scales */
        for (int k0 = 0, t = 0; k0 < C; k0 += FP8_TILE, t++) {
            int m = C - k0 < FP8_TILE ? C - k0 : FP8_TILE;
            float s;
            fp8_quantize_tile(src + k0, m, 1, q + k0, &s);
            memcpy(q + C + t * sizeof(float), &s, sizeof s);
        }
    }
}

void wire_fp8_unpack(float *x, const uint8_t *src, size_t rows, int C)
{
    const size_t rb = wire_fp8_row_bytes(C);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *q = src + r * rb;
        for (int k0 = 0, t = 0; k0 < C; k0 += FP8_TILE, t++) {
            int m = C - k0 < FP8_TILE ? C - k0 : FP8_TILE;
            float s;
            memcpy(&s, q + C + t * sizeof(float), sizeof s);
            fp8_dequantize_tile(q + k0, m, s, x + r * C + k0);
        }
    }
}

void wire_fp8_round(float *x, size_t rows, int C)
{
    uint8_t q[FP8_TILE];
    for (size_t r = 0; r < rows; r++)
        for (int k0 = 0; k0 < C; k0 += FP8_TILE) {
            int m = C - k0 < FP8_TILE ? C - k0 : FP8_TILE;
            float s, *v = x + r * C + k0;
            fp8_quantize_tile(v, m, 1, q, &s);
            fp8_dequantize_tile(q, m, s, v);
        }
}

void wire_bf16_pack(uint16_t *dst, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) dst[i] = bf16_from_float(x[i]);
}

/* Back to front: value i moves from bytes [2i, 2i+2) to [4i, 4i+4), which overlaps only the
 * 16-bit values 2i and 2i+1, already moved (or value i itself, read first). */
void wire_bf16_unpack_inplace(void *buf, size_t n)
{
    unsigned char *b = buf;
    for (size_t i = n; i-- > 0;) {
        uint16_t h;
        memcpy(&h, b + 2 * i, sizeof h);
        float f = bf16_to_float(h);
        memcpy(b + 4 * i, &f, sizeof f);
    }
}
