/* Portable bsr-gemm kernel: the reference the SIMD variants are tested against and the
 * fallback on CPUs without one. Plain loops, not designed to be fast. */
#include "bsr-gemm/bsr-gemm.h"

static void ef_qs8_qc8w_bsrgemm_minmax_ukernel_4x16c4__scalar(
    size_t mr, size_t nc, size_t nb, const uint32_t* kofs, const int8_t* w, const void* a_, size_t a_stride,
    const int32_t* a_zp, const float* a_scale, const int32_t* a_rowsum, const uint8_t* header, void* c,
    size_t c_stride, const ef_qs8_gemm_params* p) {
  const int32_t* colsum = (const int32_t*)header;
  const int32_t* w_zp = colsum + EF_QS8_NR;
  const float* w_scale = (const float*)(w_zp + EF_QS8_NR);
  const float* bias = w_scale + EF_QS8_NR;
  const int16_t* a = a_;
  for (size_t r = 0; r < mr; r++) {
    const int16_t* arow = a + r * a_stride;
    for (size_t j = 0; j < nc; j++) {
      uint32_t raw = 0; /* wrapping sum; exact whenever the true result fits int32 */
      for (size_t b = 0; b < nb; b++) {
        const int8_t* wb = w + b * EF_BSR_BLOCK_BYTES + j * EF_BSR_KB;
        const int16_t* ak = arow + kofs[b];
        for (size_t t = 0; t < EF_BSR_KB; t++) raw += (uint32_t)((int32_t)ak[t] * wb[t]);
      }
      const int32_t acc = ef_qs8_correct(raw, a_zp[r], colsum[j], w_zp[j], a_rowsum[r], (uint32_t)p->k);
      const float y = ef_qs8_dequant(acc, a_scale[r], w_scale[j], bias[j], p->out_min, p->out_max);
      if (p->out_int8) {
        ((int8_t*)c)[r * c_stride + j] = ef_qs8_requant(y, p->out_inv_scale, p->out_zp);
      } else {
        ((float*)c)[r * c_stride + j] = y;
      }
    }
  }
}

const ef_bsr_config ef_bsr_config_scalar = {
    .isa = "scalar",
    .arch_flags = EF_ARCH_SCALAR,
    .mr = 4,
    .a_u8 = 0,
    .ukernel = {ef_qs8_qc8w_bsrgemm_minmax_ukernel_4x16c4__scalar, ef_qs8_qc8w_bsrgemm_minmax_ukernel_4x16c4__scalar,
                ef_qs8_qc8w_bsrgemm_minmax_ukernel_4x16c4__scalar, ef_qs8_qc8w_bsrgemm_minmax_ukernel_4x16c4__scalar},
};
