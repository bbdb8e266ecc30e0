/* Quantized residual add (qadd.h): scalar reference, AVX2 (8 elements per step) and NEON
 * (16 per step). */
#include "conv/qadd.h"

#include <math.h>

EF_INLINE int8_t qadd_one(int8_t a, int8_t b, const ef_qadd_params* p) {
  const float fa = ((float)a - (float)p->a_zp) * p->a_scale;
  const float fb = ((float)b - (float)p->b_zp) * p->b_scale;
  const float lo = (float)(-128 - p->out_zp), hi = (float)(127 - p->out_zp);
  float t = (fa + fb) * p->out_inv_scale;
  t = t > lo ? t : lo;
  t = t < hi ? t : hi;
  return (int8_t)((int32_t)nearbyintf(t) + p->out_zp);
}

void ef_qadd_qs8__scalar(size_t n, const int8_t* a, const int8_t* b, int8_t* y, const ef_qadd_params* p) {
  for (size_t i = 0; i < n; i++) y[i] = qadd_one(a[i], b[i], p);
}

#if EF_ARCH_X86
#include <immintrin.h>

#include "requant-avx2.h"

EF_TARGET_AVX2 void ef_qadd_qs8__avx2(size_t n, const int8_t* a, const int8_t* b, int8_t* y, const ef_qadd_params* p) {
  const __m256 za = _mm256_set1_ps((float)p->a_zp), zb = _mm256_set1_ps((float)p->b_zp);
  const __m256 sa = _mm256_set1_ps(p->a_scale), sb = _mm256_set1_ps(p->b_scale);
  const ef_requant8 r = ef_requant8_init__avx2(p->out_inv_scale, p->out_zp);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 fa = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(a + i))));
    const __m256 fb = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(b + i))));
    const __m256 s = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(fa, za), sa), _mm256_mul_ps(_mm256_sub_ps(fb, zb), sb));
    _mm_storel_epi64((__m128i*)(y + i), ef_requant_8__avx2(s, &r));
  }
  for (; i < n; i++) y[i] = qadd_one(a[i], b[i], p);
}
#endif

#if EF_ARCH_ARM64
#include <arm_neon.h>

/* Four lanes of the definition: the same float operations in the same order (separate
 * multiply and add: the build's -ffp-contract=off keeps GCC from fusing these intrinsics,
 * which it expands as plain C operators). The clamps are compare + select rather than
 * vmaxq/vminq, which return NaN for a NaN input where the definition gives the low bound. */
EF_INLINE int32x4_t qadd_4__neon(int16x4_t a, int16x4_t b, float32x4_t za, float32x4_t sa, float32x4_t zb,
                                 float32x4_t sb, float32x4_t inv, float32x4_t lo, float32x4_t hi) {
  const float32x4_t fa = vmulq_f32(vsubq_f32(vcvtq_f32_s32(vmovl_s16(a)), za), sa);
  const float32x4_t fb = vmulq_f32(vsubq_f32(vcvtq_f32_s32(vmovl_s16(b)), zb), sb);
  float32x4_t t = vmulq_f32(vaddq_f32(fa, fb), inv);
  t = vbslq_f32(vcgtq_f32(t, lo), t, lo); /* t > lo ? t : lo (false for NaN) */
  t = vbslq_f32(vcltq_f32(t, hi), t, hi);
  return vcvtnq_s32_f32(t); /* round to nearest, ties to even, as nearbyintf in the default mode */
}

void ef_qadd_qs8__neon(size_t n, const int8_t* a, const int8_t* b, int8_t* y, const ef_qadd_params* p) {
  const float32x4_t za = vdupq_n_f32((float)p->a_zp), zb = vdupq_n_f32((float)p->b_zp);
  const float32x4_t sa = vdupq_n_f32(p->a_scale), sb = vdupq_n_f32(p->b_scale);
  const float32x4_t inv = vdupq_n_f32(p->out_inv_scale);
  const float32x4_t lo = vdupq_n_f32((float)(-128 - p->out_zp)), hi = vdupq_n_f32((float)(127 - p->out_zp));
  const int32x4_t zo = vdupq_n_s32(p->out_zp);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const int8x16_t va = vld1q_s8(a + i), vb = vld1q_s8(b + i);
    const int16x8_t a_lo = vmovl_s8(vget_low_s8(va)), a_hi = vmovl_high_s8(va);
    const int16x8_t b_lo = vmovl_s8(vget_low_s8(vb)), b_hi = vmovl_high_s8(vb);
    /* After the clamp, q + out_zp lies in [-128, 127], so the narrowing moves lose nothing. */
    const int32x4_t q0 = vaddq_s32(qadd_4__neon(vget_low_s16(a_lo), vget_low_s16(b_lo), za, sa, zb, sb, inv, lo, hi), zo);
    const int32x4_t q1 = vaddq_s32(qadd_4__neon(vget_high_s16(a_lo), vget_high_s16(b_lo), za, sa, zb, sb, inv, lo, hi), zo);
    const int32x4_t q2 = vaddq_s32(qadd_4__neon(vget_low_s16(a_hi), vget_low_s16(b_hi), za, sa, zb, sb, inv, lo, hi), zo);
    const int32x4_t q3 = vaddq_s32(qadd_4__neon(vget_high_s16(a_hi), vget_high_s16(b_hi), za, sa, zb, sb, inv, lo, hi), zo);
    const int16x8_t h0 = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1)), h1 = vcombine_s16(vmovn_s32(q2), vmovn_s32(q3));
    vst1q_s8(y + i, vcombine_s8(vmovn_s16(h0), vmovn_s16(h1)));
  }
  for (; i < n; i++) y[i] = qadd_one(a[i], b[i], p);
}
#endif

void ef_qadd_qs8(size_t n, const int8_t* a, const int8_t* b, int8_t* y, const ef_qadd_params* p) {
#if EF_ARCH_X86
  if (ef_arch_flags() & EF_ARCH_X86_AVX2) {
    ef_qadd_qs8__avx2(n, a, b, y, p);
    return;
  }
#endif
#if EF_ARCH_ARM64
  if (ef_arch_flags() & EF_ARCH_ARM_NEON) {
    ef_qadd_qs8__neon(n, a, b, y, p);
    return;
  }
#endif
  ef_qadd_qs8__scalar(n, a, b, y, p);
}
