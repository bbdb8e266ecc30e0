/* Portable depthwise 3x3 kernels: reference and fallback. */
#include "conv/conv.h"

static void ef_f32_dwconv_minmax_ukernel_9p1c__scalar(size_t c, size_t n, const float* const* taps, const float* w,
                                                      const float* bias, float* y, float lo, float hi) {
  for (size_t px = 0; px < n; px++, taps += 9, y += c)
    for (size_t ch = 0; ch < c; ch++) {
      float acc = 0.0f;
      for (size_t t = 0; t < 9; t++) acc += taps[t][ch] * w[t * c + ch];
      y[ch] = ef_clamp(acc + bias[ch], lo, hi);
    }
}

static void ef_qs8_dwconv_minmax_ukernel_9p1c__scalar(size_t c, size_t n, const int8_t* const* taps,
                                                      const ef_dwconv_qs8_weights* wt, const float* bias, int8_t* y,
                                                      const ef_dwconv_params* p) {
  const int8_t* w = wt->w;
  for (size_t px = 0; px < n; px++, taps += 9, y += c)
    for (size_t ch = 0; ch < c; ch++) {
      int32_t acc = 0;
      for (size_t t = 0; t < 9; t++) acc += ((int32_t)taps[t][ch] - p->x_zp) * w[t * c + ch];
      y[ch] = ef_dwconv_qs8_out(acc, ch, bias, p);
    }
}

const ef_conv_config ef_conv_config_scalar = {
    .isa = "scalar",
    .dw3x3_f32 = ef_f32_dwconv_minmax_ukernel_9p1c__scalar,
    .dw3x3_qs8 = ef_qs8_dwconv_minmax_ukernel_9p1c__scalar,
};
