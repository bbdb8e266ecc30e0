/* nn operator: dispatch (avx512 -> avx2 -> neon -> scalar) and threads over rows / (batch, head) pairs. */
#include "nn/nn.h"
#include "threadpool.h"

const ef_nn_config* ef_nn_select(void) {
  const uint32_t flags = ef_arch_flags();
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AVX512) return &ef_nn_config_avx512;
  if (flags & EF_ARCH_X86_AVX2) return &ef_nn_config_avx2;
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) return &ef_nn_config_neon;
#endif
  (void)flags;
  return &ef_nn_config_scalar;
}

/* Rough cost units per element (for the thread pool's "is it worth waking a thread" test). */
#define LN_COST 4
#define SOFTMAX_COST 16
#define GELU_COST 32

typedef struct {
  const ef_nn_config* cfg;
  size_t n;
  const float *x, *res, *gamma, *beta;
  float eps, *y;
} rows_job;

static void layernorm_range(void* ctx, size_t begin, size_t end) {
  const rows_job* j = ctx;
  for (size_t r = begin; r < end; r++)
    j->cfg->layernorm_row(j->n, j->x + r * j->n, j->res ? j->res + r * j->n : NULL, j->gamma, j->beta, j->eps,
                          j->y + r * j->n);
}

void ef_nn_layernorm(const ef_nn_config* cfg, size_t rows, size_t n, const float* x, const float* res, const float* gamma,
                     const float* beta, float eps, float* y) {
  if (cfg == NULL) cfg = ef_nn_select();
  if (rows == 0 || n == 0) return;
  rows_job job = {cfg, n, x, res, gamma, beta, eps, y};
  ef_parallel_for(rows, n * LN_COST, layernorm_range, &job);
}

static void softmax_range(void* ctx, size_t begin, size_t end) {
  const rows_job* j = ctx;
  for (size_t r = begin; r < end; r++) j->cfg->softmax_row(j->n, j->x + r * j->n, 1.0f, NULL, j->y + r * j->n);
}

void ef_nn_softmax(const ef_nn_config* cfg, size_t rows, size_t n, const float* x, float* y) {
  if (cfg == NULL) cfg = ef_nn_select();
  if (rows == 0 || n == 0) return;
  rows_job job = {cfg, n, x, NULL, NULL, NULL, 0.0f, y};
  ef_parallel_for(rows, n * SOFTMAX_COST, softmax_range, &job);
}

/* Elementwise ops: chunks of 1024 elements. */
#define CHUNK 1024
typedef struct {
  void (*fn)(size_t, const float*, float*);
  size_t count;
  const float* x;
  float* y;
} elementwise_job;

static void elementwise_range(void* ctx, size_t begin, size_t end) {
  const elementwise_job* j = ctx;
  const size_t lo = begin * CHUNK, hi = EF_MIN(end * CHUNK, j->count);
  if (hi > lo) j->fn(hi - lo, j->x + lo, j->y + lo);
}

void ef_nn_gelu(const ef_nn_config* cfg, size_t count, const float* x, float* y) {
  if (cfg == NULL) cfg = ef_nn_select();
  elementwise_job job = {cfg->gelu, count, x, y};
  ef_parallel_for(EF_DIV_UP(count, CHUNK), CHUNK * GELU_COST, elementwise_range, &job);
}

void ef_nn_erf(const ef_nn_config* cfg, size_t count, const float* x, float* y) {
  if (cfg == NULL) cfg = ef_nn_select();
  elementwise_job job = {cfg->erf, count, x, y};
  ef_parallel_for(EF_DIV_UP(count, CHUNK), CHUNK * GELU_COST, elementwise_range, &job);
}

typedef struct {
  const ef_nn_config* cfg;
  const ef_nn_attention_params* p;
  int failed;
} attention_job;

/* One (batch, head) pair per item: K of the head transposed once into [d][ldk] scratch (zero
 * columns past skv), then per query row: scores, softmax with scale and mask fused, output row
 * as the probability-weighted sum of V rows. */
static void attention_range(void* ctx, size_t begin, size_t end) {
  attention_job* j = ctx;
  const ef_nn_attention_params* p = j->p;
  const ef_nn_config* cfg = j->cfg;
  const size_t ldk = EF_ROUND_UP(p->skv, 8);
  float* kt = ef_aligned_alloc((p->d + 1) * ldk * sizeof(float));
  if (kt == NULL) {
    j->failed = 1;
    return;
  }
  float* scores = kt + p->d * ldk;
  memset(kt, 0, p->d * ldk * sizeof(float));
  for (size_t item = begin; item < end; item++) {
    const size_t b = item / p->heads, h = item % p->heads;
    const float* q = p->q + b * p->q_bstride + h * p->d;
    const float* k = p->k + b * p->k_bstride + h * p->d;
    const float* v = p->v + b * p->v_bstride + h * p->d;
    const float* mask = p->mask ? p->mask + b * p->mask_bstride : NULL;
    float* out = p->out + b * p->out_bstride + h * p->d;
    for (size_t jj = 0; jj < p->skv; jj++)
      for (size_t c = 0; c < p->d; c++) kt[c * ldk + jj] = k[jj * p->k_rstride + c];
    for (size_t i = 0; i < p->sq; i++) {
      cfg->qk_row(p->skv, p->d, q + i * p->q_rstride, kt, ldk, scores);
      cfg->softmax_row(p->skv, scores, p->scale, mask, scores);
      cfg->pv_row(p->skv, p->d, scores, v, p->v_rstride, out + i * p->out_rstride);
    }
  }
  ef_aligned_free(kt);
}

int ef_nn_attention(const ef_nn_config* cfg, const ef_nn_attention_params* p) {
  if (cfg == NULL) cfg = ef_nn_select();
  if (p->batch == 0 || p->heads == 0 || p->sq == 0 || p->skv == 0 || p->d == 0) return 0;
  attention_job job = {cfg, p, 0};
  ef_parallel_for(p->batch * p->heads, 2 * p->sq * p->skv * p->d + SOFTMAX_COST * p->sq * p->skv, attention_range, &job);
  return job.failed ? -2 : 0;
}
