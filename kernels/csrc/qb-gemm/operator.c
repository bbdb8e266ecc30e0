/* qb-gemm operator: packing 4/2-bit groups, dynamic activation quantization, dispatch,
 * threads over output columns. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qb-gemm.h"
#include "threadpool.h"

const ef_qb_gemm_config* ef_qb_gemm_select(void) {
  const uint32_t flags = ef_arch_flags();
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AVXVNNI) return &ef_qb_gemm_config_avxvnni;
  if (flags & EF_ARCH_X86_AVX2) return &ef_qb_gemm_config_avx2;
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) return &ef_qb_gemm_config_neon;
#endif
  (void)flags;
  return &ef_qb_gemm_config_scalar;
}

int ef_qb_pack(const uint8_t* q, size_t n, size_t k, int bits, int group, const float* d, const float* m,
               const float* bias, ef_qb_packed* out) {
  memset(out, 0, sizeof *out);
  if ((bits != 4 && bits != 2) || (group != 32 && group != 64 && group != 128) || n == 0 || k == 0) return -1;
  out->n = n;
  out->k = k;
  out->bits = bits;
  out->group = group;
  out->groups = EF_DIV_UP(k, (size_t)group);
  out->row_bytes = out->groups * EF_QB_BLOCK_BYTES(bits, group);
  out->data = ef_aligned_alloc(n * out->row_bytes);
  out->bias = ef_aligned_alloc(n * sizeof(float));
  if (out->data == NULL || out->bias == NULL) { ef_qb_packed_free(out); return -2; }
  memset(out->data, 0, n * out->row_bytes);
  for (size_t col = 0; col < n; col++) {
    out->bias[col] = bias ? bias[col] : 0.0f;
    for (size_t g = 0; g < out->groups; g++) {
      uint8_t* block = out->data + col * out->row_bytes + g * EF_QB_BLOCK_BYTES(bits, group);
      const uint16_t dh = ef_fp32_to_fp16(d[col * out->groups + g]), mh = ef_fp32_to_fp16(m[col * out->groups + g]);
      memcpy(block, &dh, 2);
      memcpy(block + 2, &mh, 2);
      uint8_t* qs = block + EF_QB_HEADER_BYTES;
      for (size_t i = 0; i < (size_t)group && g * group + i < k; i++) {
        const uint8_t v = q[col * k + g * group + i];
        uint8_t* chunk = qs + (i / EF_QB_CHUNK) * EF_QB_CHUNK_BYTES(bits);
        const size_t j = i % EF_QB_CHUNK;
        if (bits == 4) chunk[j % 16] |= (uint8_t)((v & 15) << (4 * (j / 16)));
        else chunk[j % 8] |= (uint8_t)((v & 3) << (2 * (j / 8)));
      }
    }
  }
  return 0;
}

void ef_qb_packed_free(ef_qb_packed* p) {
  ef_aligned_free(p->data);
  ef_aligned_free(p->bias);
  p->data = NULL;
  p->bias = NULL;
}

float ef_qd8_quantize_row(const float* x, size_t k, size_t kp, size_t group, int8_t* xq, float* xsum) {
  float amax = 0.0f;
  for (size_t i = 0; i < k; i++) amax = fmaxf(amax, fabsf(x[i]));
  const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
  const float inv = 1.0f / scale;
  for (size_t i = 0; i < k; i++) {
    float t = x[i] * inv;
    t = t > -127.0f ? t : -127.0f; /* NaN and rounding overshoot stay in range */
    t = t < 127.0f ? t : 127.0f;
    xq[i] = (int8_t)nearbyintf(t);
  }
  memset(xq + k, 0, kp - k);
  for (size_t g = 0; g < kp / group; g++) {
    int32_t s = 0;
    for (size_t i = 0; i < group; i++) s += xq[g * group + i];
    xsum[g] = (float)s;
  }
  return scale;
}

typedef struct {
  const ef_qb_gemm_config* config;
  size_t m, kp;
  const int8_t* xq;
  const float* xsum;
  const float* sx;
  const ef_qb_packed* w;
  float* c;
} qb_job;

static void qb_range(void* ctx, size_t begin, size_t end) {
  const qb_job* j = ctx;
  const ef_qb_packed* w = j->w;
  const ef_qb_gemm_ukernel_fn* kernels = w->bits == 4 ? j->config->q4 : j->config->q2;
  for (size_t m0 = 0; m0 < j->m; m0 += j->config->mr) {
    const size_t mr = EF_MIN(j->config->mr, j->m - m0);
    const size_t nr = j->config->nr[mr - 1];
    for (size_t col = begin; col < end; col += nr) {
      const size_t nc = EF_MIN(nr, end - col);
      kernels[mr - 1](mr, nc, w->groups, (size_t)w->group, j->xq + m0 * j->kp, j->kp, j->xsum + m0 * w->groups,
                      j->sx + m0, w->data + col * w->row_bytes, w->row_bytes, w->bias + col, j->c + m0 * w->n + col, w->n);
    }
  }
}

int ef_qb_gemm(const ef_qb_gemm_config* config, size_t m, const float* x, const ef_qb_packed* w, float* c) {
  if (config == NULL) config = ef_qb_gemm_select();
  if (m == 0) return 0;
  const size_t kp = w->groups * (size_t)w->group;
  /* One scratch allocation: int8 rows (padded), per-group sums, per-row scales. */
  int8_t* xq = ef_aligned_alloc(m * kp + m * w->groups * sizeof(float) + m * sizeof(float) + 64);
  if (xq == NULL) return -2;
  float* xsum = (float*)(xq + EF_ROUND_UP(m * kp, 4));
  float* sx = (float*)(xsum + m * w->groups);
  for (size_t r = 0; r < m; r++)
    sx[r] = ef_qd8_quantize_row(x + r * w->k, w->k, kp, (size_t)w->group, xq + r * kp, xsum + r * w->groups);
  qb_job job = {config, m, kp, xq, xsum, sx, w, c};
  ef_parallel_for(w->n, m * kp, qb_range, &job);
  ef_aligned_free(xq);
  return 0;
}
