/* Portable f32-gemm kernel: reference and fallback. */
#include "f32-gemm.h"

static void ef_f32_gemm_minmax_ukernel_4x16__scalar(size_t mr, size_t nc, size_t k, const float* x, size_t x_stride,
                                                    const float* block, float* c, size_t c_stride, float lo, float hi) {
  const float* bias = block;
  const float* w = block + EF_F32_NR;
  for (size_t r = 0; r < mr; r++)
    for (size_t j = 0; j < nc; j++) {
      float acc = 0.0f;
      for (size_t kk = 0; kk < k; kk++) acc += x[r * x_stride + kk] * w[kk * EF_F32_NR + j];
      c[r * c_stride + j] = ef_clamp(acc + bias[j], lo, hi);
    }
}

#define K ef_f32_gemm_minmax_ukernel_4x16__scalar
const ef_f32_gemm_config ef_f32_gemm_config_scalar = {.isa = "scalar", .mr = 4, .ukernel = {K, K, K, K}};
