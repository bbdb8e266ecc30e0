/* nn scalar kernels: the reference (and the fallback on CPUs without a SIMD variant). */
#include <math.h>

#include "nn/nn-scalar.h"

/* Fitted in float64 (weighted least squares, relative error): erf(a)/a = P(a^2) on [0, 1],
 * max error 4.4e-8; erfc(a) exp(a^2) = Q(1/(1 + a/2)) on [0.95, 9.2], max error 5.9e-9. */
const float ef_nn_erf_small_coef[EF_NN_ERF_SMALL_DEG + 1] = {
    1.1283791179717555f, -0.37612314202304153f, 0.11280105693760648f,
    -0.02670951860914145f, 0.0049157020371431515f, -0.0005624559520751925f};
const float ef_nn_erfc_coef[EF_NN_ERFC_DEG + 1] = {
    -6.8023060457972705e-06f, 0.2822632442263887f, 0.2803493206425193f, 0.2565446592711728f, 0.14592300726348503f,
    0.13090156221541469f, -0.007753513000102522f, -0.16156386324335684f, 0.07371473896128782f};

static void layernorm_row(size_t n, const float* x, const float* res, const float* gamma, const float* beta, float eps,
                          float* y) {
  float sum = 0.0f;
  for (size_t i = 0; i < n; i++) {
    const float s = res ? x[i] + res[i] : x[i];
    y[i] = s;
    sum += s;
  }
  const float mean = sum / (float)n;
  float sq = 0.0f;
  for (size_t i = 0; i < n; i++) {
    const float d = y[i] - mean;
    sq += d * d;
  }
  const float inv = 1.0f / sqrtf(sq / (float)n + eps);
  for (size_t i = 0; i < n; i++) y[i] = (y[i] - mean) * inv * gamma[i] + (beta ? beta[i] : 0.0f);
}

static void softmax_row(size_t n, const float* x, float scale, const float* mask, float* y) {
  float mx = -INFINITY;
  for (size_t i = 0; i < n; i++) {
    const float v = mask ? x[i] * scale + mask[i] : x[i] * scale;
    y[i] = v;
    mx = v > mx ? v : mx;
  }
  if (mx == -INFINITY) mx = 0.0f; /* every entry -inf: 0/0 = NaN, as the definition gives */
  float sum = 0.0f;
  for (size_t i = 0; i < n; i++) {
    y[i] = ef_nn_exp_scalar(y[i] - mx);
    sum += y[i];
  }
  const float inv = 1.0f / sum;
  for (size_t i = 0; i < n; i++) y[i] *= inv;
}

static void gelu(size_t n, const float* x, float* y) {
  for (size_t i = 0; i < n; i++) y[i] = ef_nn_gelu_scalar(x[i]);
}

static void erf_(size_t n, const float* x, float* y) {
  for (size_t i = 0; i < n; i++) y[i] = ef_nn_erf_scalar(x[i]);
}

static void qk_row(size_t n, size_t d, const float* q, const float* kt, size_t ldk, float* s) {
  for (size_t j = 0; j < n; j++) s[j] = 0.0f;
  for (size_t c = 0; c < d; c++)
    for (size_t j = 0; j < n; j++) s[j] += q[c] * kt[c * ldk + j];
}

static void pv_row(size_t n, size_t d, const float* p, const float* v, size_t v_stride, float* out) {
  for (size_t c = 0; c < d; c++) out[c] = 0.0f;
  for (size_t j = 0; j < n; j++)
    for (size_t c = 0; c < d; c++) out[c] += p[j] * v[j * v_stride + c];
}

const ef_nn_config ef_nn_config_scalar = {"scalar", layernorm_row, softmax_row, gelu, erf_, qk_row, pv_row};
