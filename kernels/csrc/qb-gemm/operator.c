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
  if (flags & EF_ARCH_X86_AVX512) return &ef_qb_gemm_config_avx512;
  if (flags & EF_ARCH_X86_AVXVNNI) return &ef_qb_gemm_config_avxvnni;
  if (flags & EF_ARCH_X86_AVX2) return &ef_qb_gemm_config_avx2;
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) return &ef_qb_gemm_config_neon;
#endif
  (void)flags;
  return &ef_qb_gemm_config_scalar;
}

int ef_qb_pack_layout(const uint8_t* q, size_t n, size_t k, int bits, int group, const float* d, const float* m,
                      const float* bias, int layout, ef_qb_packed* out) {
  memset(out, 0, sizeof *out);
  if ((bits != 4 && bits != 2) || (group != 32 && group != 64 && group != 128) || n == 0 || k == 0) return -1;
  if (layout != EF_QB_LAYOUT_ROWS && layout != EF_QB_LAYOUT_P16) return -1;
  out->n = n;
  out->k = k;
  out->bits = bits;
  out->group = group;
  out->layout = layout;
  out->groups = EF_DIV_UP(k, (size_t)group);
  out->row_bytes = out->groups * EF_QB_BLOCK_BYTES(bits, group);
  out->panels = EF_DIV_UP(n, (size_t)EF_QB_PANEL);
  out->panel_bytes = out->groups * EF_QB_P16_GROUP_BYTES(bits, group);
  out->data_bytes = layout == EF_QB_LAYOUT_P16 ? out->panels * out->panel_bytes : n * out->row_bytes;
  out->data = ef_aligned_alloc(out->data_bytes);
  out->bias = ef_aligned_alloc(n * sizeof(float));
  if (out->data == NULL || out->bias == NULL) { ef_qb_packed_free(out); return -2; }
  memset(out->data, 0, out->data_bytes);
  for (size_t col = 0; col < n; col++) {
    out->bias[col] = bias ? bias[col] : 0.0f;
    for (size_t g = 0; g < out->groups; g++) {
      const uint16_t dh = ef_fp32_to_fp16(d[col * out->groups + g]), mh = ef_fp32_to_fp16(m[col * out->groups + g]);
      if (layout == EF_QB_LAYOUT_P16) {
        const size_t c = col % EF_QB_PANEL;
        uint8_t* rec = out->data + (col / EF_QB_PANEL) * out->panel_bytes + g * EF_QB_P16_GROUP_BYTES(bits, group);
        memcpy(rec + 2 * c, &dh, 2);
        memcpy(rec + 32 + 2 * c, &mh, 2);
        for (size_t i = 0; i < (size_t)group && g * group + i < k; i++) {
          size_t step, byte;
          unsigned shift;
          ef_qb_p16_position(bits, i, &step, &byte, &shift);
          rec[64 + 64 * step + 4 * c + byte] |= (uint8_t)((q[col * k + g * group + i] & ((1u << bits) - 1)) << shift);
        }
        continue;
      }
      uint8_t* block = out->data + col * out->row_bytes + g * EF_QB_BLOCK_BYTES(bits, group);
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

int ef_qb_pack(const uint8_t* q, size_t n, size_t k, int bits, int group, const float* d, const float* m,
               const float* bias, ef_qb_packed* out) {
  return ef_qb_pack_layout(q, n, k, bits, group, d, m, bias, ef_qb_gemm_select()->layout, out);
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
  float lo, hi; /* output clamp; (-inf, inf) for none */
} qb_job;

/* The fused activation of a tile the kernel just wrote (rows [m0, m0 + mr), columns
 * [col, col + nc)): the same ef_clamp as every other family's epilogue. */
static void clamp_tile(const qb_job* j, size_t m0, size_t mr, size_t col, size_t nc) {
  if (j->lo == -INFINITY && j->hi == INFINITY) return;
  for (size_t r = m0; r < m0 + mr; r++) {
    float* y = j->c + r * j->w->n + col;
    for (size_t i = 0; i < nc; i++) y[i] = ef_clamp(y[i], j->lo, j->hi);
  }
}

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
      clamp_tile(j, m0, mr, col, nc);
    }
  }
}

/* P16: work items are `unit` panels (the np of the widest tile), so a thread's range never
 * splits a tile; the last item may hold fewer panels, and its last panel fewer columns. */
static void qb_range_p16(void* ctx, size_t begin, size_t end) {
  const qb_job* j = ctx;
  const ef_qb_packed* w = j->w;
  const ef_qb_gemm_config* cfg = j->config;
  const ef_qb_gemm_p16_fn* kernels = w->bits == 4 ? cfg->p16_q4 : cfg->p16_q2;
  const size_t unit = cfg->np[0];
  const size_t p_end = EF_MIN(end * unit, w->panels);
  for (size_t m0 = 0; m0 < j->m; m0 += cfg->mr) {
    const size_t mr = EF_MIN(cfg->mr, j->m - m0);
    const size_t npr = cfg->np[mr - 1];
    for (size_t p = begin * unit; p < p_end; p += npr) {
      const size_t np = EF_MIN(npr, p_end - p), col = p * EF_QB_PANEL;
      kernels[mr - 1](mr, np, w->n - col, w->groups, (size_t)w->group, j->xq + m0 * j->kp, j->kp,
                      j->xsum + m0 * w->groups, j->sx + m0, w->data + p * w->panel_bytes, w->panel_bytes,
                      w->bias + col, j->c + m0 * w->n + col, w->n);
      clamp_tile(j, m0, mr, col, EF_MIN(np * EF_QB_PANEL, w->n - col));
    }
  }
}

/* The config itself when it has kernels for w's layout, else its fallback chain, else scalar. */
static const ef_qb_gemm_config* config_for_layout(const ef_qb_gemm_config* config, int layout) {
  while (config != NULL) {
    if (layout == EF_QB_LAYOUT_P16 ? config->p16_q4[0] != NULL : config->q4[0] != NULL) return config;
    config = config->fallback;
  }
  return &ef_qb_gemm_config_scalar;
}

/* Scratch for the quantized activations up to this size lives on the stack: small GEMVs
 * skip malloc/free (the workers are done with it before ef_qb_gemm returns). */
#define QB_STACK_SCRATCH 16384

int ef_qb_gemm(const ef_qb_gemm_config* config, size_t m, const float* x, const ef_qb_packed* w, float* c,
               float out_min, float out_max) {
  if (config == NULL) config = ef_qb_gemm_select();
  if (m == 0) return 0;
  const ef_qd8_quantize_fn quantize = config->quantize ? config->quantize : ef_qd8_quantize_row;
  config = config_for_layout(config, w->layout);
  const size_t kp = w->groups * (size_t)w->group;
  /* One scratch area: int8 rows (padded), per-group sums, per-row scales. */
  const size_t scratch = EF_ROUND_UP(m * kp, 64) + m * w->groups * sizeof(float) + m * sizeof(float);
  _Alignas(64) int8_t stack[QB_STACK_SCRATCH];
  int8_t* xq = ef_scratch(scratch, stack, sizeof stack);
  if (xq == NULL) return -2;
  float* xsum = (float*)(xq + EF_ROUND_UP(m * kp, 64));
  float* sx = (float*)(xsum + m * w->groups);
  for (size_t r = 0; r < m; r++)
    sx[r] = quantize(x + r * w->k, w->k, kp, (size_t)w->group, xq + r * kp, xsum + r * w->groups);
  qb_job job = {config, m, kp, xq, xsum, sx, w, c, out_min, out_max};
  if (w->layout == EF_QB_LAYOUT_P16) {
    const size_t unit = config->np[0];
    /* cost per item: multiply-adds of `unit` panels */
    ef_parallel_for(EF_DIV_UP(w->panels, unit), unit * EF_QB_PANEL * m * kp, qb_range_p16, &job);
  } else {
    ef_parallel_for(w->n, m * kp, qb_range, &job);
  }
  ef_scratch_free(xq, stack);
  return 0;
}
