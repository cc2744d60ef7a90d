/* kernels/cpu/cpu_wire.h - the compact wire formats of the MoE exchanges on host memory
 * (SPEC.md section 6, comm/dispatch.c): dispatch rows as FP8 E4M3 codes with one power-of-two
 * scale per 1x128 tile, combine rows as BF16. The numbers are kernels/fp8.h's.
 *
 *   FP8 row (C values) = C codes, then ceil(C/128) FP32 scales (byte-packed; wire_fp8_row_bytes)
 *   BF16 row           = C 16-bit values (round to nearest even)
 *
 * wire_fp8_round is what a row becomes after wire_fp8_pack + wire_fp8_unpack, in place (the
 * one-rank path, which sends nothing). Unpacking the BF16 format works in place: the 16-bit
 * values at the front of a buffer become FP32 values filling it.
 * Not here: the transfers (comm/dispatch.c).
 */
#ifndef DSTRAIN_CPU_WIRE_H
#define DSTRAIN_CPU_WIRE_H

#include <stddef.h>
#include <stdint.h>

size_t wire_fp8_row_bytes(int C);
void wire_fp8_pack(uint8_t *dst, const float *x, size_t rows, int C);
void wire_fp8_unpack(float *x, const uint8_t *src, size_t rows, int C);
void wire_fp8_round(float *x, size_t rows, int C);
void wire_bf16_pack(uint16_t *dst, const float *x, size_t n);
/* buf holds n 16-bit values at its start; afterwards n FP32 values (4n bytes) */
void wire_bf16_unpack_inplace(void *buf, size_t n);

#endif
