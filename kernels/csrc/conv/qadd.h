/* Quantized residual add for int8 CNN plans: the QDQ pattern DQ(a) + DQ(b) -> Q in one pass.
 *
 * Definition (every variant computes exactly this, the float32 operation sequence of the
 * engine's Dequantize / Add / Quantize ops, so fusing them changes no bit):
 *   fa = ((float)a - (float)a_zp) * a_scale;  fb = ((float)b - (float)b_zp) * b_scale
 *   t  = (fa + fb) * out_inv_scale, clamped to [-128 - out_zp, 127 - out_zp] (NaN -> low)
 *   y  = nearbyint(t) + out_zp                                           (ties to even) */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "common.h"

typedef struct ef_qadd_params {
  float a_scale, b_scale, out_inv_scale;
  int32_t a_zp, b_zp, out_zp;
} ef_qadd_params;

void ef_qadd_qs8__scalar(size_t n, const int8_t* a, const int8_t* b, int8_t* y, const ef_qadd_params* p);
#if EF_ARCH_X86
void ef_qadd_qs8__avx2(size_t n, const int8_t* a, const int8_t* b, int8_t* y, const ef_qadd_params* p);
#endif
#if EF_ARCH_ARM64
void ef_qadd_qs8__neon(size_t n, const int8_t* a, const int8_t* b, int8_t* y, const ef_qadd_params* p);
#endif
/* Best variant for the current arch flags (AVX2 -> NEON -> scalar). */
void ef_qadd_qs8(size_t n, const int8_t* a, const int8_t* b, int8_t* y, const ef_qadd_params* p);
