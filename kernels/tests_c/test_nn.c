/* C harness for the nn family (layer norm, GELU, erf, softmax, attention): every variant this
 * machine runs (AVX2 on x86, NEON under qemu-aarch64) against the scalar reference, within
 * EF_NN_RTOL / EF_NN_ATOL (AVX-512 too where the CPU has it) (same polynomials everywhere; sums in another order, FMA). Plus
 * erf/GELU of the scalar reference against libm's erf in double precision. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"
#include "nn/nn.h"

#define EF_NN_RTOL 4e-6
#define EF_NN_ATOL 1e-6

static int failures = 0, checks = 0;
static uint64_t rng_state = 0x243F6A8885A308D3ull;

static float rnd_f(void) { /* xorshift64*, uniform in [-1, 1] */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  const uint32_t r = (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
  return (float)((int)(r % 20001) - 10000) / 10000.0f;
}

static void expect_close(const char* what, const char* isa, const float* got, const float* want, size_t n, double atol) {
  checks++;
  for (size_t i = 0; i < n; i++) {
    const double d = fabs((double)got[i] - (double)want[i]);
    if (!(d <= atol + EF_NN_RTOL * fabs((double)want[i])) && !(isnan(got[i]) && isnan(want[i]))) {
      failures++;
      printf("FAIL %s [%s]: element %zu: %.9g vs scalar %.9g\n", what, isa, i, got[i], want[i]);
      return;
    }
  }
}

/* attention on a merged QKV buffer ([B, SKV, 3E] rows; q reads the first SQ rows), per-batch mask */
static void test_attention(const ef_nn_config* cfg, size_t B, size_t H, size_t SQ, size_t SKV, size_t D) {
  const ef_nn_config* ref = &ef_nn_config_scalar;
  const size_t E = H * D, rows = SKV > SQ ? SKV : SQ;
  float *qkv = malloc(B * rows * 3 * E * 4), *mask = malloc(B * SKV * 4), *o0 = malloc(B * SQ * E * 4), *o1 = malloc(B * SQ * E * 4);
  for (size_t i = 0; i < B * rows * 3 * E; i++) qkv[i] = 2.0f * rnd_f();
  for (size_t i = 0; i < B * SKV; i++) mask[i] = (i % SKV) > SKV / 2 + 1 ? -3.4e38f : 0.0f;
  ef_nn_attention_params p = {.batch = B, .heads = H, .sq = SQ, .skv = SKV, .d = D,
                              .q = qkv, .q_bstride = rows * 3 * E, .q_rstride = 3 * E,
                              .k = qkv + E, .k_bstride = rows * 3 * E, .k_rstride = 3 * E,
                              .v = qkv + 2 * E, .v_bstride = rows * 3 * E, .v_rstride = 3 * E,
                              .mask = mask, .mask_bstride = SKV, .scale = 0.378f,
                              .out = o0, .out_bstride = SQ * E, .out_rstride = E};
  ef_nn_attention(ref, &p);
  p.out = o1;
  ef_nn_attention(cfg, &p);
  expect_close("attention", cfg->isa, o1, o0, B * SQ * E, 1e-5);
  free(qkv), free(mask), free(o0), free(o1);
}

static void test_variant(const ef_nn_config* cfg) {
  const ef_nn_config* ref = &ef_nn_config_scalar;
  const size_t sizes[] = {1, 3, 8, 13, 32, 384, 1001};
  for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
    const size_t n = sizes[si], rows = 3;
    float *x = malloc(rows * n * 4), *r = malloc(rows * n * 4), *g = malloc(n * 4), *b = malloc(n * 4);
    float *y0 = malloc(rows * n * 4), *y1 = malloc(rows * n * 4);
    for (size_t i = 0; i < rows * n; i++) x[i] = 6.0f * rnd_f(), r[i] = rnd_f();
    for (size_t i = 0; i < n; i++) g[i] = 2.0f * rnd_f(), b[i] = rnd_f();
    for (int res = 0; res < 2; res++) {
      ef_nn_layernorm(ref, rows, n, x, res ? r : NULL, g, b, 1e-5f, y0);
      ef_nn_layernorm(cfg, rows, n, x, res ? r : NULL, g, b, 1e-5f, y1);
      expect_close(res ? "layernorm+add" : "layernorm", cfg->isa, y1, y0, rows * n, 1e-5);
    }
    for (size_t i = 0; i < rows * n; i++) x[i] = 12.0f * rnd_f();
    if (n > 2) x[1] = -3.4e38f;
    ef_nn_softmax(ref, rows, n, x, y0);
    ef_nn_softmax(cfg, rows, n, x, y1);
    expect_close("softmax", cfg->isa, y1, y0, rows * n, EF_NN_ATOL);
    ef_nn_gelu(ref, rows * n, x, y0);
    ef_nn_gelu(cfg, rows * n, x, y1);
    expect_close("gelu", cfg->isa, y1, y0, rows * n, 1e-30);
    ef_nn_erf(ref, rows * n, x, y0);
    ef_nn_erf(cfg, rows * n, x, y1);
    expect_close("erf", cfg->isa, y1, y0, rows * n, 1e-30);
    free(x), free(r), free(g), free(b), free(y0), free(y1);
  }
  /* head sizes and lengths covering every vector block and tail */
  test_attention(cfg, 2, 3, 5, 9, 7);
  test_attention(cfg, 1, 2, 33, 41, 40);
  test_attention(cfg, 1, 12, 32, 32, 32);
  test_attention(cfg, 2, 1, 3, 70, 64);
}

static void test_reference_accuracy(void) {
  /* scalar erf / GELU vs libm in double: erf relative 4e-7; GELU relative 1e-6, growing in the
   * negative tail as 2e-7 x^2 (exp(-x^2/2) inherits the float rounding of x^2 times x^2 / 2;
   * GELU is below 1e-30 there) */
  for (int i = -200000; i <= 200000; i += 7) {
    const float x = (float)i * 1e-4f;
    float e, g;
    ef_nn_erf(&ef_nn_config_scalar, 1, &x, &e);
    ef_nn_gelu(&ef_nn_config_scalar, 1, &x, &g);
    const double ew = erf((double)x), gw = (double)x * 0.5 * erfc(-(double)x / sqrt(2.0));
    checks++;
    if (fabs(e - ew) > 4e-7 * fabs(ew) + 1e-38 || fabs(g - gw) > (1e-6 + 2e-7 * (double)x * x) * fabs(gw) + 1e-37) {
      failures++;
      printf("FAIL reference erf/gelu at %.7g: %.9g vs %.9g, %.9g vs %.9g\n", x, e, ew, g, gw);
      return;
    }
  }
}

int main(void) {
  test_reference_accuracy();
  const uint32_t flags = ef_arch_flags();
  int variants = 0;
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AVX2) test_variant(&ef_nn_config_avx2), variants++;
  if (flags & EF_ARCH_X86_AVX512) test_variant(&ef_nn_config_avx512), variants++;
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) test_variant(&ef_nn_config_neon), variants++;
#endif
  (void)flags;
  test_variant(&ef_nn_config_scalar); /* the operators themselves (threads, strides) */
  printf("nn: %d checks, %d failures (%d SIMD variant(s))\n", checks, failures, variants);
  return failures ? 1 : 0;
}
