/* sparse-gemm operator: packing dense matrices into compressed rows, activation layout
 * (widened or transposed), dispatch, threads over output channels. */
#include <stdlib.h>
#include <string.h>

#include "sparse-gemm.h"
#include "threadpool.h"

/* Scratch at or below this size lives on the stack: a small GEMV is ~1 us, and malloc/free of
 * its activation buffer is a measurable part of that. */

const ef_sparse_config* ef_sparse_select(void) {
  const uint32_t flags = ef_arch_flags();
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AVX2) return &ef_sparse_config_avx2;
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) return &ef_sparse_config_neon;
#endif
  (void)flags;
  return &ef_sparse_config_scalar;
}

void ef_sparse_packed_free(ef_sparse_packed* p) {
  free(p->row_ptr);
  free(p->col);
  free(p->val);
  free(p->wsum);
  free(p->w_scale);
  free(p->bias);
  memset(p, 0, sizeof *p);
}

int ef_sparse_pack(ef_sparse_dtype dtype, const void* w, size_t n, size_t k, const float* w_scale, const float* bias,
                   ef_sparse_packed* out) {
  memset(out, 0, sizeof *out);
  if (n == 0 || k == 0 || k > 65535) return -1;
  const size_t elem = dtype == EF_SPARSE_F32 ? sizeof(float) : 1;
  size_t nnz = 0;
  for (size_t i = 0; i < n * k; i++) {
    nnz += dtype == EF_SPARSE_F32 ? ((const float*)w)[i] != 0.0f : ((const int8_t*)w)[i] != 0;
  }
  out->n = n;
  out->k = k;
  out->nnz = nnz;
  out->dtype = dtype;
  out->row_ptr = malloc((n + 1) * sizeof(uint32_t));
  out->col = calloc(nnz + EF_SPARSE_PAD, sizeof(uint16_t));
  out->val = calloc(nnz + EF_SPARSE_PAD, elem);
  out->bias = malloc(n * sizeof(float));
  if (dtype == EF_SPARSE_QS8) {
    out->wsum = malloc(n * sizeof(int32_t));
    out->w_scale = malloc(n * sizeof(float));
  }
  if (!out->row_ptr || !out->col || !out->val || !out->bias || (dtype == EF_SPARSE_QS8 && (!out->wsum || !out->w_scale))) {
    ef_sparse_packed_free(out);
    return -2;
  }
  size_t j = 0;
  for (size_t row = 0; row < n; row++) {
    out->row_ptr[row] = (uint32_t)j;
    int32_t sum = 0;
    for (size_t c = 0; c < k; c++) {
      if (dtype == EF_SPARSE_F32) {
        const float v = ((const float*)w)[row * k + c];
        if (v == 0.0f) continue;
        ((float*)out->val)[j] = v;
      } else {
        const int8_t v = ((const int8_t*)w)[row * k + c];
        if (v == 0) continue;
        ((int8_t*)out->val)[j] = v;
        sum += v;
      }
      out->col[j++] = (uint16_t)c;
    }
    out->bias[row] = bias ? bias[row] : 0.0f;
    if (dtype == EF_SPARSE_QS8) {
      out->wsum[row] = sum;
      out->w_scale[row] = w_scale[row];
    }
  }
  out->row_ptr[n] = (uint32_t)j;
  return 0;
}

typedef struct {
  const ef_sparse_config* config;
  const ef_sparse_packed* w;
  size_t m, mp;
  const void* xin; /* dot: fp32 rows or widened int32 rows; mvec: transposed */
  float* y;
  const ef_sparse_params* p;
  int mvec;
} sparse_job;

static void sparse_range(void* ctx, size_t begin, size_t end) {
  const sparse_job* j = ctx;
  if (j->mvec) j->config->mvec[j->w->dtype](j->w, begin, end, j->m, j->mp, j->xin, j->y, j->p);
  else j->config->dot[j->w->dtype](j->w, begin, end, j->m, j->xin, j->y, j->p);
}

int ef_sparse_gemm(const ef_sparse_config* config, size_t m, const void* x, const ef_sparse_packed* w, float* y,
                   const ef_sparse_params* p) {
  if (config == NULL) config = ef_sparse_select();
  if (m == 0) return 0;
  const size_t k = w->k;
  const int mvec = m >= EF_SPARSE_MVEC_MIN_M;
  const size_t mp = EF_ROUND_UP(m, 8);
  void* buf = NULL;
  const void* xin = x;
  if (mvec) {
    /* [K][mp] transposed activations, rows past m zero. Column by column: the writes run
     * along a row of buf and the strided reads stay in cache lines that the next 15
     * columns reuse (row by row, every write went to another line: 70% of a pointwise
     * convolution's time at M = 256). */
    buf = calloc(k * mp, 4);
    if (buf == NULL) return -2;
    if (w->dtype == EF_SPARSE_F32) {
      const float* xf = x;
      for (size_t c = 0; c < k; c++)
        for (size_t r = 0; r < m; r++) ((float*)buf)[c * mp + r] = xf[r * k + c];
    } else {
      const int8_t* xq = x;
      for (size_t c = 0; c < k; c++)
        for (size_t r = 0; r < m; r++) ((int32_t*)buf)[c * mp + r] = (uint16_t)(int16_t)xq[r * k + c];
    }
    xin = buf;
  } else if (w->dtype == EF_SPARSE_QS8) {
    /* int8 rows widened to int32 with the value in the low half (see sparse-gemm.h). */
    buf = malloc(m * k * sizeof(int32_t));
    if (buf == NULL) return -2;
    for (size_t i = 0; i < m * k; i++) ((int32_t*)buf)[i] = (uint16_t)(int16_t)((const int8_t*)x)[i];
    xin = buf;
  }
  sparse_job job = {config, w, m, mp, xin, y, p, mvec};
  ef_parallel_for(w->n, m * (w->nnz / w->n + 1) * 4, sparse_range, &job);
  free(buf);
  return 0;
}

/* ------------------------------------------------------------------ windows layout */

void ef_spw_packed_free(ef_spw_packed* p) {
  free(p->group_step);
  free(p->step_window);
  ef_aligned_free(p->step_data);
  free(p->wsum);
  free(p->w_scale);
  free(p->bias);
  memset(p, 0, sizeof *p);
}

/* Steps of group g in window win: max over its rows of ceil(nonzeros / 4). */
static size_t window_steps(const int8_t* w, size_t n, size_t k, size_t g, size_t win) {
  size_t steps = 0;
  for (size_t r = 0; r < EF_SPW_ROWS && g * EF_SPW_ROWS + r < n; r++) {
    size_t c = 0;
    const int8_t* row = w + (g * EF_SPW_ROWS + r) * k;
    for (size_t col = win * EF_SPW_WINDOW; col < EF_MIN(k, (win + 1) * EF_SPW_WINDOW); col++) c += row[col] != 0;
    steps = EF_MAX(steps, EF_DIV_UP(c, EF_SPW_SLOTS));
  }
  return steps;
}

int ef_spw_pack(const int8_t* w, size_t n, size_t k, const float* w_scale, const float* bias, ef_spw_packed* out) {
  memset(out, 0, sizeof *out);
  if (n == 0 || k == 0 || k > 16 * 65536) return -1;
  out->n = n;
  out->k = k;
  out->windows = EF_DIV_UP(k, EF_SPW_WINDOW);
  out->groups = EF_DIV_UP(n, EF_SPW_ROWS);
  /* pass 1: count steps */
  size_t steps = 0;
  for (size_t g = 0; g < out->groups; g++)
    for (size_t win = 0; win < out->windows; win++) steps += window_steps(w, n, k, g, win);
  out->steps = steps;
  out->group_step = malloc((out->groups + 1) * sizeof(uint32_t));
  out->step_window = malloc((steps + 1) * sizeof(uint16_t));
  out->step_data = ef_aligned_alloc((steps + 1) * EF_SPW_STEP_BYTES);
  out->wsum = calloc(n, sizeof(int32_t));
  out->w_scale = malloc(n * sizeof(float));
  out->bias = malloc(n * sizeof(float));
  if (!out->group_step || !out->step_window || !out->step_data || !out->wsum || !out->w_scale || !out->bias) {
    ef_spw_packed_free(out);
    return -2;
  }
  /* pass 2: fill; unused slots have column 0 and weight 0 */
  size_t s = 0;
  for (size_t g = 0; g < out->groups; g++) {
    out->group_step[g] = (uint32_t)s;
    for (size_t win = 0; win < out->windows; win++) {
      const size_t ws = window_steps(w, n, k, g, win);
      if (ws == 0) continue;
      int8_t* rec = out->step_data + s * EF_SPW_STEP_BYTES;
      memset(rec, 0, ws * EF_SPW_STEP_BYTES);
      for (size_t t = 0; t < ws; t++) out->step_window[s + t] = (uint16_t)win;
      for (size_t r = 0; r < EF_SPW_ROWS && g * EF_SPW_ROWS + r < n; r++) {
        const int8_t* row = w + (g * EF_SPW_ROWS + r) * k;
        size_t used = 0; /* nonzeros of this row placed in this window so far */
        for (size_t col = win * EF_SPW_WINDOW; col < EF_MIN(k, (win + 1) * EF_SPW_WINDOW); col++) {
          if (row[col] == 0) continue;
          int8_t* step = rec + (used / EF_SPW_SLOTS) * EF_SPW_STEP_BYTES;
          const size_t b = r * EF_SPW_SLOTS + used % EF_SPW_SLOTS;
          step[b % 16] = (int8_t)((uint8_t)step[b % 16] | (uint8_t)((col - win * EF_SPW_WINDOW) << (4 * (b / 16))));
          step[EF_SPW_W_OFFSET + b] = row[col];
          used++;
        }
      }
      s += ws;
    }
  }
  out->group_step[out->groups] = (uint32_t)s;
  for (size_t r = 0; r < n; r++) {
    int32_t sum = 0;
    for (size_t col = 0; col < k; col++) {
      sum += w[r * k + col];
      out->nnz += w[r * k + col] != 0;
    }
    out->wsum[r] = sum;
    out->w_scale[r] = w_scale[r];
    out->bias[r] = bias ? bias[r] : 0.0f;
  }
  return 0;
}

typedef struct {
  const ef_sparse_config* config;
  const ef_spw_packed* w;
  const int8_t* xw; /* [kp] clamped activations of the current row */
  const int8_t* xm; /* [kp] 1 where the activation was -128, or NULL */
  int32_t* raw;     /* [n] */
  int32_t* corr;    /* [n] */
} spw_job;

static void spw_range(void* ctx, size_t begin, size_t end) {
  const spw_job* j = ctx;
  j->config->spw(j->w, begin, end, j->xw, j->raw);
  if (j->xm) j->config->spw(j->w, begin, end, j->xm, j->corr);
}

int ef_spw_gemm(const ef_sparse_config* config, size_t m, const int8_t* x, const ef_spw_packed* w, float* y,
                const ef_sparse_params* p) {
  if (config == NULL) config = ef_sparse_select();
  const size_t kp = w->windows * EF_SPW_WINDOW;
  int8_t* buf = ef_aligned_alloc(2 * kp + 2 * w->n * sizeof(int32_t));
  if (buf == NULL) return -2;
  int8_t *xw = buf, *xm = buf + kp;
  int32_t* raw = (int32_t*)(buf + 2 * kp);
  int32_t* corr = raw + w->n;
  for (size_t r = 0; r < m; r++) {
    const int8_t* xr = x + r * w->k;
    int has_min = 0;
    for (size_t i = 0; i < w->k; i++) {
      has_min |= xr[i] == -128;
      xw[i] = xr[i] == -128 ? -127 : xr[i];
      xm[i] = xr[i] == -128;
    }
    memset(xw + w->k, 0, kp - w->k);
    memset(xm + w->k, 0, kp - w->k);
    spw_job job = {config, w, xw, has_min ? xm : NULL, raw, corr};
    ef_parallel_for(w->groups, (w->nnz / w->groups + 1) * 2, spw_range, &job);
    /* x = x' - [x == -128]; a branch-free loop the compiler vectorizes (same operations as
     * ef_sparse_qs8_out, so still bit-exact) */
    if (!has_min) memset(corr, 0, w->n * sizeof(int32_t));
    float* yr = y + r * w->n;
    const uint32_t zp = (uint32_t)p->x_zp[r];
    const float xs = p->x_scale[r], lo = p->out_min, hi = p->out_max;
    for (size_t n = 0; n < w->n; n++) {
      const int32_t acc = (int32_t)((uint32_t)raw[n] - (uint32_t)corr[n] - zp * (uint32_t)w->wsum[n]);
      float v = (float)acc * (xs * w->w_scale[n]);
      v = v + w->bias[n];
      v = v > lo ? v : lo;
      yr[n] = v < hi ? v : hi;
    }
  }
  ef_aligned_free(buf);
  return 0;
}

/* ------------------------------------------------------------------ bitmask layout */

const ef_spb_config* ef_spb_select(void) {
  const uint32_t flags = ef_arch_flags();
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AVX512) return &ef_spb_config_avx512;
  if (flags & EF_ARCH_X86_AVX2) return &ef_spb_config_avx2;
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) return &ef_spb_config_neon;
#endif
  (void)flags;
  return &ef_spb_config_scalar;
}

void ef_spb_packed_free(ef_spb_packed* p) {
  ef_aligned_free(p->mask);
  free(p->group_val);
  ef_aligned_free(p->val);
  free(p->wsum);
  free(p->w_scale);
  free(p->bias);
  memset(p, 0, sizeof *p);
}

size_t ef_spb_packed_bytes(const ef_spb_packed* p) {
  return p->groups * p->chunks * EF_SPB_ROWS * sizeof(uint64_t) + p->nnz + (p->groups + 1) * sizeof(uint32_t) +
         p->n * (sizeof(int32_t) + 2 * sizeof(float));
}

int ef_spb_pack(const int8_t* w, size_t n, size_t k, const float* w_scale, const float* bias, ef_spb_packed* out) {
  memset(out, 0, sizeof *out);
  if (n == 0 || k == 0 || k > EF_SPB_MAX_K) return -1;
  size_t nnz = 0;
  for (size_t i = 0; i < n * k; i++) nnz += w[i] != 0;
  if (nnz > (size_t)UINT32_MAX - EF_SPB_VAL_PAD) return -1; /* group_val is uint32 */
  out->n = n;
  out->k = k;
  out->nnz = nnz;
  out->chunks = EF_DIV_UP(k, EF_SPB_CHUNK);
  out->groups = EF_DIV_UP(n, EF_SPB_ROWS);
  const size_t masks = out->groups * out->chunks * EF_SPB_ROWS;
  out->mask = ef_aligned_alloc(masks * sizeof(uint64_t));
  out->group_val = malloc((out->groups + 1) * sizeof(uint32_t));
  out->val = ef_aligned_alloc(nnz + EF_SPB_VAL_PAD);
  out->wsum = calloc(out->groups * EF_SPB_ROWS, sizeof(int32_t));
  out->w_scale = malloc(n * sizeof(float));
  out->bias = malloc(n * sizeof(float));
  if (!out->mask || !out->group_val || !out->val || !out->wsum || !out->w_scale || !out->bias) {
    ef_spb_packed_free(out);
    return -2;
  }
  memset(out->mask, 0, masks * sizeof(uint64_t));
  memset(out->val + nnz, 0, EF_SPB_VAL_PAD);
  uint64_t* mask = out->mask;
  size_t v = 0;
  for (size_t g = 0; g < out->groups; g++) {
    out->group_val[g] = (uint32_t)v;
    for (size_t c = 0; c < out->chunks; c++)
      for (size_t i = 0; i < EF_SPB_ROWS; i++, mask++) {
        const size_t row = g * EF_SPB_ROWS + i;
        if (row >= n) continue;
        for (size_t j = 0; j < EF_SPB_CHUNK && c * EF_SPB_CHUNK + j < k; j++) {
          const int8_t x = w[row * k + c * EF_SPB_CHUNK + j];
          if (x == 0) continue;
          *mask |= (uint64_t)1 << j;
          out->val[v++] = x;
          out->wsum[row] += x;
        }
      }
  }
  out->group_val[out->groups] = (uint32_t)v;
  for (size_t r = 0; r < n; r++) {
    out->w_scale[r] = w_scale[r];
    out->bias[r] = bias ? bias[r] : 0.0f;
  }
  return 0;
}

typedef struct {
  const ef_spb_config* config;
  const ef_spb_packed* w;
  size_t m;
  const uint8_t* x; /* [m][ldx] in the config's format */
  size_t ldx, elem;
  int32_t* raw;     /* [m][ldr] */
  size_t ldr;
  float* y;
  const ef_sparse_params* p;
} spb_job;

/* Groups of 16 (64 rows) keep a tile's weights in cache while every block of EF_SPB_MR
 * activation rows passes over them (M > EF_SPB_MR only; a GEMV reads each weight once). */
#define SPB_GROUP_TILE 16

static void spb_range(void* ctx, size_t begin, size_t end) {
  const spb_job* j = ctx;
  const size_t tile = j->m <= EF_SPB_MR ? end - begin : SPB_GROUP_TILE;
  for (size_t g0 = begin; g0 < end; g0 += tile) {
    const size_t g1 = EF_MIN(end, g0 + tile);
    for (size_t r = 0; r < j->m; r += EF_SPB_MR)
      j->config->ukernel(j->w, g0, g1, EF_MIN(EF_SPB_MR, j->m - r), j->x + r * j->ldx * j->elem, j->ldx,
                         j->raw + r * j->ldr, j->ldr);
  }
  const ef_spb_packed* w = j->w;
  const size_t n1 = EF_MIN(end * EF_SPB_ROWS, w->n);
  for (size_t r = 0; r < j->m; r++)
    j->config->out_row(j->raw + r * j->ldr, w->wsum, w->w_scale, w->bias, j->p->x_zp[r], j->p->x_scale[r],
                          j->p->out_min, j->p->out_max, begin * EF_SPB_ROWS, n1, j->y + r * w->n);
}

int ef_spb_gemm(const ef_spb_config* config, size_t m, const int8_t* x, const ef_spb_packed* w, float* y,
                const ef_sparse_params* p) {
  if (config == NULL) config = ef_spb_select();
  if (m == 0) return 0;
  const size_t ldx = w->chunks * EF_SPB_CHUNK, ldr = w->groups * EF_SPB_ROWS, k = w->k;
  const size_t elem = config->x_format == EF_SPB_X_S16 ? 2 : 1;
  const size_t bytes = EF_ROUND_UP(m * ldx * elem, 64) + m * ldr * sizeof(int32_t);
  _Alignas(64) uint8_t stack[EF_STACK_SCRATCH];
  uint8_t* buf = ef_scratch(bytes, stack, sizeof stack);
  if (buf == NULL) return -2;
  int32_t* raw = (int32_t*)(buf + EF_ROUND_UP(m * ldx * elem, 64));
  for (size_t r = 0; r < m; r++) {
    const int8_t* xr = x + r * k;
    switch (config->x_format) {
      case EF_SPB_X_S8:
        memcpy(buf + r * ldx, xr, k);
        memset(buf + r * ldx + k, 0, ldx - k);
        break;
      case EF_SPB_X_U8: { /* x + 128; the padding is x = 0 (its weights are zero anyway) */
        uint8_t* d = buf + r * ldx;
        for (size_t i = 0; i < k; i++) d[i] = (uint8_t)(xr[i] ^ 0x80);
        memset(d + k, 0x80, ldx - k);
        break;
      }
      case EF_SPB_X_S16: {
        int16_t* d = (int16_t*)buf + r * ldx;
        for (size_t i = 0; i < k; i++) d[i] = xr[i];
        memset(d + k, 0, (ldx - k) * sizeof(int16_t));
        break;
      }
    }
  }
  spb_job job = {config, w, m, buf, ldx, elem, raw, ldr, y, p};
  ef_parallel_for(w->groups, m * w->chunks * EF_SPB_CHUNK, spb_range, &job);
  ef_scratch_free(buf, stack);
  return 0;
}

/* ------------------------------------------------------------------ permute layout */

const ef_spp_config* ef_spp_select(void) {
#if EF_ARCH_X86
  /* VBMI (vpermb, vpmultishiftqb) and VBMI2 (vpshrdq) are not part of the avx512 level's
   * requirements (common.h): ask for them separately. */
  if ((ef_arch_flags() & EF_ARCH_X86_AVX512) && __builtin_cpu_supports("avx512vbmi") &&
      __builtin_cpu_supports("avx512vbmi2"))
    return &ef_spp_config_avx512vbmi;
#endif
  return &ef_spp_config_scalar;
}

void ef_spp_packed_free(ef_spp_packed* p) {
  free(p->group_step);
  free(p->run_col);
  ef_aligned_free(p->blocks);
  free(p->wsum);
  free(p->w_scale);
  free(p->bias);
  memset(p, 0, sizeof *p);
}

size_t ef_spp_packed_bytes(const ef_spp_packed* p) {
  return p->steps / EF_SPP_BLOCK * EF_SPP_BLOCK_BYTES + p->steps / p->run * sizeof(uint32_t) +
         (p->groups + 1) * sizeof(uint32_t) + p->groups * EF_SPP_ROWS * sizeof(int32_t) + p->n * 2 * sizeof(float);
}

/* The first nonzero of row at or after column j (k when none). */
static size_t spp_next(const int8_t* row, size_t j, size_t k) {
  while (j < k && row[j] == 0) j++;
  return j;
}

/* Stores the 6-bit column c of slot s of step u in a block (the inverse of ef_spp_col). */
static void spp_set_col(uint8_t* block, size_t u, size_t s, unsigned c) {
  uint64_t* v = (uint64_t*)block;
  const size_t q = s / 8, bit = 48 * u + 6 * (s % 8), word = bit / 64, shift = bit % 64;
  v[word * 8 + q] |= (uint64_t)c << shift;
  if (shift > 64 - 6) v[(word + 1) * 8 + q] |= (uint64_t)c >> (64 - shift);
}

/* The steps of group g, placed greedily in runs of `run` steps that share one window and
 * padded to whole blocks (sparse-gemm.h). Counts only when blocks is NULL; otherwise writes
 * the group's blocks (zeroed by the caller), its runs' window columns and its weight sums. */
static size_t spp_group(const int8_t* w, size_t n, size_t k, size_t g, size_t run, uint8_t* blocks, uint32_t* run_col,
                        int32_t* wsum) {
  size_t next[EF_SPP_ROWS]; /* each row's first nonzero not yet placed */
  for (size_t i = 0; i < EF_SPP_ROWS; i++) {
    const size_t row = g * EF_SPP_ROWS + i;
    next[i] = row < n ? spp_next(w + row * k, 0, k) : k;
  }
  size_t steps = 0;
  for (;;) {
    size_t start = k;
    for (size_t i = 0; i < EF_SPP_ROWS; i++) start = EF_MIN(start, next[i]);
    if (start == k) break;
    if (blocks) run_col[steps / run] = (uint32_t)start;
    for (size_t u = 0; u < run; u++, steps++) {
      uint8_t* block = blocks ? blocks + steps / EF_SPP_BLOCK * EF_SPP_BLOCK_BYTES : NULL;
      int8_t* wv = block ? (int8_t*)block + EF_SPP_COL_BYTES + steps % EF_SPP_BLOCK * 64 : NULL;
      for (size_t i = 0; i < EF_SPP_ROWS; i++) {
        const int8_t* row = w + (g * EF_SPP_ROWS + i) * k;
        for (size_t j = 0; j < EF_SPP_SLOTS && next[i] < start + EF_SPP_WINDOW && next[i] < k; j++) {
          if (block) {
            spp_set_col(block, steps % EF_SPP_BLOCK, i * EF_SPP_SLOTS + j, (unsigned)(next[i] - start));
            wv[i * EF_SPP_SLOTS + j] = row[next[i]];
            wsum[i] += row[next[i]];
          }
          next[i] = spp_next(row, next[i] + 1, k);
        }
      }
    }
  }
  /* empty steps up to a whole block; their runs read the window at column 0 */
  for (; steps % EF_SPP_BLOCK; steps++)
    if (blocks && steps % run == 0) run_col[steps / run] = 0;
  return steps;
}

static size_t spp_count(const int8_t* w, size_t n, size_t k, size_t run) {
  size_t steps = 0;
  for (size_t g = 0; g < EF_DIV_UP(n, EF_SPP_ROWS); g++) steps += spp_group(w, n, k, g, run, NULL, NULL, NULL);
  return steps;
}

int ef_spp_pack_run(const int8_t* w, size_t n, size_t k, const float* w_scale, const float* bias, size_t run,
                    ef_spp_packed* out) {
  memset(out, 0, sizeof *out);
  if (n == 0 || k == 0 || k > EF_SPP_MAX_K) return -1;
  if (run != 1 && run != 2 && run != 4) return -1;
  out->n = n;
  out->k = k;
  out->run = run;
  out->groups = EF_DIV_UP(n, EF_SPP_ROWS);
  const size_t steps = spp_count(w, n, k, run);
  if (steps > UINT32_MAX) return -1;
  out->steps = steps;
  out->group_step = malloc((out->groups + 1) * sizeof(uint32_t));
  out->run_col = malloc((steps / run + 1) * sizeof(uint32_t));
  out->blocks = ef_aligned_alloc((steps / EF_SPP_BLOCK + 1) * EF_SPP_BLOCK_BYTES);
  out->wsum = calloc(out->groups * EF_SPP_ROWS, sizeof(int32_t));
  out->w_scale = malloc(n * sizeof(float));
  out->bias = malloc(n * sizeof(float));
  if (!out->group_step || !out->run_col || !out->blocks || !out->wsum || !out->w_scale || !out->bias) {
    ef_spp_packed_free(out);
    return -2;
  }
  memset(out->blocks, 0, (steps / EF_SPP_BLOCK + 1) * EF_SPP_BLOCK_BYTES); /* unused slots: column 0, weight 0 */
  size_t s = 0;
  for (size_t g = 0; g < out->groups; g++) {
    out->group_step[g] = (uint32_t)s;
    s += spp_group(w, n, k, g, run, out->blocks + s / EF_SPP_BLOCK * EF_SPP_BLOCK_BYTES, out->run_col + s / run,
                   out->wsum + g * EF_SPP_ROWS);
  }
  out->group_step[out->groups] = (uint32_t)s;
  for (size_t i = 0; i < n * k; i++) out->nnz += w[i] != 0;
  for (size_t r = 0; r < n; r++) {
    out->w_scale[r] = w_scale[r];
    out->bias[r] = bias ? bias[r] : 0.0f;
  }
  return 0;
}

int ef_spp_pack(const int8_t* w, size_t n, size_t k, const float* w_scale, const float* bias, ef_spp_packed* out) {
  /* Beyond L1 a step's time follows its 112 bytes; a window is one more 64-byte load, from
   * L1, per run, counted here as a quarter of a step. Longer runs load fewer windows but leave
   * more slots empty. This picks run 2 at 75 % unstructured sparsity and 4 at 50 %; forcing
   * each run in turn through kernels_gemm on Zen 4, those were as fast as the best within
   * the VM's noise. */
  size_t best_run = 1;
  double best_cost = -1.0;
  if (n > 0 && k > 0 && k <= EF_SPP_MAX_K)
    for (size_t run = 1; run <= EF_SPP_BLOCK; run *= 2) {
      const double cost = (double)spp_count(w, n, k, run) * (1.0 + 0.25 / (double)run);
      if (best_cost < 0 || cost < best_cost) best_cost = cost, best_run = run;
    }
  return ef_spp_pack_run(w, n, k, w_scale, bias, best_run, out);
}

typedef struct {
  const ef_spp_config* config;
  const ef_spp_packed* w;
  size_t m;
  const uint8_t* x; /* [m][ldx] in the config's format */
  size_t ldx;
  int32_t* raw; /* [m][ldr] */
  size_t ldr;
  float* y;
  const ef_sparse_params* p;
} spp_job;

static void spp_range(void* ctx, size_t begin, size_t end) {
  const spp_job* j = ctx;
  const ef_spp_packed* w = j->w;
  for (size_t r = 0; r < j->m; r += EF_SPP_MR)
    j->config->ukernel(w, begin, end, EF_MIN(EF_SPP_MR, j->m - r), j->x + r * j->ldx, j->ldx, j->raw + r * j->ldr, j->ldr);
  const size_t n1 = EF_MIN(end * EF_SPP_ROWS, w->n);
  for (size_t r = 0; r < j->m; r++)
    j->config->out_row(j->raw + r * j->ldr, w->wsum, w->w_scale, w->bias, j->p->x_zp[r], j->p->x_scale[r],
                          j->p->out_min, j->p->out_max, begin * EF_SPP_ROWS, n1, j->y + r * w->n);
}

int ef_spp_gemm(const ef_spp_config* config, size_t m, const int8_t* x, const ef_spp_packed* w, float* y,
                const ef_sparse_params* p) {
  if (config == NULL) config = ef_spp_select();
  if (m == 0) return 0;
  /* rows padded with one window of zeros: a window may start at the last column */
  const size_t k = w->k, ldx = EF_ROUND_UP(k + EF_SPP_WINDOW, 64);
  const size_t ldr = w->groups * EF_SPP_ROWS;
  const size_t xbytes = EF_ROUND_UP(m * ldx, 64), bytes = xbytes + m * ldr * sizeof(int32_t);
  _Alignas(64) uint8_t stack[EF_STACK_SCRATCH];
  uint8_t* buf = ef_scratch(bytes, stack, sizeof stack);
  if (buf == NULL) return -2;
  for (size_t r = 0; r < m; r++) {
    const int8_t* xr = x + r * k;
    uint8_t* d = buf + r * ldx;
    if (config->x_format == EF_SPB_X_U8) { /* x + 128; the padding is x = 0 (no weights there) */
      for (size_t i = 0; i < k; i++) d[i] = (uint8_t)(xr[i] ^ 0x80);
      memset(d + k, 0x80, ldx - k);
    } else {
      memcpy(d, xr, k);
      memset(d + k, 0, ldx - k);
    }
  }
  spp_job job = {config, w, m, buf, ldx, (int32_t*)(buf + xbytes), ldr, y, p};
  ef_parallel_for(w->groups, m * (w->steps / w->groups + 1) * EF_SPP_ROWS * EF_SPP_SLOTS, spp_range, &job);
  ef_scratch_free(buf, stack);
  return 0;
}
