/* AMX qs8-gemm: 32 x 32 output tiles from tdpbusd on the x4 panel (see qs8-gemm.h).
 *
 * Tiles (palette 1, every tile 16 rows x 64 bytes):
 *   tmm0..3  int32 accumulators C[rows 0-15 | 16-31][columns 0-15 | 16-31]
 *   tmm4..5  activations, 16 rows x 64 K values each (uint8 a + 128)
 *   tmm6..7  weights, one x4-panel tile per 16-column block (16 quads x 16 columns x 4)
 * so each K step of 64 loads 4 KB and issues 4 tdpbusd (65536 multiply-adds). 2 x 2 is the
 * most reuse eight tile registers allow.
 *
 * tdpbusd, like vpdpbusd, multiplies u8 x s8 and sums four products into int32 with no
 * intermediate saturation, so the sums are exact: activations are prepared as a + 128 and the
 * offset leaves in the epilogue with the zero points, all in wrapping int32 arithmetic
 *   acc = raw - (a_zp + 128) * colsum - w_zp * rowsum + w_zp * (K * a_zp)      (mod 2^32)
 * which is ef_qs8_correct's value, since raw = sum a*w + 128 * colsum exactly.
 *
 * M is padded to 16 rows (the padding rows are computed and dropped), N to 16 columns and K
 * to 64 by the zero bytes of the panel, so the tile shapes never change and the tile
 * configuration is loaded once per thread per call. The accumulators go through a 4 KB
 * stack buffer to the AVX-512 epilogue (avx512-epilogue.h), the same operation sequence as
 * the scalar definition, hence bit-exact.
 *
 * Loop order per thread: 32-column block pairs outside, 32-row tiles inside, K innermost, so
 * a pair of weight panels (32 x K bytes) stays in L2 while every row tile reuses it. */
#include "qs8-gemm.h"

#if EF_ARCH_X86
#include <immintrin.h>

#include "qs8-gemm/avx512-epilogue.h"

/* The 64-byte LDTILECFG operand. */
typedef struct {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16]; /* bytes per row of tile i */
  uint8_t rows[16];
} amx_tile_config;

/* Accumulates up to 2 x 2 tiles in tmm0..3; MA (row tiles) and NB (column blocks) are
 * constants after inlining: tile numbers must be immediates. */
EF_INLINE EF_TARGET_AMX void amx_compute(const int MA, const int NB, size_t kc, const uint8_t* a, size_t a_stride,
                                         const uint8_t* w0, const uint8_t* w1) {
  _tile_zero(0);
  if (NB > 1) _tile_zero(1);
  if (MA > 1) {
    _tile_zero(2);
    if (NB > 1) _tile_zero(3);
  }
  const uint8_t* a1 = a + 16 * a_stride;
  for (size_t s = 0; s < kc; s++) {
    _tile_loadd(4, a + s * EF_QS8_PANEL_KC, a_stride);
    _tile_loadd(6, w0 + s * EF_QS8_PANEL_TILE_BYTES, 64);
    _tile_dpbusd(0, 4, 6);
    if (NB > 1) {
      _tile_loadd(7, w1 + s * EF_QS8_PANEL_TILE_BYTES, 64);
      _tile_dpbusd(1, 4, 7);
    }
    if (MA > 1) {
      _tile_loadd(5, a1 + s * EF_QS8_PANEL_KC, a_stride);
      _tile_dpbusd(2, 5, 6);
      if (NB > 1) _tile_dpbusd(3, 5, 7);
    }
  }
}

/* tmm0..3 -> c (int32, 32 x 32, row stride 128 bytes); only the tiles amx_compute used. */
EF_INLINE EF_TARGET_AMX void amx_store(const int MA, const int NB, int32_t* c) {
  _tile_stored(0, c, 32 * sizeof(int32_t));
  if (NB > 1) _tile_stored(1, c + 16, 32 * sizeof(int32_t));
  if (MA > 1) {
    _tile_stored(2, c + 16 * 32, 32 * sizeof(int32_t));
    if (NB > 1) _tile_stored(3, c + 16 * 32 + 16, 32 * sizeof(int32_t));
  }
}

/* One output tile: 32-column block pair b (nb blocks) x 32-row tile m0 (ma 16-row tiles). */
typedef struct {
  size_t b, m0;
  int nb, ma;
} amx_tile_pos;

static EF_TARGET_AMX void compute_tile(const ef_qs8_panel_args* g, amx_tile_pos t) {
  const ef_qs8_packed* w = g->w;
  const size_t kc = w->kp64 / EF_QS8_PANEL_KC, panel_bytes = w->kp64 * EF_QS8_NR;
  const uint8_t* w0 = w->panel + t.b * panel_bytes;
  const uint8_t* w1 = w0 + panel_bytes;
  const uint8_t* a = g->a + t.m0 * g->a_stride;
  if (t.ma == 2 && t.nb == 2) amx_compute(2, 2, kc, a, g->a_stride, w0, w1);
  else if (t.ma == 2) amx_compute(2, 1, kc, a, g->a_stride, w0, w1);
  else if (t.nb == 2) amx_compute(1, 2, kc, a, g->a_stride, w0, w1);
  else amx_compute(1, 1, kc, a, g->a_stride, w0, w1);
}

static EF_TARGET_AMX void store_tile(amx_tile_pos t, int32_t* acc) {
  if (t.ma == 2 && t.nb == 2) amx_store(2, 2, acc);
  else if (t.ma == 2) amx_store(2, 1, acc);
  else if (t.nb == 2) amx_store(1, 2, acc);
  else amx_store(1, 1, acc);
}

static EF_TARGET_AMX void epilogue_tile(const ef_qs8_panel_args* g, amx_tile_pos t, const int32_t* acc) {
  const ef_qs8_packed* w = g->w;
  const ef_qs8_gemm_params* p = g->params;
  const size_t elem = p->out_int8 ? 1 : sizeof(float);
  const size_t rows = EF_MIN(32, g->m - t.m0); /* real rows (t.m0 < m always) */
  for (int j = 0; j < t.nb; j++) {
    const size_t n0 = (t.b + j) * EF_QS8_NR;
    const __mmask16 mask = (__mmask16)((1u << EF_MIN(EF_QS8_NR, w->n - n0)) - 1);
    const ef_qs8_cols16 cols = ef_qs8_load_cols16__avx512(w->data + (t.b + j) * w->block_bytes, w->has_w_zp, p);
    uint8_t* c = (uint8_t*)g->c + (t.m0 * w->n + n0) * elem;
    if (!w->has_w_zp && ef_qs8_rows_share_params(g->a_zp, g->a_scale, t.m0, rows)) {
      /* per-tensor activations: the offset multiply and the scale product once per block */
      const __m512i offset = ef_qs8_offset_16__avx512(g->a_zp[t.m0], &cols);
      const __m512 s = _mm512_mul_ps(_mm512_set1_ps(g->a_scale[t.m0]), cols.w_scale);
      for (size_t r = 0; r < rows; r++)
        ef_qs8_finish_16__avx512(_mm512_sub_epi32(_mm512_load_si512(acc + r * 32 + 16 * j), offset), s, mask, &cols,
                                 c + r * w->n * elem);
      continue;
    }
    for (size_t r = 0; r < rows; r++) {
      const size_t row = t.m0 + r;
      ef_qs8_store_16__avx512(_mm512_load_si512(acc + r * 32 + 16 * j), mask, g->a_zp[row], g->a_scale[row],
                              g->a_rowsum[row], &cols, c + r * w->n * elem);
    }
  }
}

/* (Issuing tile i+1 before the epilogue of tile i, so the AVX-512 work could overlap the AMX
 * unit, measured no faster here, so the loop stays in plain order.) */
static EF_TARGET_AMX void ef_qs8_qc8w_gemm_minmax_ukernel_32x32c4__amx(const ef_qs8_panel_args* g, size_t b_begin,
                                                                       size_t b_end) {
  amx_tile_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int t = 0; t < 8; t++) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);

  int32_t acc[32 * 32] __attribute__((aligned(64)));
  for (size_t b = b_begin; b < b_end; b += 2) {
    for (size_t m0 = 0; m0 < g->m_pad; m0 += 32) {
      const amx_tile_pos t = {b, m0, b + 1 < b_end ? 2 : 1, m0 + 16 < g->m_pad ? 2 : 1};
      compute_tile(g, t);
      store_tile(t, acc);
      epilogue_tile(g, t, acc);
    }
  }
  _tile_release();
}

const ef_qs8_gemm_config ef_qs8_gemm_config_amx = {
    .isa = "amx",
    .arch_flags = EF_ARCH_X86_AVX2 | EF_ARCH_X86_AVX512 | EF_ARCH_X86_AMX,
    .mr = 4,
    .a_u8 = 1,
    .panel = ef_qs8_qc8w_gemm_minmax_ukernel_32x32c4__amx,
    .panel_min_m = 2, /* measured: from 2 rows AMX beats AVX-VNNI at N = K = 384..4096; at 1 it
                         * wins only for small K and loses 10% at 4096 (memory-bound GEMV) */
    .panel_row_pad = 16,
    .panel_blocks = 2,
    .panel_speedup = 32,
    .fallback = &ef_qs8_gemm_config_avx512, /* M = 1 */
};
#endif /* EF_ARCH_X86 */
