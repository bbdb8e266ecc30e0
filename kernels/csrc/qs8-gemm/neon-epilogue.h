/* The NEON 16-column epilogue of the qs8 and bsr kernels: one row's four int32x4 raw sums
 * through the shared scalar definition of qs8-gemm.h (zero-point correction, dequantize,
 * bias, clamp, optional requantize), element by element, so it is bit-identical to the
 * reference by construction. `block` starts with the qs8 block header (colsum, w_zp,
 * w_scale, bias; 16 each). */
#pragma once
#include <arm_neon.h>

#include "qs8-gemm/qs8-gemm.h"

EF_INLINE void ef_qs8_store_row16__neon(const int32x4_t acc[4], const uint8_t* block, size_t nc, int32_t a_zp,
                                        float a_scale, int32_t a_rowsum, void* c_row, const ef_qs8_gemm_params* p) {
  const int32_t* colsum = (const int32_t*)block;
  const int32_t* w_zp = colsum + EF_QS8_NR;
  const float* w_scale = (const float*)(w_zp + EF_QS8_NR);
  const float* bias = w_scale + EF_QS8_NR;
  int32_t raw[EF_QS8_NR];
  for (int q = 0; q < 4; q++) vst1q_s32(raw + 4 * q, acc[q]);
  for (size_t j = 0; j < nc; j++) {
    const int32_t v = ef_qs8_correct((uint32_t)raw[j], a_zp, colsum[j], w_zp[j], a_rowsum, (uint32_t)p->k);
    const float y = ef_qs8_dequant(v, a_scale, w_scale[j], bias[j], p->out_min, p->out_max);
    if (p->out_int8) ((int8_t*)c_row)[j] = ef_qs8_requant(y, p->out_inv_scale, p->out_zp);
    else ((float*)c_row)[j] = y;
  }
}
