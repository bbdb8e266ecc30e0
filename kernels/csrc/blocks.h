/* Block formats of group-quantized weights (ggml style: one struct per block, sizes pinned
 * by static_assert so C, the Python packers and the NEON cross build agree byte for byte).
 *
 * A group is G consecutive weights of one output channel along K (G = 32, 64 or 128), with
 * one affine map:   weight = d * q + m,   q unsigned in [0, 2^bits - 1]
 * (like ggml's q4_1: d = scale, m = the group minimum; a symmetric quantizer just uses
 * m = -d * 2^(bits-1)). d and m are IEEE half floats (as in ggml), converted exactly to
 * fp32 by the kernels; the packer rounds fp32 inputs to nearest even. Quants are stored in chunks of 32 weights so every ISA unpacks one
 * chunk into 32 consecutive bytes with a fixed handful of shifts and masks:
 *
 *   4 bits, 16 bytes per chunk: byte j = q[j] | q[16 + j] << 4            (j = 0..15)
 *   2 bits,  8 bytes per chunk: byte j = q[j] | q[8+j] << 2 | q[16+j] << 4 | q[24+j] << 6
 *
 * A row of the packed matrix is ceil(K / G) blocks back to back; K is zero-padded (q = 0)
 * to a multiple of G, and the padded activations are zero, so padding adds nothing. */
#pragma once
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define EF_QB_CHUNK 32 /* weights per unpacking chunk */

#define EF_DEFINE_QB_BLOCK(BITS, G)                                                                   \
  typedef struct {                                                                                    \
    uint16_t d;                       /* scale, fp16: weight = d * q + m */                           \
    uint16_t m;                       /* offset (group minimum), fp16 */                              \
    uint8_t qs[(G) * (BITS) / 8];     /* quants, EF_QB_CHUNK at a time, layout above */               \
  } ef_block_q##BITS##_g##G;                                                                          \
  static_assert(sizeof(ef_block_q##BITS##_g##G) == 4 + (G) * (BITS) / 8, "wrong q" #BITS "_g" #G " block size/padding")

EF_DEFINE_QB_BLOCK(4, 32);  /* 20 bytes / 32 weights = 5.0 bits per weight */
EF_DEFINE_QB_BLOCK(4, 64);  /* 36 bytes / 64 weights = 4.5 */
EF_DEFINE_QB_BLOCK(4, 128); /* 68 bytes / 128 weights = 4.25 */
EF_DEFINE_QB_BLOCK(2, 32);  /* 12 bytes / 32 weights = 3.0 */
EF_DEFINE_QB_BLOCK(2, 64);  /* 20 bytes / 64 weights = 2.5 */
EF_DEFINE_QB_BLOCK(2, 128); /* 36 bytes / 128 weights = 2.25 */

/* Bytes of one block for any supported (bits, G): the kernels are generic over G and use
 * this instead of a struct type; static_asserts above keep the two in step. */
#define EF_QB_HEADER_BYTES 4
#define EF_QB_BLOCK_BYTES(bits, G) (EF_QB_HEADER_BYTES + (size_t)(G) * (bits) / 8)
#define EF_QB_CHUNK_BYTES(bits) ((size_t)EF_QB_CHUNK * (bits) / 8)

/* IEEE half <-> single, portable and exact (fp16 -> fp32 loses nothing; fp32 -> fp16 rounds
 * to nearest even, overflowing to infinity). The SIMD kernels use F16C / NEON instead and
 * must agree with these bit for bit. */
static inline float ef_fp16_to_fp32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13); /* inf / nan */
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13); /* normal: rebias 15 -> 127 */
  } else if (man == 0) {
    bits = sign; /* zero */
  } else {       /* subnormal: normalize */
    exp = 113;
    while (!(man & 0x400)) { man <<= 1; exp--; }
    bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t ef_fp32_to_fp16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  const uint32_t exp = (x >> 23) & 0xFF, man = x & 0x7FFFFF;
  if (exp == 0xFF) return (uint16_t)(sign | 0x7C00 | (man ? 0x200 : 0)); /* inf / nan */
  const int32_t e = (int32_t)exp - 127 + 15;
  if (e >= 0x1F) return (uint16_t)(sign | 0x7C00);                        /* overflow */
  if (e <= 0) {                                                           /* subnormal or zero */
    if (e < -10) return sign;
    const uint32_t m = man | 0x800000;
    const uint32_t shift = (uint32_t)(14 - e);
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;
    return (uint16_t)(sign | h);
  }
  uint32_t h = ((uint32_t)e << 10) | (man >> 13);
  const uint32_t rem = man & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* may carry into the exponent: still right */
  return (uint16_t)(sign | h);
}
