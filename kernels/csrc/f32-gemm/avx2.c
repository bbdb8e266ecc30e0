/* AVX2+FMA f32-gemm kernels: MR x 16 tiles, 2*MR accumulators, one broadcast per row and
 * two weight loads per k. Up to 6 rows: 12 accumulators keep both FMA units busy through
 * their 4-cycle latency (8 only just do), and 12 + 2 weights + 1 broadcast fit the 16 ymm
 * registers. */
#include "f32-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

/* nseg segments of seglen K steps (f32-gemm.h): dense is one segment at column 0 (kofs NULL),
 * bsr one 4-step segment per block. */
EF_INLINE EF_TARGET_AVX2 void f32_tile(const size_t MR, size_t nc, size_t nseg, const size_t seglen,
                                       const uint32_t* kofs, const float* x, size_t x_stride, const float* w,
                                       const float* bias, float* c, size_t c_stride, float lo, float hi) {
  __m256 acc0[EF_F32_MR_MAX], acc1[EF_F32_MR_MAX];
  for (size_t r = 0; r < MR; r++) acc0[r] = acc1[r] = _mm256_setzero_ps();
  for (size_t s = 0; s < nseg; s++) {
    const float* xs = kofs ? x + kofs[s] : x;
    for (size_t kk = 0; kk < seglen; kk++) {
      const __m256 w0 = _mm256_load_ps(w), w1 = _mm256_load_ps(w + 8);
      w += EF_F32_NR;
      for (size_t r = 0; r < MR; r++) {
        const __m256 xv = _mm256_broadcast_ss(xs + r * x_stride + kk);
        acc0[r] = _mm256_fmadd_ps(xv, w0, acc0[r]);
        acc1[r] = _mm256_fmadd_ps(xv, w1, acc1[r]);
      }
    }
  }
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  const __m256 b0 = _mm256_load_ps(bias), b1 = _mm256_load_ps(bias + 8);
  for (size_t r = 0; r < MR; r++) {
    const __m256 y0 = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(acc0[r], b0), vlo), vhi);
    const __m256 y1 = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(acc1[r], b1), vlo), vhi);
    float* cr = c + r * c_stride;
    if (nc == EF_F32_NR) {
      _mm256_storeu_ps(cr, y0);
      _mm256_storeu_ps(cr + 8, y1);
    } else {
      float tmp[EF_F32_NR];
      _mm256_storeu_ps(tmp, y0);
      _mm256_storeu_ps(tmp + 8, y1);
      memcpy(cr, tmp, nc * sizeof(float));
    }
  }
}

#define DEFINE_KERNEL(MR)                                                                                     \
  static EF_TARGET_AVX2 void ef_f32_gemm_minmax_ukernel_##MR##x16__avx2(                                      \
      size_t mr, size_t nc, size_t k, const float* x, size_t x_stride, const float* block, float* c,          \
      size_t c_stride, float lo, float hi) {                                                                  \
    f32_tile(MR, nc, 1, k, NULL, x, x_stride, block + EF_F32_NR, block, c, c_stride, lo, hi);                 \
  }                                                                                                           \
  static EF_TARGET_AVX2 void ef_f32_bsr_minmax_ukernel_##MR##x16__avx2(                                       \
      size_t mr, size_t nc, size_t nb, const uint32_t* kofs, const float* x, size_t x_stride, const float* w, \
      const float* bias, float* c, size_t c_stride, float lo, float hi) {                                     \
    f32_tile(MR, nc, nb, EF_F32_BSR_KB, kofs, x, x_stride, w, bias, c, c_stride, lo, hi);                     \
  }
DEFINE_KERNEL(1)
DEFINE_KERNEL(2)
DEFINE_KERNEL(3)
DEFINE_KERNEL(4)
DEFINE_KERNEL(5)
DEFINE_KERNEL(6)

const ef_f32_gemm_config ef_f32_gemm_config_avx2 = {
    .isa = "avx2",
    .mr = 6,
    .ukernel = {ef_f32_gemm_minmax_ukernel_1x16__avx2, ef_f32_gemm_minmax_ukernel_2x16__avx2,
                ef_f32_gemm_minmax_ukernel_3x16__avx2, ef_f32_gemm_minmax_ukernel_4x16__avx2,
                ef_f32_gemm_minmax_ukernel_5x16__avx2, ef_f32_gemm_minmax_ukernel_6x16__avx2},
    .bsr = {ef_f32_bsr_minmax_ukernel_1x16__avx2, ef_f32_bsr_minmax_ukernel_2x16__avx2,
            ef_f32_bsr_minmax_ukernel_3x16__avx2, ef_f32_bsr_minmax_ukernel_4x16__avx2,
            ef_f32_bsr_minmax_ukernel_5x16__avx2, ef_f32_bsr_minmax_ukernel_6x16__avx2},
};
#endif
