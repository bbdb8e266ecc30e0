/* Convolution for CNNs such as MobileNetV2, activations in NHWC (channels last):
 *
 *   depthwise 3x3 (padding 1, stride 1 or 2)  this family: one kernel per output pixel over
 *                                              all channels, SIMD across channels
 *   pointwise 1x1                              = GEMM on the [H*W, C] matrix (qs8-gemm, f32-gemm)
 *   general KxK                                = im2col (here) + GEMM
 *
 * Input taps come through an indirection array (XNNPACK's trick): for each output pixel, 9
 * pointers to the C channels of each input tap, padding taps pointing at a row of "zeros"
 * (0.0f, or the activation zero point for int8 so that x - x_zp = 0). The kernels then
 * have no edge cases.
 *
 * int8 follows the qs8 definition per channel c (symmetric weights):
 *   acc = sum_t (x_t[c] - x_zp) * w[t][c]                                  exact int32
 *   y = clamp((float)acc * (x_scale * w_scale[c]) + bias[c], out_min, out_max)
 *   out = requantize(y, out_inv_scale, out_zp)                           (as ef_qs8_requant)
 * bit-exact across ISAs; fp32 sums taps in tap order with FMA or not: named tolerance. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "common.h"

typedef struct ef_dwconv_params {
  size_t h, w, c; /* input height, width, channels */
  size_t stride;  /* 1 or 2 */
  float out_min, out_max;
  /* int8 only */
  float x_scale;
  int32_t x_zp;
  const float* w_scale; /* [c] */
  float out_inv_scale;
  int32_t out_zp;
} ef_dwconv_params;

/* int8 depthwise weights as the kernels read them, prepared once per call from w [9][c]:
 *   w       the tap-major bytes as given (the scalar and NEON kernels read these);
 *   pairs   int16 [5][c][2]: pair q holds taps 2q and 2q + 1 of each channel side by side
 *           (pair 4: tap 8 and a zero weight), so one vpmaddwd on the interleaved activations
 *           (x[2q][ch], x[2q+1][ch]) sums two taps per channel;
 *   zp_sum  int32 [c]: x_zp * sum_t w[t][ch]. The pair kernels compute sum_t x_t w_t - zp_sum,
 *           which is sum_t (x_t - x_zp) w_t exactly (|each| <= 9 * 255 * 128, no overflow). */
typedef struct ef_dwconv_qs8_weights {
  const int8_t* w;
  const int16_t* pairs;
  const int32_t* zp_sum;
} ef_dwconv_qs8_weights;

/* A run of n output pixels, all c channels each: taps is [n][9] (the 9 input-tap pointers of
 * each pixel, row-major over the 3x3 window), y the n pixels' outputs back to back. w is
 * [9][c] (tap-major), bias [c]. One call per row keeps the per-pixel cost to the taps. */
typedef void (*ef_dwconv_f32_fn)(size_t c, size_t n, const float* const* taps, const float* w, const float* bias,
                                 float* y, float lo, float hi);
typedef void (*ef_dwconv_qs8_fn)(size_t c, size_t n, const int8_t* const* taps, const ef_dwconv_qs8_weights* w,
                                 const float* bias, int8_t* y, const ef_dwconv_params* p);

typedef struct ef_conv_config {
  const char* isa;
  ef_dwconv_f32_fn dw3x3_f32;
  ef_dwconv_qs8_fn dw3x3_qs8;
} ef_conv_config;

extern const ef_conv_config ef_conv_config_scalar;
#if EF_ARCH_X86
extern const ef_conv_config ef_conv_config_avx2;
extern const ef_conv_config ef_conv_config_avx512;
#endif
#if EF_ARCH_ARM64
extern const ef_conv_config ef_conv_config_neon;
#endif
const ef_conv_config* ef_conv_select(void);

static inline size_t ef_dwconv_out_size(size_t in, size_t stride) { return (in + 2 - 3) / stride + 1; }

/* One image: x [h][w][c] -> y [oh][ow][c]; threads over output rows. */
int ef_dwconv3x3_f32(const ef_conv_config* config, const float* x, const float* w, const float* bias, float* y,
                     const ef_dwconv_params* p);
int ef_dwconv3x3_qs8(const ef_conv_config* config, const int8_t* x, const int8_t* w, const float* bias, int8_t* y,
                     const ef_dwconv_params* p);

/* Patches of one NHWC image for a general convolution: out [oh*ow][kh][kw][c], elements of
 * elem_size bytes; taps outside the image are filled with pad_value (elem_size bytes). */
void ef_im2col(size_t elem_size, const void* x, size_t h, size_t w, size_t c, size_t kh, size_t kw, size_t stride_h,
               size_t stride_w, size_t pad_top, size_t pad_left, size_t oh, size_t ow, const void* pad_value, void* out);
/* The same patches in ONNX's (c, kh, kw) order, out [oh*ow][c][kh][kw]: for weights that
 * cannot be reordered to (kh, kw, c), such as group-quantized ones whose groups run along
 * the ONNX order. */
void ef_im2col_chw(size_t elem_size, const void* x, size_t h, size_t w, size_t c, size_t kh, size_t kw, size_t stride_h,
                   size_t stride_w, size_t pad_top, size_t pad_left, size_t oh, size_t ow, const void* pad_value,
                   void* out);

/* Shared per-channel int8 epilogue (the definition above). */
#include "qs8-gemm/qs8-gemm.h"
EF_INLINE int8_t ef_dwconv_qs8_out(int32_t acc, size_t c, const float* bias, const ef_dwconv_params* p) {
  const float y = ef_qs8_dequant(acc, p->x_scale, p->w_scale[c], bias[c], p->out_min, p->out_max);
  return ef_qs8_requant(y, p->out_inv_scale, p->out_zp);
}

/* Channels [ch0, c) of one output pixel by the definitions above: the channel tails of the
 * SIMD kernels and the whole of the scalar ones. */
EF_INLINE void ef_dwconv_f32_channels(size_t ch0, size_t c, const float* const* taps, const float* w, const float* bias,
                                      float* y, float lo, float hi) {
  for (size_t ch = ch0; ch < c; ch++) {
    float acc = 0.0f;
    for (size_t t = 0; t < 9; t++) acc += taps[t][ch] * w[t * c + ch];
    y[ch] = ef_clamp(acc + bias[ch], lo, hi);
  }
}

EF_INLINE void ef_dwconv_qs8_channels(size_t ch0, size_t c, const int8_t* const* taps, const int8_t* w,
                                      const float* bias, int8_t* y, const ef_dwconv_params* p) {
  for (size_t ch = ch0; ch < c; ch++) {
    int32_t acc = 0;
    for (size_t t = 0; t < 9; t++) acc += ((int32_t)taps[t][ch] - p->x_zp) * w[t * c + ch];
    y[ch] = ef_dwconv_qs8_out(acc, ch, bias, p);
  }
}
