/* nn: the transformer's non-GEMM float ops, row by row.
 *
 *   layernorm  y[r,:] = (s - mean(s)) / sqrt(var(s) + eps) * gamma + beta,  s = x[r,:] (+ res[r,:])
 *              (two-pass mean and biased variance over the last axis; `res` fuses a residual Add)
 *   gelu       y = x * Phi(x) = x/2 * (1 + erf(x / sqrt 2))            (exact form, not tanh)
 *   erf        y = erf(x)
 *   softmax    y[r,:] = softmax(x[r,:] * scale + mask)                  (mask optional, additive)
 *   attention  per batch b and head h, with Q_h, K_h, V_h the [S, D] slices at column h*D of
 *              strided row-major q, k, v:  out_h = softmax(Q_h K_h^T * scale + mask[b]) V_h
 *
 * erf is a polynomial pair fitted for this file (relative error < 5e-8 in float64; in float32
 * a few ulp): |a| < 1: erf(a) = a * P(a^2) (degree 5 in a^2); |a| >= 1:
 * erfc(a) = exp(-a^2) * Q(1 / (1 + a/2)) (degree 8). exp is a
 * Cody-Waite reduction to [-ln2/2, ln2/2] with a degree-7 Taylor polynomial (< 2 ulp), exactly
 * 0 below -87.3 (where expf leaves the normal range). Every variant evaluates the same
 * formulas; sums run in a different order (and with FMA in SIMD variants), so results are
 * compared with a named tolerance (EF_NN_RTOL in the C harness, quant.NN_RTOL in Python). */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "common.h"

typedef struct ef_nn_config {
  const char* isa;
  void (*layernorm_row)(size_t n, const float* x, const float* res, const float* gamma, const float* beta, float eps,
                        float* y);
  /* y = softmax(x * scale + mask); mask may be NULL; y may equal x. */
  void (*softmax_row)(size_t n, const float* x, float scale, const float* mask, float* y);
  void (*gelu)(size_t n, const float* x, float* y);
  void (*erf)(size_t n, const float* x, float* y);
  /* attention rows: s[j] = sum_c q[c] * kt[c * ldk + j] for j < n (K of one head transposed,
   * ldk a multiple of 8 >= n, columns n..ldk zero: they may be computed and ignored), and
   * out[c] = sum_j p[j] * v[j * v_stride + c] for c < d. */
  void (*qk_row)(size_t n, size_t d, const float* q, const float* kt, size_t ldk, float* s);
  void (*pv_row)(size_t n, size_t d, const float* p, const float* v, size_t v_stride, float* out);
} ef_nn_config;

extern const ef_nn_config ef_nn_config_scalar;
#if EF_ARCH_X86
extern const ef_nn_config ef_nn_config_avx2;
extern const ef_nn_config ef_nn_config_avx512; /* GELU / erf 16 wide; rows as AVX2 */
#endif
#if EF_ARCH_ARM64
extern const ef_nn_config ef_nn_config_neon;
#endif
const ef_nn_config* ef_nn_select(void);

/* Coefficients shared by every variant (nn/scalar.c). */
#define EF_NN_ERF_SMALL_DEG 5
#define EF_NN_ERFC_DEG 8
extern const float ef_nn_erf_small_coef[EF_NN_ERF_SMALL_DEG + 1];
extern const float ef_nn_erfc_coef[EF_NN_ERFC_DEG + 1];
#define EF_NN_EXP_LO (-87.33f)   /* below: exp = 0 */
#define EF_NN_EXP_HI (88.0f)     /* above: clamped (keeps 2^n finite) */

/* Operators (config NULL = best for this CPU); rows split over threads. */
void ef_nn_layernorm(const ef_nn_config* cfg, size_t rows, size_t n, const float* x, const float* res, const float* gamma,
                     const float* beta, float eps, float* y);
void ef_nn_softmax(const ef_nn_config* cfg, size_t rows, size_t n, const float* x, float* y);
void ef_nn_gelu(const ef_nn_config* cfg, size_t count, const float* x, float* y);
void ef_nn_erf(const ef_nn_config* cfg, size_t count, const float* x, float* y);

typedef struct ef_nn_attention_params {
  size_t batch, heads, sq, skv, d;
  const float* q; size_t q_bstride, q_rstride;   /* q[b, i, h*d + c] = q[b*q_bstride + i*q_rstride + h*d + c] */
  const float* k; size_t k_bstride, k_rstride;
  const float* v; size_t v_bstride, v_rstride;
  const float* mask; size_t mask_bstride;        /* additive mask [skv] per batch (bstride 0: shared); NULL: none */
  float scale;
  float* out; size_t out_bstride, out_rstride;
} ef_nn_attention_params;
/* Returns 0, or -2 when scratch memory cannot be allocated. */
int ef_nn_attention(const ef_nn_config* cfg, const ef_nn_attention_params* p);
