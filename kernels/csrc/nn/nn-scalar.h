/* Scalar exp / erf / GELU of the nn family (nn.h describes the formulas): the definition the
 * scalar kernels use, and the tails of the SIMD loops. */
#pragma once
#include <math.h>
#include <string.h>

#include "nn/nn.h"

#define EF_NN_LOG2E 1.44269504088896341f
#define EF_NN_LN2_HI 0.693145751953125f /* 15 significant bits: n * LN2_HI is exact for |n| <= 128 */
#define EF_NN_LN2_LO 1.42860682030941723e-6f
#define EF_NN_INV_SQRT2 0.70710678118654752f

EF_INLINE float ef_nn_exp_scalar(float x) {
  if (x < EF_NN_EXP_LO) return 0.0f;
  x = x < EF_NN_EXP_HI ? x : EF_NN_EXP_HI; /* NaN stays NaN */
  const float n = nearbyintf(x * EF_NN_LOG2E);
  float r = x - n * EF_NN_LN2_HI;
  r = r - n * EF_NN_LN2_LO;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  if (n != n) return n;
  const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
  float s;
  memcpy(&s, &bits, sizeof s);
  return p * s;
}

/* erf(a) / a for 0 <= a < 1 */
EF_INLINE float ef_nn_erf_small_poly(float u /* a^2 */) {
  float p = ef_nn_erf_small_coef[EF_NN_ERF_SMALL_DEG];
  for (int i = EF_NN_ERF_SMALL_DEG - 1; i >= 0; i--) p = p * u + ef_nn_erf_small_coef[i];
  return p;
}

/* erfc(a) for a >= 1 */
EF_INLINE float ef_nn_erfc_large(float a) {
  const float t = 1.0f / (1.0f + 0.5f * a);
  float q = ef_nn_erfc_coef[EF_NN_ERFC_DEG];
  for (int i = EF_NN_ERFC_DEG - 1; i >= 0; i--) q = q * t + ef_nn_erfc_coef[i];
  return ef_nn_exp_scalar(-(a * a)) * q;
}

EF_INLINE float ef_nn_erf_scalar(float x) {
  const float a = fabsf(x);
  if (a < 1.0f) return x * ef_nn_erf_small_poly(a * a);
  const float e = 1.0f - ef_nn_erfc_large(a);
  return x < 0.0f ? -e : (x > 0.0f ? e : x); /* NaN passes through */
}

/* x * Phi(x): below |x| = sqrt 2 from erf directly, above from erfc (no cancellation in the
 * negative tail, where GELU is x/2 * erfc(|x| / sqrt 2)). */
EF_INLINE float ef_nn_gelu_scalar(float x) {
  const float a = fabsf(x) * EF_NN_INV_SQRT2;
  if (a < 1.0f) {
    const float e = a * ef_nn_erf_small_poly(a * a);
    return x * (0.5f + 0.5f * (x < 0.0f ? -e : e));
  }
  const float h = 0.5f * ef_nn_erfc_large(a);
  return x * (x < 0.0f ? h : 1.0f - h);
}
