/* nn NEON kernels (aarch64 baseline): 4 floats per step, scalar tails with the shared formulas. */
#include "nn/nn-scalar.h"

#if EF_ARCH_ARM64
#include <arm_neon.h>

/* exp as in nn-scalar.h. vmaxq/vminq propagate NaN. */
EF_INLINE float32x4_t exp4(float32x4_t x) {
  const uint32x4_t drop = vcltq_f32(x, vdupq_n_f32(EF_NN_EXP_LO));
  x = vmaxq_f32(vminq_f32(x, vdupq_n_f32(EF_NN_EXP_HI)), vdupq_n_f32(EF_NN_EXP_LO));
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(EF_NN_LOG2E)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(EF_NN_LN2_HI));
  r = vfmsq_f32(r, n, vdupq_n_f32(EF_NN_LN2_LO));
  float32x4_t p = vdupq_n_f32(1.0f / 5040.0f);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 720.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 120.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 24.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 6.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  const float32x4_t y = vmulq_f32(p, vreinterpretq_f32_s32(e));
  return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(y), drop));
}

EF_INLINE float32x4_t erf_small4(float32x4_t u) {
  float32x4_t p = vdupq_n_f32(ef_nn_erf_small_coef[EF_NN_ERF_SMALL_DEG]);
  for (int i = EF_NN_ERF_SMALL_DEG - 1; i >= 0; i--) p = vfmaq_f32(vdupq_n_f32(ef_nn_erf_small_coef[i]), p, u);
  return p;
}

EF_INLINE float32x4_t erfc_large4(float32x4_t a) {
  const float32x4_t one = vdupq_n_f32(1.0f);
  const float32x4_t t = vdivq_f32(one, vfmaq_f32(one, a, vdupq_n_f32(0.5f)));
  float32x4_t q = vdupq_n_f32(ef_nn_erfc_coef[EF_NN_ERFC_DEG]);
  for (int i = EF_NN_ERFC_DEG - 1; i >= 0; i--) q = vfmaq_f32(vdupq_n_f32(ef_nn_erfc_coef[i]), q, t);
  return vmulq_f32(exp4(vnegq_f32(vmulq_f32(a, a))), q);
}

EF_INLINE float32x4_t gelu4(float32x4_t x) {
  const float32x4_t half = vdupq_n_f32(0.5f);
  const uint32x4_t neg = vcltq_f32(x, vdupq_n_f32(0.0f));
  const float32x4_t a = vmulq_f32(vabsq_f32(x), vdupq_n_f32(EF_NN_INV_SQRT2));
  const float32x4_t e = vmulq_f32(a, erf_small4(vmulq_f32(a, a)));
  const float32x4_t phi_small = vfmaq_f32(half, half, vbslq_f32(neg, vnegq_f32(e), e));
  const float32x4_t h = vmulq_f32(half, erfc_large4(a));
  const float32x4_t phi_large = vbslq_f32(neg, h, vsubq_f32(vdupq_n_f32(1.0f), h));
  const uint32x4_t small = vcltq_f32(a, vdupq_n_f32(1.0f));
  return vmulq_f32(x, vbslq_f32(small, phi_small, phi_large));
}

EF_INLINE float32x4_t erf4(float32x4_t x) {
  const float32x4_t a = vabsq_f32(x);
  const float32x4_t small = vmulq_f32(x, erf_small4(vmulq_f32(a, a)));
  const float32x4_t e = vsubq_f32(vdupq_n_f32(1.0f), erfc_large4(a));
  const float32x4_t large = vbslq_f32(vcltq_f32(x, vdupq_n_f32(0.0f)), vnegq_f32(e), e);
  return vbslq_f32(vcltq_f32(a, vdupq_n_f32(1.0f)), small, large);
}

static void gelu(size_t n, const float* x, float* y) {
  size_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, gelu4(vld1q_f32(x + i)));
  for (; i < n; i++) y[i] = ef_nn_gelu_scalar(x[i]);
}

static void erf_(size_t n, const float* x, float* y) {
  size_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, erf4(vld1q_f32(x + i)));
  for (; i < n; i++) y[i] = ef_nn_erf_scalar(x[i]);
}

static void layernorm_row(size_t n, const float* x, const float* res, const float* gamma, const float* beta, float eps,
                          float* y) {
  float32x4_t acc = vdupq_n_f32(0.0f);
  float sum = 0.0f;
  size_t i = 0;
  const float* s = x;
  if (res) {
    for (; i + 4 <= n; i += 4) {
      const float32x4_t v = vaddq_f32(vld1q_f32(x + i), vld1q_f32(res + i));
      vst1q_f32(y + i, v);
      acc = vaddq_f32(acc, v);
    }
    for (; i < n; i++) {
      y[i] = x[i] + res[i];
      sum += y[i];
    }
    s = y;
  } else {
    for (; i + 4 <= n; i += 4) acc = vaddq_f32(acc, vld1q_f32(x + i));
    for (; i < n; i++) sum += x[i];
  }
  const float mean = (vaddvq_f32(acc) + sum) / (float)n;
  const float32x4_t vmean = vdupq_n_f32(mean);
  acc = vdupq_n_f32(0.0f);
  float sq = 0.0f;
  for (i = 0; i + 4 <= n; i += 4) {
    const float32x4_t d = vsubq_f32(vld1q_f32(s + i), vmean);
    acc = vfmaq_f32(acc, d, d);
  }
  for (; i < n; i++) sq += (s[i] - mean) * (s[i] - mean);
  const float inv = 1.0f / sqrtf((vaddvq_f32(acc) + sq) / (float)n + eps);
  const float32x4_t vinv = vdupq_n_f32(inv);
  for (i = 0; i + 4 <= n; i += 4) {
    const float32x4_t d = vmulq_f32(vsubq_f32(vld1q_f32(s + i), vmean), vinv);
    const float32x4_t b = beta ? vld1q_f32(beta + i) : vdupq_n_f32(0.0f);
    vst1q_f32(y + i, vfmaq_f32(b, d, vld1q_f32(gamma + i)));
  }
  for (; i < n; i++) y[i] = (s[i] - mean) * inv * gamma[i] + (beta ? beta[i] : 0.0f);
}

static void softmax_row(size_t n, const float* x, float scale, const float* mask, float* y) {
  const float32x4_t vs = vdupq_n_f32(scale);
  float32x4_t vmax = vdupq_n_f32(-INFINITY);
  float mx = -INFINITY;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    float32x4_t v = vmulq_f32(vld1q_f32(x + i), vs);
    if (mask) v = vaddq_f32(v, vld1q_f32(mask + i));
    vst1q_f32(y + i, v);
    vmax = vmaxq_f32(vmax, v);
  }
  for (; i < n; i++) {
    y[i] = mask ? x[i] * scale + mask[i] : x[i] * scale;
    mx = y[i] > mx ? y[i] : mx;
  }
  const float hm = vmaxvq_f32(vmax);
  mx = hm > mx ? hm : mx;
  if (hm != hm) mx = hm;
  if (mx == -INFINITY) mx = 0.0f;
  const float32x4_t vm = vdupq_n_f32(mx);
  float32x4_t acc = vdupq_n_f32(0.0f);
  float sum = 0.0f;
  for (i = 0; i + 4 <= n; i += 4) {
    const float32x4_t e = exp4(vsubq_f32(vld1q_f32(y + i), vm));
    vst1q_f32(y + i, e);
    acc = vaddq_f32(acc, e);
  }
  for (; i < n; i++) {
    y[i] = ef_nn_exp_scalar(y[i] - mx);
    sum += y[i];
  }
  const float inv = 1.0f / (vaddvq_f32(acc) + sum);
  for (i = 0; i + 4 <= n; i += 4) vst1q_f32(y + i, vmulq_f32(vld1q_f32(y + i), vdupq_n_f32(inv)));
  for (; i < n; i++) y[i] *= inv;
}

static void qk_row(size_t n, size_t d, const float* q, const float* kt, size_t ldk, float* s) {
  size_t j = 0;
  for (; j + 16 <= n; j += 16) {
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    const float* k = kt + j;
    for (size_t c = 0; c < d; c++, k += ldk) {
      a0 = vfmaq_n_f32(a0, vld1q_f32(k), q[c]);
      a1 = vfmaq_n_f32(a1, vld1q_f32(k + 4), q[c]);
      a2 = vfmaq_n_f32(a2, vld1q_f32(k + 8), q[c]);
      a3 = vfmaq_n_f32(a3, vld1q_f32(k + 12), q[c]);
    }
    vst1q_f32(s + j, a0);
    vst1q_f32(s + j + 4, a1);
    vst1q_f32(s + j + 8, a2);
    vst1q_f32(s + j + 12, a3);
  }
  for (; j < n; j += 4) {
    float32x4_t a0 = vdupq_n_f32(0.0f);
    const float* k = kt + j;
    for (size_t c = 0; c < d; c++, k += ldk) a0 = vfmaq_n_f32(a0, vld1q_f32(k), q[c]);
    vst1q_f32(s + j, a0); /* ldk is a multiple of 8: in bounds */
  }
}

static void pv_row(size_t n, size_t d, const float* p, const float* v, size_t v_stride, float* out) {
  size_t c = 0;
  for (; c + 16 <= d; c += 16) {
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    for (size_t j = 0; j < n; j++) {
      const float* vj = v + j * v_stride + c;
      a0 = vfmaq_n_f32(a0, vld1q_f32(vj), p[j]);
      a1 = vfmaq_n_f32(a1, vld1q_f32(vj + 4), p[j]);
      a2 = vfmaq_n_f32(a2, vld1q_f32(vj + 8), p[j]);
      a3 = vfmaq_n_f32(a3, vld1q_f32(vj + 12), p[j]);
    }
    vst1q_f32(out + c, a0);
    vst1q_f32(out + c + 4, a1);
    vst1q_f32(out + c + 8, a2);
    vst1q_f32(out + c + 12, a3);
  }
  for (; c + 4 <= d; c += 4) {
    float32x4_t a0 = vdupq_n_f32(0.0f);
    for (size_t j = 0; j < n; j++) a0 = vfmaq_n_f32(a0, vld1q_f32(v + j * v_stride + c), p[j]);
    vst1q_f32(out + c, a0);
  }
  for (; c < d; c++) {
    float a = 0.0f;
    for (size_t j = 0; j < n; j++) a += p[j] * v[j * v_stride + c];
    out[c] = a;
  }
}

const ef_nn_config ef_nn_config_neon = {"neon", layernorm_row, softmax_row, gelu, erf_, qk_row, pv_row};
#endif
