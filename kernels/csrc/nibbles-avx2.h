/* 4-bit fields packed two per byte, unpacked for AVX2 byte arithmetic. One definition for
 * the int4 weights of qb-gemm and the 4-bit columns of the sparse "windows" layout, which
 * share the packing: byte i holds value i in its low nibble and value 16 + i in its high one. */
#pragma once
#include "common.h"

#if EF_ARCH_X86
#include <immintrin.h>

/* The 32 values of 16 packed bytes, value j in byte j (0..15 in the low 128-bit lane, 16..31
 * in the high one): the bytes broadcast to both lanes (a load, no shuffle), the high lane
 * shifted right by 4, one mask. Two ALU operations, against two shifts, two masks and a
 * lane insert for the two halves built separately. */
EF_INLINE EF_TARGET_AVX2 __m256i ef_unpack_nibbles__avx2(const uint8_t* packed) {
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)packed));
  return _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_set_epi32(4, 4, 4, 4, 0, 0, 0, 0)), _mm256_set1_epi8(0x0F));
}
#endif
