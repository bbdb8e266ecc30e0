/* nn AVX2+FMA kernels: 8 floats per step, scalar tails with the shared scalar formulas. */
#include "nn/nn-scalar.h"
#include "nn/nn-x86.h"

#if EF_ARCH_X86
#include <immintrin.h>

EF_INLINE EF_TARGET_AVX2 float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

EF_INLINE EF_TARGET_AVX2 float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* exp as in nn-scalar.h: NaN propagates (min/max return their second operand on NaN). */
EF_INLINE EF_TARGET_AVX2 __m256 exp8(__m256 x) {
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(EF_NN_EXP_LO), _CMP_NLT_UQ);
  x = _mm256_max_ps(_mm256_set1_ps(EF_NN_EXP_LO), _mm256_min_ps(_mm256_set1_ps(EF_NN_EXP_HI), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EF_NN_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EF_NN_LN2_HI), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EF_NN_LN2_LO), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

/* erf(a)/a for u = a^2 (a < 1) and erfc(a) (a >= 1), both computed for every lane. */
EF_INLINE EF_TARGET_AVX2 __m256 erf_small8(__m256 u) {
  __m256 p = _mm256_set1_ps(ef_nn_erf_small_coef[EF_NN_ERF_SMALL_DEG]);
  for (int i = EF_NN_ERF_SMALL_DEG - 1; i >= 0; i--) p = _mm256_fmadd_ps(p, u, _mm256_set1_ps(ef_nn_erf_small_coef[i]));
  return p;
}

EF_INLINE EF_TARGET_AVX2 __m256 erfc_large8(__m256 a) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(a, _mm256_set1_ps(0.5f), one));
  __m256 q = _mm256_set1_ps(ef_nn_erfc_coef[EF_NN_ERFC_DEG]);
  for (int i = EF_NN_ERFC_DEG - 1; i >= 0; i--) q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(ef_nn_erfc_coef[i]));
  const __m256 neg_u = _mm256_xor_ps(_mm256_mul_ps(a, a), _mm256_set1_ps(-0.0f));
  return _mm256_mul_ps(exp8(neg_u), q);
}

EF_INLINE EF_TARGET_AVX2 __m256 gelu8(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f);
  const __m256 xs = _mm256_and_ps(x, sign);
  const __m256 a = _mm256_mul_ps(_mm256_andnot_ps(sign, x), _mm256_set1_ps(EF_NN_INV_SQRT2));
  const __m256 e = _mm256_mul_ps(a, erf_small8(_mm256_mul_ps(a, a)));
  const __m256 phi_small = _mm256_fmadd_ps(half, _mm256_xor_ps(e, xs), half);
  const __m256 h = _mm256_mul_ps(half, erfc_large8(a));
  const __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
  const __m256 phi_large = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), h), h, neg);
  const __m256 small = _mm256_cmp_ps(a, _mm256_set1_ps(1.0f), _CMP_LT_OQ);
  return _mm256_mul_ps(x, _mm256_blendv_ps(phi_large, phi_small, small));
}

EF_INLINE EF_TARGET_AVX2 __m256 erf8(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 a = _mm256_andnot_ps(sign, x);
  const __m256 small = _mm256_mul_ps(x, erf_small8(_mm256_mul_ps(a, a)));
  const __m256 large = _mm256_or_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), erfc_large8(a)), _mm256_and_ps(x, sign));
  return _mm256_blendv_ps(large, small, _mm256_cmp_ps(a, _mm256_set1_ps(1.0f), _CMP_LT_OQ));
}

static EF_TARGET_AVX2 void gelu(size_t n, const float* x, float* y) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, gelu8(_mm256_loadu_ps(x + i)));
  for (; i < n; i++) y[i] = ef_nn_gelu_scalar(x[i]);
}

static EF_TARGET_AVX2 void erf_(size_t n, const float* x, float* y) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, erf8(_mm256_loadu_ps(x + i)));
  for (; i < n; i++) y[i] = ef_nn_erf_scalar(x[i]);
}

EF_TARGET_AVX2 void ef_nn_layernorm_row__avx2(size_t n, const float* x, const float* res, const float* gamma,
                                         const float* beta, float eps, float* y) {
  __m256 acc = _mm256_setzero_ps();
  float sum = 0.0f;
  size_t i = 0;
  const float* s = x;
  if (res) {
    for (; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(res + i));
      _mm256_storeu_ps(y + i, v);
      acc = _mm256_add_ps(acc, v);
    }
    for (; i < n; i++) {
      y[i] = x[i] + res[i];
      sum += y[i];
    }
    s = y;
  } else {
    for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + i));
    for (; i < n; i++) sum += x[i];
  }
  const float mean = (hsum(acc) + sum) / (float)n;
  const __m256 vmean = _mm256_set1_ps(mean);
  acc = _mm256_setzero_ps();
  float sq = 0.0f;
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(s + i), vmean);
    acc = _mm256_fmadd_ps(d, d, acc);
  }
  for (; i < n; i++) sq += (s[i] - mean) * (s[i] - mean);
  const float inv = 1.0f / sqrtf((hsum(acc) + sq) / (float)n + eps);
  const __m256 vinv = _mm256_set1_ps(inv);
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(s + i), vmean), vinv);
    const __m256 b = beta ? _mm256_loadu_ps(beta + i) : _mm256_setzero_ps();
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(gamma + i), b));
  }
  for (; i < n; i++) y[i] = (s[i] - mean) * inv * gamma[i] + (beta ? beta[i] : 0.0f);
}

EF_TARGET_AVX2 void ef_nn_softmax_row__avx2(size_t n, const float* x, float scale, const float* mask, float* y) {
  const __m256 vs = _mm256_set1_ps(scale);
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  float mx = -INFINITY;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
    if (mask) v = _mm256_add_ps(v, _mm256_loadu_ps(mask + i));
    _mm256_storeu_ps(y + i, v);
    vmax = _mm256_max_ps(v, vmax);
  }
  for (; i < n; i++) {
    y[i] = mask ? x[i] * scale + mask[i] : x[i] * scale;
    mx = y[i] > mx ? y[i] : mx;
  }
  const float hm = hmax(vmax);
  mx = hm > mx ? hm : mx;
  if (mx == -INFINITY) mx = 0.0f;
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  float sum = 0.0f;
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(y + i), vm));
    _mm256_storeu_ps(y + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  for (; i < n; i++) {
    y[i] = ef_nn_exp_scalar(y[i] - mx);
    sum += y[i];
  }
  const float inv = 1.0f / (hsum(acc) + sum);
  const __m256 vinv = _mm256_set1_ps(inv);
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), vinv));
  for (; i < n; i++) y[i] *= inv;
}

/* 32 keys per pass (4 accumulators: independent FMA chains), then 8 at a time; ldk is a
 * multiple of 8 with zero columns past n, so the last block may compute a few ignored keys. */
EF_TARGET_AVX2 void ef_nn_qk_row__avx2(size_t n, size_t d, const float* q, const float* kt, size_t ldk, float* s) {
  size_t j = 0;
  for (; j + 32 <= n; j += 32) {
    /* two sets of 4 accumulators (even / odd c): 8 independent FMA chains */
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    const float* k = kt + j;
    size_t c = 0;
    for (; c + 2 <= d; c += 2, k += 2 * ldk) {
      const __m256 qc = _mm256_broadcast_ss(q + c), qd = _mm256_broadcast_ss(q + c + 1);
      a0 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k), a0);
      a1 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k + 8), a1);
      a2 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k + 16), a2);
      a3 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k + 24), a3);
      b0 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k + ldk), b0);
      b1 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k + ldk + 8), b1);
      b2 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k + ldk + 16), b2);
      b3 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k + ldk + 24), b3);
    }
    if (c < d) {
      const __m256 qc = _mm256_broadcast_ss(q + c);
      a0 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k), a0);
      a1 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k + 8), a1);
      a2 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k + 16), a2);
      a3 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k + 24), a3);
    }
    _mm256_storeu_ps(s + j, _mm256_add_ps(a0, b0));
    _mm256_storeu_ps(s + j + 8, _mm256_add_ps(a1, b1));
    _mm256_storeu_ps(s + j + 16, _mm256_add_ps(a2, b2));
    _mm256_storeu_ps(s + j + 24, _mm256_add_ps(a3, b3));
  }
  for (; j < n; j += 8) {
    __m256 a0 = _mm256_setzero_ps();
    const float* k = kt + j;
    for (size_t c = 0; c < d; c++, k += ldk) a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(q + c), _mm256_loadu_ps(k), a0);
    _mm256_storeu_ps(s + j, a0); /* s holds ldk floats */
  }
}

EF_TARGET_AVX2 void ef_nn_pv_row__avx2(size_t n, size_t d, const float* p, const float* v, size_t v_stride, float* out) {
  size_t c = 0;
  for (; c + 32 <= d; c += 32) {
    /* two sets of accumulators (even / odd j): 8 independent FMA chains */
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    size_t j = 0;
    for (; j + 2 <= n; j += 2) {
      const __m256 pj = _mm256_broadcast_ss(p + j), pk = _mm256_broadcast_ss(p + j + 1);
      const float* vj = v + j * v_stride + c;
      const float* vk = vj + v_stride;
      a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj), a0);
      a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8), a1);
      a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 16), a2);
      a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 24), a3);
      b0 = _mm256_fmadd_ps(pk, _mm256_loadu_ps(vk), b0);
      b1 = _mm256_fmadd_ps(pk, _mm256_loadu_ps(vk + 8), b1);
      b2 = _mm256_fmadd_ps(pk, _mm256_loadu_ps(vk + 16), b2);
      b3 = _mm256_fmadd_ps(pk, _mm256_loadu_ps(vk + 24), b3);
    }
    if (j < n) {
      const __m256 pj = _mm256_broadcast_ss(p + j);
      const float* vj = v + j * v_stride + c;
      a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj), a0);
      a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8), a1);
      a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 16), a2);
      a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 24), a3);
    }
    a0 = _mm256_add_ps(a0, b0), a1 = _mm256_add_ps(a1, b1), a2 = _mm256_add_ps(a2, b2), a3 = _mm256_add_ps(a3, b3);
    _mm256_storeu_ps(out + c, a0);
    _mm256_storeu_ps(out + c + 8, a1);
    _mm256_storeu_ps(out + c + 16, a2);
    _mm256_storeu_ps(out + c + 24, a3);
  }
  for (; c + 8 <= d; c += 8) {
    __m256 a0 = _mm256_setzero_ps();
    for (size_t j = 0; j < n; j++) a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), _mm256_loadu_ps(v + j * v_stride + c), a0);
    _mm256_storeu_ps(out + c, a0);
  }
  for (; c < d; c++) {
    float a = 0.0f;
    for (size_t j = 0; j < n; j++) a += p[j] * v[j * v_stride + c];
    out[c] = a;
  }
}

const ef_nn_config ef_nn_config_avx2 = {"avx2", ef_nn_layernorm_row__avx2, ef_nn_softmax_row__avx2, gelu, erf_,
                                      ef_nn_qk_row__avx2, ef_nn_pv_row__avx2};
#endif
