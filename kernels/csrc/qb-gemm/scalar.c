/* Portable qb-gemm kernels (4-bit and 2-bit): reference and fallback. */
#include "qb-gemm.h"

/* Quant i (0..31) of one chunk, following the layout in blocks.h. */
static inline uint32_t q4_at(const uint8_t* chunk, size_t i) { return i < 16 ? chunk[i] & 15 : chunk[i - 16] >> 4; }
static inline uint32_t q2_at(const uint8_t* chunk, size_t i) { return (chunk[i % 8] >> (2 * (i / 8))) & 3; }

static void qb_column(int bits, size_t mr, size_t groups, size_t group, const int8_t* xq, size_t x_stride,
                      const float* xsum, const float* sx, const uint8_t* row, float bias, float* c, size_t c_stride) {
  const size_t block_bytes = EF_QB_BLOCK_BYTES(bits, group);
  for (size_t r = 0; r < mr; r++) {
    const int8_t* xr = xq + r * x_stride;
    float acc = 0.0f;
    for (size_t g = 0; g < groups; g++) {
      const uint8_t* block = row + g * block_bytes;
      float d, mm;
      d = ef_fp16_to_fp32(((const uint16_t*)block)[0]);
      mm = ef_fp16_to_fp32(((const uint16_t*)block)[1]);
      const uint8_t* qs = block + EF_QB_HEADER_BYTES;
      int32_t isum = 0;
      for (size_t i = 0; i < group; i++) {
        const uint8_t* chunk = qs + (i / EF_QB_CHUNK) * EF_QB_CHUNK_BYTES(bits);
        const uint32_t q = bits == 4 ? q4_at(chunk, i % EF_QB_CHUNK) : q2_at(chunk, i % EF_QB_CHUNK);
        isum += (int32_t)q * xr[g * group + i];
      }
      acc += d * (float)isum + mm * xsum[r * groups + g];
    }
    c[r * c_stride] = acc * sx[r] + bias;
  }
}

static void ef_qd8_f32_qb4w_gemm_ukernel_4x1c32__scalar(size_t mr, size_t nc, size_t groups, size_t group,
                                                        const int8_t* xq, size_t x_stride, const float* xsum,
                                                        const float* sx, const uint8_t* rows, size_t row_bytes,
                                                        const float* bias, float* c, size_t c_stride) {
  for (size_t j = 0; j < nc; j++) qb_column(4, mr, groups, group, xq, x_stride, xsum, sx, rows + j * row_bytes, bias[j], c + j, c_stride);
}
static void ef_qd8_f32_qb2w_gemm_ukernel_4x1c32__scalar(size_t mr, size_t nc, size_t groups, size_t group,
                                                        const int8_t* xq, size_t x_stride, const float* xsum,
                                                        const float* sx, const uint8_t* rows, size_t row_bytes,
                                                        const float* bias, float* c, size_t c_stride) {
  for (size_t j = 0; j < nc; j++) qb_column(2, mr, groups, group, xq, x_stride, xsum, sx, rows + j * row_bytes, bias[j], c + j, c_stride);
}

/* P16 layout (qb-gemm.h): the same sums, reading each quant through ef_qb_p16_position. */
static void qb_p16(int bits, size_t mr, size_t np, size_t nc, size_t groups, size_t group, const int8_t* xq,
                   size_t x_stride, const float* xsum, const float* sx, const uint8_t* panels, size_t panel_bytes,
                   const float* bias, float* c, size_t c_stride) {
  const size_t gbytes = EF_QB_P16_GROUP_BYTES(bits, group);
  for (size_t p = 0; p < np; p++) {
    for (size_t cc = 0; cc < EF_QB_PANEL && p * EF_QB_PANEL + cc < nc; cc++) {
      const size_t col = p * EF_QB_PANEL + cc;
      for (size_t r = 0; r < mr; r++) {
        const int8_t* xr = xq + r * x_stride;
        float acc = 0.0f;
        for (size_t g = 0; g < groups; g++) {
          const uint8_t* rec = panels + p * panel_bytes + g * gbytes;
          uint16_t dh, mh;
          memcpy(&dh, rec + 2 * cc, 2);
          memcpy(&mh, rec + 32 + 2 * cc, 2);
          const float d = ef_fp16_to_fp32(dh), mm = ef_fp16_to_fp32(mh);
          int32_t isum = 0;
          for (size_t i = 0; i < group; i++) {
            size_t step, byte;
            unsigned shift;
            ef_qb_p16_position(bits, i, &step, &byte, &shift);
            const uint32_t q = (rec[64 + 64 * step + 4 * cc + byte] >> shift) & ((1u << bits) - 1);
            isum += (int32_t)q * xr[g * group + i];
          }
          acc += d * (float)isum + mm * xsum[r * groups + g];
        }
        c[r * c_stride + col] = acc * sx[r] + bias[col];
      }
    }
  }
}

static void ef_qd8_f32_qb4w_gemm_p16_ukernel_4x16__scalar(size_t mr, size_t np, size_t nc, size_t groups, size_t group,
                                                          const int8_t* xq, size_t x_stride, const float* xsum,
                                                          const float* sx, const uint8_t* panels, size_t panel_bytes,
                                                          const float* bias, float* c, size_t c_stride) {
  qb_p16(4, mr, np, nc, groups, group, xq, x_stride, xsum, sx, panels, panel_bytes, bias, c, c_stride);
}
static void ef_qd8_f32_qb2w_gemm_p16_ukernel_4x16__scalar(size_t mr, size_t np, size_t nc, size_t groups, size_t group,
                                                          const int8_t* xq, size_t x_stride, const float* xsum,
                                                          const float* sx, const uint8_t* panels, size_t panel_bytes,
                                                          const float* bias, float* c, size_t c_stride) {
  qb_p16(2, mr, np, nc, groups, group, xq, x_stride, xsum, sx, panels, panel_bytes, bias, c, c_stride);
}

#define Q4 ef_qd8_f32_qb4w_gemm_ukernel_4x1c32__scalar
#define Q2 ef_qd8_f32_qb2w_gemm_ukernel_4x1c32__scalar
#define P4 ef_qd8_f32_qb4w_gemm_p16_ukernel_4x16__scalar
#define P2 ef_qd8_f32_qb2w_gemm_p16_ukernel_4x16__scalar
const ef_qb_gemm_config ef_qb_gemm_config_scalar = {
    .isa = "scalar", .layout = EF_QB_LAYOUT_ROWS, .mr = 4, .nr = {1, 1, 1, 1}, .q4 = {Q4, Q4, Q4, Q4}, .q2 = {Q2, Q2, Q2, Q2},
    .np = {1, 1, 1, 1}, .p16_q4 = {P4, P4, P4, P4}, .p16_q2 = {P2, P2, P2, P2}};
