/* AVX-512 VNNI bsr-gemm kernels: MR x 16 tiles, one 16 x 4 block = one zmm = one vpdpbusd per
 * row. Same arithmetic as avxvnni.c (uint8 a + 128, corrected by 128 * colsum), with a
 * 16-wide epilogue (one zmm per row, masked stores, vpmovsdb for int8 out) bit-exact with the
 * scalar definition in qs8-gemm.h. */
#include "bsr-gemm/bsr-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

EF_INLINE EF_TARGET_AVX512 void bsr_tile(const size_t MR, size_t nc, size_t nb, const uint32_t* kofs,
                                         const int8_t* w, const uint8_t* a, size_t a_stride, const int32_t* a_zp,
                                         const float* a_scale, const int32_t* a_rowsum, const uint8_t* header,
                                         void* c, size_t c_stride, const ef_qs8_gemm_params* p) {
  __m512i accs[EF_BSR_MR_MAX];
  for (size_t r = 0; r < MR; r++) accs[r] = _mm512_setzero_si512();
  for (size_t b = 0; b < nb; b++, w += EF_BSR_BLOCK_BYTES) {
    const size_t k0 = kofs[b];
    const __m512i wv = _mm512_load_si512((const void*)w);
    for (size_t r = 0; r < MR; r++)
      accs[r] = _mm512_dpbusd_epi32(accs[r], _mm512_set1_epi32(ef_load_i32(a + r * a_stride + k0)), wv);
  }
  /* Epilogue, 16 channels at once, the operation sequence of ef_qs8_dequant / ef_qs8_requant:
   *   acc = raw - (128 + a_zp) * colsum - w_zp * rowsum + K * a_zp * w_zp    (wrapping int32)
   *   y = clamp((float)acc * (a_scale * w_scale) + bias), then fp32 or requantized int8 out. */
  const __mmask16 cols = (__mmask16)((1u << nc) - 1u);
  const __m512i colsum = _mm512_load_si512((const void*)header);
  const __m512i w_zp = _mm512_load_si512((const void*)(header + 64));
  const __m512 w_scale = _mm512_load_ps((const void*)(header + 128));
  const __m512 bias = _mm512_load_ps((const void*)(header + 192));
  const int has_zp = _mm512_test_epi32_mask(w_zp, w_zp) != 0;
  const __m512 lo = _mm512_set1_ps(p->out_min), hi = _mm512_set1_ps(p->out_max);
  for (size_t r = 0; r < MR; r++) {
    __m512i acc = _mm512_sub_epi32(accs[r], _mm512_mullo_epi32(_mm512_set1_epi32(128 + a_zp[r]), colsum));
    if (has_zp) {
      const int32_t zterm = (int32_t)((uint32_t)a_rowsum[r] - (uint32_t)p->k * (uint32_t)a_zp[r]);
      acc = _mm512_sub_epi32(acc, _mm512_mullo_epi32(w_zp, _mm512_set1_epi32(zterm)));
    }
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(_mm512_set1_ps(a_scale[r]), w_scale));
    y = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(y, bias), lo), hi);
    if (!p->out_int8) {
      _mm512_mask_storeu_ps((float*)c + r * c_stride, cols, y);
      continue;
    }
    __m512 t = _mm512_mul_ps(y, _mm512_set1_ps(p->out_inv_scale));
    t = _mm512_max_ps(t, _mm512_set1_ps((float)(-128 - p->out_zp)));
    t = _mm512_min_ps(t, _mm512_set1_ps((float)(127 - p->out_zp)));
    const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(t), _mm512_set1_epi32(p->out_zp));
    _mm512_mask_cvtsepi32_storeu_epi8((int8_t*)c + r * c_stride, cols, q);
  }
}

#define DEFINE_KERNEL(MR)                                                                                          \
  static EF_TARGET_AVX512 void ef_qs8_qc8w_bsrgemm_minmax_ukernel_##MR##x16c4__avx512vnni(                       \
      size_t mr, size_t nc, size_t nb, const uint32_t* kofs, const int8_t* w, const void* a, size_t a_stride,      \
      const int32_t* a_zp, const float* a_scale, const int32_t* a_rowsum, const uint8_t* header, void* c,          \
      size_t c_stride, const ef_qs8_gemm_params* p) {                                                               \
    bsr_tile(MR, nc, nb, kofs, w, (const uint8_t*)a, a_stride, a_zp, a_scale, a_rowsum, header, c, c_stride, p); \
  }
DEFINE_KERNEL(1)
DEFINE_KERNEL(2)
DEFINE_KERNEL(3)
DEFINE_KERNEL(4)

const ef_bsr_config ef_bsr_config_avx512 = {
    .isa = "avx512",
    .arch_flags = EF_ARCH_X86_AVX2 | EF_ARCH_X86_AVX512,
    .mr = 4,
    .a_u8 = 1,
    .ukernel = {ef_qs8_qc8w_bsrgemm_minmax_ukernel_1x16c4__avx512vnni,
                ef_qs8_qc8w_bsrgemm_minmax_ukernel_2x16c4__avx512vnni,
                ef_qs8_qc8w_bsrgemm_minmax_ukernel_3x16c4__avx512vnni,
                ef_qs8_qc8w_bsrgemm_minmax_ukernel_4x16c4__avx512vnni},
};
#endif /* EF_ARCH_X86 */
