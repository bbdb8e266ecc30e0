/* sparse-gemm: y = x W^T with a sparse weight matrix W [N, K], fp32 or int8 values.
 *
 * Storage (compact, also the on-disk idea for sparse variants): compressed rows.
 *   row_ptr[N+1]  uint32   nonzeros of row n are [row_ptr[n], row_ptr[n+1])
 *   col[nnz]      uint16   column of each nonzero, ascending within a row (K <= 65535)
 *   val[nnz]      int8 or fp32
 * = 3 bytes per nonzero for int8 (0.75 B/weight at 75% sparsity, against 1 B dense) and
 *   6 bytes for fp32 (1.5 B/weight against 4). A 2:4 pattern is a special case (exactly two
 *   nonzeros per aligned group of four columns) stored the same way.
 *
 * int8 follows the qs8 definition (qs8-gemm.h) with symmetric weights (a zero weight must
 * stay zero): acc = sum_k (x[m,k] - x_zp[m]) * w[n,k] = sum x*w - x_zp * wsum[n], exact in
 * int32; y = (float)acc * (x_scale[m] * w_scale[n]) + bias[n], clamp (ReLU/ReLU6). Bit-exact
 * across ISAs. fp32 sums in a different order per ISA: named tolerance in the tests.
 *
 * Two kernel shapes:
 *   dot   (few rows, GEMV): per output, gather x at the nonzeros' columns.
 *   mvec  (M >= EF_SPARSE_MVEC_MIN_M): x transposed to [K][M]; every nonzero w[n,k] is
 *         broadcast and multiplied with a contiguous vector of M activations, so no gather
 *         and no index per multiply-add: the work is nnz * M / 8 vector FMAs. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define EF_SPARSE_MVEC_MIN_M 4
#define EF_SPARSE_PAD 16 /* col/val arrays are padded so vector loads may run past nnz */

typedef enum { EF_SPARSE_F32 = 0, EF_SPARSE_QS8 = 1 } ef_sparse_dtype;

typedef struct ef_sparse_packed {
  size_t n, k, nnz;
  ef_sparse_dtype dtype;
  uint32_t* row_ptr;
  uint16_t* col;
  void* val;          /* float* or int8_t* */
  int32_t* wsum;      /* int8: sum of each row's values */
  float* w_scale;     /* int8: per row */
  float* bias;        /* per row (zeros when none) */
} ef_sparse_packed;

typedef struct ef_sparse_params {
  float out_min, out_max; /* activation clamp */
  /* int8 only: per activation row */
  const float* x_scale;
  const int32_t* x_zp;
} ef_sparse_params;

/* dot: outputs n in [n0, n1) for m rows of x (row-major, stride k); y row stride = N.
 *      int8 x is passed widened to int32 with the value in the low 16 bits (upper 16 zero),
 *      which lets AVX2 gather it and multiply with vpmaddwd exactly. */
typedef void (*ef_sparse_dot_fn)(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m, const void* x, float* y,
                                 const ef_sparse_params* p);
/* mvec: outputs n in [n0, n1) for all m rows; xt is [K][mp] (mp = m rounded up to 8, zero
 *       padded), fp32 or, for int8, int32 holding the value in the low 16 bits. */
typedef void (*ef_sparse_mvec_fn)(const ef_sparse_packed* w, size_t n0, size_t n1, size_t m, size_t mp, const void* xt,
                                  float* y, const ef_sparse_params* p);

/* ---- "windows" layout: int8 sparse GEMV without gathers -------------------------------
 *
 * K is cut into windows of 16 columns, N into groups of 8 rows. A step covers one window and
 * the 8 rows of a group with 4 slots per row (32 slots = one 256-bit vector): each slot holds
 * the weight and its column inside the window. A
 * group has, per window with any nonzero, max over its rows of ceil(nonzeros / 4) steps;
 * windows where all 8 rows are zero cost nothing. The kernel broadcasts the window's 16
 * activations, selects each slot's activation with one byte shuffle (pshufb / tbl), and
 * multiplies: no index arithmetic, no gather. Slot s (0..31): row s / 4 of the group, so
 * each int32 lane of the product sum belongs to one output row.
 *
 * Step record (48 bytes): uint8 col[16] (4-bit columns: slot s in byte s % 16, low nibble
 * for s < 16, high nibble above), then int8 w[32]. Unused slots have column 0 and weight 0.
 * Storage is 1.5 bytes per slot; with the padding above that is ~0.75 bytes per weight at
 * 75% unstructured sparsity (dense int8: 1).
 * Exactness: AVX2 multiplies with vpmaddubsw(|w|, sign(x, w)), exact when x != -128
 * (|w| <= 128, |x| <= 127: a pair is at most 32512). The operator therefore clamps x to
 * [-127, 127] and, when some x was -128, runs a second pass with the indicator of those
 * columns and subtracts it: sum x*w = sum x'*w - sum [x == -128] * w. Symmetric int8
 * activations (kernels.quant.quantize_row_symmetric_int8) never need the second pass. */
#define EF_SPW_ROWS 8
#define EF_SPW_WINDOW 16
#define EF_SPW_SLOTS 4
#define EF_SPW_STEP_BYTES 48
#define EF_SPW_W_OFFSET 16 /* weights after the 16 bytes of packed columns */

typedef struct ef_spw_packed {
  size_t n, k, nnz;
  size_t windows, groups, steps;
  uint32_t* group_step;  /* [groups + 1]: steps of group g are [group_step[g], group_step[g+1]) */
  uint16_t* step_window; /* [steps] */
  int8_t* step_data;     /* [steps][48] */
  int32_t* wsum;         /* [n] */
  float* w_scale;        /* [n] */
  float* bias;           /* [n] */
} ef_spw_packed;

/* Raw int32 sums sum_k x[k] * w[n, k] for the 8 rows of each group in [g0, g1); xw is one
 * activation row zero-padded to windows * 16, every value in [-127, 127]. */
typedef void (*ef_spw_ukernel_fn)(const ef_spw_packed* w, size_t g0, size_t g1, const int8_t* xw, int32_t* raw);

typedef struct ef_sparse_config {
  const char* isa;
  ef_sparse_dot_fn dot[2];   /* by dtype */
  ef_sparse_mvec_fn mvec[2]; /* by dtype */
  ef_spw_ukernel_fn spw;
} ef_sparse_config;

extern const ef_sparse_config ef_sparse_config_scalar;
#if EF_ARCH_X86
extern const ef_sparse_config ef_sparse_config_avx2;
#endif
#if EF_ARCH_ARM64
extern const ef_sparse_config ef_sparse_config_neon;
#endif
const ef_sparse_config* ef_sparse_select(void);

/* Packs the nonzeros of a dense matrix (exact zeros are dropped). */
int ef_sparse_pack(ef_sparse_dtype dtype, const void* w, size_t n, size_t k, const float* w_scale, const float* bias,
                   ef_sparse_packed* out);
void ef_sparse_packed_free(ef_sparse_packed* p);
/* x: fp32 or int8 [m, k]; y: fp32 [m, n]. */
int ef_sparse_gemm(const ef_sparse_config* config, size_t m, const void* x, const ef_sparse_packed* w, float* y,
                   const ef_sparse_params* p);

int ef_spw_pack(const int8_t* w, size_t n, size_t k, const float* w_scale, const float* bias, ef_spw_packed* out);
void ef_spw_packed_free(ef_spw_packed* p);
/* x int8 [m, k] -> y fp32 [m, n] with the qs8 epilogue (x_scale, x_zp per row). */
int ef_spw_gemm(const ef_sparse_config* config, size_t m, const int8_t* x, const ef_spw_packed* w, float* y,
                const ef_sparse_params* p);

/* ---- "bitmask" layout: int8 sparse GEMV streaming 64-column masks ----------------------
 *
 * K is cut into chunks of 64 columns, N into groups of 4 rows. For every (group, chunk, row)
 * the layout stores a uint64 mask (bit j set = column 64 * chunk + j is nonzero) and, in the
 * value stream, that row-chunk's nonzeros in column order. Order: masks [groups][chunks][4];
 * values group by group, then chunk by chunk, then row by row, so one group is one
 * sequential read of masks and one of values (group_val[g] = where its values start).
 * Storage per weight: density + 1/8 byte (0.375 B at 75% sparsity, 0.625 B at 50%; dense
 * int8: 1), whatever the pattern, with no per-nonzero index.
 *
 * Kernels rebuild each 64-column weight vector from the mask and the packed values:
 *   AVX-512  vpexpandb (mask) of a 64-byte load at the row-chunk's offset, then vpdpbusd with
 *            x + 128 as uint8 (no saturation: exact), minus 128 * wsum at the end
 *   AVX2     16 columns at a time: per mask byte an 8-byte pshufb index from
 *            ef_spb_expand_table (0x80 = zero), sign-extend to int16, vpmaddwd with int16 x
 *   NEON     the same table through tbl, smull + sadalp
 *   scalar   walks the set bits
 * Each row-chunk's offset is the running sum of popcounts, so the only serial dependency is
 * one add per chunk. Exact for every int8 input (also x = -128): all sums are int32 with
 * wrap-around, like the reference. Rows past N have zero masks. */
#define EF_SPB_ROWS 4
#define EF_SPB_CHUNK 64
#define EF_SPB_MR 4      /* activation rows per ukernel call (the expanded weights are reused) */
#define EF_SPB_VAL_PAD 64 /* value stream padding: the 64-byte loads may run past the end */
#define EF_SPB_MAX_K (1u << 20)

typedef struct ef_spb_packed {
  size_t n, k, nnz;
  size_t chunks, groups;
  uint64_t* mask;      /* [groups][chunks][EF_SPB_ROWS] */
  uint32_t* group_val; /* [groups + 1]: group g's values are val[group_val[g] .. group_val[g + 1]) */
  int8_t* val;         /* [nnz + EF_SPB_VAL_PAD] */
  int32_t* wsum;       /* [groups * EF_SPB_ROWS], zero past N */
  float* w_scale;      /* [n] */
  float* bias;         /* [n] */
} ef_spb_packed;

/* Activation layout a ukernel reads: one row is chunks * 64 elements, zero padded. */
typedef enum {
  EF_SPB_X_S8 = 0,  /* int8 as given */
  EF_SPB_X_U8 = 1,  /* uint8 x + 128 (vpdpbusd) */
  EF_SPB_X_S16 = 2, /* int16 (vpmaddwd) */
} ef_spb_x_format;

/* raw[r * ldr + n] = sum_k x[r][k] * w[n][k] (int32, wrapping) for r < mr <= EF_SPB_MR and
 * the 4 rows n of every group in [g0, g1) (rows past N too: they read as 0). x: mr rows,
 * row r at x + r * ldx elements of the config's format. */
typedef void (*ef_spb_ukernel_fn)(const ef_spb_packed* w, size_t g0, size_t g1, size_t mr, const void* x, size_t ldx,
                                  int32_t* raw, size_t ldr);

typedef struct ef_spb_config {
  const char* isa;
  ef_spb_x_format x_format;
  ef_spb_ukernel_fn ukernel;
} ef_spb_config;

extern const ef_spb_config ef_spb_config_scalar;
#if EF_ARCH_X86
extern const ef_spb_config ef_spb_config_avx2;
extern const ef_spb_config ef_spb_config_avx512;
#endif
#if EF_ARCH_ARM64
extern const ef_spb_config ef_spb_config_neon;
#endif
const ef_spb_config* ef_spb_select(void);

/* ef_spb_expand_table[b][i] = index of column i's value among the set bits of byte b
 * (= popcount of the bits below i) when bit i is set, 0x80 (pshufb/tbl: zero) otherwise. */
extern const uint8_t ef_spb_expand_table[256][8];

int ef_spb_pack(const int8_t* w, size_t n, size_t k, const float* w_scale, const float* bias, ef_spb_packed* out);
void ef_spb_packed_free(ef_spb_packed* p);
/* Bytes of packed storage (masks, values, group offsets, per-row wsum/scale/bias). */
size_t ef_spb_packed_bytes(const ef_spb_packed* p);
/* x int8 [m, k] -> y fp32 [m, n] with the qs8 epilogue (x_scale, x_zp per row). */
int ef_spb_gemm(const ef_spb_config* config, size_t m, const int8_t* x, const ef_spb_packed* w, float* y,
                const ef_sparse_params* p);

/* Shared epilogues (one definition for every ISA). */
EF_INLINE float ef_sparse_f32_out(float acc, float bias, float lo, float hi) { return ef_clamp(acc + bias, lo, hi); }
EF_INLINE float ef_sparse_qs8_out(int32_t raw, int32_t x_zp, int32_t wsum, float x_scale, float w_scale, float bias,
                                  float lo, float hi) {
  const int32_t acc = (int32_t)((uint32_t)raw - (uint32_t)x_zp * (uint32_t)wsum);
  float y = (float)acc * (x_scale * w_scale);
  y = y + bias;
  return ef_clamp(y, lo, hi);
}
/* ef_sparse_qs8_out over outputs [n0, n1) of one activation row. The restrict copies of the
 * struct's arrays let the compiler vectorize (with -fno-strict-aliasing it otherwise reloads
 * w->bias etc. after every store to y, and the loop stays scalar: ~2 cycles per output). */
EF_INLINE void ef_sparse_qs8_out_row(const int32_t* restrict raw, const int32_t* restrict wsum,
                                     const float* restrict w_scale, const float* restrict bias, int32_t x_zp,
                                     float x_scale, float lo, float hi, size_t n0, size_t n1, float* restrict y) {
  for (size_t n = n0; n < n1; n++) y[n] = ef_sparse_qs8_out(raw[n], x_zp, wsum[n], x_scale, w_scale[n], bias[n], lo, hi);
}

/* ---- "permute" layout: int8 sparse GEMV gathering activations with vpermi2b -------------
 *
 * N is cut into groups of 16 rows (one int32 lane of a 512-bit vector each). A group is a
 * sequence of steps; a step reads a window of 128 consecutive activations starting at its
 * column step_col[s] (a multiple of 64), and gives each of the 16 rows 4 slots (slot
 * s = 4 * row + j) holding a nonzero of that row inside the window: its column relative to
 * the window (0..127) and its weight. A step record is 128 bytes: uint8 col[64] then int8
 * w[64]; unused slots have column 0 and weight 0. The AVX-512 VBMI kernel loads the
 * window's activations (x + 128 as uint8) as two aligned 64-byte vectors, gathers every
 * slot's activation with one vpermi2b (col as the index vector) and multiplies with one
 * vpdpbusd: 64 weights of 16 rows per two instructions, no index arithmetic.
 *
 * Packing is greedy: each step's window starts at the 64-column boundary at or below the
 * smallest column any row of the group still has to place, and every row takes its next (up
 * to 4) nonzeros inside the window. A row that is ahead keeps going while a denser row
 * catches up, so the slots fill far better than with one step sequence per 64 columns: at
 * 75% unstructured sparsity ~0.9 of the slots hold a nonzero (one sequence per 64 columns
 * padded every group to its densest row there: ~0.65). Storage: 2 bytes per slot plus 4 per
 * step, ~0.57 bytes per weight at 75% (bitmask: 0.375, dense int8: 1). 64-column windows
 * starting at the first unplaced column fill the same and ran as fast on Zen 4; the aligned
 * windows of 128 keep the activation loads off cache-line boundaries (a split 64-byte load
 * costs Zen 4 about two aligned ones) on CPUs where the step is not bound by the bytes.
 * x rows are padded with one chunk of zeros past K, rounded up to 64.
 * Exact for every int8 input: vpdpbusd sums u8 x s8 products into int32 without saturation,
 * the +128 offset comes off as 128 * wsum (wrapping int32, like the reference).
 * The scalar kernel is the reference and the fallback on CPUs without VBMI (vpermi2b). */
#define EF_SPP_ROWS 16
#define EF_SPP_WINDOW 128 /* activations a step can reach: two 512-bit registers */
#define EF_SPP_ALIGN 64   /* where windows start */
#define EF_SPP_SLOTS 4 /* per row and step: the 4 bytes of one vpdpbusd lane */
#define EF_SPP_W_OFFSET 64 /* a record's weights follow its 64 column bytes */
#define EF_SPP_STEP_BYTES 128
#define EF_SPP_MR 2 /* activation rows per ukernel call (the step records are reused) */
#define EF_SPP_MAX_K (1u << 24)

typedef struct ef_spp_packed {
  size_t n, k, nnz;
  size_t groups, steps;
  uint32_t* group_step;  /* [groups + 1]: steps of group g are [group_step[g], group_step[g + 1]) */
  uint32_t* step_col;    /* [steps]: the first column of the step's window, a multiple of 64 */
  uint8_t* step_data;    /* [steps][128]: col[64], w[64] */
  int32_t* wsum;         /* [groups * 16], zero past N */
  float* w_scale;        /* [n] */
  float* bias;           /* [n] */
} ef_spp_packed;

/* raw[r * ldr + n] = sum_k x[r][k] * w[n][k] (int32, wrapping) for r < mr <= EF_SPP_MR and
 * the 16 rows of every group in [g0, g1). x: 64-byte aligned rows of round_up(K, 64) + 64
 * elements (zero past K) in the config's format (EF_SPB_X_S8 or EF_SPB_X_U8), row r at
 * x + r * ldx. */
typedef void (*ef_spp_ukernel_fn)(const ef_spp_packed* w, size_t g0, size_t g1, size_t mr, const uint8_t* x,
                                  size_t ldx, int32_t* raw, size_t ldr);

typedef struct ef_spp_config {
  const char* isa;
  ef_spb_x_format x_format;
  ef_spp_ukernel_fn ukernel;
} ef_spp_config;

extern const ef_spp_config ef_spp_config_scalar;
#if EF_ARCH_X86
extern const ef_spp_config ef_spp_config_avx512vbmi;
#endif
/* The VBMI kernel when the ISA level allows AVX-512 and the CPU has VBMI, else scalar. */
const ef_spp_config* ef_spp_select(void);

int ef_spp_pack(const int8_t* w, size_t n, size_t k, const float* w_scale, const float* bias, ef_spp_packed* out);
void ef_spp_packed_free(ef_spp_packed* p);
size_t ef_spp_packed_bytes(const ef_spp_packed* p);
/* x int8 [m, k] -> y fp32 [m, n] with the qs8 epilogue (x_scale, x_zp per row). */
int ef_spp_gemm(const ef_spp_config* config, size_t m, const int8_t* x, const ef_spp_packed* w, float* y,
                const ef_sparse_params* p);
