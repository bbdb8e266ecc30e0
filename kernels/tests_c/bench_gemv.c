/* The int8 GEMV (M = 1) in C, without Python: our dense kernel (ef_qs8_gemm) against the
 * permute sparse layout (ef_spp_gemm) at 75 % and 50 % unstructured zeros, and the permute
 * kernel's steps alone (its ukernel over every group, no activation preparation or epilogue).
 * What benchmarks/kernels_gemm.py measures through the binding, minus the call; "Sparse GEMV:
 * what bounds it" in kernels/README.md reads these figures.
 *
 *   make -C kernels/tests_c bench        (one thread; ./build/bench_gemv_native 2 for two)
 *
 * Times are the fastest of 30 rounds of back-to-back calls, in nanoseconds per call. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common.h"
#include "qs8-gemm/qs8-gemm.h"
#include "sparse-gemm/sparse-gemm.h"
#include "threadpool.h"

typedef void (*call_fn)(void* ctx);

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* Fastest round of `calls` back-to-back calls, per call. */
static double best_ns(call_fn fn, void* ctx, int calls) {
  double best = 1e30;
  for (int round = 0; round < 30; round++) {
    const double t0 = now_ns();
    for (int i = 0; i < calls; i++) fn(ctx);
    const double t = (now_ns() - t0) / calls;
    if (t < best) best = t;
  }
  return best;
}

typedef struct {
  size_t n, k;
  const int8_t* x;
  float* y;
  float x_scale;
  int32_t x_zp;
  ef_qs8_packed dense;
  ef_spp_packed sparse;
  uint8_t* x_u8; /* the permute kernel's activation rows (x + 128, padded), for steps_only */
  int32_t* raw;
} gemv;

static void dense_call(void* p) {
  gemv* g = p;
  const ef_qs8_gemm_params params = {.k = g->k, .out_min = -INFINITY, .out_max = INFINITY, .out_inv_scale = 1.0f};
  ef_qs8_gemm(NULL, 1, g->x, &g->x_zp, &g->x_scale, &g->dense, g->y, &params);
}

static void sparse_call(void* p) {
  gemv* g = p;
  const ef_sparse_params params = {.out_min = -INFINITY, .out_max = INFINITY, .x_scale = &g->x_scale, .x_zp = &g->x_zp};
  ef_spp_gemm(NULL, 1, g->x, &g->sparse, g->y, &params);
}

static void steps_only(void* p) {
  gemv* g = p;
  const ef_spp_config* config = ef_spp_select();
  config->ukernel(&g->sparse, 0, g->sparse.groups, 1, g->x_u8, EF_ROUND_UP(g->k + EF_SPP_WINDOW, 64), g->raw, 0);
}

static int8_t rand_int8(void) { return (int8_t)(rand() % 255 - 127); }

int main(int argc, char** argv) {
  const int threads = argc > 1 ? atoi(argv[1]) : 1;
  ef_set_num_threads(threads);
  srand(1);
  printf("int8 GEMV, %d thread(s), permute kernel: %s; ns per call (fastest round)\n", threads, ef_spp_select()->isa);
  printf("%5s %5s %6s | %9s %9s %6s | %9s %6s | %10s %8s\n", "N", "K", "zeros", "dense", "sparse", "ratio", "steps", "steps", "bytes/wt", "ns/step");
  const size_t sizes[] = {384, 1536, 4096};
  for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
    for (int keep_pct = 25; keep_pct <= 50; keep_pct += 25) {
      const size_t n = sizes[si], k = sizes[si];
      int8_t* w = malloc(n * k);
      int8_t* ws = malloc(n * k);
      float* scale = malloc(n * sizeof(float));
      gemv g = {.n = n, .k = k, .x_scale = 0.02f, .x_zp = 0};
      int8_t* x = malloc(k);
      g.x = x;
      g.y = malloc(n * sizeof(float));
      for (size_t i = 0; i < n * k; i++) {
        w[i] = rand_int8();
        ws[i] = rand() % 100 < keep_pct ? w[i] : 0;
      }
      for (size_t i = 0; i < n; i++) scale[i] = 0.01f;
      for (size_t i = 0; i < k; i++) x[i] = rand_int8();
      const size_t ldx = EF_ROUND_UP(k + EF_SPP_WINDOW, 64);
      if (ef_qs8_pack(w, n, k, scale, NULL, NULL, &g.dense) != 0 || ef_spp_pack(ws, n, k, scale, NULL, &g.sparse) != 0 ||
          (g.x_u8 = ef_aligned_alloc(ldx)) == NULL || (g.raw = ef_aligned_alloc(g.sparse.groups * EF_SPP_ROWS * 4)) == NULL) {
        fprintf(stderr, "out of memory\n");
        return 2;
      }
      for (size_t i = 0; i < ldx; i++) g.x_u8[i] = i < k ? (uint8_t)(x[i] ^ 0x80) : 0x80;
      const int calls = n * k > 4000000 ? 20 : 200;
      const double td = best_ns(dense_call, &g, calls), ts = best_ns(sparse_call, &g, calls);
      const double tk = best_ns(steps_only, &g, calls);
      printf("%5zu %5zu %5d%% | %9.0f %9.0f %5.2fx | %9.0f %6zu | %10.3f %8.2f\n", n, k, 100 - keep_pct, td, ts, td / ts,
             tk, g.sparse.steps, (double)ef_spp_packed_bytes(&g.sparse) / (double)(n * k), tk / (double)g.sparse.steps);
      ef_qs8_packed_free(&g.dense);
      ef_spp_packed_free(&g.sparse);
      ef_aligned_free(g.x_u8);
      ef_aligned_free(g.raw);
      free(w), free(ws), free(scale), free(x), free(g.y);
    }
  return 0;
}
