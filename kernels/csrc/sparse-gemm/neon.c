/* NEON sparse-gemm kernels. NEON has no gather, so the GEMV path sums each row with four
 * independent scalar accumulators (breaking the add dependency chain); the GEMM path
 * broadcasts each nonzero against 4-row vectors of the transposed activations. */
#include "sparse-gemm.h"

#if EF_ARCH_ARM64
#include <arm_neon.h>

static void ef_f32_spmm_dot_ukernel__neon(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m, const void* x,
                                          float* y, const ef_sparse_params* p) {
  const float* val = w->val;
  for (size_t r = 0; r < m; r++) {
    const float* xr = (const float*)x + r * w->k;
    for (size_t n = n0; n < n1; n++) {
      uint32_t j = w->row_ptr[n];
      const uint32_t end = w->row_ptr[n + 1];
      float32x4_t acc = vdupq_n_f32(0.0f);
      for (; j + 4 <= end; j += 4) {
        const float g[4] = {xr[w->col[j]], xr[w->col[j + 1]], xr[w->col[j + 2]], xr[w->col[j + 3]]};
        acc = vfmaq_f32(acc, vld1q_f32(val + j), vld1q_f32(g));
      }
      float s = vaddvq_f32(acc);
      for (; j < end; j++) s += val[j] * xr[w->col[j]];
      y[r * w->n + n] = ef_sparse_f32_out(s, w->bias[n], p->out_min, p->out_max);
    }
  }
}

static void ef_qs8_spmm_dot_ukernel__neon(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m, const void* x,
                                          float* y, const ef_sparse_params* p) {
  const int8_t* val = w->val;
  for (size_t r = 0; r < m; r++) {
    const int32_t* xr = (const int32_t*)x + r * w->k;
    for (size_t n = n0; n < n1; n++) {
      uint32_t j = w->row_ptr[n];
      const uint32_t end = w->row_ptr[n + 1];
      uint32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (; j + 4 <= end; j += 4) {
        s0 += (uint32_t)((int16_t)xr[w->col[j]] * val[j]);
        s1 += (uint32_t)((int16_t)xr[w->col[j + 1]] * val[j + 1]);
        s2 += (uint32_t)((int16_t)xr[w->col[j + 2]] * val[j + 2]);
        s3 += (uint32_t)((int16_t)xr[w->col[j + 3]] * val[j + 3]);
      }
      uint32_t raw = s0 + s1 + s2 + s3;
      for (; j < end; j++) raw += (uint32_t)((int16_t)xr[w->col[j]] * val[j]);
      y[r * w->n + n] = ef_sparse_qs8_out((int32_t)raw, p->x_zp[r], w->wsum[n], p->x_scale[r], w->w_scale[n], w->bias[n], p->out_min, p->out_max);
    }
  }
}

static void ef_f32_spmm_mvec_ukernel__neon(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m, size_t mp,
                                           const void* xt, float* y, const ef_sparse_params* p) {
  const float* val = w->val;
  const float* x = xt;
  for (size_t n = n0; n < n1; n++) {
    const uint32_t begin = w->row_ptr[n], end = w->row_ptr[n + 1];
    for (size_t r0 = 0; r0 < mp; r0 += 32) {
      const size_t tiles = EF_MIN(8, (mp - r0) / 4);
      float32x4_t acc[8];
      for (size_t t = 0; t < 8; t++) acc[t] = vdupq_n_f32(0.0f);
      for (uint32_t j = begin; j < end; j++) {
        const float* xk = x + (size_t)w->col[j] * mp + r0;
        for (size_t t = 0; t < tiles; t++) acc[t] = vfmaq_n_f32(acc[t], vld1q_f32(xk + 4 * t), val[j]);
      }
      for (size_t t = 0; t < tiles; t++) {
        float tmp[4];
        vst1q_f32(tmp, acc[t]);
        for (size_t i = 0; i < 4 && r0 + 4 * t + i < m; i++) y[(r0 + 4 * t + i) * w->n + n] = ef_sparse_f32_out(tmp[i], w->bias[n], p->out_min, p->out_max);
      }
    }
  }
}

static void ef_qs8_spmm_mvec_ukernel__neon(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m, size_t mp,
                                           const void* xt, float* y, const ef_sparse_params* p) {
  const int8_t* val = w->val;
  const int32_t* x = xt;
  for (size_t n = n0; n < n1; n++) {
    const uint32_t begin = w->row_ptr[n], end = w->row_ptr[n + 1];
    for (size_t r0 = 0; r0 < mp; r0 += 32) {
      const size_t tiles = EF_MIN(8, (mp - r0) / 4);
      int32x4_t acc[8];
      for (size_t t = 0; t < 8; t++) acc[t] = vdupq_n_s32(0);
      for (uint32_t j = begin; j < end; j++) {
        const int32_t* xk = x + (size_t)w->col[j] * mp + r0;
        for (size_t t = 0; t < tiles; t++) {
          /* x holds the int16 value in the low half: shift up and back to sign-extend */
          const int32x4_t xv = vshrq_n_s32(vshlq_n_s32(vld1q_s32(xk + 4 * t), 16), 16);
          acc[t] = vmlaq_n_s32(acc[t], xv, val[j]);
        }
      }
      for (size_t t = 0; t < tiles; t++) {
        int32_t raw[4];
        vst1q_s32(raw, acc[t]);
        for (size_t i = 0; i < 4 && r0 + 4 * t + i < m; i++) {
          const size_t r = r0 + 4 * t + i;
          y[r * w->n + n] = ef_sparse_qs8_out(raw[i], p->x_zp[r], w->wsum[n], p->x_scale[r], w->w_scale[n], w->bias[n], p->out_min, p->out_max);
        }
      }
    }
  }
}

/* Windows layout on NEON: vqtbl1q_s8 selects the slots' activations, vmull_s8 multiplies
 * exactly into int16 (-128 * -128 fits), and pairwise adds sum each row's 4 slots into its
 * int32 lane. */
static void ef_qs8_spmv_windows_ukernel_8x16__neon(const ef_spw_packed* w, size_t g0, size_t g1, const int8_t* xw,
                                                  int32_t* raw) {
  for (size_t g = g0; g < g1; g++) {
    int32x4_t acc_lo = vdupq_n_s32(0), acc_hi = vdupq_n_s32(0); /* rows 0-3, rows 4-7 */
    for (uint32_t s = w->group_step[g]; s < w->group_step[g + 1]; s++) {
      const int8_t* rec = w->step_data + (size_t)s * EF_SPW_STEP_BYTES;
      const int8x16_t x = vld1q_s8(xw + (size_t)w->step_window[s] * EF_SPW_WINDOW);
      const uint8x16_t cols = vld1q_u8((const uint8_t*)rec);
      const int8x16_t xs_lo = vqtbl1q_s8(x, vandq_u8(cols, vdupq_n_u8(0x0F))); /* slots 0-15 */
      const int8x16_t xs_hi = vqtbl1q_s8(x, vshrq_n_u8(cols, 4));               /* slots 16-31 */
      const int8x16_t w_lo = vld1q_s8(rec + EF_SPW_W_OFFSET), w_hi = vld1q_s8(rec + EF_SPW_W_OFFSET + 16);
      /* bytes 0-7 -> rows 0,1; 8-15 -> rows 2,3: pairwise adds keep rows apart */
      const int16x8_t p0 = vmull_s8(vget_low_s8(xs_lo), vget_low_s8(w_lo));
      const int16x8_t p1 = vmull_s8(vget_high_s8(xs_lo), vget_high_s8(w_lo));
      const int16x8_t p2 = vmull_s8(vget_low_s8(xs_hi), vget_low_s8(w_hi));
      const int16x8_t p3 = vmull_s8(vget_high_s8(xs_hi), vget_high_s8(w_hi));
      acc_lo = vaddq_s32(acc_lo, vpaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)));
      acc_hi = vaddq_s32(acc_hi, vpaddq_s32(vpaddlq_s16(p2), vpaddlq_s16(p3)));
    }
    int32_t tmp[EF_SPW_ROWS];
    vst1q_s32(tmp, acc_lo);
    vst1q_s32(tmp + 4, acc_hi);
    for (size_t r = 0; r < EF_SPW_ROWS && g * EF_SPW_ROWS + r < w->n; r++) raw[g * EF_SPW_ROWS + r] = tmp[r];
  }
}

const ef_sparse_config ef_sparse_config_neon = {
    .isa = "neon",
    .dot = {ef_f32_spmm_dot_ukernel__neon, ef_qs8_spmm_dot_ukernel__neon},
    .mvec = {ef_f32_spmm_mvec_ukernel__neon, ef_qs8_spmm_mvec_ukernel__neon},
    .spw = ef_qs8_spmv_windows_ukernel_8x16__neon,
};
#endif /* EF_ARCH_ARM64 */

/* ------------------------------------------------------------------ bitmask layout */
#if EF_ARCH_ARM64
/* Bitmask layout (sparse-gemm.h): 16 columns at a time, two 8-byte tbl indices from
 * ef_spb_expand_table (out-of-range 0x80.. reads as zero), smull into int16 (exact: at most
 * 128 * 128) and sadalp into int32. */
EF_INLINE int8x16_t spb_expand16_neon(uint32_t bits, const int8_t* v) {
  const uint32_t b0 = bits & 0xFF, b1 = (bits >> 8) & 0xFF;
  const uint8x8_t lo = vld1_u8(ef_spb_expand_table[b0]);
  const uint8x8_t hi = vadd_u8(vld1_u8(ef_spb_expand_table[b1]), vdup_n_u8((uint8_t)__builtin_popcount(b0)));
  return vqtbl1q_s8(vld1q_s8(v), vcombine_u8(lo, hi));
}

EF_INLINE int32x4_t spb_dot16_neon(int32x4_t acc, int8x16_t w, const int8_t* x) {
  const int8x16_t xv = vld1q_s8(x);
  acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w), vget_low_s8(xv)));
  return vpadalq_s16(acc, vmull_high_s8(w, xv));
}

EF_INLINE void spb_groups_neon(const size_t MR, const ef_spb_packed* w, size_t g0, size_t g1, const int8_t* x,
                               size_t ldx, int32_t* raw, size_t ldr) {
  const size_t chunks = w->chunks;
  for (size_t g = g0; g < g1; g++) {
    int32x4_t acc[EF_SPB_MR][EF_SPB_ROWS];
    for (size_t r = 0; r < MR; r++)
      for (size_t i = 0; i < EF_SPB_ROWS; i++) acc[r][i] = vdupq_n_s32(0);
    const uint64_t* mask = w->mask + g * chunks * EF_SPB_ROWS;
    const int8_t* v = w->val + w->group_val[g];
    for (size_t c = 0; c < chunks; c++) {
      for (size_t i = 0; i < EF_SPB_ROWS; i++) {
        const uint64_t m = *mask++;
        const size_t o1 = (size_t)__builtin_popcount((uint32_t)m & 0xFFFF);
        const size_t o2 = (size_t)__builtin_popcount((uint32_t)m);
        const size_t o3 = o2 + (size_t)__builtin_popcount((uint32_t)(m >> 32) & 0xFFFF);
        const int8x16_t w0 = spb_expand16_neon((uint32_t)m, v);
        const int8x16_t w1 = spb_expand16_neon((uint32_t)m >> 16, v + o1);
        const int8x16_t w2 = spb_expand16_neon((uint32_t)(m >> 32), v + o2);
        const int8x16_t w3 = spb_expand16_neon((uint32_t)(m >> 48), v + o3);
        v += (size_t)__builtin_popcountll(m);
        for (size_t r = 0; r < MR; r++) {
          const int8_t* xc = x + r * ldx + c * EF_SPB_CHUNK;
          int32x4_t a = acc[r][i];
          a = spb_dot16_neon(a, w0, xc);
          a = spb_dot16_neon(a, w1, xc + 16);
          a = spb_dot16_neon(a, w2, xc + 32);
          acc[r][i] = spb_dot16_neon(a, w3, xc + 48);
        }
      }
    }
    for (size_t r = 0; r < MR; r++)
      for (size_t i = 0; i < EF_SPB_ROWS; i++) raw[r * ldr + g * EF_SPB_ROWS + i] = vaddvq_s32(acc[r][i]);
  }
}

static void ef_qs8_spmv_bitmask_ukernel_4x64__neon(const ef_spb_packed* w, size_t g0, size_t g1, size_t mr,
                                                   const void* x, size_t ldx, int32_t* raw, size_t ldr) {
  switch (mr) {
    case 1: spb_groups_neon(1, w, g0, g1, x, ldx, raw, ldr); break;
    case 2: spb_groups_neon(2, w, g0, g1, x, ldx, raw, ldr); break;
    case 3: spb_groups_neon(3, w, g0, g1, x, ldx, raw, ldr); break;
    default: spb_groups_neon(4, w, g0, g1, x, ldx, raw, ldr); break;
  }
}

const ef_spb_config ef_spb_config_neon = {
    .isa = "neon",
    .x_format = EF_SPB_X_S8,
    .ukernel = ef_qs8_spmv_bitmask_ukernel_4x64__neon,
    .out_row = ef_sparse_qs8_out_row__generic,
};
#endif /* EF_ARCH_ARM64 */
