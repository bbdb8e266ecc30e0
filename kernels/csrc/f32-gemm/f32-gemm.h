/* f32-gemm: fp32 GEMM with packed weights, fused bias and activation clamp:
 *   y[m,n] = clamp(sum_k x[m,k] * w[n,k] + bias[n], out_min, out_max)
 * Used for fp32 linear layers, pointwise (1x1) convolutions and im2col convolutions. The
 * summation order (and FMA vs multiply+add) differs between variants: named tolerance. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define EF_F32_NR 16
#define EF_F32_MR_MAX 8

/* Block of 16 output columns: float bias[16], then float w[k][16] (column-interleaved so
 * one k step is two 8-wide vector loads, or one 16-wide). Columns past N are zero. */
typedef struct ef_f32_packed {
  size_t n, k, n_blocks, block_floats;
  float* data;
} ef_f32_packed;

typedef void (*ef_f32_gemm_ukernel_fn)(size_t mr, size_t nc, size_t k, const float* x, size_t x_stride, const float* block,
                                       float* c, size_t c_stride, float out_min, float out_max);

typedef struct ef_f32_gemm_config {
  const char* isa;
  size_t mr;
  ef_f32_gemm_ukernel_fn ukernel[EF_F32_MR_MAX];
} ef_f32_gemm_config;

extern const ef_f32_gemm_config ef_f32_gemm_config_scalar;
#if EF_ARCH_X86
extern const ef_f32_gemm_config ef_f32_gemm_config_avx2;
extern const ef_f32_gemm_config ef_f32_gemm_config_avx512;
#endif
#if EF_ARCH_ARM64
extern const ef_f32_gemm_config ef_f32_gemm_config_neon;
#endif
const ef_f32_gemm_config* ef_f32_gemm_select(void);

int ef_f32_pack(const float* w, size_t n, size_t k, const float* bias, ef_f32_packed* out);
void ef_f32_packed_free(ef_f32_packed* p);
int ef_f32_gemm(const ef_f32_gemm_config* config, size_t m, const float* x, const ef_f32_packed* w, float* c,
                float out_min, float out_max);
