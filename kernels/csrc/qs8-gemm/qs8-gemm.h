/* qs8-gemm: int8 activations x int8 per-output-channel weights ("qc8w"), int32 accumulation,
 * fused zero-point correction, bias, optional ReLU, and fp32 output (dequantize) or int8
 * output (requantize).
 *
 * What one output element means (the scalar kernel is the executable definition):
 *   acc[m,n] = sum_k (a[m,k] - a_zp[m]) * (w[n,k] - w_zp[n])            exact in int32
 *   y[m,n]   = (float)acc * (a_scale[m] * w_scale[n]) + bias[n]         two roundings, no FMA
 *   clamp:     y = min(max(y, out_min), out_max)   (ReLU = [0, inf], ReLU6 = [0, 6])
 *   fp32 out:  c = y
 *   int8 out:  t = clamp(y * out_inv_scale, -128 - out_zp, 127 - out_zp);
 *              c = nearbyint(t) + out_zp                                 (ties to even)
 * Every variant (scalar, AVX2, NEON) computes exactly this, bit for bit; tests compare them
 * with ==. acc is exact when K * 255 * 255 < 2^31, i.e. K <= EF_QS8_MAX_K.
 *
 * The kernels expand the zero points algebraically so the inner loop is a plain dot product:
 *   acc = sum a*w - a_zp*colsum[n] - w_zp[n]*rowsum[m] + K*a_zp*w_zp[n]      (mod 2^32)
 * colsum is computed at pack time, rowsum when the activations are prepared.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define EF_QS8_NR 16 /* output columns per packed block, the same for every ISA */
#define EF_QS8_KR 2  /* K values consumed per step: one int16 pair per pmaddwd lane */
#define EF_QS8_MR_MAX 4
#define EF_QS8_MAX_K 33025 /* largest K with K*255*255 < 2^31 */

/* Packed weights: one block per 16 output columns, blocks back to back.
 *
 *   int32 colsum[16]   sum_k w[n,k] (raw weights, before zero points)
 *   int32 w_zp[16]     weight zero points (0 for symmetric)
 *   float w_scale[16]
 *   float bias[16]     0 when there is no bias
 *   int8  w[kp/2][16][2]   for each K pair: column 0 (k, k+1), column 1 (k, k+1), ...
 *
 * Columns past N and K past the true K are zero, so kernels never branch on them inside
 * the loop. kp is K rounded up to 4, which keeps every block a multiple of 64 bytes. */
#define EF_QS8_BLOCK_HEADER_BYTES (4 * EF_QS8_NR * 4)

typedef struct ef_qs8_packed {
  size_t n, k, kp;
  size_t n_blocks, block_bytes;
  int has_w_zp;
  uint8_t* data;
  /* The x4 panel (EF_QS8_PANEL_* below): a second copy of the weights in the layout the AMX
   * tile instructions (and 512-bit vpdpbusd) read, built at pack time only when this CPU has
   * AVX-512 VNNI or AMX (NULL otherwise): one more byte per weight there. The c2 blocks above
   * stay, so every ISA can still run on the same packing (set_isa may change between calls);
   * the headers (colsum, zp, scale, bias) live only there. */
  size_t kp64;    /* K rounded up to 64, one AMX tile row of bytes */
  uint8_t* panel; /* n_blocks * kp64 * 16 bytes, or NULL */
} ef_qs8_packed;

/* x4 panel layout: per 16-column block, kp64/4 rows of 64 bytes; row q holds, for columns
 * 0..15 in turn, w[col, 4q..4q+3]. 16 consecutive rows (1 KB, stride 64) are exactly one AMX
 * "B" tile in the VNNI-4 form tdpbusd wants (K/4 rows x 16 columns x 4 bytes). Past N and K
 * the bytes are 0, so padded columns and K steps contribute nothing. */
#define EF_QS8_PANEL_KC 64                            /* K values per AMX tile step */
#define EF_QS8_PANEL_TILE_BYTES (EF_QS8_PANEL_KC * 16) /* one B tile: 16 quads x 16 columns x 4 */

/* Per-call parameters shared by every tile. */
typedef struct ef_qs8_gemm_params {
  size_t k;            /* true K (for the K*a_zp*w_zp term) */
  float out_min, out_max; /* activation clamp */
  int out_int8;        /* 0: fp32 output; 1: requantized int8 output */
  float out_inv_scale; /* int8 output only */
  int32_t out_zp;      /* int8 output only */
} ef_qs8_gemm_params;

/* Computes an mr x nc tile (mr <= MR of the kernel, nc <= 16) of the output.
 *   a       prepared activations, K zero-padded to kp, row stride a_stride elements: int16
 *           (int8 values sign-extended) for most kernels; uint8 a + 128 for the VNNI ones
 *           (config.a_u8), whose u8 x s8 dot products are exact and corrected by 128*colsum
 *   a_zp, a_scale, a_rowsum: per-row arrays for these mr rows
 *   block   one packed block (header + weights)
 *   c       output tile start (float* or int8_t*), row stride c_stride elements */
typedef void (*ef_qs8_gemm_ukernel_fn)(size_t mr, size_t nc, size_t kp, const void* a, size_t a_stride,
                                        const int32_t* a_zp, const float* a_scale, const int32_t* a_rowsum,
                                        const uint8_t* block, void* c, size_t c_stride,
                                        const ef_qs8_gemm_params* params);

/* Arguments of a panel kernel (AMX): the whole GEMM for a range of 16-column blocks.
 *   a: uint8 (a + 128) rows, row stride a_stride = kp64 bytes, K padded with 128 (a = 0) and
 *      rows padded to m_pad = m rounded up to 16 (padding rows are computed, never stored). */
typedef struct ef_qs8_panel_args {
  size_t m, m_pad;
  const uint8_t* a;
  size_t a_stride;
  const int32_t* a_zp;
  const float* a_scale;
  const int32_t* a_rowsum;
  const ef_qs8_packed* w;
  void* c; /* [m, n] float or int8 */
  const ef_qs8_gemm_params* params;
} ef_qs8_panel_args;
typedef void (*ef_qs8_panel_fn)(const ef_qs8_panel_args* args, size_t block_begin, size_t block_end);

/* One ISA's kernels, indexed by rows - 1 (a 1-row kernel for GEMV, up to MR). */
typedef struct ef_qs8_gemm_config {
  const char* isa;
  uint32_t arch_flags;
  size_t mr;
  int a_u8; /* activations prepared as uint8 (a + 128) instead of int16 */
  ef_qs8_gemm_ukernel_fn ukernel[EF_QS8_MR_MAX];
  /* Panel path (AMX, and AVX-512 VNNI): used when the packing has a panel and
   * panel_min_m <= m <= panel_max_m (0: no limit); otherwise the call goes to `fallback`. */
  ef_qs8_panel_fn panel;
  size_t panel_min_m, panel_max_m;
  size_t panel_row_pad; /* the kernel reads rows in groups of this many (16 for AMX tiles) */
  size_t panel_blocks; /* 16-column blocks per work item handed to a thread */
  size_t panel_speedup; /* multiply-adds per cycle relative to AVX2, for the thread-split threshold */
  const struct ef_qs8_gemm_config* fallback;
} ef_qs8_gemm_config;

extern const ef_qs8_gemm_config ef_qs8_gemm_config_scalar;
#if EF_ARCH_X86
extern const ef_qs8_gemm_config ef_qs8_gemm_config_avx2;
extern const ef_qs8_gemm_config ef_qs8_gemm_config_avxvnni;
extern const ef_qs8_gemm_config ef_qs8_gemm_config_avx512; /* on the panel, any M */
extern const ef_qs8_gemm_config ef_qs8_gemm_config_amx;
#endif
#if EF_ARCH_ARM64
extern const ef_qs8_gemm_config ef_qs8_gemm_config_neon;
#endif

/* Best config the current arch flags allow (amx -> avx512 -> avxvnni -> avx2 -> neon -> scalar). */
const ef_qs8_gemm_config* ef_qs8_gemm_select(void);
/* int8 activations [M, K] -> uint8 a + 128 (a_u8, for vpdpbusd kernels) or int16 rows padded to
 * kp, and the row sums; shared by every family that runs the qs8 kernels' micro-layout (bsr). */
void ef_qs8_prepare_activations(const int8_t* a, size_t m, size_t k, size_t kp, int a_u8, uint8_t* a_prep,
                                int32_t* rowsum);

/* Packing and the operator (operator.c). Return 0 or a negative error. */
int ef_qs8_pack(const int8_t* w, size_t n, size_t k, const float* w_scale, const int32_t* w_zp,
                const float* bias, ef_qs8_packed* out);
void ef_qs8_packed_free(ef_qs8_packed* p);

/* C[M,N] = epilogue(A[M,K] x packed^T). a is int8 row-major (stride k). Uses the thread pool
 * over N blocks and the kernels of `config` (NULL = ef_qs8_gemm_select()). */
int ef_qs8_gemm(const ef_qs8_gemm_config* config, size_t m, const int8_t* a, const int32_t* a_zp,
                const float* a_scale, const ef_qs8_packed* w, void* c, const ef_qs8_gemm_params* params);

/* Dynamic per-row asymmetric quantization of fp32 activations (kernels.quant.quantize_rows_dynamic
 * is the same computation in numpy, operation for operation):
 *   lo = min(min(x), 0), hi = max(max(x), 0), scale = (hi - lo) / 255 (1 if hi == lo)
 *   zp = clamp(round(-128 - lo / scale), -128, 127), q = clamp(round(x / scale) + zp, -128, 127) */
void ef_qd8_quantize_rows_asym(const float* x, size_t m, size_t k, int8_t* q, float* scale, int32_t* zp);
#if EF_ARCH_X86
/* The same computation 8 floats at a time (IEEE division and round-to-nearest-even are
 * exact operations, so the results are identical); the scalar loop cannot be vectorized by
 * the compiler at the baseline ISA (nearbyintf) and costs more than a small GEMV. */
void ef_qd8_quantize_rows_asym__avx2(const float* x, size_t m, size_t k, int8_t* q, float* scale, int32_t* zp);
/* The same values written as uint8 q + 128 in rows of `stride` bytes (K padded with 128), with
 * the row sums of q: the AMX kernel's activation layout (avx512.c; needs AVX-512). */
void ef_qd8_quantize_rows_u8__avx512(const float* x, size_t m, size_t k, size_t stride, uint8_t* a, float* scale,
                                     int32_t* zp, int32_t* rowsum);
/* int8 rows into the same layout (a + 128, K padded with 128) with their row sums. */
void ef_qs8_prepare_rows_u8__avx512(const int8_t* a, size_t m, size_t k, size_t stride, uint8_t* dst, int32_t* rowsum);
#endif

/* fp32 in, fp32 (or int8) out: quantize the rows of x dynamically, then ef_qs8_gemm. */
int ef_qd8_gemm(const ef_qs8_gemm_config* config, size_t m, const float* x, const ef_qs8_packed* w, void* c,
                const ef_qs8_gemm_params* params);

/* Scalar epilogue for one element; shared by the scalar kernel and SIMD tails so that the
 * definition above lives in exactly one place. */
#include <math.h>
EF_INLINE float ef_qs8_dequant(int32_t acc, float a_scale, float w_scale, float bias, float lo, float hi) {
  float y = (float)acc * (a_scale * w_scale);
  y = y + bias;
  return ef_clamp(y, lo, hi);
}
EF_INLINE int8_t ef_qs8_requant(float y, float inv_scale, int32_t zp) {
  const float lo = (float)(-128 - zp), hi = (float)(127 - zp);
  float t = y * inv_scale;
  t = t > lo ? t : lo; /* NaN -> lo, the same as max_ps(t, lo) */
  t = t < hi ? t : hi;
  return (int8_t)((int32_t)nearbyintf(t) + zp);
}
/* Zero-point expansion in wrapping unsigned arithmetic (exact mod 2^32, no signed overflow). */
EF_INLINE int32_t ef_qs8_correct(uint32_t raw, int32_t a_zp, int32_t colsum, int32_t w_zp, int32_t rowsum, uint32_t k) {
  uint32_t acc = raw - (uint32_t)a_zp * (uint32_t)colsum - (uint32_t)w_zp * (uint32_t)rowsum +
                 k * (uint32_t)a_zp * (uint32_t)w_zp;
  return (int32_t)acc;
}
