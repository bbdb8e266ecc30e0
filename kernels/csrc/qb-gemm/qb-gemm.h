/* qb-gemm: fp32 activations x group-quantized 4-bit or 2-bit weights (blocks.h).
 *
 * The activations are quantized dynamically, per row, to symmetric int8 (scale sx = max|x|/127),
 * so the inner loop is an exact integer dot product of unsigned quants with int8:
 *   isum[g] = sum_{k in g} q[n,k] * xq[m,k]          (int32, exact)
 *   xsum[g] = sum_{k in g} xq[m,k]                   (kept as float: exact, |xsum| <= 128 * 128)
 *   y[m,n]  = sx[m] * sum_g (d[n,g] * isum[g] + m[n,g] * xsum[g]) + bias[n]
 * The float sum over groups is where variants may differ (summation order), so tests use a
 * named tolerance (kernels.quant.QB_RTOL) for this family. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "blocks.h"
#include "common.h"

#define EF_QB_MR_MAX 4

/* Packed layouts, chosen at pack time from the ISA selected then (the config's .layout):
 *
 * EF_QB_LAYOUT_ROWS (avx2, avxvnni, neon, scalar): one row of blocks.h blocks per output
 *   column, `row_bytes` apart.
 *
 * EF_QB_LAYOUT_P16 (avx512): panels of 16 output columns (N padded to a multiple of 16 with
 *   zero quants, scales and offsets), `panel_bytes` apart. A panel is `groups` group records
 *   back to back, each 64-byte aligned and EF_QB_P16_GROUP_BYTES long:
 *     d[16]   fp16 scales of the 16 columns     (32 bytes)
 *     m[16]   fp16 offsets of the 16 columns    (32 bytes)
 *     quants  group * bits / 32 steps of 64 bytes; in step s, byte 4 * c + i (column c,
 *             i = 0..3) holds column c's quants at k = k0 + i + 4 * j (k0 = s * S, k counted
 *             within the group) in bit field j:
 *               4 bits (S = 8):  q[k0 + i]        | q[k0 + 4 + i] << 4
 *               2 bits (S = 16): q[k0 + i] | q[k0 + 4 + i] << 2 | q[k0 + 8 + i] << 4 | q[k0 + 12 + i] << 6
 *   So one 512-bit load masked to one bit field is 16 columns x 4 consecutive k, the
 *   operand layout of vpdpbusd against 4 activation bytes broadcast to every lane: the
 *   int32 lane c sums column c, the 16 scales of a group are one vcvtph2ps, and the whole
 *   matrix is read once, front to back, with no shuffles. */
enum { EF_QB_LAYOUT_ROWS = 0, EF_QB_LAYOUT_P16 = 1 };
#define EF_QB_PANEL 16
#define EF_QB_P16_GROUP_BYTES(bits, G) (64 + (size_t)EF_QB_PANEL * (G) * (bits) / 8)

/* P16: where quant i (0..G-1) of a group lives: 64-byte step, byte within the column's 4
 * bytes, and bit shift (the packer and the scalar kernel share this one definition). */
static inline void ef_qb_p16_position(int bits, size_t i, size_t* step, size_t* byte, unsigned* shift) {
  const size_t per_step = bits == 4 ? 8 : 16, r = i % per_step;
  *step = i / per_step;
  *byte = r % 4;
  *shift = (unsigned)(bits * (r / 4));
}

typedef struct ef_qb_packed {
  size_t n, k;
  int bits, group;
  int layout;        /* EF_QB_LAYOUT_* */
  size_t groups;     /* ceil(k / group) */
  size_t row_bytes;  /* ROWS: groups * EF_QB_BLOCK_BYTES(bits, group) */
  size_t panels;     /* P16: ceil(n / 16) */
  size_t panel_bytes;/* P16: groups * EF_QB_P16_GROUP_BYTES(bits, group) */
  size_t data_bytes; /* bytes at data */
  uint8_t* data;     /* ROWS: n rows; P16: panels */
  float* bias;       /* n values (zeros when none) */
} ef_qb_packed;

/* mr rows x nc output columns (nc <= the config's nr for that mr).
 *   xq: int8 rows, stride x_stride (>= groups*group, zero padded); xsum: per row, per group;
 *   sx: per-row activation scales; rows: the packed blocks of the first column, the next
 *   columns follow every row_bytes; bias: nc values; c: the tile's first output. */
typedef void (*ef_qb_gemm_ukernel_fn)(size_t mr, size_t nc, size_t groups, size_t group, const int8_t* xq,
                                      size_t x_stride, const float* xsum, const float* sx, const uint8_t* rows,
                                      size_t row_bytes, const float* bias, float* c, size_t c_stride);

/* P16 layout: mr rows x the first np panels (np <= the config's np for that mr) from
 * `panels` (next panel every panel_bytes); nc = valid columns from c on (the last panel may
 * be partial; only nc outputs are written). Other arguments as above. */
typedef void (*ef_qb_gemm_p16_fn)(size_t mr, size_t np, size_t nc, size_t groups, size_t group, const int8_t* xq,
                                  size_t x_stride, const float* xsum, const float* sx, const uint8_t* panels,
                                  size_t panel_bytes, const float* bias, float* c, size_t c_stride);

/* Dynamic activation quantization of one row (see ef_qd8_quantize_row below). */
typedef float (*ef_qd8_quantize_fn)(const float* x, size_t k, size_t kp, size_t group, int8_t* xq, float* xsum);

typedef struct ef_qb_gemm_config {
  const char* isa;
  int layout;                             /* EF_QB_LAYOUT_* that ef_qb_pack picks under this config */
  size_t mr;
  size_t nr[EF_QB_MR_MAX];                /* ROWS: columns per call, by rows - 1 */
  ef_qb_gemm_ukernel_fn q4[EF_QB_MR_MAX]; /* ROWS kernels by rows - 1 (NULL: none) */
  ef_qb_gemm_ukernel_fn q2[EF_QB_MR_MAX];
  size_t np[EF_QB_MR_MAX];                /* P16: panels per call, by rows - 1 */
  ef_qb_gemm_p16_fn p16_q4[EF_QB_MR_MAX]; /* P16 kernels by rows - 1 (NULL: none) */
  ef_qb_gemm_p16_fn p16_q2[EF_QB_MR_MAX];
  ef_qd8_quantize_fn quantize;            /* NULL: the portable ef_qd8_quantize_row */
  /* Weights packed in a layout this config has no kernels for (packed under another ISA)
   * run on `fallback` (NULL: the scalar config, which has every layout). */
  const struct ef_qb_gemm_config* fallback;
} ef_qb_gemm_config;

extern const ef_qb_gemm_config ef_qb_gemm_config_scalar;
#if EF_ARCH_X86
extern const ef_qb_gemm_config ef_qb_gemm_config_avx2;
extern const ef_qb_gemm_config ef_qb_gemm_config_avxvnni;
extern const ef_qb_gemm_config ef_qb_gemm_config_avx512;
#endif
#if EF_ARCH_ARM64
extern const ef_qb_gemm_config ef_qb_gemm_config_neon;
#endif
const ef_qb_gemm_config* ef_qb_gemm_select(void);

/* q: n x k unsigned quants (one per byte, < 2^bits); d, m: n x groups. ef_qb_pack uses the
 * layout of the config selected now (ef_qb_gemm_select); ef_qb_pack_layout names it. Every
 * config runs weights of every layout (through its fallback when needed). */
int ef_qb_pack_layout(const uint8_t* q, size_t n, size_t k, int bits, int group, const float* d, const float* m,
                      const float* bias, int layout, ef_qb_packed* out);
int ef_qb_pack(const uint8_t* q, size_t n, size_t k, int bits, int group, const float* d, const float* m,
               const float* bias, ef_qb_packed* out);
void ef_qb_packed_free(ef_qb_packed* p);
/* c [m, n] = clamp(x [m, k] dequant(w)^T + bias, out_min, out_max) (ef_clamp: NaN -> out_min);
 * the clamp runs on each tile as soon as a kernel has written it, while it is in L1. */
int ef_qb_gemm(const ef_qb_gemm_config* config, size_t m, const float* x, const ef_qb_packed* w, float* c,
               float out_min, float out_max);

/* Shared dynamic quantization of one activation row: symmetric int8, zero padded to kp.
 * Returns the scale; fills xsum per group. Every ISA computes exactly this (the AVX-512
 * version below is tested bit-exact), so all of them see the same int8 activations. */
float ef_qd8_quantize_row(const float* x, size_t k, size_t kp, size_t group, int8_t* xq, float* xsum);
#if EF_ARCH_X86
/* The same function with AVX2 / AVX-512 (identical results bit for bit: same IEEE operations). */
float ef_qd8_quantize_row__avx2(const float* x, size_t k, size_t kp, size_t group, int8_t* xq, float* xsum);
float ef_qd8_quantize_row__avx512(const float* x, size_t k, size_t kp, size_t group, int8_t* xq, float* xsum);
#endif
