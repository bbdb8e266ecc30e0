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

/* ------------------------------------------------------------------ bitmask layout */

/* ef_spb_expand_table, written out by the preprocessor: entry b, byte i. */
#define SPB_POPC8(b) (((b) & 1) + (((b) >> 1) & 1) + (((b) >> 2) & 1) + (((b) >> 3) & 1) + (((b) >> 4) & 1) + \
                      (((b) >> 5) & 1) + (((b) >> 6) & 1) + (((b) >> 7) & 1))
#define SPB_E(b, i) ((((b) >> (i)) & 1) ? SPB_POPC8((b) & ((1u << (i)) - 1)) : 0x80)
#define SPB_T1(b) {SPB_E(b, 0), SPB_E(b, 1), SPB_E(b, 2), SPB_E(b, 3), SPB_E(b, 4), SPB_E(b, 5), SPB_E(b, 6), SPB_E(b, 7)}
#define SPB_T4(b) SPB_T1(b), SPB_T1((b) + 1), SPB_T1((b) + 2), SPB_T1((b) + 3)
#define SPB_T16(b) SPB_T4(b), SPB_T4((b) + 4), SPB_T4((b) + 8), SPB_T4((b) + 12)
#define SPB_T64(b) SPB_T16(b), SPB_T16((b) + 16), SPB_T16((b) + 32), SPB_T16((b) + 48)
const uint8_t ef_spb_expand_table[256][8] = {SPB_T64(0u), SPB_T64(64u), SPB_T64(128u), SPB_T64(192u)};

/* Reference: walk the set bits of every mask. */
static void ef_qs8_spmv_bitmask_ukernel_4x64__scalar(const ef_spb_packed* w, size_t g0, size_t g1, size_t mr,
                                                     const void* x, size_t ldx, int32_t* raw, size_t ldr) {
  for (size_t r = 0; r < mr; r++) {
    const int8_t* xr = (const int8_t*)x + r * ldx;
    for (size_t g = g0; g < g1; g++) {
      uint32_t acc[EF_SPB_ROWS] = {0};
      const uint64_t* mask = w->mask + g * w->chunks * EF_SPB_ROWS;
      const int8_t* v = w->val + w->group_val[g];
      for (size_t c = 0; c < w->chunks; c++)
        for (size_t i = 0; i < EF_SPB_ROWS; i++) {
          for (uint64_t m = *mask++; m != 0; m &= m - 1) {
            const int col = __builtin_ctzll(m);
            acc[i] += (uint32_t)((int32_t)xr[c * EF_SPB_CHUNK + col] * *v++);
          }
        }
      for (size_t i = 0; i < EF_SPB_ROWS; i++) raw[r * ldr + g * EF_SPB_ROWS + i] = (int32_t)acc[i];
    }
  }
}

const ef_spb_config ef_spb_config_scalar = {
    .isa = "scalar",
    .x_format = EF_SPB_X_S8,
    .ukernel = ef_qs8_spmv_bitmask_ukernel_4x64__scalar,
    .out_row = ef_sparse_qs8_out_row__generic,
};

/* ------------------------------------------------------------------ permute layout */

/* Reference: every slot of every step, padding included (weight 0 adds 0). */
static void ef_qs8_spmv_permute_ukernel_2x16x64__scalar(const ef_spp_packed* w, size_t g0, size_t g1, size_t mr,
                                                        const uint8_t* x, size_t ldx, int32_t* raw, size_t ldr) {
  for (size_t r = 0; r < mr; r++) {
    const int8_t* xr = (const int8_t*)(x + r * ldx);
    for (size_t g = g0; g < g1; g++) {
      uint32_t acc[EF_SPP_ROWS] = {0};
      for (size_t s = w->group_step[g]; s < w->group_step[g + 1]; s++) {
        const int8_t* xc = xr + w->run_col[s / w->run];
        const uint8_t* block = w->blocks + s / EF_SPP_BLOCK * EF_SPP_BLOCK_BYTES;
        const size_t u = s % EF_SPP_BLOCK;
        const int8_t* wv = (const int8_t*)block + EF_SPP_COL_BYTES + u * 64;
        for (size_t i = 0; i < EF_SPP_ROWS * EF_SPP_SLOTS; i++)
          acc[i / EF_SPP_SLOTS] += (uint32_t)((int32_t)xc[ef_spp_col(block, u, i)] * wv[i]);
      }
      for (size_t i = 0; i < EF_SPP_ROWS; i++) raw[r * ldr + g * EF_SPP_ROWS + i] = (int32_t)acc[i];
    }
  }
}

const ef_spp_config ef_spp_config_scalar = {
    .isa = "scalar",
    .x_format = EF_SPB_X_S8,
    .ukernel = ef_qs8_spmv_permute_ukernel_2x16x64__scalar,
    .out_row = ef_sparse_qs8_out_row__generic,
};

void ef_sparse_qs8_out_row__generic(const int32_t* restrict raw, const int32_t* restrict wsum,
                                    const float* restrict w_scale, const float* restrict bias, int32_t x_zp,
                                    float x_scale, float lo, float hi, size_t n0, size_t n1, float* restrict y) {
  ef_sparse_qs8_out_row(raw, wsum, w_scale, bias, x_zp, x_scale, lo, hi, n0, n1, y);
}
