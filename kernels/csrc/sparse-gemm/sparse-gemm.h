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

/* The int8 epilogue (ef_sparse_qs8_out_row, below) as a function per ISA, named by the int8
 * GEMV configs (out_row): the same per-output sequence, vectorized by the compiler for that
 * ISA (x86 code without a target attribute gets SSE2, 4 outputs per step). On a Zen 5 EPYC
 * 384 outputs took ~350 TSC ticks in SSE2 and ~95 in AVX-512, of a 384 x 384, 75 %-sparse
 * permute GEMV's ~2000. */
typedef void (*ef_sparse_qs8_out_row_fn)(const int32_t* restrict raw, const int32_t* restrict wsum,
                                         const float* restrict w_scale, const float* restrict bias, int32_t x_zp,
                                         float x_scale, float lo, float hi, size_t n0, size_t n1, float* restrict y);
void ef_sparse_qs8_out_row__generic(const int32_t* restrict raw, const int32_t* restrict wsum,
                                    const float* restrict w_scale, const float* restrict bias, int32_t x_zp,
                                    float x_scale, float lo, float hi, size_t n0, size_t n1, float* restrict y);
#if EF_ARCH_X86
void ef_sparse_qs8_out_row__avx512(const int32_t* restrict raw, const int32_t* restrict wsum,
                                   const float* restrict w_scale, const float* restrict bias, int32_t x_zp,
                                   float x_scale, float lo, float hi, size_t n0, size_t n1, float* restrict y);
#endif

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
  ef_sparse_qs8_out_row_fn out_row;
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

/* ---- "permute" layout: int8 sparse GEMV gathering activations with vpermb ---------------
 *
 * N is cut into groups of 16 rows (one int32 lane of a 512-bit vector each). A group is a
 * sequence of steps; a step reads a window of 64 consecutive activations and gives each of
 * the 16 rows 4 slots (slot s = 4 * row + j) holding a nonzero of that row inside the window:
 * its column relative to the window (6 bits) and its weight. The AVX-512 VBMI kernel
 * gathers every slot's activation (x + 128 as uint8) from the window with one vpermb (which
 * reads the low 6 bits of each index byte) and multiplies with one vpdpbusd: 64 weights of 16
 * rows per two instructions, no index arithmetic.
 *
 * Why 6-bit columns: beyond L1 the kernel, like the dense int8 GEMV, streams its bytes as fast
 * as the cache delivers them, so time follows bytes. A slot is 1.75 bytes. The layout before
 * stored a byte per column (2 bytes per slot) for 128-column windows (vpermi2b), which
 * filled the slots no better than 64-column windows that start at any column.
 *
 * Steps come in blocks of 4 (EF_SPP_BLOCK_BYTES = 448, seven cache lines): 192 bytes of
 * columns, then the 4 steps' weights (64 bytes each, slot order). The columns are stored so
 * that vpmultishiftqb unpacks them: the block's columns are three 512-bit vectors v0, v1, v2;
 * qword lane q of the three (192 bits, v0's bits first) holds slots 8q .. 8q+7 of the 4 steps,
 * step u's slot 8q + j at bit 48u + 6j. Step 0 is v0's low 48 bits, step 3 v2's high 48; steps
 * 1 and 2 straddle two vectors and come out of one vpshrdq each. ef_spp_col reads a field.
 *
 * Windows start at any column. Steps come in runs of `run` (1, 2 or 4, dividing the block)
 * that share one window, whose first column is run_col[step / run]: packing is greedy, each
 * run's window starts at the smallest column any row of the group still has to place, and
 * every step of the run places up to 4 more nonzeros per row inside it. A row that is ahead
 * keeps going while a denser row catches up. A group's steps are padded to whole blocks with
 * empty steps (column 0, weight 0). ef_spp_pack picks the run with the fewest bytes and window
 * loads (sparse-gemm operator.c); at 75% unstructured sparsity ~0.9 of the slots hold a
 * nonzero: ~0.5 bytes per weight (dense int8: 1).
 * x rows are padded with 64 zeros past K, so a window may run past the end.
 * Exact for every int8 input: vpdpbusd sums u8 x s8 products into int32 without saturation,
 * the +128 offset comes off as 128 * wsum (wrapping int32, like the reference).
 * The scalar kernel is the reference and the fallback on CPUs without VBMI and VBMI2. */
#define EF_SPP_ROWS 16
#define EF_SPP_WINDOW 64 /* activations a step can reach: one 512-bit register */
#define EF_SPP_SLOTS 4   /* per row and step: the 4 bytes of one vpdpbusd lane */
#define EF_SPP_BLOCK 4   /* steps per block */
#define EF_SPP_COL_BYTES 192 /* a block's 6-bit columns: 4 steps x 64 slots x 6 bits */
#define EF_SPP_BLOCK_BYTES (EF_SPP_COL_BYTES + EF_SPP_BLOCK * 64)
#define EF_SPP_MR 2 /* activation rows per ukernel call (the blocks are reused) */
#define EF_SPP_MAX_K (1u << 24)

typedef struct ef_spp_packed {
  size_t n, k, nnz;
  size_t groups, steps; /* steps: a multiple of EF_SPP_BLOCK */
  size_t run;           /* steps per window: 1, 2 or 4 */
  uint32_t* group_step; /* [groups + 1]: steps of group g are [group_step[g], group_step[g + 1]) */
  uint32_t* run_col;    /* [steps / run]: the first column of each run's window */
  uint8_t* blocks;      /* [steps / 4][448] */
  int32_t* wsum;        /* [groups * 16], zero past N */
  float* w_scale;       /* [n] */
  float* bias;          /* [n] */
} ef_spp_packed;

/* Column field of slot s (0..63) of step u (0..3) of a block (the layout above). */
EF_INLINE unsigned ef_spp_col(const uint8_t* block, size_t u, size_t s) {
  const uint64_t* v = (const uint64_t*)block; /* [3][8] qwords, little-endian */
  const size_t q = s / 8, bit = 48 * u + 6 * (s % 8), word = bit / 64, shift = bit % 64;
  uint64_t f = v[word * 8 + q] >> shift;
  if (shift > 64 - 6) f |= v[(word + 1) * 8 + q] << (64 - shift);
  return (unsigned)(f & 63);
}

/* raw[r * ldr + n] = sum_k x[r][k] * w[n][k] (int32, wrapping) for r < mr <= EF_SPP_MR and
 * the 16 rows of every group in [g0, g1). x: 64-byte aligned rows of K + 64 elements (zero
 * past K) in the config's format (EF_SPB_X_S8 or EF_SPB_X_U8), row r at x + r * ldx. */
typedef void (*ef_spp_ukernel_fn)(const ef_spp_packed* w, size_t g0, size_t g1, size_t mr, const uint8_t* x,
                                  size_t ldx, int32_t* raw, size_t ldr);

typedef struct ef_spp_config {
  const char* isa;
  ef_spb_x_format x_format;
  ef_spp_ukernel_fn ukernel;
  ef_sparse_qs8_out_row_fn out_row;
} ef_spp_config;

extern const ef_spp_config ef_spp_config_scalar;
#if EF_ARCH_X86
extern const ef_spp_config ef_spp_config_avx512vbmi;
#endif
/* The VBMI kernel when the ISA level allows AVX-512 and the CPU has VBMI and VBMI2, else scalar. */
const ef_spp_config* ef_spp_select(void);

/* ef_spp_pack picks the run; ef_spp_pack_run takes it (1, 2 or 4; tests cover each). */
int ef_spp_pack(const int8_t* w, size_t n, size_t k, const float* w_scale, const float* bias, ef_spp_packed* out);
int ef_spp_pack_run(const int8_t* w, size_t n, size_t k, const float* w_scale, const float* bias, size_t run,
                    ef_spp_packed* out);
void ef_spp_packed_free(ef_spp_packed* p);
size_t ef_spp_packed_bytes(const ef_spp_packed* p);
/* x int8 [m, k] -> y fp32 [m, n] with the qs8 epilogue (x_scale, x_zp per row). */
int ef_spp_gemm(const ef_spp_config* config, size_t m, const int8_t* x, const ef_spp_packed* w, float* y,
                const ef_sparse_params* p);
