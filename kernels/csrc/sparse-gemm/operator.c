/* sparse-gemm operator: packing dense matrices into compressed rows, activation layout
 * (widened or transposed), dispatch, threads over output channels. */
#include <stdlib.h>
#include <string.h>

#include "sparse-gemm.h"
#include "threadpool.h"

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
    /* [K][mp] transposed activations, rows past m zero. */
    buf = calloc(k * mp, 4);
    if (buf == NULL) return -2;
    for (size_t r = 0; r < m; r++)
      for (size_t c = 0; c < k; c++) {
        if (w->dtype == EF_SPARSE_F32) ((float*)buf)[c * mp + r] = ((const float*)x)[r * k + c];
        else ((int32_t*)buf)[c * mp + r] = (uint16_t)(int16_t)((const int8_t*)x)[r * k + c];
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
