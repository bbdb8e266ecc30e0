/* qs8-gemm operator: weight packing, activation preparation, kernel selection and the
 * split of the output over threads. ISA-independent; the kernels live in scalar.c/avx2.c/neon.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qs8-gemm.h"
#include "threadpool.h"

/* int8 activations [M, K] -> the layout the c2/c4 kernels read, rows padded to kp: uint8 a + 128
 * for the vpdpbusd kernels (a_u8), else int16 for the vpmaddwd ones; rowsum[r] = sum of row r
 * (the zero-point correction), computed on the way. Padding multiplies zero weights. */
void ef_qs8_prepare_activations(const int8_t* a, size_t m, size_t k, size_t kp, int a_u8, uint8_t* a_prep,
                                int32_t* rowsum) {
  for (size_t r = 0; r < m; r++) {
    const int8_t* src = a + r * k;
    int32_t sum = 0;
    if (a_u8) {
      uint8_t* dst = a_prep + r * kp;
      for (size_t kk = 0; kk < k; kk++) {
        dst[kk] = (uint8_t)(src[kk] + 128);
        sum += src[kk];
      }
      for (size_t kk = k; kk < kp; kk++) dst[kk] = 128;
    } else {
      int16_t* dst = (int16_t*)a_prep + r * kp;
      for (size_t kk = 0; kk < k; kk++) {
        dst[kk] = src[kk];
        sum += src[kk];
      }
      for (size_t kk = k; kk < kp; kk++) dst[kk] = 0;
    }
    rowsum[r] = sum;
  }
}

const ef_qs8_gemm_config* ef_qs8_gemm_select(void) {
  const uint32_t flags = ef_arch_flags();
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AMX) return &ef_qs8_gemm_config_amx;
  if (flags & EF_ARCH_X86_AVX512) return &ef_qs8_gemm_config_avx512;
  if (flags & EF_ARCH_X86_AVXVNNI) return &ef_qs8_gemm_config_avxvnni;
  if (flags & EF_ARCH_X86_AVX2) return &ef_qs8_gemm_config_avx2;
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) return &ef_qs8_gemm_config_neon;
#endif
  (void)flags;
  return &ef_qs8_gemm_config_scalar;
}

int ef_qs8_pack(const int8_t* w, size_t n, size_t k, const float* w_scale, const int32_t* w_zp,
                const float* bias, ef_qs8_packed* out) {
  memset(out, 0, sizeof *out);
  if (n == 0 || k == 0 || k > EF_QS8_MAX_K) return -1;
  out->n = n;
  out->k = k;
  out->kp = EF_ROUND_UP(k, 4);
  out->n_blocks = EF_DIV_UP(n, EF_QS8_NR);
  out->block_bytes = EF_QS8_BLOCK_HEADER_BYTES + out->kp * EF_QS8_NR;
  out->data = ef_aligned_alloc(out->n_blocks * out->block_bytes);
  if (out->data == NULL) return -2;
  memset(out->data, 0, out->n_blocks * out->block_bytes);

  for (size_t b = 0; b < out->n_blocks; b++) {
    uint8_t* block = out->data + b * out->block_bytes;
    int32_t* colsum = (int32_t*)block;
    int32_t* zp = colsum + EF_QS8_NR;
    float* scale = (float*)(zp + EF_QS8_NR);
    float* bs = scale + EF_QS8_NR;
    int8_t* wp = (int8_t*)(block + EF_QS8_BLOCK_HEADER_BYTES);
    for (size_t j = 0; j < EF_QS8_NR && b * EF_QS8_NR + j < n; j++) {
      const size_t col = b * EF_QS8_NR + j;
      const int8_t* wrow = w + col * k;
      int32_t sum = 0;
      for (size_t kk = 0; kk < k; kk++) {
        sum += wrow[kk];
        wp[(kk / 2) * 2 * EF_QS8_NR + 2 * j + (kk % 2)] = wrow[kk];
      }
      colsum[j] = sum;
      zp[j] = w_zp ? w_zp[col] : 0;
      scale[j] = w_scale[col];
      bs[j] = bias ? bias[col] : 0.0f;
      if (zp[j] != 0) out->has_w_zp = 1;
    }
  }

  /* The x4 panel for AMX and AVX-512 VNNI: by what the CPU has (not the current set_isa
   * override), so one packing serves every ISA this process may switch to. */
  out->kp64 = EF_ROUND_UP(k, EF_QS8_PANEL_KC);
#if EF_ARCH_X86
  if (ef_arch_flags_detected() & (EF_ARCH_X86_AVX512 | EF_ARCH_X86_AMX)) {
    const size_t panel_bytes = out->kp64 * EF_QS8_NR;
    out->panel = ef_aligned_alloc(out->n_blocks * panel_bytes);
    if (out->panel == NULL) {
      ef_qs8_packed_free(out);
      return -2;
    }
    memset(out->panel, 0, out->n_blocks * panel_bytes);
    for (size_t col = 0; col < n; col++) {
      uint8_t* dst = out->panel + (col / EF_QS8_NR) * panel_bytes + (col % EF_QS8_NR) * 4;
      const int8_t* wrow = w + col * k;
      for (size_t kk = 0; kk < k; kk++) dst[(kk / 4) * 4 * EF_QS8_NR + kk % 4] = (uint8_t)wrow[kk];
    }
  }
#endif
  return 0;
}

void ef_qs8_packed_free(ef_qs8_packed* p) {
  ef_aligned_free(p->data);
  ef_aligned_free(p->panel);
  p->data = NULL;
  p->panel = NULL;
}

typedef struct {
  const ef_qs8_gemm_config* config;
  size_t m;
  const uint8_t* a_prep; /* int16 or uint8 rows of kp elements (config->a_u8) */
  const int32_t* a_zp;
  const float* a_scale;
  const int32_t* rowsum;
  const ef_qs8_packed* w;
  void* c;
  size_t elem; /* output element size */
  const ef_qs8_gemm_params* params;
} gemm_job;

/* One thread's share: a range of 16-column blocks, all M rows for each block. Block-outer
 * order keeps one block of weights in L1/L2 while every row tile reuses it. */
static void gemm_range(void* ctx, size_t begin, size_t end) {
  const gemm_job* j = ctx;
  const size_t mr_max = j->config->mr;
  const size_t kp = j->w->kp;
  for (size_t b = begin; b < end; b++) {
    const uint8_t* block = j->w->data + b * j->w->block_bytes;
    const size_t n0 = b * EF_QS8_NR;
    const size_t nc = EF_MIN(EF_QS8_NR, j->w->n - n0);
    for (size_t m0 = 0; m0 < j->m; m0 += mr_max) {
      const size_t mr = EF_MIN(mr_max, j->m - m0);
      const size_t a_elem = j->config->a_u8 ? 1 : sizeof(int16_t);
      j->config->ukernel[mr - 1](mr, nc, kp, j->a_prep + m0 * kp * a_elem, kp, j->a_zp + m0, j->a_scale + m0, j->rowsum + m0,
                                 block, (uint8_t*)j->c + (m0 * j->w->n + n0) * j->elem, j->w->n, j->params);
    }
  }
}

typedef struct {
  ef_qs8_panel_fn fn;
  size_t blocks_per_item, n_blocks;
  ef_qs8_panel_args args;
} panel_job;

static void panel_range(void* ctx, size_t begin, size_t end) {
  const panel_job* j = ctx;
  j->fn(&j->args, begin * j->blocks_per_item, EF_MIN(end * j->blocks_per_item, j->n_blocks));
}

/* The panel path: activations as uint8 rows of kp64 (K padded with 128, i.e. a = 0), rows
 * padded to a multiple of 16; threads split the output columns in units of panel_blocks.
 * a_prep holds m_pad * kp64 bytes, then per row: rowsum, and (qd8) scale and zero point. */
static void panel_run(const ef_qs8_gemm_config* config, size_t m, uint8_t* a_prep, const int32_t* a_zp,
                      const float* a_scale, const int32_t* rowsum, const ef_qs8_packed* w, void* c,
                      const ef_qs8_gemm_params* params) {
  const size_t kp64 = w->kp64, m_pad = EF_ROUND_UP(m, config->panel_row_pad);
  memset(a_prep + m * kp64, 128, (m_pad - m) * kp64);
  const size_t per = config->panel_blocks;
  panel_job job = {config->panel, per, w->n_blocks, {m, m_pad, a_prep, kp64, a_zp, a_scale, rowsum, w, c, params}};
  /* The pool's cost unit is an AVX2 multiply-add; AMX does ~16-32x as many per cycle, so a
   * job is worth a second thread only at that many times the multiply-adds. */
  const size_t cost = m_pad * kp64 * EF_QS8_NR * per / config->panel_speedup;
  ef_parallel_for(EF_DIV_UP(w->n_blocks, per), cost, panel_range, &job);
}

/* The scratch of a panel call: m_pad rows of kp64 activation bytes (M rounded up to the
 * config's row padding), then per row the rowsum and, for qd8, scale and zero point; on the
 * caller's stack when it fits (ef_scratch: a GEMV up to K ~ 2000 on AVX-512). */
typedef struct {
  uint8_t* a_prep;
  int32_t* rowsum;
  float* scale;
  int32_t* zp;
} panel_scratch;

static int panel_scratch_get(const ef_qs8_gemm_config* config, size_t m, const ef_qs8_packed* w, uint8_t* stack,
                             size_t stack_bytes, panel_scratch* s) {
  const size_t rows_bytes = EF_ROUND_UP(m, config->panel_row_pad) * w->kp64;
  s->a_prep = ef_scratch(rows_bytes + 3 * m * sizeof(int32_t), stack, stack_bytes);
  if (s->a_prep == NULL) return -2;
  s->rowsum = (int32_t*)(s->a_prep + rows_bytes);
  s->scale = (float*)(s->rowsum + m);
  s->zp = (int32_t*)(s->scale + m);
  return 0;
}

static int panel_gemm(const ef_qs8_gemm_config* config, size_t m, const int8_t* a, const int32_t* a_zp,
                      const float* a_scale, const ef_qs8_packed* w, void* c, const ef_qs8_gemm_params* params) {
  const size_t k = w->k, kp64 = w->kp64;
  _Alignas(64) uint8_t stack[EF_STACK_SCRATCH];
  panel_scratch s;
  if (panel_scratch_get(config, m, w, stack, sizeof stack, &s) != 0) return -2;
#if EF_ARCH_X86
  ef_qs8_prepare_rows_u8__avx512(a, m, k, kp64, s.a_prep, s.rowsum); /* the panel path is AMX: AVX-512 is there */
#else
  for (size_t r = 0; r < m; r++) {
    const int8_t* src = a + r * k;
    uint8_t* dst = s.a_prep + r * kp64;
    int32_t sum = 0;
    for (size_t kk = 0; kk < k; kk++) {
      dst[kk] = (uint8_t)(src[kk] + 128);
      sum += src[kk];
    }
    memset(dst + k, 128, kp64 - k);
    s.rowsum[r] = sum;
  }
#endif
  panel_run(config, m, s.a_prep, a_zp, a_scale, s.rowsum, w, c, params);
  ef_scratch_free(s.a_prep, stack);
  return 0;
}

/* The config that runs this call: a panel config whose M range or packing does not fit hands
 * the call to its fallback (AMX -> AVX-512 for M = 1; AVX-512 -> AVX2 for unpanelled weights). */
static const ef_qs8_gemm_config* resolve(const ef_qs8_gemm_config* config, size_t m, const ef_qs8_packed* w) {
  while (config->panel != NULL &&
         (w->panel == NULL || m < config->panel_min_m || (config->panel_max_m != 0 && m > config->panel_max_m)))
    config = config->fallback;
  return config;
}

int ef_qs8_gemm(const ef_qs8_gemm_config* config, size_t m, const int8_t* a, const int32_t* a_zp,
                const float* a_scale, const ef_qs8_packed* w, void* c, const ef_qs8_gemm_params* params) {
  if (config == NULL) config = ef_qs8_gemm_select();
  if (m == 0) return 0;
  config = resolve(config, m, w);
  if (config->panel != NULL) return panel_gemm(config, m, a, a_zp, a_scale, w, c, params);
  const size_t k = w->k, kp = w->kp;
  /* Activations are prepared once per call (O(MK), against O(MNK) for the GEMM): widened to
   * int16 for kernels that multiply int16 pairs, or offset to uint8 (a + 128) for the VNNI
   * kernels; the row sums come for free. Padding past K multiplies zero weights. */
  const size_t a_elem = config->a_u8 ? 1 : sizeof(int16_t);
  _Alignas(64) uint8_t stack[EF_STACK_SCRATCH];
  uint8_t* a_prep = ef_scratch(EF_ROUND_UP(m * kp * a_elem, 4) + m * sizeof(int32_t), stack, sizeof stack);
  if (a_prep == NULL) return -2;
  int32_t* rowsum = (int32_t*)(a_prep + EF_ROUND_UP(m * kp * a_elem, 4));
  ef_qs8_prepare_activations(a, m, k, kp, config->a_u8, a_prep, rowsum);
  gemm_job job = {config, m, a_prep, a_zp, a_scale, rowsum, w, c, params->out_int8 ? 1 : sizeof(float), params};
  ef_parallel_for(w->n_blocks, m * kp * EF_QS8_NR, gemm_range, &job);
  ef_scratch_free(a_prep, stack);
  return 0;
}

void ef_qd8_quantize_rows_asym(const float* x, size_t m, size_t k, int8_t* q, float* scale, int32_t* zp) {
  for (size_t r = 0; r < m; r++) {
    const float* xr = x + r * k;
    float lo = 0.0f, hi = 0.0f;
    for (size_t i = 0; i < k; i++) {
      lo = xr[i] < lo ? xr[i] : lo;
      hi = xr[i] > hi ? xr[i] : hi;
    }
    const float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
    float z = nearbyintf(-128.0f - lo / s);
    z = z < -128.0f ? -128.0f : (z > 127.0f ? 127.0f : z);
    for (size_t i = 0; i < k; i++) {
      float v = nearbyintf(xr[i] / s) + z;
      v = v > -128.0f ? v : -128.0f; /* NaN -> -128 */
      v = v < 127.0f ? v : 127.0f;
      q[r * k + i] = (int8_t)v;
    }
    scale[r] = s;
    zp[r] = (int32_t)z;
  }
}

int ef_qd8_gemm(const ef_qs8_gemm_config* config, size_t m, const float* x, const ef_qs8_packed* w, void* c,
                const ef_qs8_gemm_params* params) {
  if (m == 0) return 0;
#if EF_ARCH_X86
  if (config == NULL) config = ef_qs8_gemm_select();
  config = resolve(config, m, w);
  if (config->panel != NULL) { /* AMX: quantize straight into the tile layout (AVX-512 with AMX) */
    _Alignas(64) uint8_t stack[EF_STACK_SCRATCH];
    panel_scratch s;
    if (panel_scratch_get(config, m, w, stack, sizeof stack, &s) != 0) return -2;
    ef_qd8_quantize_rows_u8__avx512(x, m, w->k, w->kp64, s.a_prep, s.scale, s.zp, s.rowsum);
    panel_run(config, m, s.a_prep, s.zp, s.scale, s.rowsum, w, c, params);
    ef_scratch_free(s.a_prep, stack);
    return 0;
  }
#endif
  _Alignas(64) int8_t stack[EF_STACK_SCRATCH];
  int8_t* q = ef_scratch(m * w->k + m * (sizeof(float) + sizeof(int32_t)) + 64, stack, sizeof stack);
  if (q == NULL) return -2;
  float* scale = (float*)(q + EF_ROUND_UP(m * w->k, 4));
  int32_t* zp = (int32_t*)(scale + m);
#if EF_ARCH_X86
  if (ef_arch_flags() & EF_ARCH_X86_AVX2) ef_qd8_quantize_rows_asym__avx2(x, m, w->k, q, scale, zp);
  else
#endif
    ef_qd8_quantize_rows_asym(x, m, w->k, q, scale, zp);
  const int rc = ef_qs8_gemm(config, m, q, zp, scale, w, c, params);
  ef_scratch_free(q, stack);
  return rc;
}
