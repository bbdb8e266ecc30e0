/* AVX2 qs8-gemm kernels: MR x 16 output tiles, K consumed in int16 pairs.
 *
 * Why int16 pairs and vpmaddwd rather than vpmaddubsw: AVX2 without VNNI has no int8 dot
 * product that accumulates into int32. vpmaddubsw multiplies u8 x s8 and adds adjacent
 * pairs into int16 *with saturation*: with the usual "+128" offset on activations, two
 * products of 255 * -128 sum to -65280 and saturate, so results would be wrong exactly for
 * the extreme inputs the tests use (all -128/127). Splitting the weights into nibbles
 * avoids that but costs more instructions than it saves. Instead the activations are
 * widened to int16 once per call, the weights are sign-extended from int8 as they are
 * loaded (vpmovsxbw, so packed weights stay 1 byte each), and vpmaddwd multiplies int16
 * pairs into int32: |a*w + a*w| <= 2 * 128 * 128, which cannot overflow. Bit-exact for
 * every int8 input, 16 multiply-adds per vpmaddwd.
 *
 * Register tile: MR rows x 16 columns = 2*MR int32 accumulators (8 for MR=4), two weight
 * vectors, one broadcast activation pair per row. */
#include "qs8-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>
#include <math.h>

#include "qs8-gemm/avx2-epilogue.h"

EF_INLINE EF_TARGET_AVX2 void gemm_tile(const size_t MR, size_t nc, size_t kp, const int16_t* a, size_t a_stride,
                                        const int32_t* a_zp, const float* a_scale, const int32_t* a_rowsum,
                                        const uint8_t* block, void* c, size_t c_stride, const ef_qs8_gemm_params* p) {
  __m256i acc_lo[EF_QS8_MR_MAX], acc_hi[EF_QS8_MR_MAX]; /* columns 0-7 and 8-15 per row */
  for (size_t r = 0; r < MR; r++) acc_lo[r] = acc_hi[r] = _mm256_setzero_si256();

  const int8_t* w = (const int8_t*)(block + EF_QS8_BLOCK_HEADER_BYTES);
  for (size_t kk = 0; kk < kp; kk += 2) {
    const __m256i w_lo = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*)w));
    const __m256i w_hi = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*)(w + 16)));
    w += 2 * EF_QS8_NR;
    for (size_t r = 0; r < MR; r++) {
      /* (a[k], a[k+1]) as one int32, broadcast to every lane */
      const __m256i av = _mm256_set1_epi32(ef_load_i32(a + r * a_stride + kk));
      acc_lo[r] = _mm256_add_epi32(acc_lo[r], _mm256_madd_epi16(av, w_lo));
      acc_hi[r] = _mm256_add_epi32(acc_hi[r], _mm256_madd_epi16(av, w_hi));
    }
  }

  const size_t elem = p->out_int8 ? 1 : sizeof(float);
  int8_t q_tmp[16];
  for (size_t r = 0; r < MR; r++) {
    uint8_t* crow = (uint8_t*)c + r * c_stride * elem;
    ef_qs8_store_8__avx2(acc_lo[r], 0, nc, a_zp[r], a_scale[r], a_rowsum[r], block, crow, p, q_tmp);
    if (nc > 8) ef_qs8_store_8__avx2(acc_hi[r], 8, nc - 8, a_zp[r], a_scale[r], a_rowsum[r], block, crow + 8 * elem, p, q_tmp);
  }
}

#define DEFINE_KERNEL(MR)                                                                                         \
  static EF_TARGET_AVX2 void ef_qs8_qc8w_gemm_minmax_ukernel_##MR##x16c2__avx2(                                  \
      size_t mr, size_t nc, size_t kp, const void* a_, size_t a_stride, const int32_t* a_zp,                  \
      const float* a_scale, const int32_t* a_rowsum, const uint8_t* block, void* c, size_t c_stride,            \
      const ef_qs8_gemm_params* p) {                                                                              \
    gemm_tile(MR, nc, kp, (const int16_t*)a_, a_stride, a_zp, a_scale, a_rowsum, block, c, c_stride, p);         \
  }
DEFINE_KERNEL(1)
DEFINE_KERNEL(2)
DEFINE_KERNEL(3)
DEFINE_KERNEL(4)

EF_TARGET_AVX2 void ef_qd8_quantize_rows_asym__avx2(const float* x, size_t m, size_t k, int8_t* q, float* scale,
                                                    int32_t* zp) {
  for (size_t r = 0; r < m; r++) {
    const float* xr = x + r * k;
    /* min/max: max_ps/min_ps(v, acc) return acc for NaN, like the scalar compares; the
     * order of the reduction does not change a minimum (only the sign of a zero, which
     * gives the same scale and zero point). */
    __m256 vlo = _mm256_setzero_ps(), vhi = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= k; i += 8) {
      const __m256 v = _mm256_loadu_ps(xr + i);
      vlo = _mm256_min_ps(v, vlo);
      vhi = _mm256_max_ps(v, vhi);
    }
    float lo_l[8], hi_l[8];
    _mm256_storeu_ps(lo_l, vlo);
    _mm256_storeu_ps(hi_l, vhi);
    float lo = 0.0f, hi = 0.0f;
    for (int l = 0; l < 8; l++) {
      lo = lo_l[l] < lo ? lo_l[l] : lo;
      hi = hi_l[l] > hi ? hi_l[l] : hi;
    }
    for (; i < k; i++) {
      lo = xr[i] < lo ? xr[i] : lo;
      hi = xr[i] > hi ? xr[i] : hi;
    }
    const float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
    float z = nearbyintf(-128.0f - lo / s);
    z = z < -128.0f ? -128.0f : (z > 127.0f ? 127.0f : z);
    const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
    const __m256 qlo = _mm256_set1_ps(-128.0f), qhi = _mm256_set1_ps(127.0f);
    int8_t* qr = q + r * k;
    for (i = 0; i + 8 <= k; i += 8) {
      __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(xr + i), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, vz), qlo), qhi);
      const __m256i vi = _mm256_cvtps_epi32(v);
      const __m128i v16 = _mm_packs_epi32(_mm256_castsi256_si128(vi), _mm256_extracti128_si256(vi, 1));
      _mm_storel_epi64((__m128i*)(qr + i), _mm_packs_epi16(v16, v16));
    }
    for (; i < k; i++) {
      float v = nearbyintf(xr[i] / s) + z;
      v = v > -128.0f ? v : -128.0f;
      v = v < 127.0f ? v : 127.0f;
      qr[i] = (int8_t)v;
    }
    scale[r] = s;
    zp[r] = (int32_t)z;
  }
}

const ef_qs8_gemm_config ef_qs8_gemm_config_avx2 = {
    .isa = "avx2",
    .arch_flags = EF_ARCH_X86_AVX2,
    .mr = 4,
    .ukernel = {ef_qs8_qc8w_gemm_minmax_ukernel_1x16c2__avx2, ef_qs8_qc8w_gemm_minmax_ukernel_2x16c2__avx2,
                ef_qs8_qc8w_gemm_minmax_ukernel_3x16c2__avx2, ef_qs8_qc8w_gemm_minmax_ukernel_4x16c2__avx2},
};
#endif /* EF_ARCH_X86 */
