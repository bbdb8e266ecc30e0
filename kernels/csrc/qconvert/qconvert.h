/* float32 <-> int8 conversion with a per-tensor scale and zero point: the QuantizeLinear and
 * DequantizeLinear of int8 CNN plans, one pass each instead of several numpy calls.
 *
 * Definitions (every variant computes exactly these float32 operation sequences):
 *   quantize:    t = x * inv_scale, clamped to [-128 - zp, 127 - zp] (NaN -> low bound),
 *                q = nearbyint(t) + zp   (ties to even)            = ef_qs8_requant
 *   dequantize:  y = ((float)q - (float)zp) * scale                  (exact for int8 q)
 * inv_scale is 1 / scale rounded to float32 once by the caller, as the GEMM epilogues do. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "common.h"

void ef_quantize_qs8__scalar(size_t n, const float* x, float inv_scale, int32_t zp, int8_t* q);
void ef_dequantize_qs8__scalar(size_t n, const int8_t* q, float scale, int32_t zp, float* y);
#if EF_ARCH_X86
void ef_quantize_qs8__avx2(size_t n, const float* x, float inv_scale, int32_t zp, int8_t* q);
void ef_dequantize_qs8__avx2(size_t n, const int8_t* q, float scale, int32_t zp, float* y);
#endif
/* Best variant for the current arch flags (AVX2, else scalar). */
void ef_quantize_qs8(size_t n, const float* x, float inv_scale, int32_t zp, int8_t* q);
void ef_dequantize_qs8(size_t n, const int8_t* q, float scale, int32_t zp, float* y);
