/* Accumulating AVX-512 VNNI dot products in place, for kernels that keep arrays or many
 * named accumulators in registers across a loop (qs8 panel, bsr, sparse).
 *
 * Why not the intrinsics: _mm512_dpbusd_epi32(acc, x, w) returns a new value, and GCC 12
 * often keeps the old one alive and copies every accumulator around each instruction (two
 * vmovdqa per vpdpbusd in the qs8 4-row panel loop, which lengthen the accumulator chains
 * and fill the front end: removing them took ef_qd8_gemm at 128 x 384 x 384 from 80 to 104
 * int8 multiply-adds per TSC tick on a Zen 5 EPYC, of ~175). A tied asm operand
 * ("+v") tells the compiler the register is updated where it is. The weight operand may come
 * straight from memory ("vm"), as the instruction allows. Semantics are the instructions':
 * wrapping int32 sums of 4 products per lane, no intermediate saturation. */
#pragma once
#include "common.h"

#if EF_ARCH_X86
#include <immintrin.h>

/* acc += sum over 4 bytes of x (uint8) * w (int8), per int32 lane */
EF_INLINE EF_TARGET_AVX512 void ef_dpbusd_512(__m512i* acc, __m512i x, __m512i w) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(*acc) : "v"(x), "vm"(w));
}

#endif
