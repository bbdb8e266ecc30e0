/* Portable sparse-gemm kernels: reference and fallback. */
#include "sparse-gemm.h"

static void ef_f32_spmm_dot_ukernel__scalar(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m, const void* x,
                                            float* y, const ef_sparse_params* p) {
  const float* val = w->val;
  for (size_t r = 0; r < m; r++) {
    const float* xr = (const float*)x + r * w->k;
    for (size_t n = n0; n < n1; n++) {
      float acc = 0.0f;
      for (uint32_t j = w->row_ptr[n]; j < w->row_ptr[n + 1]; j++) acc += val[j] * xr[w->col[j]];
      y[r * w->n + n] = ef_sparse_f32_out(acc, w->bias[n], p->out_min, p->out_max);
    }
  }
}

static void ef_qs8_spmm_dot_ukernel__scalar(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m, const void* x,
                                            float* y, const ef_sparse_params* p) {
  const int8_t* val = w->val;
  for (size_t r = 0; r < m; r++) {
    const int32_t* xr = (const int32_t*)x + r * w->k; /* value in the low 16 bits */
    for (size_t n = n0; n < n1; n++) {
      uint32_t raw = 0;
      for (uint32_t j = w->row_ptr[n]; j < w->row_ptr[n + 1]; j++) raw += (uint32_t)((int16_t)xr[w->col[j]] * val[j]);
      y[r * w->n + n] = ef_sparse_qs8_out((int32_t)raw, p->x_zp[r], w->wsum[n], p->x_scale[r], w->w_scale[n], w->bias[n], p->out_min, p->out_max);
    }
  }
}

static void ef_f32_spmm_mvec_ukernel__scalar(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m, size_t mp,
                                             const void* xt, float* y, const ef_sparse_params* p) {
  /* Same arithmetic as the dot kernel (one sequential sum per output), only reading the
   * transposed activations. */
  const float* val = w->val;
  const float* x = xt;
  for (size_t n = n0; n < n1; n++)
    for (size_t r = 0; r < m; r++) {
      float acc = 0.0f;
      for (uint32_t j = w->row_ptr[n]; j < w->row_ptr[n + 1]; j++) acc += val[j] * x[w->col[j] * mp + r];
      y[r * w->n + n] = ef_sparse_f32_out(acc, w->bias[n], p->out_min, p->out_max);
    }
}

static void ef_qs8_spmm_mvec_ukernel__scalar(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m, size_t mp,
                                             const void* xt, float* y, const ef_sparse_params* p) {
  const int8_t* val = w->val;
  const int32_t* x = xt;
  for (size_t n = n0; n < n1; n++)
    for (size_t r = 0; r < m; r++) {
      uint32_t raw = 0;
      for (uint32_t j = w->row_ptr[n]; j < w->row_ptr[n + 1]; j++) raw += (uint32_t)((int16_t)x[w->col[j] * mp + r] * val[j]);
      y[r * w->n + n] = ef_sparse_qs8_out((int32_t)raw, p->x_zp[r], w->wsum[n], p->x_scale[r], w->w_scale[n], w->bias[n], p->out_min, p->out_max);
    }
}

const ef_sparse_config ef_sparse_config_scalar = {
    .isa = "scalar",
    .dot = {ef_f32_spmm_dot_ukernel__scalar, ef_qs8_spmm_dot_ukernel__scalar},
    .mvec = {ef_f32_spmm_mvec_ukernel__scalar, ef_qs8_spmm_mvec_ukernel__scalar},
};
