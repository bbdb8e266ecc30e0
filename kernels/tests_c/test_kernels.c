/* Standalone C test harness: every optimized kernel against the scalar reference, with no
 * Python involved, so the NEON kernels can be tested on x86 under qemu-aarch64.
 *
 *   make -C kernels/tests_c native      # gcc: scalar vs AVX2 (when the CPU has it)
 *   make -C kernels/tests_c aarch64     # aarch64-linux-gnu-gcc + qemu-aarch64: scalar vs NEON
 *
 * Integer-exact families (qs8 GEMM, int8 sparse, int8 convolution) must match bit for bit;
 * float-summing ones (qb, fp32 sparse, fp32 convolution) within the named tolerances. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bsr-gemm/bsr-gemm.h"
#include "common.h"
#include "conv/conv.h"
#include "conv/maxpool.h"
#include "conv/qadd.h"
#include "qconvert/qconvert.h"
#include "f32-gemm/f32-gemm.h"
#include "qb-gemm/qb-gemm.h"
#include "qs8-gemm/qs8-gemm.h"
#include "sparse-gemm/sparse-gemm.h"

#define FLOAT_SUM_RTOL 1e-5
#define FLOAT_SUM_ATOL 1e-4

static int failures = 0, checks = 0;
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void) { /* xorshift64*: deterministic on every platform */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}
static int8_t rnd_i8(int extreme) { return extreme ? ((rnd() & 1) ? 127 : -128) : (int8_t)(rnd() & 0xFF); }
static float rnd_f(void) { return (float)((int)(rnd() % 20001) - 10000) / 5000.0f; }

static void expect_same_bytes(const char* what, const char* isa, const void* a, const void* b, size_t bytes) {
  checks++;
  if (memcmp(a, b, bytes) != 0) {
    failures++;
    printf("FAIL %s [%s]: differs from scalar\n", what, isa);
  }
}

static void expect_close(const char* what, const char* isa, const float* got, const float* want, size_t n) {
  checks++;
  for (size_t i = 0; i < n; i++) {
    if (!(fabsf(got[i] - want[i]) <= FLOAT_SUM_ATOL + FLOAT_SUM_RTOL * fabsf(want[i]))) {
      failures++;
      printf("FAIL %s [%s]: element %zu: %.9g vs scalar %.9g\n", what, isa, i, got[i], want[i]);
      return;
    }
  }
}

/* ----------------------------------------------------------------------- qs8 */

static void test_qs8(const ef_qs8_gemm_config* cfg, size_t m, size_t n, size_t k, int extreme, int out_int8) {
  int8_t* a = malloc(m * k);
  int8_t* w = malloc(n * k);
  float *ws = malloc(n * 4), *bias = malloc(n * 4), *as = malloc(m * 4);
  int32_t *wz = malloc(n * 4), *az = malloc(m * 4);
  for (size_t i = 0; i < m * k; i++) a[i] = rnd_i8(extreme);
  for (size_t i = 0; i < n * k; i++) w[i] = rnd_i8(extreme);
  for (size_t i = 0; i < n; i++) { ws[i] = 0.001f + (rnd() % 1000) * 1e-4f; bias[i] = rnd_f(); wz[i] = extreme ? -128 : rnd_i8(0); }
  for (size_t i = 0; i < m; i++) { as[i] = 0.01f; az[i] = extreme ? 127 : rnd_i8(0); }
  ef_qs8_packed pw;
  if (ef_qs8_pack(w, n, k, ws, wz, bias, &pw) != 0) { printf("pack failed\n"); exit(2); }
  const size_t elem = out_int8 ? 1 : 4;
  void *ref = malloc(m * n * elem), *got = malloc(m * n * elem);
  ef_qs8_gemm_params p = {.k = k, .out_min = (rnd() & 1) ? 0.0f : -INFINITY, .out_max = INFINITY, .out_int8 = out_int8, .out_inv_scale = 1.0f / 3.0f, .out_zp = -5};
  ef_qs8_gemm(&ef_qs8_gemm_config_scalar, m, a, az, as, &pw, ref, &p);
  ef_qs8_gemm(cfg, m, a, az, as, &pw, got, &p);
  char what[96];
  snprintf(what, sizeof what, "qs8 %zux%zux%zu%s%s", m, n, k, extreme ? " extreme" : "", out_int8 ? " int8-out" : "");
  expect_same_bytes(what, cfg->isa, got, ref, m * n * elem);
  ef_qs8_packed_free(&pw);
  free(a); free(w); free(ws); free(bias); free(as); free(wz); free(az); free(ref); free(got);
}

#if EF_ARCH_X86
/* qd8 (fp32 rows quantized inside the call) through a panel config against the scalar path:
 * the AVX-512 quantizer (x * 1/scale, division near ties) must give the same bytes. Rows of
 * exact half-integer quotients (scale 1) and random ones. */
static void test_qd8_panel(const ef_qs8_gemm_config* cfg, size_t m, size_t n, size_t k, int ties) {
  float* x = malloc(m * k * 4);
  int8_t* w = malloc(n * k);
  float* ws = malloc(n * 4);
  for (size_t i = 0; i < m * k; i++) x[i] = ties ? (float)((int)(i % 256) - 128) + 0.5f : rnd_f() * (float)(1 + i % 7);
  if (ties) for (size_t r = 0; r < m; r++) { x[r * k] = -127.5f; x[r * k + k - 1] = 127.5f; }
  for (size_t i = 0; i < n * k; i++) w[i] = rnd_i8(0);
  for (size_t i = 0; i < n; i++) ws[i] = 0.01f;
  ef_qs8_packed pw;
  if (ef_qs8_pack(w, n, k, ws, NULL, NULL, &pw) != 0) { printf("pack failed\n"); exit(2); }
  float *ref = malloc(m * n * 4), *got = malloc(m * n * 4);
  ef_qs8_gemm_params p = {.k = k, .out_min = -INFINITY, .out_max = INFINITY, .out_int8 = 0, .out_inv_scale = 1.0f, .out_zp = 0};
  ef_qd8_gemm(&ef_qs8_gemm_config_scalar, m, x, &pw, ref, &p);
  ef_qd8_gemm(cfg, m, x, &pw, got, &p);
  char what[96];
  snprintf(what, sizeof what, "qd8 %zux%zux%zu%s", m, n, k, ties ? " ties" : "");
  expect_same_bytes(what, cfg->isa, got, ref, m * n * 4);
  ef_qs8_packed_free(&pw);
  free(x); free(w); free(ws); free(ref); free(got);
}

/* The AMX tile path on every M from 1 (panel_min_m forced to 1; by default M = 1 goes to the
 * AVX-512 GEMV), N across the 16/32-column tile edges, K across the 64-byte tile steps; the
 * AVX-512 GEMV on the same edges; qd8 through both. */
static void test_qs8_tiles(void) {
  ef_qs8_gemm_config all_m = ef_qs8_gemm_config_amx;
  all_m.panel_min_m = 1;
  all_m.isa = "amx (every M)";
  static const size_t ns[] = {1, 15, 16, 17, 32, 33, 50};
  static const size_t ks[] = {1, 63, 64, 65, 200};
  for (size_t m = 1; m <= 40; m++) {
    const size_t n = ns[m % 7], k = ks[m % 5];
    test_qs8(&all_m, m, n, k, (int)(m % 3 == 0), (int)(m % 2));
  }
  test_qs8(&all_m, 17, 33, EF_QS8_MAX_K, 1, 0);
  test_qs8(&all_m, 33, 49, EF_QS8_MAX_K, 1, 1);
  for (size_t i = 0; i < 14; i++) test_qs8(&ef_qs8_gemm_config_avx512, 1, ns[i % 7], ks[i % 5], (int)(i % 2), (int)(i / 7));
  test_qs8(&ef_qs8_gemm_config_avx512, 1, 33, EF_QS8_MAX_K, 1, 0);
  for (int ties = 0; ties < 2; ties++) {
    test_qd8_panel(&ef_qs8_gemm_config_amx, 33, 40, 300, ties);
    test_qd8_panel(&ef_qs8_gemm_config_amx, 1, 40, 200, ties);
  }
}
#endif

/* ----------------------------------------------------------------------- qb */

/* Reference: scalar on the blocks.h rows layout; cfg runs on weights packed in `layout`. */
static void test_qb_layout(const ef_qb_gemm_config* cfg, int layout, int bits, int group, size_t m, size_t n, size_t k) {
  const size_t groups = EF_DIV_UP(k, (size_t)group);
  uint8_t* q = malloc(n * k);
  float *d = malloc(n * groups * 4), *mn = malloc(n * groups * 4), *x = malloc(m * k * 4), *bias = malloc(n * 4);
  for (size_t i = 0; i < n * k; i++) q[i] = (uint8_t)(rnd() & ((1u << bits) - 1));
  for (size_t i = 0; i < n * groups; i++) { d[i] = 0.01f + (rnd() % 100) * 1e-3f; mn[i] = -d[i] * (1 << (bits - 1)); }
  for (size_t i = 0; i < m * k; i++) x[i] = rnd_f();
  for (size_t i = 0; i < n; i++) bias[i] = rnd_f();
  ef_qb_packed pref, pw;
  if (ef_qb_pack_layout(q, n, k, bits, group, d, mn, bias, EF_QB_LAYOUT_ROWS, &pref) != 0 ||
      ef_qb_pack_layout(q, n, k, bits, group, d, mn, bias, layout, &pw) != 0) { printf("pack failed\n"); exit(2); }
  float *ref = malloc(m * n * 4), *got = malloc((m * n + 1) * 4);
  got[m * n] = 12345.0f; /* a guard after the output: partial panels must not write past N */
  ef_qb_gemm(&ef_qb_gemm_config_scalar, m, x, &pref, ref, -INFINITY, INFINITY);
  ef_qb_gemm(cfg, m, x, &pw, got, -INFINITY, INFINITY);
  char what[96];
  snprintf(what, sizeof what, "q%d_g%d %s %zux%zux%zu", bits, group, layout == EF_QB_LAYOUT_P16 ? "p16" : "rows", m, n, k);
  expect_close(what, cfg->isa, got, ref, m * n);
  checks++;
  if (got[m * n] != 12345.0f) { failures++; printf("FAIL %s [%s]: wrote past the output\n", what, cfg->isa); }
  ef_qb_packed_free(&pref);
  ef_qb_packed_free(&pw);
  free(q); free(d); free(mn); free(x); free(bias); free(ref); free(got);
}

static void test_qb(const ef_qb_gemm_config* cfg, int bits, int group, size_t m, size_t n, size_t k) {
  test_qb_layout(cfg, cfg->layout, bits, group, m, n, k);
}

#if EF_ARCH_X86
/* An x86 activation quantizer against the portable one, byte for byte: NaN, infinities,
 * zeros, ties at .5 and every tail length. */
static void test_qd8_quantize(ef_qd8_quantize_fn fn, const char* isa) {
  static const size_t ks[] = {1, 2, 15, 16, 17, 31, 33, 100, 129, 384, 1001, 4096};
  for (size_t t = 0; t < sizeof ks / sizeof ks[0]; t++)
    for (int kind = 0; kind < 5; kind++)
      for (size_t group = 32; group <= 128; group *= 2) {
        const size_t k = ks[t], kp = EF_ROUND_UP(k, group);
        float* x = malloc(k * 4);
        for (size_t i = 0; i < k; i++) {
          x[i] = rnd_f();
          if (kind == 1) x[i] = (float)((int)(rnd() % 255) - 127) * 0.5f; /* with amax 127 (scale 1): .5 ties */
          if (kind == 2) x[i] = 0.0f;
          if (kind == 3 && i % 7 == 3) x[i] = NAN;
          if (kind == 4 && i % 11 == 5) x[i] = (i & 1) ? INFINITY : -INFINITY;
        }
        if (kind == 1) x[0] = 127.0f;
        int8_t *a = malloc(kp), *b = malloc(kp);
        float *sa = malloc(kp / group * 4), *sb = malloc(kp / group * 4);
        const float ya = ef_qd8_quantize_row(x, k, kp, group, a, sa);
        const float yb = fn(x, k, kp, group, b, sb);
        char what[96];
        snprintf(what, sizeof what, "qd8 quantize k=%zu g=%zu kind %d", k, group, kind);
        expect_same_bytes(what, isa, b, a, kp);
        expect_same_bytes(what, isa, sb, sa, kp / group * 4);
        expect_same_bytes(what, isa, &yb, &ya, 4);
        free(x); free(a); free(b); free(sa); free(sb);
      }
}
#endif

/* qb beyond the per-ISA loop: the AVX-512 panel (P16) kernels on N across the 16-column
 * panel edges and the 4-panel tiles, and every config on weights packed in either layout
 * (the layout it lacks runs through its fallback). */
static void test_qb_layouts(uint32_t flags) {
  const ef_qb_gemm_config* cfgs[6];
  int nc = 0;
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AVX512) { cfgs[nc++] = &ef_qb_gemm_config_avx512; test_qd8_quantize(ef_qd8_quantize_row__avx512, "avx512"); }
  if (flags & EF_ARCH_X86_AVX2) test_qd8_quantize(ef_qd8_quantize_row__avx2, "avx2");
  if (flags & EF_ARCH_X86_AVXVNNI) cfgs[nc++] = &ef_qb_gemm_config_avxvnni;
  if (flags & EF_ARCH_X86_AVX2) cfgs[nc++] = &ef_qb_gemm_config_avx2;
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) cfgs[nc++] = &ef_qb_gemm_config_neon;
#endif
  cfgs[nc++] = &ef_qb_gemm_config_scalar;
  static const size_t shapes[][3] = {{1, 1, 1},    {1, 15, 32},  {1, 16, 64},   {1, 17, 100}, {1, 48, 33},
                                     {1, 63, 129}, {1, 64, 384}, {1, 65, 256},  {1, 100, 1000}, {1, 200, 64},
                                     {2, 33, 129}, {3, 50, 300}, {4, 16, 64},   {5, 80, 257},  {9, 130, 200}};
  for (int c = 0; c < nc; c++) {
    printf("== qb layouts %s\n", cfgs[c]->isa);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      for (int layout = EF_QB_LAYOUT_ROWS; layout <= EF_QB_LAYOUT_P16; layout++)
        for (int bits = 2; bits <= 4; bits += 2)
          for (int g = 32; g <= 128; g *= 2) test_qb_layout(cfgs[c], layout, bits, g, shapes[s][0], shapes[s][1], shapes[s][2]);
  }
}

/* ----------------------------------------------------------------------- sparse */

static void test_sparse(const ef_sparse_config* cfg, ef_sparse_dtype dt, size_t m, size_t n, size_t k, unsigned keep_pct) {
  const size_t elem = dt == EF_SPARSE_F32 ? 4 : 1;
  uint8_t* w = calloc(n * k, elem);
  uint8_t* x = malloc(m * k * elem);
  float *ws = malloc(n * 4), *xs = malloc(m * 4);
  int32_t* xz = malloc(m * 4);
  for (size_t i = 0; i < n * k; i++) {
    if (rnd() % 100 >= keep_pct) continue;
    if (dt == EF_SPARSE_F32) ((float*)w)[i] = rnd_f();
    else ((int8_t*)w)[i] = rnd_i8(0);
  }
  for (size_t i = 0; i < m * k; i++) {
    if (dt == EF_SPARSE_F32) ((float*)x)[i] = rnd_f();
    else ((int8_t*)x)[i] = rnd_i8(0);
  }
  for (size_t i = 0; i < n; i++) ws[i] = 0.5f;
  for (size_t i = 0; i < m; i++) { xs[i] = 0.25f; xz[i] = rnd_i8(0); }
  ef_sparse_packed pw;
  if (ef_sparse_pack(dt, w, n, k, ws, NULL, &pw) != 0) { printf("pack failed\n"); exit(2); }
  ef_sparse_params p = {.out_min = -INFINITY, .out_max = INFINITY, .x_scale = xs, .x_zp = xz};
  float *ref = malloc(m * n * 4), *got = malloc(m * n * 4);
  ef_sparse_gemm(&ef_sparse_config_scalar, m, x, &pw, ref, &p);
  ef_sparse_gemm(cfg, m, x, &pw, got, &p);
  char what[96];
  snprintf(what, sizeof what, "sparse %s %zux%zux%zu keep %u%%", dt == EF_SPARSE_F32 ? "f32" : "qs8", m, n, k, keep_pct);
  if (dt == EF_SPARSE_F32) expect_close(what, cfg->isa, got, ref, m * n);
  else expect_same_bytes(what, cfg->isa, got, ref, m * n * 4);
  ef_sparse_packed_free(&pw);
  free(w); free(x); free(ws); free(xs); free(xz); free(ref); free(got);
}

static void test_spw(const ef_sparse_config* cfg, size_t m, size_t n, size_t k, unsigned keep_pct) {
  int8_t* w = calloc(n * k, 1);
  int8_t* x = malloc(m * k);
  float *ws = malloc(n * 4), *xs = malloc(m * 4);
  int32_t* xz = malloc(m * 4);
  for (size_t i = 0; i < n * k; i++)
    if (rnd() % 100 < keep_pct) w[i] = rnd_i8(0);
  for (size_t i = 0; i < m * k; i++) x[i] = (i % 7 == 0) ? -128 : rnd_i8(0); /* -128 takes the second pass */
  for (size_t i = 0; i < n; i++) ws[i] = 0.5f;
  for (size_t i = 0; i < m; i++) { xs[i] = 0.25f; xz[i] = rnd_i8(0); }
  ef_spw_packed pw;
  if (ef_spw_pack(w, n, k, ws, NULL, &pw) != 0) { printf("pack failed\n"); exit(2); }
  ef_sparse_params p = {.out_min = -INFINITY, .out_max = INFINITY, .x_scale = xs, .x_zp = xz};
  float *ref = malloc(m * n * 4), *got = malloc(m * n * 4);
  ef_spw_gemm(&ef_sparse_config_scalar, m, x, &pw, ref, &p);
  ef_spw_gemm(cfg, m, x, &pw, got, &p);
  char what[96];
  snprintf(what, sizeof what, "sparse windows %zux%zux%zu keep %u%%", m, n, k, keep_pct);
  expect_same_bytes(what, cfg->isa, got, ref, m * n * 4);
  ef_spw_packed_free(&pw);
  free(w); free(x); free(ws); free(xs); free(xz); free(ref); free(got);
}

/* One random problem for the sparse int8 GEMV layouts: weights with keep_pct % nonzeros
 * (all -128/127 when extreme), activations, per-row scales, bias, zero points. */
typedef struct {
  int8_t *w, *x;
  float *ws, *xs, *bias;
  int32_t* xz;
} sparse_case;

static sparse_case sparse_case_new(size_t m, size_t n, size_t k, unsigned keep_pct, int extreme) {
  sparse_case c = {calloc(n * k, 1), malloc(m * k), malloc(n * 4), malloc(m * 4), malloc(n * 4), malloc(m * 4)};
  for (size_t i = 0; i < n * k; i++)
    if (rnd() % 100 < keep_pct) c.w[i] = extreme ? rnd_i8(1) : rnd_i8(0);
  for (size_t i = 0; i < m * k; i++) c.x[i] = rnd_i8(extreme);
  for (size_t i = 0; i < n; i++) { c.ws[i] = 0.5f; c.bias[i] = rnd_f(); }
  for (size_t i = 0; i < m; i++) { c.xs[i] = 0.25f; c.xz[i] = extreme ? ((i & 1) ? 127 : -128) : rnd_i8(0); }
  return c;
}

static void sparse_case_free(sparse_case* c) {
  free(c->w); free(c->x); free(c->ws); free(c->xs); free(c->xz); free(c->bias);
}

/* The scalar reference itself against a dense int32 sum of the same problem. */
static void check_sparse_reference(const char* what, const sparse_case* c, const int32_t* wsum, const float* ref,
                                   size_t m, size_t n, size_t k) {
  checks++;
  for (size_t r = 0; r < m; r++)
    for (size_t j = 0; j < n; j++) {
      uint32_t acc = 0;
      for (size_t i = 0; i < k; i++) acc += (uint32_t)((int32_t)c->x[r * k + i] * c->w[j * k + i]);
      const float want = ef_sparse_qs8_out((int32_t)acc, c->xz[r], wsum[j], c->xs[r], c->ws[j], c->bias[j],
                                           -INFINITY, INFINITY);
      if (memcmp(&want, &ref[r * n + j], 4) != 0) {
        failures++;
        printf("FAIL %s: scalar [%zu, %zu] %.9g vs dense %.9g\n", what, r, j, ref[r * n + j], want);
        return;
      }
    }
}

/* Shared end of the int8 sparse layout tests: the variant's bytes equal the scalar kernel's,
 * which equal the dense reference; frees ref and got. */
static void check_sparse_layout(const char* layout, const char* isa, const sparse_case* c, const int32_t* wsum,
                                float* ref, float* got, size_t m, size_t n, size_t k, unsigned keep_pct,
                                int extreme) {
  char what[96];
  snprintf(what, sizeof what, "sparse %s %zux%zux%zu keep %u%%%s", layout, m, n, k, keep_pct, extreme ? " extreme" : "");
  expect_same_bytes(what, isa, got, ref, m * n * 4);
  check_sparse_reference(what, c, wsum, ref, m, n, k);
  free(ref);
  free(got);
}

/* Bitmask layout: extreme = every value -128 or 127 (x and w), zero points at both ends. */
static void test_spb(const ef_spb_config* cfg, size_t m, size_t n, size_t k, unsigned keep_pct, int extreme) {
  sparse_case c = sparse_case_new(m, n, k, keep_pct, extreme);
  ef_spb_packed pw;
  if (ef_spb_pack(c.w, n, k, c.ws, c.bias, &pw) != 0) { printf("pack failed\n"); exit(2); }
  ef_sparse_params p = {.out_min = -INFINITY, .out_max = INFINITY, .x_scale = c.xs, .x_zp = c.xz};
  float *ref = malloc(m * n * 4), *got = malloc(m * n * 4);
  ef_spb_gemm(&ef_spb_config_scalar, m, c.x, &pw, ref, &p);
  ef_spb_gemm(cfg, m, c.x, &pw, got, &p);
  check_sparse_layout("bitmask", cfg->isa, &c, pw.wsum, ref, got, m, n, k, keep_pct, extreme);
  ef_spb_packed_free(&pw);
  sparse_case_free(&c);
}

/* Permute layout: as test_spb, plus a fully dense row and an empty row (when n > 2) so a
 * group's step count is 16 per window while some rows are all padding. run 0: the packer's
 * choice, else the steps per window run (1, 2, 4). */
static void test_spp(const ef_spp_config* cfg, size_t m, size_t n, size_t k, unsigned keep_pct, int extreme,
                     size_t run) {
  sparse_case c = sparse_case_new(m, n, k, keep_pct, extreme);
  if (n > 2) {
    for (size_t i = 0; i < k; i++) c.w[(n / 2) * k + i] = extreme ? -128 : (int8_t)(1 + rnd() % 127);
    memset(c.w + (n - 1) * k, 0, k);
  }
  ef_spp_packed pw;
  const int rc = run ? ef_spp_pack_run(c.w, n, k, c.ws, c.bias, run, &pw) : ef_spp_pack(c.w, n, k, c.ws, c.bias, &pw);
  if (rc != 0) { printf("pack failed\n"); exit(2); }
  ef_sparse_params p = {.out_min = -INFINITY, .out_max = INFINITY, .x_scale = c.xs, .x_zp = c.xz};
  float *ref = malloc(m * n * 4), *got = malloc(m * n * 4);
  ef_spp_gemm(&ef_spp_config_scalar, m, c.x, &pw, ref, &p);
  ef_spp_gemm(cfg, m, c.x, &pw, got, &p);
  check_sparse_layout("permute", cfg->isa, &c, pw.wsum, ref, got, m, n, k, keep_pct, extreme);
  ef_spp_packed_free(&pw);
  sparse_case_free(&c);
}

/* ----------------------------------------------------------------------- f32 gemm */

static void test_f32(const ef_f32_gemm_config* cfg, size_t m, size_t n, size_t k) {
  float *x = malloc(m * k * 4), *w = malloc(n * k * 4), *b = malloc(n * 4);
  for (size_t i = 0; i < m * k; i++) x[i] = rnd_f();
  for (size_t i = 0; i < n * k; i++) w[i] = rnd_f();
  for (size_t i = 0; i < n; i++) b[i] = rnd_f();
  ef_f32_packed pw;
  if (ef_f32_pack(w, n, k, b, &pw) != 0) { printf("pack failed\n"); exit(2); }
  float *ref = malloc(m * n * 4), *got = malloc(m * n * 4);
  ef_f32_gemm(&ef_f32_gemm_config_scalar, m, x, &pw, ref, -INFINITY, INFINITY);
  ef_f32_gemm(cfg, m, x, &pw, got, -INFINITY, INFINITY);
  char what[96];
  snprintf(what, sizeof what, "f32 gemm %zux%zux%zu", m, n, k);
  expect_close(what, cfg->isa, got, ref, m * n);
  ef_f32_packed_free(&pw);
  free(x); free(w); free(b); free(ref); free(got);
}

/* 16 x 4 block-sparse f32 against the dense scalar kernel on the same matrix: about
 * keep_pct % of the blocks kept, one row with an infinity in its first column (a block that
 * read past the end of the row before it would turn 0 * inf into NaN when K % 4 != 0). */
static void test_f32_bsr(const ef_f32_gemm_config* cfg, size_t m, size_t n, size_t k, unsigned keep_pct) {
  float *x = malloc(m * k * 4), *w = calloc(n * k, 4), *b = malloc(n * 4);
  for (size_t i = 0; i < m * k; i++) x[i] = rnd_f();
  for (size_t n0 = 0; n0 < n; n0 += EF_F32_NR)
    for (size_t k0 = 0; k0 < k; k0 += EF_F32_BSR_KB)
      if (rnd() % 100 < keep_pct)
        for (size_t j = n0; j < EF_MIN(n, n0 + EF_F32_NR); j++)
          for (size_t kk = k0; kk < EF_MIN(k, k0 + EF_F32_BSR_KB); kk++) w[j * k + kk] = rnd_f();
  for (size_t i = 0; i < n; i++) b[i] = rnd_f();
  if (m > 1) x[(m - 1) * k] = INFINITY;
  ef_f32_packed pd;
  ef_f32_bsr_packed pw;
  if (ef_f32_pack(w, n, k, b, &pd) != 0 || ef_f32_bsr_pack(w, n, k, b, &pw) != 0) { printf("pack failed\n"); exit(2); }
  float *ref = malloc(m * n * 4), *got = malloc(m * n * 4);
  ef_f32_gemm(&ef_f32_gemm_config_scalar, m, x, &pd, ref, -INFINITY, INFINITY);
  ef_f32_bsr_gemm(cfg, m, x, &pw, got, -INFINITY, INFINITY);
  char what[96];
  snprintf(what, sizeof what, "f32 bsr %zux%zux%zu keep %u%%", m, n, k, keep_pct);
  /* the row with the infinity is inf or NaN in both; the others must match */
  expect_close(what, cfg->isa, got, ref, (m > 1 ? m - 1 : m) * n);
  ef_f32_packed_free(&pd);
  ef_f32_bsr_packed_free(&pw);
  free(x); free(w); free(b); free(ref); free(got);
}

/* ----------------------------------------------------------------------- conv */

/* extreme: int8 activations and weights only -128 / 127, and x_zp at the given end (the
 * largest sums and the largest zero-point correction). */
static void test_dwconv(const ef_conv_config* cfg, int q8, size_t h, size_t w, size_t c, size_t stride, int extreme,
                        int32_t x_zp) {
  const size_t elem = q8 ? 1 : 4;
  const size_t oh = (h + 2 - 3) / stride + 1, ow = (w + 2 - 3) / stride + 1;
  uint8_t* x = malloc(h * w * c * elem);
  uint8_t* wt = malloc(9 * c * elem);
  float *bias = malloc(c * 4), *ws = malloc(c * 4);
  for (size_t i = 0; i < h * w * c; i++) {
    if (q8) ((int8_t*)x)[i] = rnd_i8(extreme);
    else ((float*)x)[i] = rnd_f();
  }
  for (size_t i = 0; i < 9 * c; i++) {
    if (q8) ((int8_t*)wt)[i] = rnd_i8(extreme);
    else ((float*)wt)[i] = rnd_f();
  }
  for (size_t i = 0; i < c; i++) { bias[i] = rnd_f(); ws[i] = 0.01f; }
  ef_dwconv_params p = {.h = h, .w = w, .c = c, .stride = stride, .out_min = 0.0f, .out_max = 6.0f, .x_scale = 0.02f, .x_zp = x_zp, .w_scale = ws,
                        .out_inv_scale = 10.0f, .out_zp = -2};
  float* ref = malloc(oh * ow * c * 4);
  float* got = malloc(oh * ow * c * 4);
  if (q8) {
    ef_dwconv3x3_qs8(&ef_conv_config_scalar, (const int8_t*)x, (const int8_t*)wt, bias, (int8_t*)ref, &p);
    ef_dwconv3x3_qs8(cfg, (const int8_t*)x, (const int8_t*)wt, bias, (int8_t*)got, &p);
  } else {
    ef_dwconv3x3_f32(&ef_conv_config_scalar, (const float*)x, (const float*)wt, bias, ref, &p);
    ef_dwconv3x3_f32(cfg, (const float*)x, (const float*)wt, bias, got, &p);
  }
  char what[96];
  snprintf(what, sizeof what, "dwconv3x3 %s %zux%zux%zu s%zu%s zp %d", q8 ? "qs8" : "f32", h, w, c, stride,
           extreme ? " extreme" : "", (int)x_zp);
  if (q8) expect_same_bytes(what, cfg->isa, got, ref, oh * ow * c);
  else expect_close(what, cfg->isa, got, ref, oh * ow * c);
  free(x); free(wt); free(bias); free(ws); free(ref); free(got);
}

/* ----------------------------------------------------------------------- bsr (16 x 4 block-sparse int8) */

/* Weights with each 16 x 4 block kept with probability keep_pct %, every variant against the
 * scalar kernel (which tests/kernels/test_bsr_gemm.py checks against the numpy reference).
 * extreme 1: values -128/127, a_zp 127, w_zp -128; extreme 2: the same values, the zero points
 * swapped (a_zp -128, w_zp 127), so both signs of the correction terms reach their limits. */
static void test_bsr(const ef_bsr_config* cfg, size_t m, size_t n, size_t k, unsigned keep_pct, int extreme, int out_int8) {
  int8_t* a = malloc(m * k);
  int8_t* w = malloc(n * k);
  float *ws = malloc(n * 4), *bias = malloc(n * 4), *as = malloc(m * 4);
  int32_t *wz = malloc(n * 4), *az = malloc(m * 4);
  for (size_t i = 0; i < m * k; i++) a[i] = rnd_i8(extreme);
  for (size_t i = 0; i < n * k; i++) w[i] = rnd_i8(extreme);
  for (size_t g = 0; g < n; g += EF_BSR_NR)
    for (size_t kb = 0; kb < k; kb += EF_BSR_KB)
      if (rnd() % 100 >= keep_pct)
        for (size_t j = g; j < EF_MIN(n, g + EF_BSR_NR); j++)
          for (size_t kk = kb; kk < EF_MIN(k, kb + EF_BSR_KB); kk++) w[j * k + kk] = 0;
  for (size_t i = 0; i < n; i++) {
    ws[i] = 0.001f + (rnd() % 1000) * 1e-4f; bias[i] = rnd_f();
    wz[i] = extreme == 1 ? -128 : extreme == 2 ? 127 : rnd_i8(0);
  }
  for (size_t i = 0; i < m; i++) { as[i] = 0.01f; az[i] = extreme == 1 ? 127 : extreme == 2 ? -128 : rnd_i8(0); }
  ef_bsr_packed pw;
  if (ef_bsr_pack(w, n, k, ws, wz, bias, &pw) != 0) { printf("bsr pack failed\n"); exit(2); }
  const size_t elem = out_int8 ? 1 : 4;
  void *ref = malloc(m * n * elem), *got = malloc(m * n * elem);
  ef_qs8_gemm_params p = {.k = k, .out_min = (rnd() & 1) ? 0.0f : -INFINITY, .out_max = INFINITY, .out_int8 = out_int8,
                          .out_inv_scale = 1.0f / 3.0f, .out_zp = -5};
  ef_bsr_gemm(&ef_bsr_config_scalar, m, a, az, as, &pw, ref, &p);
  ef_bsr_gemm(cfg, m, a, az, as, &pw, got, &p);
  char what[96];
  snprintf(what, sizeof what, "bsr %zux%zux%zu keep %u%%%s%s", m, n, k, keep_pct,
           extreme == 1 ? " extreme" : extreme == 2 ? " extreme-swapped-zp" : "", out_int8 ? " int8-out" : "");
  expect_same_bytes(what, cfg->isa, got, ref, m * n * elem);
  ef_bsr_packed_free(&pw);
  free(a); free(w); free(ws); free(bias); free(as); free(wz); free(az); free(ref); free(got);
}

/* Every activation and weight one constant (-128 or 127), zero points at the opposite ends, K
 * at the int32 limit and every other 4-wide K block zero: accumulators and correction terms
 * reach +-K*255*255, and the skipped blocks' zero-point terms must still count. */
static void test_bsr_const(const ef_bsr_config* cfg, size_t m, size_t n, int8_t a_val, int32_t a_zp, int8_t w_val,
                           int32_t w_zp) {
  const size_t k = EF_BSR_MAX_K;
  int8_t* a = malloc(m * k);
  int8_t* w = malloc(n * k);
  float *ws = malloc(n * 4), *as = malloc(m * 4);
  int32_t *wz = malloc(n * 4), *az = malloc(m * 4);
  memset(a, a_val, m * k);
  for (size_t j = 0; j < n; j++)
    for (size_t kk = 0; kk < k; kk++) w[j * k + kk] = (kk / EF_BSR_KB) % 2 ? 0 : w_val;
  for (size_t j = 0; j < n; j++) { ws[j] = 1.0f; wz[j] = w_zp; }
  for (size_t i = 0; i < m; i++) { as[i] = 1.0f; az[i] = a_zp; }
  ef_bsr_packed pw;
  if (ef_bsr_pack(w, n, k, ws, wz, NULL, &pw) != 0) { printf("bsr pack failed\n"); exit(2); }
  float *ref = malloc(m * n * 4), *got = malloc(m * n * 4);
  ef_qs8_gemm_params p = {.k = k, .out_min = -INFINITY, .out_max = INFINITY, .out_int8 = 0};
  ef_bsr_gemm(&ef_bsr_config_scalar, m, a, az, as, &pw, ref, &p);
  ef_bsr_gemm(cfg, m, a, az, as, &pw, got, &p);
  char what[96];
  snprintf(what, sizeof what, "bsr const %zux%zux%zu a %d zp %d w %d zp %d", m, n, k, a_val, (int)a_zp, w_val, (int)w_zp);
  expect_same_bytes(what, cfg->isa, got, ref, m * n * 4);
  ef_bsr_packed_free(&pw);
  free(a); free(w); free(ws); free(as); free(wz); free(az); free(ref); free(got);
}

typedef void (*qadd_fn)(size_t n, const int8_t* a, const int8_t* b, int8_t* y, const ef_qadd_params* p);

/* int8 residual add: each SIMD variant against the scalar definition, every int8 pair, extreme
 * zero points, lengths around the 8-wide (AVX2) and 16-wide (NEON) steps, exact ties, inputs
 * that saturate both ends, and infinite scales (inf - inf = NaN must map to the low bound). */
static void test_qadd(uint32_t flags) {
  qadd_fn fns[2];
  const char* names[2];
  int nf = 0;
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AVX2) { fns[nf] = ef_qadd_qs8__avx2; names[nf++] = "avx2"; }
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) { fns[nf] = ef_qadd_qs8__neon; names[nf++] = "neon"; }
#endif
  static const size_t lens[] = {1, 7, 8, 9, 15, 16, 17, 31, 33, 65536 + 3};
  static const ef_qadd_params params[] = {{0.05f, 0.02f, 1.0f / 0.06f, 3, -7, 1},
                                          {0.5f, 0.5f, 100.0f, -128, 127, -128},
                                          {1e-3f, 2.0f, 1.0f / 0.7f, 127, -128, 127},
                                          {0.5f, 0.25f, 1.0f, 0, 0, 0},        /* halves and quarters: ties */
                                          {0.5f, 0.5f, 1.0f, -128, 127, 127},  /* ties, clamped high end */
                                          {INFINITY, INFINITY, 1.0f, 0, 1, 0}, /* +-inf, NaN (inf - inf, 0 * inf) */
                                          {1.0f, 1.0f, 1e30f, 0, 0, -128}};    /* overflow to inf, clamped */
  for (int f = 0; f < nf; f++)
    for (size_t pi = 0; pi < sizeof params / sizeof params[0]; pi++)
      for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        const size_t n = lens[li];
        int8_t *a = malloc(n), *b = malloc(n), *ref = malloc(n), *got = malloc(n);
        for (size_t i = 0; i < n; i++) { /* n = 65539 walks every (a, b) pair */
          a[i] = (int8_t)(i & 0xFF);
          b[i] = (int8_t)((i >> 8) & 0xFF);
        }
        ef_qadd_qs8__scalar(n, a, b, ref, &params[pi]);
        fns[f](n, a, b, got, &params[pi]);
        char what[64];
        snprintf(what, sizeof what, "qadd n=%zu params %zu", n, pi);
        expect_same_bytes(what, names[f], got, ref, n);
        free(a); free(b); free(ref); free(got);
      }
}

/* float32 <-> int8 conversion: the AVX2 variants against the scalar definitions, lengths
 * around the 8-wide step, exact ties, values past both bounds, +-inf and NaN (low bound). */
static void test_qconvert(uint32_t flags) {
#if EF_ARCH_X86
  if (!(flags & EF_ARCH_X86_AVX2)) return;
  static const size_t lens[] = {1, 7, 8, 9, 17, 1000};
  static const float scales[] = {0.05f, 0.5f, 1e-3f, 1.0f};
  static const int32_t zps[] = {3, -128, 127, 0};
  for (size_t si = 0; si < 4; si++)
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
      const size_t n = lens[li];
      float *x = malloc(n * 4), *yr = malloc(n * 4), *yg = malloc(n * 4);
      int8_t *qr = malloc(n), *qg = malloc(n);
      for (size_t i = 0; i < n; i++) {
        x[i] = (float)((int)(i % 601) - 300) * 0.5f * scales[si]; /* halves of the step: ties */
        if (i % 11 == 3) x[i] = i % 2 ? INFINITY : -INFINITY;
        if (i % 13 == 5) x[i] = NAN;
        qg[i] = (int8_t)(i * 37);
      }
      char what[64];
      snprintf(what, sizeof what, "quantize n=%zu params %zu", n, si);
      ef_quantize_qs8__scalar(n, x, 1.0f / scales[si], zps[si], qr);
      ef_quantize_qs8__avx2(n, x, 1.0f / scales[si], zps[si], qg);
      expect_same_bytes(what, "avx2", qg, qr, n);
      snprintf(what, sizeof what, "dequantize n=%zu params %zu", n, si);
      ef_dequantize_qs8__scalar(n, qg, scales[si], zps[si], yr);
      ef_dequantize_qs8__avx2(n, qg, scales[si], zps[si], yg);
      expect_same_bytes(what, "avx2", yg, yr, n * 4);
      free(x); free(yr); free(yg); free(qr); free(qg);
    }
#else
  (void)flags;
#endif
}

/* int8 max pooling: AVX2 against the scalar definition over window shapes, strides,
 * dilations and channel counts around the 32-wide step, on random and extreme bytes. */
static void test_maxpool(uint32_t flags) {
#if EF_ARCH_X86
  if (!(flags & EF_ARCH_X86_AVX2)) return;
  static const size_t geo[][6] = {{2, 2, 2, 2, 1, 1}, {3, 3, 1, 1, 1, 1}, {3, 2, 2, 1, 1, 2}, {1, 1, 1, 1, 1, 1}};
  static const size_t chans[] = {1, 31, 32, 33, 96};
  for (size_t g = 0; g < sizeof geo / sizeof geo[0]; g++)
    for (size_t ci = 0; ci < sizeof chans / sizeof chans[0]; ci++)
      for (int extreme = 0; extreme < 2; extreme++) {
        const size_t h = 9, w = 7, c = chans[ci];
        ef_maxpool_params p = {h, w, c, 0, 0, geo[g][0], geo[g][1], geo[g][2], geo[g][3], geo[g][4], geo[g][5]};
        p.oh = (h - p.dh * (p.kh - 1) - 1) / p.sh + 1;
        p.ow = (w - p.dw * (p.kw - 1) - 1) / p.sw + 1;
        int8_t* x = malloc(h * w * c);
        int8_t *ref = malloc(p.oh * p.ow * c), *got = malloc(p.oh * p.ow * c);
        for (size_t i = 0; i < h * w * c; i++) x[i] = rnd_i8(extreme);
        ef_maxpool_qs8__scalar(x, ref, &p);
        ef_maxpool_qs8__avx2(x, got, &p);
        char what[80];
        snprintf(what, sizeof what, "maxpool %zux%zu s%zu d%zu c%zu%s", p.kh, p.kw, p.sh, p.dh, c, extreme ? " extreme" : "");
        expect_same_bytes(what, "avx2", got, ref, p.oh * p.ow * c);
        free(x); free(ref); free(got);
        /* fp32: the same geometry, with NaNs (two payloads), signed zeros and infinities */
        float* xf = malloc(h * w * c * sizeof(float));
        float *reff = malloc(p.oh * p.ow * c * sizeof(float)), *gotf = malloc(p.oh * p.ow * c * sizeof(float));
        for (size_t i = 0; i < h * w * c; i++) {
          const int r = rnd_i8(extreme);
          xf[i] = r == 127 ? NAN : r == -128 ? -NAN : r == 0 ? (i % 2 ? 0.0f : -0.0f) : r == 1 ? INFINITY : (float)r / 7;
        }
        ef_maxpool_f32__scalar(xf, reff, &p);
        ef_maxpool_f32__avx2(xf, gotf, &p);
        snprintf(what, sizeof what, "maxpool f32 %zux%zu s%zu d%zu c%zu%s", p.kh, p.kw, p.sh, p.dh, c, extreme ? " extreme" : "");
        expect_same_bytes(what, "avx2", gotf, reff, p.oh * p.ow * c * sizeof(float));
        free(xf); free(reff); free(gotf);
      }
#else
  (void)flags;
#endif
}

static void test_bsr_all(uint32_t flags) {
  const ef_bsr_config* cfgs[4] = {NULL, NULL, NULL, NULL};
  int nconf = 0;
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AVX512) cfgs[nconf++] = &ef_bsr_config_avx512;
  if (flags & EF_ARCH_X86_AVXVNNI) cfgs[nconf++] = &ef_bsr_config_avxvnni;
  if (flags & EF_ARCH_X86_AVX2) cfgs[nconf++] = &ef_bsr_config_avx2;
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) cfgs[nconf++] = &ef_bsr_config_neon;
#endif
  cfgs[nconf++] = &ef_bsr_config_scalar; /* the scalar config against itself: harness check */
  static const size_t shapes[][3] = {{1, 1, 1}, {1, 17, 33}, {2, 31, 7}, {3, 16, 64}, {4, 33, 129}, {5, 48, 300},
                                     {9, 20, 1001}, {64, 24, 96}, {256, 96, 16}};
  for (int c = 0; c < nconf; c++) {
    printf("== bsr %s\n", cfgs[c]->isa);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      for (unsigned keep = 0; keep <= 100; keep += 25)
        for (int extreme = 0; extreme < 3; extreme++)
          for (int out8 = 0; out8 < 2; out8++) test_bsr(cfgs[c], shapes[s][0], shapes[s][1], shapes[s][2], keep, extreme, out8);
    test_bsr(cfgs[c], 3, 17, EF_BSR_MAX_K, 50, 1, 0);
    test_bsr(cfgs[c], 3, 17, EF_BSR_MAX_K, 50, 2, 1);
    /* Every tile edge: M through each row remainder of MR = 1..4 and past two tiles, the last
     * channel group 1..16 wide behind a full one, K 1..5 (a partial last block) and 12. */
    static const size_t edge_k[] = {1, 2, 3, 4, 5, 12};
    for (size_t m = 1; m <= 9; m++)
      for (size_t nc = 1; nc <= EF_BSR_NR; nc++)
        for (size_t ki = 0; ki < sizeof edge_k / sizeof edge_k[0]; ki++)
          test_bsr(cfgs[c], m, EF_BSR_NR + nc, edge_k[ki], 75, (int)((m + nc) % 3), (int)(nc & 1));
    static const int8_t cv[][4] = {{-128, 127, -128, 127}, {-128, 127, 127, -128}, {127, -128, 127, -128},
                                   {-128, 0, -128, 0}, {127, 0, -128, 0}, {-128, -128, -128, -128}};
    for (size_t i = 0; i < sizeof cv / sizeof cv[0]; i++) test_bsr_const(cfgs[c], 5, 19, cv[i][0], cv[i][1], cv[i][2], cv[i][3]);
  }
}

int main(void) {
  const uint32_t flags = ef_arch_flags_detected();
  const ef_qs8_gemm_config* qs8[6] = {NULL};
  const ef_qb_gemm_config* qb[6] = {NULL};
  const ef_sparse_config* sp[6] = {NULL};
  const ef_conv_config* cv[6] = {NULL};
  const ef_f32_gemm_config* f32[6] = {NULL};
  int nconf = 0;
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AMX) { /* qs8 has an AMX kernel; the rest repeat AVX2 / AVX-VNNI / AVX-512 */
    qs8[nconf] = &ef_qs8_gemm_config_amx; qb[nconf] = &ef_qb_gemm_config_avxvnni;
    sp[nconf] = &ef_sparse_config_avx2; cv[nconf] = &ef_conv_config_avx512;
    f32[nconf] = &ef_f32_gemm_config_avx512; nconf++;
    test_qs8_tiles();
  }
  if (flags & EF_ARCH_X86_AVX512) { /* qs8 (any M on the panel), qb (P16 panel), f32, conv; the rest repeat AVX2 */
    qs8[nconf] = &ef_qs8_gemm_config_avx512; qb[nconf] = &ef_qb_gemm_config_avx512;
    sp[nconf] = &ef_sparse_config_avx2; cv[nconf] = &ef_conv_config_avx512;
    f32[nconf] = &ef_f32_gemm_config_avx512; nconf++;
  }
  if (flags & EF_ARCH_X86_AVXVNNI) { /* qs8 and qb have VNNI kernels; the rest repeat AVX2 */
    qs8[nconf] = &ef_qs8_gemm_config_avxvnni; qb[nconf] = &ef_qb_gemm_config_avxvnni;
    sp[nconf] = &ef_sparse_config_avx2; cv[nconf] = &ef_conv_config_avx2;
    f32[nconf] = &ef_f32_gemm_config_avx2; nconf++;
  }
  if (flags & EF_ARCH_X86_AVX2) {
    qs8[nconf] = &ef_qs8_gemm_config_avx2; qb[nconf] = &ef_qb_gemm_config_avx2;
    sp[nconf] = &ef_sparse_config_avx2; cv[nconf] = &ef_conv_config_avx2;
    f32[nconf] = &ef_f32_gemm_config_avx2; nconf++;
  }
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) {
    qs8[nconf] = &ef_qs8_gemm_config_neon; qb[nconf] = &ef_qb_gemm_config_neon;
    sp[nconf] = &ef_sparse_config_neon; cv[nconf] = &ef_conv_config_neon;
    f32[nconf] = &ef_f32_gemm_config_neon; nconf++;
  }
#endif
  /* The scalar config against itself checks the harness and runs everywhere. */
  qs8[nconf] = &ef_qs8_gemm_config_scalar; qb[nconf] = &ef_qb_gemm_config_scalar;
  sp[nconf] = &ef_sparse_config_scalar; cv[nconf] = &ef_conv_config_scalar;
  f32[nconf] = &ef_f32_gemm_config_scalar; nconf++;

  static const size_t shapes[][3] = {{1, 1, 1}, {1, 17, 33}, {2, 31, 7}, {3, 16, 64}, {4, 33, 129}, {5, 48, 300}, {9, 20, 1001}, {6, 40, 77}, {8, 17, 50}, {15, 33, 9}, {23, 16, 130}};
  for (int c = 0; c < nconf; c++) {
    printf("== %s\n", qs8[c]->isa);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
      const size_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
      for (int extreme = 0; extreme < 2; extreme++)
        for (int out8 = 0; out8 < 2; out8++) test_qs8(qs8[c], m, n, k, extreme, out8);
      test_f32(f32[c], m, n, k);
      for (unsigned keep = 0; keep <= 100; keep += 25) test_f32_bsr(f32[c], m, n, k, keep);
      for (int bits = 2; bits <= 4; bits += 2)
        for (int g = 32; g <= 128; g *= 2) test_qb(qb[c], bits, g, m, n, k);
      for (unsigned keep = 5; keep <= 100; keep += 45) {
        test_sparse(sp[c], EF_SPARSE_F32, m, n, k, keep);
        test_sparse(sp[c], EF_SPARSE_QS8, m, n, k, keep);
        test_sparse(sp[c], EF_SPARSE_QS8, m + 8, n, k, keep); /* transposed GEMM path */
        test_spw(sp[c], m, n, k, keep);
      }
    }
    test_qs8(qs8[c], 2, 17, EF_QS8_MAX_K, 1, 0);
    /* channels: the 16- and 8-channel steps and the scalar tail; widths past one 64-pixel run */
    static const size_t conv_shapes[][3] = {{1, 1, 1}, {5, 7, 3}, {8, 8, 16}, {9, 11, 37}, {14, 14, 96},
                                            {6, 5, 24}, {3, 70, 8}, {4, 130, 45}, {5, 6, 64}, {3, 4, 61}};
    for (size_t s = 0; s < sizeof conv_shapes / sizeof conv_shapes[0]; s++)
      for (size_t stride = 1; stride <= 2; stride++) {
        for (int q8 = 0; q8 < 2; q8++)
          test_dwconv(cv[c], q8, conv_shapes[s][0], conv_shapes[s][1], conv_shapes[s][2], stride, 0, 3);
        test_dwconv(cv[c], 1, conv_shapes[s][0], conv_shapes[s][1], conv_shapes[s][2], stride, 1, -128);
        test_dwconv(cv[c], 1, conv_shapes[s][0], conv_shapes[s][1], conv_shapes[s][2], stride, 1, 127);
      }
  }
  test_qb_layouts(flags);
  /* bitmask sparse layout: its own configs (avx512 has a kernel there) */
  const ef_spb_config* spb[4] = {NULL, NULL, NULL, NULL};
  int nspb = 0;
#if EF_ARCH_X86
  if (flags & EF_ARCH_X86_AVX512) spb[nspb++] = &ef_spb_config_avx512;
  if (flags & EF_ARCH_X86_AVX2) spb[nspb++] = &ef_spb_config_avx2;
#endif
#if EF_ARCH_ARM64
  if (flags & EF_ARCH_ARM_NEON) spb[nspb++] = &ef_spb_config_neon;
#endif
  spb[nspb++] = &ef_spb_config_scalar;
  static const size_t spb_shapes[][3] = {{1, 1, 1}, {1, 17, 33}, {2, 31, 7}, {3, 16, 64}, {4, 33, 129},
                                         {5, 48, 300}, {9, 20, 1001}, {1, 64, 4096}};
  for (int c = 0; c < nspb; c++) {
    printf("== bitmask %s\n", spb[c]->isa);
    for (size_t s = 0; s < sizeof spb_shapes / sizeof spb_shapes[0]; s++)
      for (unsigned keep = 0; keep <= 100; keep += 25)
        for (int extreme = 0; extreme < 2; extreme++)
          test_spb(spb[c], spb_shapes[s][0], spb_shapes[s][1], spb_shapes[s][2], keep, extreme);
  }
  /* permute sparse layout: the VBMI kernel where the CPU has it (ef_spp_select), always scalar */
  const ef_spp_config* spp[2] = {ef_spp_select(), NULL};
  int nspp = spp[0] == &ef_spp_config_scalar ? 1 : 2;
  if (nspp == 2) spp[1] = &ef_spp_config_scalar;
  for (int c = 0; c < nspp; c++) {
    printf("== permute %s\n", spp[c]->isa);
    for (size_t s = 0; s < sizeof spb_shapes / sizeof spb_shapes[0]; s++)
      for (unsigned keep = 0; keep <= 100; keep += 25)
        for (int extreme = 0; extreme < 2; extreme++)
          for (size_t run = 0; run <= 4; run = run ? run * 2 : 1)
            test_spp(spp[c], spb_shapes[s][0], spb_shapes[s][1], spb_shapes[s][2], keep, extreme, run);
  }
  test_bsr_all(flags);
  test_qadd(flags);
  test_qconvert(flags);
  test_maxpool(flags);
  printf("%d checks, %d failures\n", checks, failures);
  return failures != 0;
}
