/* f32-gemm: fp32 GEMM with packed weights, fused bias and activation clamp:
 *   y[m,n] = clamp(sum_k x[m,k] * w[n,k] + bias[n], out_min, out_max)
 * Used for fp32 linear layers, pointwise (1x1) convolutions and im2col convolutions. The
 * summation order (and FMA vs multiply+add) differs between variants: named tolerance.
 *
 * Two weight formats, one kernel body per ISA: dense 16-column blocks, and 16 x 4 blocks
 * (16 output columns x 4 consecutive K) of which only those holding a nonzero are stored
 * ("bsr", the fp32 twin of bsr-gemm: the compressor's prune block=(16, 4)). A kernel walks
 * segments of consecutive K steps: dense is one segment of K steps at column 0, bsr one
 * segment of 4 steps per stored block at its column. Rows of x are pixels (NHWC) or tokens,
 * read in place; the outputs of a row are written contiguously: no transposes. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define EF_F32_NR 16
#define EF_F32_MR_MAX 8

/* Block of 16 output columns: float bias[16], then float w[k][16] (column-interleaved so
 * one k step is two 8-wide vector loads, or one 16-wide). Columns past N are zero. */
typedef struct ef_f32_packed {
  size_t n, k, n_blocks, block_floats;
  float* data;
} ef_f32_packed;

typedef void (*ef_f32_gemm_ukernel_fn)(size_t mr, size_t nc, size_t k, const float* x, size_t x_stride, const float* block,
                                       float* c, size_t c_stride, float out_min, float out_max);
/* The wide tile: mr rows x two adjacent blocks (32 columns; nc in 17..32), the second block
 * at block + block_floats. Two weight vectors per k share each activation broadcast, so a k
 * step loads 2 + mr values for 2 * mr FMAs instead of 1 + mr for mr: the narrow AVX-512 tile
 * (9 loads per 8 FMAs) is bound by loads on cores that sustain fewer than two 512-bit loads
 * per cycle. On the session-10 Xeon (C timing, M = 128, N = K = 1536, one thread) the 8 x 16
 * tile ran at 65 % of the FMA peak and a 12 x 32 one at 85 %. */
#define EF_F32_WIDE_MR_MAX 12
typedef void (*ef_f32_gemm_wide_ukernel_fn)(size_t mr, size_t nc, size_t k, const float* x, size_t x_stride,
                                            const float* block, size_t block_floats, float* c, size_t c_stride,
                                            float out_min, float out_max);

/* 16 x 4 block-sparse weights. Per 16-column group g: its blocks are
 * [group_ptr[g], group_ptr[g + 1]); block b covers K kofs[b] .. kofs[b] + 3 (a multiple of 4,
 * increasing) and is float w[4][16] (K-major like the dense block: one K step is one 16-wide
 * vector). Columns past N and K past the true K are zero. */
#define EF_F32_BSR_KB 4
#define EF_F32_BSR_BLOCK_FLOATS (EF_F32_BSR_KB * EF_F32_NR)
typedef struct ef_f32_bsr_packed {
  size_t n, k, n_groups, nnz_blocks;
  uint32_t* group_ptr; /* [n_groups + 1] */
  uint32_t* kofs;      /* [nnz_blocks] */
  float* blocks;       /* [nnz_blocks][4][16], 64-byte aligned */
  float* bias;         /* [n_groups * 16], zero past N, 64-byte aligned */
} ef_f32_bsr_packed;

/* An mr x nc tile of one group: nb blocks (kofs, w), x rows with K padded to a multiple of 4. */
typedef void (*ef_f32_bsr_ukernel_fn)(size_t mr, size_t nc, size_t nb, const uint32_t* kofs, const float* x,
                                      size_t x_stride, const float* w, const float* bias, float* c, size_t c_stride,
                                      float out_min, float out_max);

typedef struct ef_f32_gemm_config {
  const char* isa;
  size_t mr;
  ef_f32_gemm_ukernel_fn ukernel[EF_F32_MR_MAX];
  ef_f32_bsr_ukernel_fn bsr[EF_F32_MR_MAX];
  /* optional (NULL: blocks one at a time): wide[mr - 1] for mr <= mr_wide */
  size_t mr_wide;
  ef_f32_gemm_wide_ukernel_fn wide[EF_F32_WIDE_MR_MAX];
} ef_f32_gemm_config;

extern const ef_f32_gemm_config ef_f32_gemm_config_scalar;
#if EF_ARCH_X86
extern const ef_f32_gemm_config ef_f32_gemm_config_avx2;
extern const ef_f32_gemm_config ef_f32_gemm_config_avx512;
#endif
#if EF_ARCH_ARM64
extern const ef_f32_gemm_config ef_f32_gemm_config_neon;
#endif
const ef_f32_gemm_config* ef_f32_gemm_select(void);

int ef_f32_pack(const float* w, size_t n, size_t k, const float* bias, ef_f32_packed* out);
void ef_f32_packed_free(ef_f32_packed* p);
int ef_f32_gemm(const ef_f32_gemm_config* config, size_t m, const float* x, const ef_f32_packed* w, float* c,
                float out_min, float out_max);

/* Keeps the 16 x 4 blocks of w [n, k] that hold a nonzero (any matrix; the speed comes from a
 * block pattern). 0, -1 (bad shape) or -2 (no memory). */
int ef_f32_bsr_pack(const float* w, size_t n, size_t k, const float* bias, ef_f32_bsr_packed* out);
void ef_f32_bsr_packed_free(ef_f32_bsr_packed* p);
/* c [m, n] = clamp(x [m, k] W^T + bias). Threads split the column groups. */
int ef_f32_bsr_gemm(const ef_f32_gemm_config* config, size_t m, const float* x, const ef_f32_bsr_packed* w, float* c,
                    float out_min, float out_max);
