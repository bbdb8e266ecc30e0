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

static void ef_qs8_spmv_windows_ukernel_8x16__scalar(const ef_spw_packed* w, size_t g0, size_t g1, const int8_t* xw,
                                                     int32_t* raw) {
  for (size_t g = g0; g < g1; g++) {
    uint32_t acc[EF_SPW_ROWS] = {0};
    for (uint32_t s = w->group_step[g]; s < w->group_step[g + 1]; s++) {
      const int8_t* x = xw + (size_t)w->step_window[s] * EF_SPW_WINDOW;
      const int8_t* rec = w->step_data + (size_t)s * EF_SPW_STEP_BYTES;
      for (size_t b = 0; b < 32; b++) {
        const uint8_t col = ((uint8_t)rec[b % 16] >> (4 * (b / 16))) & 15;
        acc[b / EF_SPW_SLOTS] += (uint32_t)((int32_t)x[col] * rec[EF_SPW_W_OFFSET + b]);
      }
    }
    for (size_t r = 0; r < EF_SPW_ROWS && g * EF_SPW_ROWS + r < w->n; r++) raw[g * EF_SPW_ROWS + r] = (int32_t)acc[r];
  }
}

const ef_sparse_config ef_sparse_config_scalar = {
    .isa = "scalar",
    .dot = {ef_f32_spmm_dot_ukernel__scalar, ef_qs8_spmm_dot_ukernel__scalar},
    .mvec = {ef_f32_spmm_mvec_ukernel__scalar, ef_qs8_spmm_mvec_ukernel__scalar},
    .spw = ef_qs8_spmv_windows_ukernel_8x16__scalar,
};
