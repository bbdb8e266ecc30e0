/* qb-gemm: fp32 activations x group-quantized 4-bit or 2-bit weights (blocks.h).
 *
 * The activations are quantized dynamically, per row, to symmetric int8 (scale sx = max|x|/127),
 * so the inner loop is an exact integer dot product of unsigned quants with int8:
 *   isum[g] = sum_{k in g} q[n,k] * xq[m,k]          (int32, exact)
 *   xsum[g] = sum_{k in g} xq[m,k]                   (kept as float: exact, |xsum| <= 128 * 128)
 *   y[m,n]  = sx[m] * sum_g (d[n,g] * isum[g] + m[n,g] * xsum[g]) + bias[n]
 * The float sum over groups is where variants may differ (summation order), so tests use a
 * named tolerance (kernels.quant.FLOAT_SUM_RTOL) for this family. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "blocks.h"
#include "common.h"

#define EF_QB_MR_MAX 4

typedef struct ef_qb_packed {
  size_t n, k;
  int bits, group;
  size_t groups;     /* ceil(k / group) */
  size_t row_bytes;  /* groups * EF_QB_BLOCK_BYTES(bits, group) */
  uint8_t* data;     /* n rows */
  float* bias;       /* n values (zeros when none) */
} ef_qb_packed;

/* mr rows x nc output columns (nc <= the config's nr for that mr).
 *   xq: int8 rows, stride x_stride (>= groups*group, zero padded); xsum: per row, per group;
 *   sx: per-row activation scales; rows: the packed blocks of the first column, the next
 *   columns follow every row_bytes; bias: nc values; c: the tile's first output. */
typedef void (*ef_qb_gemm_ukernel_fn)(size_t mr, size_t nc, size_t groups, size_t group, const int8_t* xq,
                                      size_t x_stride, const float* xsum, const float* sx, const uint8_t* rows,
                                      size_t row_bytes, const float* bias, float* c, size_t c_stride);

typedef struct ef_qb_gemm_config {
  const char* isa;
  size_t mr;
  size_t nr[EF_QB_MR_MAX];                /* columns per call, by rows - 1 */
  ef_qb_gemm_ukernel_fn q4[EF_QB_MR_MAX]; /* by rows - 1 */
  ef_qb_gemm_ukernel_fn q2[EF_QB_MR_MAX];
} ef_qb_gemm_config;

extern const ef_qb_gemm_config ef_qb_gemm_config_scalar;
#if EF_ARCH_X86
extern const ef_qb_gemm_config ef_qb_gemm_config_avx2;
extern const ef_qb_gemm_config ef_qb_gemm_config_avxvnni;
#endif
#if EF_ARCH_ARM64
extern const ef_qb_gemm_config ef_qb_gemm_config_neon;
#endif
const ef_qb_gemm_config* ef_qb_gemm_select(void);

/* q: n x k unsigned quants (one per byte, < 2^bits); d, m: n x groups. */
int ef_qb_pack(const uint8_t* q, size_t n, size_t k, int bits, int group, const float* d, const float* m,
               const float* bias, ef_qb_packed* out);
void ef_qb_packed_free(ef_qb_packed* p);
int ef_qb_gemm(const ef_qb_gemm_config* config, size_t m, const float* x, const ef_qb_packed* w, float* c);

/* Shared dynamic quantization of one activation row: symmetric int8, zero padded to kp.
 * Returns the scale; fills xsum per group. Every ISA uses this one, so all of them see the
 * same int8 activations. */
float ef_qd8_quantize_row(const float* x, size_t k, size_t kp, size_t group, int8_t* xq, float* xsum);
