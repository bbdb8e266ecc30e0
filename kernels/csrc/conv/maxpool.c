/* Max pooling (maxpool.h): scalar references and AVX2 (32 int8 channels per vpmaxsb, 8 fp32
 * channels per compare-and-blend). */
#include "conv/maxpool.h"

/* Offset of the first input pixel of output pixel (oy, ox)'s window, in elements. */
EF_INLINE size_t window_offset(const ef_maxpool_params* p, size_t oy, size_t ox) {
  return ((oy * p->sh) * p->w + ox * p->sw) * p->c;
}
EF_INLINE const int8_t* window(const int8_t* x, const ef_maxpool_params* p, size_t oy, size_t ox) {
  return x + window_offset(p, oy, ox);
}

/* One channel of one output pixel, from the channel's first input byte of the window. */
EF_INLINE int8_t window_max(const int8_t* first, size_t tap_y, size_t tap_x, const ef_maxpool_params* p) {
  int8_t m = first[0];
  for (size_t ky = 0; ky < p->kh; ky++)
    for (size_t kx = 0; kx < p->kw; kx++) {
      const int8_t v = first[ky * tap_y + kx * tap_x];
      m = v > m ? v : m;
    }
  return m;
}

void ef_maxpool_qs8__scalar(const int8_t* x, int8_t* y, const ef_maxpool_params* p) {
  const size_t c = p->c, row = p->w * c, tap_y = p->dh * row, tap_x = p->dw * c;
  for (size_t oy = 0; oy < p->oh; oy++)
    for (size_t ox = 0; ox < p->ow; ox++, y += c) {
      const int8_t* base = window(x, p, oy, ox);
      for (size_t ch = 0; ch < c; ch++) y[ch] = window_max(base + ch, tap_y, tap_x, p);
    }
}

#if EF_ARCH_X86
#include <immintrin.h>

EF_TARGET_AVX2 void ef_maxpool_qs8__avx2(const int8_t* x, int8_t* y, const ef_maxpool_params* p) {
  const size_t c = p->c, row = p->w * c, tap_y = p->dh * row, tap_x = p->dw * c;
  for (size_t oy = 0; oy < p->oh; oy++)
    for (size_t ox = 0; ox < p->ow; ox++, y += c) {
      const int8_t* base = window(x, p, oy, ox);
      size_t ch = 0;
      for (; ch + 32 <= c; ch += 32) {
        __m256i m = _mm256_loadu_si256((const __m256i*)(base + ch));
        for (size_t ky = 0; ky < p->kh; ky++)
          for (size_t kx = 0; kx < p->kw; kx++)
            m = _mm256_max_epi8(m, _mm256_loadu_si256((const __m256i*)(base + ky * tap_y + kx * tap_x + ch)));
        _mm256_storeu_si256((__m256i*)(y + ch), m);
      }
      for (; ch < c; ch++) y[ch] = window_max(base + ch, tap_y, tap_x, p);
    }
}
#endif

void ef_maxpool_qs8(const int8_t* x, int8_t* y, const ef_maxpool_params* p) {
#if EF_ARCH_X86
  if (ef_arch_flags() & EF_ARCH_X86_AVX2) {
    ef_maxpool_qs8__avx2(x, y, p);
    return;
  }
#endif
  ef_maxpool_qs8__scalar(x, y, p);
}

/* ------------------------------------------------------------------ fp32 */

/* numpy's maximum(m, t) (maxpool.h): m if it is larger or not a number, else t */
EF_INLINE float max_like_numpy(float m, float t) { return (m > t || m != m) ? m : t; }

EF_INLINE float window_max_f32(const float* first, size_t tap_y, size_t tap_x, const ef_maxpool_params* p) {
  float m = first[0];
  for (size_t ky = 0; ky < p->kh; ky++)
    for (size_t kx = 0; kx < p->kw; kx++) {
      if (ky == 0 && kx == 0) continue;
      m = max_like_numpy(m, first[ky * tap_y + kx * tap_x]);
    }
  return m;
}

void ef_maxpool_f32__scalar(const float* x, float* y, const ef_maxpool_params* p) {
  const size_t c = p->c, row = p->w * c, tap_y = p->dh * row, tap_x = p->dw * c;
  for (size_t oy = 0; oy < p->oh; oy++)
    for (size_t ox = 0; ox < p->ow; ox++, y += c) {
      const float* base = x + window_offset(p, oy, ox);
      for (size_t ch = 0; ch < c; ch++) y[ch] = window_max_f32(base + ch, tap_y, tap_x, p);
    }
}

#if EF_ARCH_X86
EF_TARGET_AVX2 void ef_maxpool_f32__avx2(const float* x, float* y, const ef_maxpool_params* p) {
  const size_t c = p->c, row = p->w * c, tap_y = p->dh * row, tap_x = p->dw * c;
  for (size_t oy = 0; oy < p->oh; oy++)
    for (size_t ox = 0; ox < p->ow; ox++, y += c) {
      const float* base = x + window_offset(p, oy, ox);
      size_t ch = 0;
      for (; ch + 8 <= c; ch += 8) {
        __m256 m = _mm256_loadu_ps(base + ch);
        for (size_t ky = 0; ky < p->kh; ky++)
          for (size_t kx = 0; kx < p->kw; kx++) {
            if (ky == 0 && kx == 0) continue;
            const __m256 t = _mm256_loadu_ps(base + ky * tap_y + kx * tap_x + ch);
            /* max_like_numpy, lane by lane (maxps alone would drop a NaN t) */
            const __m256 keep = _mm256_or_ps(_mm256_cmp_ps(m, t, _CMP_GT_OQ), _mm256_cmp_ps(m, m, _CMP_UNORD_Q));
            m = _mm256_blendv_ps(t, m, keep);
          }
        _mm256_storeu_ps(y + ch, m);
      }
      for (; ch < c; ch++) y[ch] = window_max_f32(base + ch, tap_y, tap_x, p);
    }
}
#endif

void ef_maxpool_f32(const float* x, float* y, const ef_maxpool_params* p) {
#if EF_ARCH_X86
  if (ef_arch_flags() & EF_ARCH_X86_AVX2) {
    ef_maxpool_f32__avx2(x, y, p);
    return;
  }
#endif
  ef_maxpool_f32__scalar(x, y, p);
}
