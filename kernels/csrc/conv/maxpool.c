/* int8 max pooling (maxpool.h): scalar reference and AVX2 (32 channels per vpmaxsb). */
#include "conv/maxpool.h"

/* The first input pixel of output pixel (oy, ox)'s window. */
EF_INLINE const int8_t* window(const int8_t* x, const ef_maxpool_params* p, size_t oy, size_t ox) {
  return x + ((oy * p->sh) * p->w + ox * p->sw) * p->c;
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
