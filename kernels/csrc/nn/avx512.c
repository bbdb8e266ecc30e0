/* nn AVX-512 kernels: GELU and erf 16 floats per step (they are compute bound: ~40 operations
 * per vector); the row kernels (layer norm, softmax, attention rows) stay on AVX2, which is
 * bound by loads and horizontal reductions at transformer row sizes. */
#include "nn/nn-scalar.h"
#include "nn/nn-x86.h"

#if EF_ARCH_X86
#include <immintrin.h>

/* exp as in nn-scalar.h; NaN propagates (min/max return their second operand on NaN). */
EF_INLINE EF_TARGET_AVX512 __m512 exp16(__m512 x) {
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EF_NN_EXP_LO), _CMP_NLT_UQ);
  x = _mm512_max_ps(_mm512_set1_ps(EF_NN_EXP_LO), _mm512_min_ps(_mm512_set1_ps(EF_NN_EXP_HI), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EF_NN_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EF_NN_LN2_HI), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EF_NN_LN2_LO), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(keep, p, _mm512_castsi512_ps(e));
}

EF_INLINE EF_TARGET_AVX512 __m512 erf_small16(__m512 u) {
  __m512 p = _mm512_set1_ps(ef_nn_erf_small_coef[EF_NN_ERF_SMALL_DEG]);
  for (int i = EF_NN_ERF_SMALL_DEG - 1; i >= 0; i--) p = _mm512_fmadd_ps(p, u, _mm512_set1_ps(ef_nn_erf_small_coef[i]));
  return p;
}

EF_INLINE EF_TARGET_AVX512 __m512 erfc_large16(__m512 a) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(a, _mm512_set1_ps(0.5f), one));
  __m512 q = _mm512_set1_ps(ef_nn_erfc_coef[EF_NN_ERFC_DEG]);
  for (int i = EF_NN_ERFC_DEG - 1; i >= 0; i--) q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(ef_nn_erfc_coef[i]));
  const __m512 neg_u = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(_mm512_mul_ps(a, a)), _mm512_set1_epi32((int)0x80000000u)));
  return _mm512_mul_ps(exp16(neg_u), q);
}

EF_INLINE EF_TARGET_AVX512 __m512 abs16(__m512 x) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff)));
}

EF_INLINE EF_TARGET_AVX512 __m512 gelu16(__m512 x) {
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  const __m512 a = _mm512_mul_ps(abs16(x), _mm512_set1_ps(EF_NN_INV_SQRT2));
  const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __mmask16 small = _mm512_cmp_ps_mask(a, one, _CMP_LT_OQ);
  __m512 e = _mm512_mul_ps(a, erf_small16(_mm512_mul_ps(a, a)));
  e = _mm512_mask_sub_ps(e, neg, _mm512_setzero_ps(), e);                       /* sign of x */
  const __m512 phi_small = _mm512_fmadd_ps(half, e, half);
  const __m512 h = _mm512_mul_ps(half, erfc_large16(a));
  const __m512 phi_large = _mm512_mask_blend_ps(neg, _mm512_sub_ps(one, h), h);
  return _mm512_mul_ps(x, _mm512_mask_blend_ps(small, phi_large, phi_small));
}

EF_INLINE EF_TARGET_AVX512 __m512 erf16(__m512 x) {
  const __m512 a = abs16(x);
  const __m512 small = _mm512_mul_ps(x, erf_small16(_mm512_mul_ps(a, a)));
  __m512 large = _mm512_sub_ps(_mm512_set1_ps(1.0f), erfc_large16(a));
  large = _mm512_mask_sub_ps(large, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_setzero_ps(), large);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, _mm512_set1_ps(1.0f), _CMP_LT_OQ), large, small);
}

static EF_TARGET_AVX512 void gelu(size_t n, const float* x, float* y) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, gelu16(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, gelu16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

static EF_TARGET_AVX512 void erf_(size_t n, const float* x, float* y) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, erf16(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, erf16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

const ef_nn_config ef_nn_config_avx512 = {"avx512", ef_nn_layernorm_row__avx2, ef_nn_softmax_row__avx2, gelu, erf_,
                                          ef_nn_qk_row__avx2, ef_nn_pv_row__avx2};
#endif
