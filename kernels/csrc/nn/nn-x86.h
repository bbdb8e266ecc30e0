/* AVX2 row kernels shared by the AVX-512 config (which replaces only the elementwise ones). */
#pragma once
#include "nn/nn.h"

#if EF_ARCH_X86
void ef_nn_layernorm_row__avx2(size_t n, const float* x, const float* res, const float* gamma, const float* beta, float eps,
                               float* y);
void ef_nn_softmax_row__avx2(size_t n, const float* x, float scale, const float* mask, float* y);
void ef_nn_qk_row__avx2(size_t n, size_t d, const float* q, const float* kt, size_t ldk, float* s);
void ef_nn_pv_row__avx2(size_t n, size_t d, const float* p, const float* v, size_t v_stride, float* out);
#endif
