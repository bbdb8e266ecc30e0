/* int8 max pooling over NHWC tensors, for the int8 CNN plans (MaxPool between quantized
 * convolutions: the max of int8 values is exact, so it runs on the codes directly).
 *
 * Definition (every variant computes exactly this), no padding:
 *   y[oy][ox][c] = max over ky < kh, kx < kw of x[oy * sh + ky * dh][ox * sw + kx * dw][c]
 * for one image x [h][w][c] -> y [oh][ow][c], oh = (h - dh * (kh - 1) - 1) / sh + 1 (ow alike). */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "common.h"

typedef struct ef_maxpool_params {
  size_t h, w, c, oh, ow;
  size_t kh, kw, sh, sw, dh, dw;
} ef_maxpool_params;

void ef_maxpool_qs8__scalar(const int8_t* x, int8_t* y, const ef_maxpool_params* p);
#if EF_ARCH_X86
void ef_maxpool_qs8__avx2(const int8_t* x, int8_t* y, const ef_maxpool_params* p);
#endif
/* Best variant for the current arch flags (AVX2, else scalar; aarch64 runs the scalar loop,
 * which GCC vectorizes there). */
void ef_maxpool_qs8(const int8_t* x, int8_t* y, const ef_maxpool_params* p);
