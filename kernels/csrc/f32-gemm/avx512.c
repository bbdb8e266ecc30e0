/* AVX-512 f32-gemm kernels, dense and 16 x 4 block-sparse: MR x 16 tiles on the same packed
 * blocks as AVX2, one 16-wide weight load and MR broadcasts per k, MR accumulators (up to 8:
 * enough to cover the FMA latency on both units). Twice the multiply-adds per instruction of
 * the AVX2 kernels. Dense GEMMs take MR x 32 tiles over block pairs where they can (the wide
 * tile, f32-gemm.h), with MR up to 12. */
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

/* MR x 32 over two adjacent dense blocks (f32-gemm.h, the wide tile): 2 * MR accumulators
 * (24 at MR = 12, plus the two weight vectors and a broadcast: 27 of 32 registers). */
EF_INLINE EF_TARGET_AVX512 void f32_tile32(const size_t MR, size_t nc, size_t k, const float* x, size_t x_stride,
                                           const float* block, size_t block_floats, float* c, size_t c_stride,
                                           float lo, float hi) {
  __m512 a[EF_F32_WIDE_MR_MAX], b[EF_F32_WIDE_MR_MAX];
  for (size_t r = 0; r < MR; r++) a[r] = b[r] = _mm512_setzero_ps();
  const float* w0 = block + EF_F32_NR;
  const float* w1 = block + block_floats + EF_F32_NR;
  for (size_t kk = 0; kk < k; kk++, w0 += EF_F32_NR, w1 += EF_F32_NR) {
    const __m512 v0 = _mm512_load_ps(w0), v1 = _mm512_load_ps(w1);
    _mm_prefetch((const char*)(w0 + 16 * 32), _MM_HINT_T0);
    _mm_prefetch((const char*)(w1 + 16 * 32), _MM_HINT_T0);
    for (size_t r = 0; r < MR; r++) {
      const __m512 xv = _mm512_set1_ps(x[r * x_stride + kk]);
      a[r] = _mm512_fmadd_ps(xv, v0, a[r]);
      b[r] = _mm512_fmadd_ps(xv, v1, b[r]);
    }
  }
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  const __m512 bias0 = _mm512_load_ps(block), bias1 = _mm512_load_ps(block + block_floats);
  const __mmask16 mask = (__mmask16)((1u << (nc - EF_F32_NR)) - 1u); /* nc in 17..32 */
  for (size_t r = 0; r < MR; r++) {
    _mm512_storeu_ps(c + r * c_stride, _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(a[r], bias0), vlo), vhi));
    const __m512 y = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(b[r], bias1), vlo), vhi);
    if (nc == 2 * EF_F32_NR) _mm512_storeu_ps(c + r * c_stride + EF_F32_NR, y);
    else _mm512_mask_storeu_ps(c + r * c_stride + EF_F32_NR, mask, y);
  }
}

#define DEFINE_WIDE_KERNEL(MR)                                                                                 \
  static EF_TARGET_AVX512 void ef_f32_gemm_minmax_ukernel_##MR##x32__avx512f(                                  \
      size_t mr, size_t nc, size_t k, const float* x, size_t x_stride, const float* block, size_t block_floats, \
      float* c, size_t c_stride, float lo, float hi) {                                                         \
    f32_tile32(MR, nc, k, x, x_stride, block, block_floats, c, c_stride, lo, hi);                              \
  }
DEFINE_WIDE_KERNEL(1)
DEFINE_WIDE_KERNEL(2)
DEFINE_WIDE_KERNEL(3)
DEFINE_WIDE_KERNEL(4)
DEFINE_WIDE_KERNEL(5)
DEFINE_WIDE_KERNEL(6)
DEFINE_WIDE_KERNEL(7)
DEFINE_WIDE_KERNEL(8)
DEFINE_WIDE_KERNEL(9)
DEFINE_WIDE_KERNEL(10)
DEFINE_WIDE_KERNEL(11)
DEFINE_WIDE_KERNEL(12)

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
    .mr_wide = 12,
    .wide = {ef_f32_gemm_minmax_ukernel_1x32__avx512f, ef_f32_gemm_minmax_ukernel_2x32__avx512f,
             ef_f32_gemm_minmax_ukernel_3x32__avx512f, ef_f32_gemm_minmax_ukernel_4x32__avx512f,
             ef_f32_gemm_minmax_ukernel_5x32__avx512f, ef_f32_gemm_minmax_ukernel_6x32__avx512f,
             ef_f32_gemm_minmax_ukernel_7x32__avx512f, ef_f32_gemm_minmax_ukernel_8x32__avx512f,
             ef_f32_gemm_minmax_ukernel_9x32__avx512f, ef_f32_gemm_minmax_ukernel_10x32__avx512f,
             ef_f32_gemm_minmax_ukernel_11x32__avx512f, ef_f32_gemm_minmax_ukernel_12x32__avx512f},
};
#endif
