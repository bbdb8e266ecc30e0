/* bsr-gemm: block-sparse int8 GEMM. Same arithmetic as qs8-gemm (int8 activations x int8
 * per-channel weights, exact int32 accumulation, zero-point correction, bias, clamp, fp32 or
 * requantized int8 out: see qs8-gemm.h, whose scalar definition every variant here matches
 * bit for bit), but the weights are stored as 16 x 4 blocks (16 output channels x 4
 * consecutive K) and only the blocks with a nonzero weight are kept and multiplied.
 *
 * Why 16 x 4: it is exactly the operand of one int8 dot-product step of the dense kernels.
 * vpdpbusd sums 4 K values into each int32 lane (8 columns per ymm, 16 per zmm), and the
 * AVX2 path's vpmaddwd handles the same 4 K as two int16 pairs; so a zero block skips a
 * whole step of the 16-column tile, for every row of the tile, and the kernel does no
 * per-element index work (one K offset per block). With 75% of the blocks zero the
 * multiply-adds drop 4x, at any M (GEMV or the pixel rows of a pointwise convolution).
 *
 * The format accepts any int8 matrix: a block is stored when any of its 64 weights is
 * nonzero. Unstructured sparsity therefore stores almost every block; the speed comes from
 * a block pattern (compressor prune with block=(16, 4)).
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "qs8-gemm/qs8-gemm.h"

#define EF_BSR_NR 16 /* output channels per block (= EF_QS8_NR, so the qs8 epilogue applies) */
#define EF_BSR_KB 4  /* K values per block */
#define EF_BSR_BLOCK_BYTES (EF_BSR_NR * EF_BSR_KB)
#define EF_BSR_MR_MAX 4
#define EF_BSR_MAX_K EF_QS8_MAX_K

/* Packed weights.
 *
 *   header[n_groups]   per 16-channel group, the qs8 block header (EF_QS8_BLOCK_HEADER_BYTES):
 *                      int32 colsum[16] (raw weights), int32 w_zp[16], float w_scale[16],
 *                      float bias[16]; channels past N are zero
 *   group_ptr[n_groups + 1]  blocks of group g are [group_ptr[g], group_ptr[g + 1])
 *   kofs[nnz_blocks]   the first K of each block (a multiple of 4), increasing within a group
 *   blocks[nnz_blocks][16][4]  int8: channel j's 4 weights k..k+3 in bytes 4j..4j+3, which
 *                      is one vpdpbusd lane per channel (K past the true K is zero)
 *
 * Activations are read at K offsets up to kp = K rounded up to 4. */
typedef struct ef_bsr_packed {
  size_t n, k, kp;
  size_t n_groups, nnz_blocks;
  uint8_t* header;    /* n_groups * EF_QS8_BLOCK_HEADER_BYTES, 64-byte aligned */
  uint32_t* group_ptr;
  uint32_t* kofs;
  int8_t* blocks;     /* 64-byte aligned */
} ef_bsr_packed;

/* Computes an mr x nc tile (mr <= MR of the kernel, nc <= 16) of one 16-channel group.
 *   nb, kofs, w  the group's blocks
 *   a        prepared activations (int16, or uint8 a + 128 when config.a_u8), row stride a_stride
 *            elements, K padded to kp
 *   a_zp, a_scale, a_rowsum  per-row arrays for these mr rows
 *   header   the group's qs8 header; c the tile's first output, row stride c_stride elements */
typedef void (*ef_bsr_ukernel_fn)(size_t mr, size_t nc, size_t nb, const uint32_t* kofs, const int8_t* w,
                                  const void* a, size_t a_stride, const int32_t* a_zp, const float* a_scale,
                                  const int32_t* a_rowsum, const uint8_t* header, void* c, size_t c_stride,
                                  const ef_qs8_gemm_params* params);

typedef struct ef_bsr_config {
  const char* isa;
  uint32_t arch_flags;
  size_t mr;
  int a_u8; /* activations prepared as uint8 (a + 128) instead of int16 */
  ef_bsr_ukernel_fn ukernel[EF_BSR_MR_MAX];
  /* Optional: every row of one group in one call (same arguments, mr = M, any size), so the
   * group's epilogue constants are set up once rather than per tile of mr rows. NULL: the
   * operator walks the tiles itself. */
  ef_bsr_ukernel_fn group;
} ef_bsr_config;

extern const ef_bsr_config ef_bsr_config_scalar;
#if EF_ARCH_X86
extern const ef_bsr_config ef_bsr_config_avx2;
extern const ef_bsr_config ef_bsr_config_avxvnni;
extern const ef_bsr_config ef_bsr_config_avx512;
#endif
#if EF_ARCH_ARM64
extern const ef_bsr_config ef_bsr_config_neon;
#endif

/* Best config the current arch flags allow (avx512 -> avxvnni -> avx2 -> neon -> scalar). */
const ef_bsr_config* ef_bsr_select(void);

/* Packing (w int8 [n, k] row-major, w_zp may be NULL = 0, bias may be NULL). 0 or < 0. */
int ef_bsr_pack(const int8_t* w, size_t n, size_t k, const float* w_scale, const int32_t* w_zp, const float* bias,
                ef_bsr_packed* out);
void ef_bsr_packed_free(ef_bsr_packed* p);

/* C[M, N] = epilogue(A[M, K] x W^T), a int8 row-major (stride k). Threads split the channel
 * groups; config NULL = ef_bsr_select(). */
int ef_bsr_gemm(const ef_bsr_config* config, size_t m, const int8_t* a, const int32_t* a_zp, const float* a_scale,
                const ef_bsr_packed* w, void* c, const ef_qs8_gemm_params* params);
