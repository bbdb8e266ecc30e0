/* Template of the x86 qb-gemm kernels, included by avx2.c and avxvnni.c with:
 *   QB_TARGET        function attribute (EF_TARGET_AVX2 / EF_TARGET_AVXVNNI)
 *   QB_DOT(acc, q, x) acc + sum of 4 products of unsigned quants q and int8 activations x
 *                     per int32 lane (vpmaddubsw + vpmaddwd, or one vpdpbusd)
 *   QB_NAME(name)    appends the ISA suffix to a kernel name
 * One source for the unpacking, the tiling and the group scaling; only the dot product
 * differs between the two ISAs. */
#if !defined(QB_TARGET) || !defined(QB_DOT) || !defined(QB_NAME)
#error "define QB_TARGET, QB_DOT and QB_NAME before including avx2-tile.h"
#endif

#include "nibbles-avx2.h"

/* Low nibbles (k 0-15) in the low 128-bit lane, high nibbles (k 16-31) in the high one. */
EF_INLINE QB_TARGET __m256i unpack_q4(const uint8_t* chunk) { return ef_unpack_nibbles__avx2(chunk); }

EF_INLINE QB_TARGET __m256i unpack_q2(const uint8_t* chunk) {
  const __m256i v = _mm256_set1_epi64x((long long)ef_load_u64(chunk));
  return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_set_epi64x(6, 4, 2, 0)), _mm256_set1_epi8(0x03));
}

EF_INLINE QB_TARGET float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* MR rows x NR columns of output; MR * NR <= 4 keeps the int32 group sums, the float
 * accumulators and the activations in registers. Several columns per call give the
 * per-group float FMA chains independent neighbours (one column alone is latency-bound). */
EF_INLINE QB_TARGET void qb_tile(const int BITS, const size_t MR, const size_t NR, size_t groups, size_t group,
                                      const int8_t* xq, size_t x_stride, const float* xsum, const float* sx,
                                      const uint8_t* rows, size_t row_bytes, const float* bias, float* c, size_t c_stride) {
  const size_t block_bytes = EF_QB_BLOCK_BYTES(BITS, group);
  const size_t chunks = group / EF_QB_CHUNK;
  __m256 acc[4][4];
  float acc_m[4][4];
  for (size_t r = 0; r < MR; r++)
    for (size_t j = 0; j < NR; j++) { acc[r][j] = _mm256_setzero_ps(); acc_m[r][j] = 0.0f; }

  for (size_t g = 0; g < groups; g++) {
    __m256i isum[4][4];
    for (size_t r = 0; r < MR; r++)
      for (size_t j = 0; j < NR; j++) isum[r][j] = _mm256_setzero_si256();
    for (size_t ch = 0; ch < chunks; ch++) {
      const size_t k0 = g * group + ch * EF_QB_CHUNK;
      __m256i x[4];
      for (size_t r = 0; r < MR; r++) x[r] = _mm256_loadu_si256((const __m256i*)(xq + r * x_stride + k0));
      for (size_t j = 0; j < NR; j++) {
        const uint8_t* qs = rows + j * row_bytes + g * block_bytes + EF_QB_HEADER_BYTES;
        const __m256i q = BITS == 4 ? unpack_q4(qs + ch * 16) : unpack_q2(qs + ch * 8);
        for (size_t r = 0; r < MR; r++)
          isum[r][j] = QB_DOT(isum[r][j], q, x[r]);
      }
    }
    for (size_t j = 0; j < NR; j++) {
      const uint8_t* block = rows + j * row_bytes + g * block_bytes;
      float d, mm;
      d = _cvtsh_ss(((const uint16_t*)block)[0]); /* F16C: exact, like ef_fp16_to_fp32 */
      mm = _cvtsh_ss(((const uint16_t*)block)[1]);
      const __m256 vd = _mm256_set1_ps(d);
      for (size_t r = 0; r < MR; r++) {
        acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][j]), vd, acc[r][j]);
        acc_m[r][j] += mm * xsum[r * groups + g];
      }
    }
  }
  for (size_t r = 0; r < MR; r++)
    for (size_t j = 0; j < NR; j++) c[r * c_stride + j] = (hsum_ps(acc[r][j]) + acc_m[r][j]) * sx[r] + bias[j];
}

/* Full tiles use NR columns; a partial tile at the end of a thread's range goes column by column. */
#define DEFINE_KERNEL(BITS, MR, NR)                                                                                 \
  static QB_TARGET void QB_NAME(ef_qd8_f32_qb##BITS##w_gemm_ukernel_##MR##x##NR##c32)(                           \
      size_t mr, size_t nc, size_t groups, size_t group, const int8_t* xq, size_t x_stride, const float* xsum,    \
      const float* sx, const uint8_t* rows, size_t row_bytes, const float* bias, float* c, size_t c_stride) {       \
    if (nc == NR) {                                                                                                 \
      qb_tile(BITS, MR, NR, groups, group, xq, x_stride, xsum, sx, rows, row_bytes, bias, c, c_stride);             \
    } else {                                                                                                        \
      for (size_t j = 0; j < nc; j++)                                                                               \
        qb_tile(BITS, MR, 1, groups, group, xq, x_stride, xsum, sx, rows + j * row_bytes, row_bytes, bias + j,      \
                c + j, c_stride);                                                                                   \
    }                                                                                                               \
  }
DEFINE_KERNEL(4, 1, 4)
DEFINE_KERNEL(4, 2, 2)
DEFINE_KERNEL(4, 3, 1)
DEFINE_KERNEL(4, 4, 1)
DEFINE_KERNEL(2, 1, 4)
DEFINE_KERNEL(2, 2, 2)
DEFINE_KERNEL(2, 3, 1)
DEFINE_KERNEL(2, 4, 1)

