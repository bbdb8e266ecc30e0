/* bsr-gemm operator: block packing, activation preparation, kernel selection and the split
 * of the channel groups over threads. ISA-independent; kernels are in scalar.c / avx2.c /
 * avxvnni.c / avx512.c / neon.c. */
#include <stdlib.h>
#include <string.h>

#include "bsr-gemm/bsr-gemm.h"
#include "threadpool.h"

const ef_bsr_config* ef_bsr_select(void) {
  const uint32_t flags = ef_arch_flags();
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AVX512) return &ef_bsr_config_avx512;
  if (flags & EF_ARCH_X86_AVXVNNI) return &ef_bsr_config_avxvnni;
  if (flags & EF_ARCH_X86_AVX2) return &ef_bsr_config_avx2;
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) return &ef_bsr_config_neon;
#endif
  (void)flags;
  return &ef_bsr_config_scalar;
}

static int block_nonzero(const int8_t* w, size_t n, size_t k, size_t n0, size_t k0) {
  for (size_t j = n0; j < EF_MIN(n, n0 + EF_BSR_NR); j++)
    for (size_t kk = k0; kk < EF_MIN(k, k0 + EF_BSR_KB); kk++)
      if (w[j * k + kk] != 0) return 1;
  return 0;
}

int ef_bsr_pack(const int8_t* w, size_t n, size_t k, const float* w_scale, const int32_t* w_zp, const float* bias,
                ef_bsr_packed* out) {
  memset(out, 0, sizeof *out);
  if (n == 0 || k == 0 || k > EF_BSR_MAX_K) return -1;
  out->n = n;
  out->k = k;
  out->kp = EF_ROUND_UP(k, EF_BSR_KB);
  out->n_groups = EF_DIV_UP(n, EF_BSR_NR);
  const size_t kb = out->kp / EF_BSR_KB;
  size_t nnz = 0;
  for (size_t g = 0; g < out->n_groups; g++)
    for (size_t b = 0; b < kb; b++) nnz += (size_t)block_nonzero(w, n, k, g * EF_BSR_NR, b * EF_BSR_KB);
  out->nnz_blocks = nnz;
  out->header = ef_aligned_alloc(out->n_groups * EF_QS8_BLOCK_HEADER_BYTES);
  out->blocks = ef_aligned_alloc(EF_MAX(nnz, 1) * EF_BSR_BLOCK_BYTES);
  out->group_ptr = malloc((out->n_groups + 1) * sizeof(uint32_t));
  out->kofs = malloc(EF_MAX(nnz, 1) * sizeof(uint32_t));
  if (!out->header || !out->blocks || !out->group_ptr || !out->kofs) {
    ef_bsr_packed_free(out);
    return -2;
  }
  memset(out->header, 0, out->n_groups * EF_QS8_BLOCK_HEADER_BYTES);
  memset(out->blocks, 0, EF_MAX(nnz, 1) * EF_BSR_BLOCK_BYTES);
  size_t at = 0;
  for (size_t g = 0; g < out->n_groups; g++) {
    const size_t n0 = g * EF_BSR_NR;
    uint8_t* h = out->header + g * EF_QS8_BLOCK_HEADER_BYTES;
    int32_t* colsum = (int32_t*)h;
    int32_t* zp = colsum + EF_QS8_NR;
    float* scale = (float*)(zp + EF_QS8_NR);
    float* bs = scale + EF_QS8_NR;
    for (size_t j = 0; j < EF_BSR_NR && n0 + j < n; j++) {
      int32_t sum = 0;
      for (size_t kk = 0; kk < k; kk++) sum += w[(n0 + j) * k + kk];
      colsum[j] = sum;
      zp[j] = w_zp ? w_zp[n0 + j] : 0;
      scale[j] = w_scale[n0 + j];
      bs[j] = bias ? bias[n0 + j] : 0.0f;
    }
    out->group_ptr[g] = (uint32_t)at;
    for (size_t b = 0; b < kb; b++) {
      const size_t k0 = b * EF_BSR_KB;
      if (!block_nonzero(w, n, k, n0, k0)) continue;
      int8_t* dst = out->blocks + at * EF_BSR_BLOCK_BYTES;
      for (size_t j = 0; j < EF_BSR_NR && n0 + j < n; j++)
        for (size_t kk = k0; kk < EF_MIN(k, k0 + EF_BSR_KB); kk++) dst[j * EF_BSR_KB + (kk - k0)] = w[(n0 + j) * k + kk];
      out->kofs[at++] = (uint32_t)k0;
    }
  }
  out->group_ptr[out->n_groups] = (uint32_t)at;
  return 0;
}

void ef_bsr_packed_free(ef_bsr_packed* p) {
  ef_aligned_free(p->header);
  ef_aligned_free(p->blocks);
  free(p->group_ptr);
  free(p->kofs);
  p->header = NULL;
  p->blocks = NULL;
  p->group_ptr = NULL;
  p->kofs = NULL;
}

typedef struct {
  const ef_bsr_config* config;
  size_t m;
  const uint8_t* a_prep;
  const int32_t* a_zp;
  const float* a_scale;
  const int32_t* rowsum;
  const ef_bsr_packed* w;
  void* c;
  size_t elem;
  const ef_qs8_gemm_params* params;
} bsr_job;

/* One thread's share: a range of channel groups, all M rows for each (the group's blocks
 * stay in L1 while every row tile reuses them). */
static void bsr_range(void* ctx, size_t begin, size_t end) {
  const bsr_job* j = ctx;
  const size_t mr_max = j->config->mr, kp = j->w->kp;
  const size_t a_elem = j->config->a_u8 ? 1 : sizeof(int16_t);
  for (size_t g = begin; g < end; g++) {
    const size_t b0 = j->w->group_ptr[g], nb = j->w->group_ptr[g + 1] - b0;
    const size_t n0 = g * EF_BSR_NR, nc = EF_MIN(EF_BSR_NR, j->w->n - n0);
    const uint8_t* header = j->w->header + g * EF_QS8_BLOCK_HEADER_BYTES;
    if (j->config->group) {
      j->config->group(j->m, nc, nb, j->w->kofs + b0, j->w->blocks + b0 * EF_BSR_BLOCK_BYTES, j->a_prep, kp, j->a_zp,
                       j->a_scale, j->rowsum, header, (uint8_t*)j->c + n0 * j->elem, j->w->n, j->params);
      continue;
    }
    for (size_t m0 = 0; m0 < j->m; m0 += mr_max) {
      const size_t mr = EF_MIN(mr_max, j->m - m0);
      j->config->ukernel[mr - 1](mr, nc, nb, j->w->kofs + b0, j->w->blocks + b0 * EF_BSR_BLOCK_BYTES,
                                 j->a_prep + m0 * kp * a_elem, kp, j->a_zp + m0, j->a_scale + m0, j->rowsum + m0,
                                 header, (uint8_t*)j->c + (m0 * j->w->n + n0) * j->elem, j->w->n, j->params);
    }
  }
}

int ef_bsr_gemm(const ef_bsr_config* config, size_t m, const int8_t* a, const int32_t* a_zp, const float* a_scale,
                const ef_bsr_packed* w, void* c, const ef_qs8_gemm_params* params) {
  if (config == NULL) config = ef_bsr_select();
  if (m == 0) return 0;
  const size_t k = w->k, kp = w->kp;
  /* As in qs8-gemm: activations widened to int16 (vpmaddwd kernels, scalar) or offset to
   * uint8 a + 128 (vpdpbusd kernels, corrected by 128 * colsum), row sums on the way. */
  const size_t a_elem = config->a_u8 ? 1 : sizeof(int16_t);
  const size_t a_bytes = EF_ROUND_UP(m * kp * a_elem, 64), bytes = a_bytes + m * sizeof(int32_t);
  /* the small layers of a CNN plan (a few KB of activations) prepare on the stack: an aligned
   * malloc and free per call were a sizeable part of a sub-microsecond layer */
  _Alignas(64) uint8_t stack[EF_STACK_SCRATCH];
  uint8_t* a_prep = ef_scratch(bytes, stack, sizeof stack);
  if (a_prep == NULL) return -2;
  int32_t* rowsum = (int32_t*)(a_prep + a_bytes);
#if EF_ARCH_X86
  if (config->a_u8 && (ef_arch_flags() & EF_ARCH_X86_AVX512))
    ef_qs8_prepare_rows_u8__avx512(a, m, k, kp, a_prep, rowsum); /* the same bytes and sums, 64 at a time */
  else
#endif
    ef_qs8_prepare_activations(a, m, k, kp, config->a_u8, a_prep, rowsum);
  bsr_job job = {config, m, a_prep, a_zp, a_scale, rowsum, w, c, params->out_int8 ? 1 : sizeof(float), params};
  const size_t per_group = m * EF_BSR_BLOCK_BYTES * EF_MAX(w->nnz_blocks / EF_MAX(w->n_groups, 1), 1);
  ef_parallel_for(w->n_groups, per_group, bsr_range, &job);
  ef_scratch_free(a_prep, stack);
  return 0;
}
