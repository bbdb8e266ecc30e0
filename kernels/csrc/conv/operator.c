/* Convolution operators: indirection for depthwise 3x3, im2col for general kernels. */
#include <stdlib.h>
#include <string.h>

#include "conv/conv.h"
#include "threadpool.h"

const ef_conv_config* ef_conv_select(void) {
  const uint32_t flags = ef_arch_flags();
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AVX512) return &ef_conv_config_avx512;
  if (flags & EF_ARCH_X86_AVX2) return &ef_conv_config_avx2;
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) return &ef_conv_config_neon;
#endif
  (void)flags;
  return &ef_conv_config_scalar;
}

typedef struct {
  const ef_conv_config* config;
  const ef_dwconv_params* p;
  size_t elem, oh, ow;
  const uint8_t* x;
  const uint8_t* zero; /* c elements of padding */
  const void* w;       /* float [9][c], or ef_dwconv_qs8_weights */
  const float* bias;
  uint8_t* y;
} dw_job;

/* Pixels per kernel call: the tap pointers of a run live on the stack (9 x 8 bytes each). */
#define DW_RUN 64

/* Output rows [begin, end): the 9 tap pointers of each pixel of a run of the row, then one
 * kernel call for the run. */
static void dw_rows(void* ctx, size_t begin, size_t end) {
  const dw_job* j = ctx;
  const ef_dwconv_params* p = j->p;
  const size_t row_bytes = p->w * p->c * j->elem, px_bytes = p->c * j->elem;
  const void* taps[DW_RUN * 9];
  for (size_t oy = begin; oy < end; oy++)
    for (size_t ox0 = 0; ox0 < j->ow; ox0 += DW_RUN) {
      const size_t run = EF_MIN(DW_RUN, j->ow - ox0);
      /* padding 1: input coordinate = out * stride + k - 1 */
      const ptrdiff_t iy0 = (ptrdiff_t)(oy * p->stride) - 1;
      const int rows_inside = iy0 >= 0 && iy0 + 2 < (ptrdiff_t)p->h;
      for (size_t i = 0; i < run; i++) {
        const ptrdiff_t ix0 = (ptrdiff_t)((ox0 + i) * p->stride) - 1;
        const void** t = taps + i * 9;
        if (rows_inside && ix0 >= 0 && ix0 + 2 < (ptrdiff_t)p->w) {
          /* all 9 taps inside: no per-tap checks (with few channels these pointers cost as
           * much as the multiply-adds) */
          const uint8_t* base = j->x + (size_t)iy0 * row_bytes + (size_t)ix0 * px_bytes;
          for (size_t ky = 0; ky < 3; ky++, base += row_bytes) {
            t[ky * 3] = base;
            t[ky * 3 + 1] = base + px_bytes;
            t[ky * 3 + 2] = base + 2 * px_bytes;
          }
          continue;
        }
        for (size_t ky = 0; ky < 3; ky++)
          for (size_t kx = 0; kx < 3; kx++) {
            const ptrdiff_t iy = iy0 + (ptrdiff_t)ky, ix = ix0 + (ptrdiff_t)kx;
            const int inside = iy >= 0 && iy < (ptrdiff_t)p->h && ix >= 0 && ix < (ptrdiff_t)p->w;
            t[ky * 3 + kx] = inside ? j->x + (size_t)iy * row_bytes + (size_t)ix * px_bytes : j->zero;
          }
      }
      uint8_t* out = j->y + (oy * j->ow + ox0) * px_bytes;
      if (j->elem == sizeof(float))
        j->config->dw3x3_f32(p->c, run, (const float* const*)taps, j->w, j->bias, (float*)out, p->out_min, p->out_max);
      else
        j->config->dw3x3_qs8(p->c, run, (const int8_t* const*)taps, j->w, j->bias, (int8_t*)out, p);
    }
}

static int dwconv(const ef_conv_config* config, size_t elem, const void* x, const void* w, const float* bias, void* y,
                  const ef_dwconv_params* p) {
  if (config == NULL) config = ef_conv_select();
  if (p->stride != 1 && p->stride != 2) return -1;
  uint8_t* zero = calloc(p->c, elem);
  if (zero == NULL) return -2;
  if (elem == 1) memset(zero, (int8_t)p->x_zp, p->c); /* int8 padding is the zero point */
  dw_job job = {config, p, elem, ef_dwconv_out_size(p->h, p->stride), ef_dwconv_out_size(p->w, p->stride), x, zero, w, bias, y};
  ef_parallel_for(job.oh, job.ow * p->c * 9, dw_rows, &job);
  free(zero);
  return 0;
}

int ef_dwconv3x3_f32(const ef_conv_config* config, const float* x, const float* w, const float* bias, float* y,
                     const ef_dwconv_params* p) {
  return dwconv(config, sizeof(float), x, w, bias, y, p);
}

int ef_dwconv3x3_qs8(const ef_conv_config* config, const int8_t* x, const int8_t* w, const float* bias, int8_t* y,
                     const ef_dwconv_params* p) {
  /* The tap-pair weights (conv.h): O(9c) once per call, against O(9c) per output pixel. */
  const size_t c = p->c;
  int16_t* pairs = malloc(10 * c * sizeof(int16_t) + c * sizeof(int32_t));
  if (pairs == NULL) return -2;
  int32_t* zp_sum = (int32_t*)(pairs + 10 * c);
  /* Loops the compiler vectorizes: this runs on every call, for tens of output pixels. */
  for (size_t q = 0; q < 5; q++) {
    const int8_t* wa = w + 2 * q * c;
    const int8_t* wb = q < 4 ? w + (2 * q + 1) * c : NULL;
    int16_t* dst = pairs + q * c * 2;
    for (size_t ch = 0; ch < c; ch++) {
      dst[2 * ch] = wa[ch];
      dst[2 * ch + 1] = wb ? wb[ch] : 0;
    }
  }
  for (size_t ch = 0; ch < c; ch++) zp_sum[ch] = 0;
  for (size_t t = 0; t < 9; t++)
    for (size_t ch = 0; ch < c; ch++) zp_sum[ch] += w[t * c + ch];
  for (size_t ch = 0; ch < c; ch++) zp_sum[ch] *= p->x_zp;
  const ef_dwconv_qs8_weights weights = {w, pairs, zp_sum};
  const int rc = dwconv(config, 1, x, &weights, bias, y, p);
  free(pairs);
  return rc;
}

/* memcpy for the short runs of im2col (a tap of a few channels): fixed-size pieces, which
 * compilers inline, instead of a library call per few bytes. */
EF_INLINE void copy_short(uint8_t* dst, const uint8_t* src, size_t n) {
  for (; n >= 16; n -= 16, dst += 16, src += 16) memcpy(dst, src, 16);
  if (n >= 8) { memcpy(dst, src, 8); dst += 8; src += 8; n -= 8; }
  if (n >= 4) { memcpy(dst, src, 4); dst += 4; src += 4; n -= 4; }
  for (; n > 0; n--) *dst++ = *src++;
}

/* taps x c padding elements: memset for bytes, fixed-size copies for floats (a library
 * memcpy per element cost more than the rest of a small im2col). */
EF_INLINE void fill_pad(uint8_t* dst, size_t taps, size_t elem, size_t c, const void* pad_value) {
  const size_t n = taps * c;
  if (elem == 1) {
    memset(dst, *(const uint8_t*)pad_value, n);
  } else if (elem == sizeof(float)) {
    for (size_t i = 0; i < n; i++) memcpy(dst + i * sizeof(float), pad_value, sizeof(float));
  } else {
    for (size_t i = 0; i < n; i++) memcpy(dst + i * elem, pad_value, elem);
  }
}

/* Copies of one small pixel (px bytes) with the size known to the compiler. */
EF_INLINE void copy_pixel(uint8_t* dst, const uint8_t* src, size_t px) {
  switch (px) {
    case 1: *dst = *src; break;
    case 2: memcpy(dst, src, 2); break;
    case 4: memcpy(dst, src, 4); break;
    case 8: memcpy(dst, src, 8); break;
    default: copy_short(dst, src, px);
  }
}

/* im2col for pixels of at most 8 bytes (a stem convolution on 1..3 channels): tap by tap,
 * each tap's column of the patch matrix filled for a whole output row at once, the padding
 * found per row rather than per element. The pixel-by-pixel order below spends a copy call
 * and its bounds checks on every 1..3 bytes there. */
static void im2col_small_pixels(size_t elem, const uint8_t* x, size_t h, size_t w, size_t c, size_t kh, size_t kw,
                                size_t stride_h, size_t stride_w, size_t pad_top, size_t pad_left, size_t oh,
                                size_t ow, const void* pad_value, uint8_t* out) {
  const size_t px = c * elem, patch = kh * kw * px;
  for (size_t ky = 0; ky < kh; ky++)
    for (size_t kx = 0; kx < kw; kx++) {
      /* output columns [lo, hi) read inside the image: ix = ox * stride_w + kx - pad_left */
      size_t lo = 0, hi = 0;
      if (kx < pad_left) lo = (pad_left - kx + stride_w - 1) / stride_w;
      if (w + pad_left > kx) hi = EF_MIN(ow, (w + pad_left - kx + stride_w - 1) / stride_w);
      lo = EF_MIN(lo, hi);
      for (size_t oy = 0; oy < oh; oy++) {
        const ptrdiff_t iy = (ptrdiff_t)(oy * stride_h + ky) - (ptrdiff_t)pad_top;
        uint8_t* dst = out + oy * ow * patch + (ky * kw + kx) * px;
        const int row_inside = iy >= 0 && iy < (ptrdiff_t)h;
        size_t ox = 0;
        for (; ox < (row_inside ? lo : ow); ox++) fill_pad(dst + ox * patch, 1, elem, c, pad_value);
        if (!row_inside) continue;
        for (; ox < hi; ox++) copy_pixel(dst + ox * patch, x + ((size_t)iy * w + ox * stride_w + kx - pad_left) * px, px);
        for (; ox < ow; ox++) fill_pad(dst + ox * patch, 1, elem, c, pad_value);
      }
    }
}

void ef_im2col(size_t elem, const void* x, size_t h, size_t w, size_t c, size_t kh, size_t kw, size_t stride_h,
               size_t stride_w, size_t pad_top, size_t pad_left, size_t oh, size_t ow, const void* pad_value, void* out) {
  const size_t px = c * elem;
  if (px <= 8) {
    im2col_small_pixels(elem, x, h, w, c, kh, kw, stride_h, stride_w, pad_top, pad_left, oh, ow, pad_value, out);
    return;
  }
  uint8_t* dst = out;
  for (size_t oy = 0; oy < oh; oy++)
    for (size_t ox = 0; ox < ow; ox++)
      for (size_t ky = 0; ky < kh; ky++) {
        const ptrdiff_t iy = (ptrdiff_t)(oy * stride_h + ky) - (ptrdiff_t)pad_top;
        const ptrdiff_t ix0 = (ptrdiff_t)(ox * stride_w) - (ptrdiff_t)pad_left;
        if (iy < 0 || iy >= (ptrdiff_t)h) {
          fill_pad(dst, kw, elem, c, pad_value);
        } else if (ix0 >= 0 && ix0 + (ptrdiff_t)kw <= (ptrdiff_t)w) {
          /* the kw taps of one kernel row are adjacent pixels of the input row: one copy */
          copy_short(dst, (const uint8_t*)x + ((size_t)iy * w + (size_t)ix0) * px, kw * px);
        } else {
          for (size_t kx = 0; kx < kw; kx++) {
            const ptrdiff_t ix = ix0 + (ptrdiff_t)kx;
            if (ix >= 0 && ix < (ptrdiff_t)w) copy_short(dst + kx * px, (const uint8_t*)x + ((size_t)iy * w + (size_t)ix) * px, px);
            else fill_pad(dst + kx * px, 1, elem, c, pad_value);
          }
        }
        dst += kw * px;
      }
}

void ef_im2col_chw(size_t elem, const void* x, size_t h, size_t w, size_t c, size_t kh, size_t kw, size_t stride_h,
                   size_t stride_w, size_t pad_top, size_t pad_left, size_t oh, size_t ow, const void* pad_value,
                   void* out) {
  const size_t taps = kh * kw, px = c * elem;
  uint8_t* dst = out;
  for (size_t oy = 0; oy < oh; oy++)
    for (size_t ox = 0; ox < ow; ox++, dst += taps * px)
      for (size_t ky = 0; ky < kh; ky++)
        for (size_t kx = 0; kx < kw; kx++) {
          const ptrdiff_t iy = (ptrdiff_t)(oy * stride_h + ky) - (ptrdiff_t)pad_top;
          const ptrdiff_t ix = (ptrdiff_t)(ox * stride_w + kx) - (ptrdiff_t)pad_left;
          const int inside = iy >= 0 && iy < (ptrdiff_t)h && ix >= 0 && ix < (ptrdiff_t)w;
          const uint8_t* src = inside ? (const uint8_t*)x + ((size_t)iy * w + (size_t)ix) * px : NULL;
          /* channel ch of this tap goes to element ch * taps + ky * kw + kx of the patch */
          uint8_t* d = dst + (ky * kw + kx) * elem;
          if (elem == sizeof(float)) {
            float v;
            if (!inside) memcpy(&v, pad_value, sizeof v);
            for (size_t ch = 0; ch < c; ch++) {
              if (inside) memcpy(&v, src + ch * sizeof v, sizeof v);
              memcpy(d + ch * taps * sizeof v, &v, sizeof v);
            }
          } else {
            for (size_t ch = 0; ch < c; ch++) memcpy(d + ch * taps * elem, inside ? src + ch * elem : pad_value, elem);
          }
        }
}
