/* Portable depthwise 3x3 kernels: reference and fallback (the definitions in conv.h). */
#include "conv/conv.h"

static void ef_f32_dwconv_minmax_ukernel_9p1c__scalar(size_t c, size_t n, const float* const* taps, const float* w,
                                                      const float* bias, float* y, float lo, float hi) {
  for (size_t px = 0; px < n; px++, taps += 9, y += c) ef_dwconv_f32_channels(0, c, taps, w, bias, y, lo, hi);
}

static void ef_qs8_dwconv_minmax_ukernel_9p1c__scalar(size_t c, size_t n, const int8_t* const* taps,
                                                      const ef_dwconv_qs8_weights* wt, const float* bias, int8_t* y,
                                                      const ef_dwconv_params* p) {
  for (size_t px = 0; px < n; px++, taps += 9, y += c) ef_dwconv_qs8_channels(0, c, taps, wt->w, bias, y, p);
}

const ef_conv_config ef_conv_config_scalar = {
    .isa = "scalar",
    .dw3x3_f32 = ef_f32_dwconv_minmax_ukernel_9p1c__scalar,
    .dw3x3_qs8 = ef_qs8_dwconv_minmax_ukernel_9p1c__scalar,
};
