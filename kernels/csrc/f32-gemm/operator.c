/* f32-gemm operator: packing (dense and 16 x 4 block-sparse), dispatch, threads over 16-column
 * blocks. */
#include <stdlib.h>
#include <string.h>

#include "f32-gemm.h"
#include "threadpool.h"

const ef_f32_gemm_config* ef_f32_gemm_select(void) {
  const uint32_t flags = ef_arch_flags();
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AVX512) return &ef_f32_gemm_config_avx512;
  if (flags & EF_ARCH_X86_AVX2) return &ef_f32_gemm_config_avx2;
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) return &ef_f32_gemm_config_neon;
#endif
  (void)flags;
  return &ef_f32_gemm_config_scalar;
}

int ef_f32_pack(const float* w, size_t n, size_t k, const float* bias, ef_f32_packed* out) {
  memset(out, 0, sizeof *out);
  if (n == 0 || k == 0) return -1;
  out->n = n;
  out->k = k;
  out->n_blocks = EF_DIV_UP(n, EF_F32_NR);
  out->block_floats = EF_F32_NR * (k + 1);
  out->data = ef_aligned_alloc(out->n_blocks * out->block_floats * sizeof(float));
  if (out->data == NULL) return -2;
  memset(out->data, 0, out->n_blocks * out->block_floats * sizeof(float));
  for (size_t col = 0; col < n; col++) {
    float* block = out->data + (col / EF_F32_NR) * out->block_floats;
    const size_t j = col % EF_F32_NR;
    block[j] = bias ? bias[col] : 0.0f;
    for (size_t kk = 0; kk < k; kk++) block[EF_F32_NR + kk * EF_F32_NR + j] = w[col * k + kk];
  }
  return 0;
}

void ef_f32_packed_free(ef_f32_packed* p) {
  ef_aligned_free(p->data);
  p->data = NULL;
}

typedef struct {
  const ef_f32_gemm_config* config;
  size_t m;
  const float* x;
  const ef_f32_packed* w;
  float* c;
  float lo, hi;
  size_t per_item; /* blocks per work item: 2 (the wide tile's pair) or 1 */
} f32_job;

/* Items are blocks, or pairs of adjacent blocks for the wide tile (the last pair may hold one
 * block). Every row tile of an item reuses its weights from L1 / L2. */
static void f32_range(void* ctx, size_t begin, size_t end) {
  const f32_job* j = ctx;
  const ef_f32_packed* w = j->w;
  const size_t per_item = j->per_item;
  for (size_t b = begin * per_item; b < EF_MIN(end * per_item, w->n_blocks); b += per_item) {
    const float* block = w->data + b * w->block_floats;
    const size_t n0 = b * EF_F32_NR;
    if (per_item == 2 && b + 1 < w->n_blocks) {
      const size_t nc = EF_MIN(2 * EF_F32_NR, w->n - n0), mr_max = j->config->mr_wide;
      for (size_t m0 = 0; m0 < j->m; m0 += mr_max) {
        const size_t mr = EF_MIN(mr_max, j->m - m0);
        j->config->wide[mr - 1](mr, nc, w->k, j->x + m0 * w->k, w->k, block, w->block_floats, j->c + m0 * w->n + n0,
                                w->n, j->lo, j->hi);
      }
      continue;
    }
    const size_t nc = EF_MIN(EF_F32_NR, w->n - n0), mr_max = j->config->mr;
    for (size_t m0 = 0; m0 < j->m; m0 += mr_max) {
      const size_t mr = EF_MIN(mr_max, j->m - m0);
      j->config->ukernel[mr - 1](mr, nc, w->k, j->x + m0 * w->k, w->k, block, j->c + m0 * w->n + n0, w->n, j->lo,
                                 j->hi);
    }
  }
}

int ef_f32_gemm(const ef_f32_gemm_config* config, size_t m, const float* x, const ef_f32_packed* w, float* c,
                float out_min, float out_max) {
  if (config == NULL) config = ef_f32_gemm_select();
  if (m == 0) return 0;
  /* Pairs where the config has the wide tile and they leave every thread an item: threads
   * split the columns only, so pairing the 2 blocks of N = 32 would leave a thread idle. */
  const size_t per_item = config->mr_wide && w->n_blocks >= 2 * (size_t)ef_get_num_threads() ? 2 : 1;
  f32_job job = {config, m, x, w, c, out_min, out_max, per_item};
  ef_parallel_for(EF_DIV_UP(w->n_blocks, per_item), m * w->k * EF_F32_NR * per_item, f32_range, &job);
  return 0;
}

/* ------------------------------------------------------------------ 16 x 4 block-sparse */

static int f32_block_nonzero(const float* w, size_t n, size_t k, size_t n0, size_t k0) {
  for (size_t j = n0; j < EF_MIN(n, n0 + EF_F32_NR); j++)
    for (size_t kk = k0; kk < EF_MIN(k, k0 + EF_F32_BSR_KB); kk++)
      if (w[j * k + kk] != 0.0f) return 1;
  return 0;
}

void ef_f32_bsr_packed_free(ef_f32_bsr_packed* p) {
  free(p->group_ptr);
  free(p->kofs);
  ef_aligned_free(p->blocks);
  ef_aligned_free(p->bias);
  memset(p, 0, sizeof *p);
}

int ef_f32_bsr_pack(const float* w, size_t n, size_t k, const float* bias, ef_f32_bsr_packed* out) {
  memset(out, 0, sizeof *out);
  if (n == 0 || k == 0 || k > UINT32_MAX - EF_F32_BSR_KB) return -1;
  out->n = n;
  out->k = k;
  out->n_groups = EF_DIV_UP(n, EF_F32_NR);
  const size_t kb = EF_DIV_UP(k, EF_F32_BSR_KB);
  size_t nnz = 0;
  for (size_t g = 0; g < out->n_groups; g++)
    for (size_t b = 0; b < kb; b++) nnz += (size_t)f32_block_nonzero(w, n, k, g * EF_F32_NR, b * EF_F32_BSR_KB);
  out->nnz_blocks = nnz;
  const size_t block_bytes = EF_MAX(nnz, 1) * EF_F32_BSR_BLOCK_FLOATS * sizeof(float);
  out->group_ptr = malloc((out->n_groups + 1) * sizeof(uint32_t));
  out->kofs = malloc(EF_MAX(nnz, 1) * sizeof(uint32_t));
  out->blocks = ef_aligned_alloc(block_bytes);
  out->bias = ef_aligned_alloc(out->n_groups * EF_F32_NR * sizeof(float));
  if (!out->group_ptr || !out->kofs || !out->blocks || !out->bias) {
    ef_f32_bsr_packed_free(out);
    return -2;
  }
  memset(out->blocks, 0, block_bytes);
  memset(out->bias, 0, out->n_groups * EF_F32_NR * sizeof(float));
  size_t at = 0;
  for (size_t g = 0; g < out->n_groups; g++) {
    const size_t n0 = g * EF_F32_NR;
    for (size_t j = 0; j < EF_F32_NR && n0 + j < n; j++) out->bias[n0 + j] = bias ? bias[n0 + j] : 0.0f;
    out->group_ptr[g] = (uint32_t)at;
    for (size_t b = 0; b < kb; b++) {
      const size_t k0 = b * EF_F32_BSR_KB;
      if (!f32_block_nonzero(w, n, k, n0, k0)) continue;
      float* dst = out->blocks + at * EF_F32_BSR_BLOCK_FLOATS;
      for (size_t j = 0; j < EF_F32_NR && n0 + j < n; j++)
        for (size_t kk = k0; kk < EF_MIN(k, k0 + EF_F32_BSR_KB); kk++) dst[(kk - k0) * EF_F32_NR + j] = w[(n0 + j) * k + kk];
      out->kofs[at++] = (uint32_t)k0;
    }
  }
  out->group_ptr[out->n_groups] = (uint32_t)at;
  return 0;
}

typedef struct {
  const ef_f32_gemm_config* config;
  size_t m;
  const float* x; /* [m][ldx], K padded to a multiple of 4 */
  size_t ldx;
  const ef_f32_bsr_packed* w;
  float* c;
  float lo, hi;
} f32_bsr_job;

/* A range of column groups, all M rows for each (the group's blocks stay in L1 while every
 * row tile reuses them). */
static void f32_bsr_range(void* ctx, size_t begin, size_t end) {
  const f32_bsr_job* j = ctx;
  const ef_f32_bsr_packed* w = j->w;
  const size_t mr_max = j->config->mr;
  for (size_t g = begin; g < end; g++) {
    const size_t b0 = w->group_ptr[g], nb = w->group_ptr[g + 1] - b0;
    const size_t n0 = g * EF_F32_NR, nc = EF_MIN(EF_F32_NR, w->n - n0);
    for (size_t m0 = 0; m0 < j->m; m0 += mr_max) {
      const size_t mr = EF_MIN(mr_max, j->m - m0);
      j->config->bsr[mr - 1](mr, nc, nb, w->kofs + b0, j->x + m0 * j->ldx, j->ldx,
                             w->blocks + b0 * EF_F32_BSR_BLOCK_FLOATS, w->bias + n0, j->c + m0 * w->n + n0, w->n,
                             j->lo, j->hi);
    }
  }
}

int ef_f32_bsr_gemm(const ef_f32_gemm_config* config, size_t m, const float* x, const ef_f32_bsr_packed* w, float* c,
                    float out_min, float out_max) {
  if (config == NULL) config = ef_f32_gemm_select();
  if (m == 0) return 0;
  /* A block reads 4 activations from its column; when K is not a multiple of 4 the last
   * block would read past a row (the next row's values, or past the buffer on the last row,
   * and 0 * inf is NaN), so the rows are copied with zero padding first. */
  const size_t k = w->k, ldx = EF_ROUND_UP(k, EF_F32_BSR_KB);
  float* padded = NULL;
  if (ldx != k) {
    padded = ef_aligned_alloc(m * ldx * sizeof(float));
    if (padded == NULL) return -2;
    for (size_t r = 0; r < m; r++) {
      memcpy(padded + r * ldx, x + r * k, k * sizeof(float));
      memset(padded + r * ldx + k, 0, (ldx - k) * sizeof(float));
    }
  }
  f32_bsr_job job = {config, m, padded ? padded : x, ldx, w, c, out_min, out_max};
  const size_t per_group = m * EF_F32_BSR_BLOCK_FLOATS * EF_MAX(w->nnz_blocks / EF_MAX(w->n_groups, 1), 1);
  ef_parallel_for(w->n_groups, per_group, f32_bsr_range, &job);
  ef_aligned_free(padded);
  return 0;
}
