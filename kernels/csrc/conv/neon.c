/* NEON depthwise 3x3 kernels: 4 channels (fp32) or 8 channels (int8) per step; int8 widens
 * x - x_zp to int16 and multiplies-accumulates into int32 with vmlal_s16 (exact). The int8
 * epilogue runs the shared scalar definition. */
#include "conv/conv.h"

#if EF_ARCH_ARM64
#include <arm_neon.h>

static void dwconv_f32_px__neon(size_t c, const float* const* taps, const float* w, const float* bias, float* y,
                                float lo, float hi) {
  size_t ch = 0;
  for (; ch + 4 <= c; ch += 4) {
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (size_t t = 0; t < 9; t++) acc = vfmaq_f32(acc, vld1q_f32(taps[t] + ch), vld1q_f32(w + t * c + ch));
    float tmp[4];
    vst1q_f32(tmp, vaddq_f32(acc, vld1q_f32(bias + ch)));
    for (int i = 0; i < 4; i++) y[ch + i] = ef_clamp(tmp[i], lo, hi);
  }
  ef_dwconv_f32_channels(ch, c, taps, w, bias, y, lo, hi);
}

static void dwconv_qs8_px__neon(size_t c, const int8_t* const* taps, const int8_t* w, const float* bias, int8_t* y,
                                const ef_dwconv_params* p) {
  const int16x8_t vzp = vdupq_n_s16((int16_t)p->x_zp);
  size_t ch = 0;
  for (; ch + 8 <= c; ch += 8) {
    int32x4_t lo = vdupq_n_s32(0), hi = vdupq_n_s32(0);
    for (size_t t = 0; t < 9; t++) {
      const int16x8_t xv = vsubq_s16(vmovl_s8(vld1_s8(taps[t] + ch)), vzp);
      const int16x8_t wv = vmovl_s8(vld1_s8(w + t * c + ch));
      lo = vmlal_s16(lo, vget_low_s16(xv), vget_low_s16(wv));
      hi = vmlal_s16(hi, vget_high_s16(xv), vget_high_s16(wv));
    }
    int32_t acc[8];
    vst1q_s32(acc, lo);
    vst1q_s32(acc + 4, hi);
    for (int i = 0; i < 8; i++) y[ch + i] = ef_dwconv_qs8_out(acc[i], ch + i, bias, p);
  }
  ef_dwconv_qs8_channels(ch, c, taps, w, bias, y, p);
}

static void ef_f32_dwconv_minmax_ukernel_9p4c__neon(size_t c, size_t n, const float* const* taps, const float* w,
                                                    const float* bias, float* y, float lo, float hi) {
  for (size_t px = 0; px < n; px++) dwconv_f32_px__neon(c, taps + 9 * px, w, bias, y + c * px, lo, hi);
}

static void ef_qs8_dwconv_minmax_ukernel_9p8c__neon(size_t c, size_t n, const int8_t* const* taps,
                                                    const ef_dwconv_qs8_weights* w, const float* bias, int8_t* y,
                                                    const ef_dwconv_params* p) {
  for (size_t px = 0; px < n; px++) dwconv_qs8_px__neon(c, taps + 9 * px, w->w, bias, y + c * px, p);
}

const ef_conv_config ef_conv_config_neon = {
    .isa = "neon",
    .dw3x3_f32 = ef_f32_dwconv_minmax_ukernel_9p4c__neon,
    .dw3x3_qs8 = ef_qs8_dwconv_minmax_ukernel_9p8c__neon,
};
#endif
