/* f32-gemm operator: packing, dispatch, threads over 16-column blocks. */
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
} f32_job;

static void f32_range(void* ctx, size_t begin, size_t end) {
  const f32_job* j = ctx;
  const size_t mr_max = j->config->mr;
  for (size_t b = begin; b < end; b++) {
    const float* block = j->w->data + b * j->w->block_floats;
    const size_t n0 = b * EF_F32_NR, nc = EF_MIN(EF_F32_NR, j->w->n - n0);
    for (size_t m0 = 0; m0 < j->m; m0 += mr_max) {
      const size_t mr = EF_MIN(mr_max, j->m - m0);
      j->config->ukernel[mr - 1](mr, nc, j->w->k, j->x + m0 * j->w->k, j->w->k, block, j->c + m0 * j->w->n + n0,
                                 j->w->n, j->lo, j->hi);
    }
  }
}

int ef_f32_gemm(const ef_f32_gemm_config* config, size_t m, const float* x, const ef_f32_packed* w, float* c,
                float out_min, float out_max) {
  if (config == NULL) config = ef_f32_gemm_select();
  if (m == 0) return 0;
  f32_job job = {config, m, x, w, c, out_min, out_max};
  ef_parallel_for(w->n_blocks, m * w->k * EF_F32_NR, f32_range, &job);
  return 0;
}
