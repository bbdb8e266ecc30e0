/* Max pooling over NHWC tensors: int8 for the int8 CNN plans (MaxPool between quantized
 * convolutions: the max of int8 values is exact, so it runs on the codes directly) and fp32
 * for the fp32 ones.
 *
 * Definition (every variant computes exactly this), no padding:
 *   y[oy][ox][c] = max over ky < kh, kx < kw of x[oy * sh + ky * dh][ox * sw + kx * dw][c]
 * for one image x [h][w][c] -> y [oh][ow][c], oh = (h - dh * (kh - 1) - 1) / sh + 1 (ow alike).
 * fp32 takes the max tap by tap in window order (ky, then kx) with numpy's maximum, so the
 * result is numpy's bit for bit: m = (m > t || m is NaN) ? m : t, starting from the first
 * tap. A NaN anywhere in a window gives the window's first NaN; of equal values (-0 and +0)
 * the later tap's wins, as in numpy 2 (and maxps). */
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

void ef_maxpool_f32__scalar(const float* x, float* y, const ef_maxpool_params* p);
#if EF_ARCH_X86
void ef_maxpool_f32__avx2(const float* x, float* y, const ef_maxpool_params* p);
#endif
void ef_maxpool_f32(const float* x, float* y, const ef_maxpool_params* p);
