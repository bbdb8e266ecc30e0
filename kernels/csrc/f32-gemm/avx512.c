/* AVX-512 f32-gemm kernels, dense and 16 x 4 block-sparse: MR x 16 tiles on the same packed
 * blocks as AVX2, one 16-wide weight load and MR broadcasts per k, MR accumulators (up to 8:
 * enough to cover the FMA latency on both units). Twice the multiply-adds per instruction of
 * the AVX2 kernels. */
#include "f32-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

/* nseg segments of seglen K steps (f32-gemm.h): dense is one segment at column 0 (kofs NULL),
 * bsr one 4-step segment per block. Constants after inlining, so each form compiles alone. */
EF_INLINE EF_TARGET_AVX512 void f32_tile16(const size_t MR, size_t nc, size_t nseg, const size_t seglen,
                                           const uint32_t* kofs, const float* x, size_t x_stride, const float* w,
                                           const float* bias_p, float* c, size_t c_stride, float lo, float hi) {
  __m512 acc[EF_F32_MR_MAX];
  for (size_t r = 0; r < MR; r++) acc[r] = _mm512_setzero_ps();
  for (size_t s = 0; s < nseg; s++) {
    const float* xs = kofs ? x + kofs[s] : x;
    for (size_t kk = 0; kk < seglen; kk++, w += EF_F32_NR) {
      const __m512 wv = _mm512_load_ps(w);
      for (size_t r = 0; r < MR; r++) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(xs[r * x_stride + kk]), wv, acc[r]);
    }
  }
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi), bias = _mm512_load_ps(bias_p);
  const __mmask16 mask = (__mmask16)((1u << nc) - 1u);
  for (size_t r = 0; r < MR; r++) {
    const __m512 y = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(acc[r], bias), vlo), vhi);
    if (nc == EF_F32_NR) _mm512_storeu_ps(c + r * c_stride, y);
    else _mm512_mask_storeu_ps(c + r * c_stride, mask, y);
  }
}

#define DEFINE_KERNEL(MR)                                                                                     \
  static EF_TARGET_AVX512 void ef_f32_gemm_minmax_ukernel_##MR##x16__avx512f(                                 \
      size_t mr, size_t nc, size_t k, const float* x, size_t x_stride, const float* block, float* c,          \
      size_t c_stride, float lo, float hi) {                                                                  \
    f32_tile16(MR, nc, 1, k, NULL, x, x_stride, block + EF_F32_NR, block, c, c_stride, lo, hi);               \
  }                                                                                                           \
  static EF_TARGET_AVX512 void ef_f32_bsr_minmax_ukernel_##MR##x16__avx512f(                                  \
      size_t mr, size_t nc, size_t nb, const uint32_t* kofs, const float* x, size_t x_stride, const float* w, \
      const float* bias, float* c, size_t c_stride, float lo, float hi) {                                     \
    f32_tile16(MR, nc, nb, EF_F32_BSR_KB, kofs, x, x_stride, w, bias, c, c_stride, lo, hi);                   \
  }
DEFINE_KERNEL(1)
DEFINE_KERNEL(2)
DEFINE_KERNEL(3)
DEFINE_KERNEL(4)
DEFINE_KERNEL(5)
DEFINE_KERNEL(6)
DEFINE_KERNEL(7)
DEFINE_KERNEL(8)

const ef_f32_gemm_config ef_f32_gemm_config_avx512 = {
    .isa = "avx512",
    .mr = 8,
    .ukernel = {ef_f32_gemm_minmax_ukernel_1x16__avx512f, ef_f32_gemm_minmax_ukernel_2x16__avx512f,
                ef_f32_gemm_minmax_ukernel_3x16__avx512f, ef_f32_gemm_minmax_ukernel_4x16__avx512f,
                ef_f32_gemm_minmax_ukernel_5x16__avx512f, ef_f32_gemm_minmax_ukernel_6x16__avx512f,
                ef_f32_gemm_minmax_ukernel_7x16__avx512f, ef_f32_gemm_minmax_ukernel_8x16__avx512f},
    .bsr = {ef_f32_bsr_minmax_ukernel_1x16__avx512f, ef_f32_bsr_minmax_ukernel_2x16__avx512f,
            ef_f32_bsr_minmax_ukernel_3x16__avx512f, ef_f32_bsr_minmax_ukernel_4x16__avx512f,
            ef_f32_bsr_minmax_ukernel_5x16__avx512f, ef_f32_bsr_minmax_ukernel_6x16__avx512f,
            ef_f32_bsr_minmax_ukernel_7x16__avx512f, ef_f32_bsr_minmax_ukernel_8x16__avx512f},
};
#endif
