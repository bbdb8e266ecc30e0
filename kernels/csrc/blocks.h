/* Block formats of group-quantized weights (ggml style: one struct per block, sizes pinned
 * by static_assert so C, the Python packers and the NEON cross build agree byte for byte).
 *
 * A group is G consecutive weights of one output channel along K (G = 32, 64 or 128), with
 * one affine map:   weight = d * q + m,   q unsigned in [0, 2^bits - 1]
 * (like ggml's q4_1: d = scale, m = the group minimum; a symmetric quantizer just uses
 * m = -d * 2^(bits-1)). Quants are stored in chunks of 32 weights so every ISA unpacks one
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

#define EF_QB_CHUNK 32 /* weights per unpacking chunk */

#define EF_DEFINE_QB_BLOCK(BITS, G)                                                                   \
  typedef struct {                                                                                    \
    float d;                          /* scale: weight = d * q + m */                                 \
    float m;                          /* offset (group minimum) */                                    \
    uint8_t qs[(G) * (BITS) / 8];     /* quants, EF_QB_CHUNK at a time, layout above */               \
  } ef_block_q##BITS##_g##G;                                                                          \
  static_assert(sizeof(ef_block_q##BITS##_g##G) == 8 + (G) * (BITS) / 8, "wrong q" #BITS "_g" #G " block size/padding")

EF_DEFINE_QB_BLOCK(4, 32);  /* 24 bytes / 32 weights = 6.0 bits per weight */
EF_DEFINE_QB_BLOCK(4, 64);  /* 40 bytes / 64 weights = 5.0 */
EF_DEFINE_QB_BLOCK(4, 128); /* 72 bytes / 128 weights = 4.5 */
EF_DEFINE_QB_BLOCK(2, 32);  /* 16 bytes / 32 weights = 4.0 */
EF_DEFINE_QB_BLOCK(2, 64);  /* 24 bytes / 64 weights = 3.0 */
EF_DEFINE_QB_BLOCK(2, 128); /* 40 bytes / 128 weights = 2.5 */

/* Bytes of one block for any supported (bits, G): the kernels are generic over G and use
 * this instead of a struct type; static_asserts above keep the two in step. */
#define EF_QB_HEADER_BYTES 8
#define EF_QB_BLOCK_BYTES(bits, G) (EF_QB_HEADER_BYTES + (size_t)(G) * (bits) / 8)
#define EF_QB_CHUNK_BYTES(bits) ((size_t)EF_QB_CHUNK * (bits) / 8)
