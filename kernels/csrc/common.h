/* Shared definitions for every kernel family: ISA flags, target attributes, small helpers.
 *
 * Kernel naming (XNNPACK grammar, documented in kernels/README.md):
 *   ef_<dtype>_<op>_<fused>_ukernel_<MR>x<NR>c<KR>__<isa>
 * e.g. ef_qs8_qc8w_gemm_minmax_ukernel_4x16c2__avx2 = int8 activations, int8 per-channel
 * weights, GEMM, fused clamp, a 4-row by 16-column output tile that consumes K two at a time,
 * AVX2. The part after "__" says where it runs, the part before says what it computes.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* One bit per instruction set a kernel may need. A bit is set in the arch-flags mask only
 * when the build can emit that code AND the running CPU has it (see isa.c). */
enum {
  EF_ARCH_SCALAR = 0,
  EF_ARCH_X86_AVX2 = 1u << 0, /* AVX2 + FMA (+F16C): Haswell / Zen 1 and later */
  EF_ARCH_ARM_NEON = 1u << 1, /* aarch64 Advanced SIMD (always present on aarch64) */
  EF_ARCH_X86_AVXVNNI = 1u << 2, /* AVX-VNNI (vpdpbusd on 256-bit registers): Alder Lake, Sapphire Rapids, Zen 5 */
  /* AVX-512 F/BW/DQ/VL + VNNI + VBMI2 (512-bit vpdpbusd, vpexpandb): Ice Lake, Sapphire Rapids, Zen 4 */
  EF_ARCH_X86_AVX512 = 1u << 3,
  /* AMX-TILE + AMX-INT8 (tdpbusd on 16x64-byte tiles), and the kernel granted this process the
   * tile data state (arch_prctl ARCH_REQ_XCOMP_PERM): Sapphire Rapids and later */
  EF_ARCH_X86_AMX = 1u << 4,
};

#if defined(__x86_64__) || defined(__i386__)
#define EF_ARCH_X86 1
/* AVX2 code is compiled per function, so one binary runs on any x86-64 and the dispatcher
 * only calls these functions when cpuid says the CPU has AVX2 and FMA. */
#define EF_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define EF_TARGET_AVXVNNI __attribute__((target("avx2,fma,f16c,avxvnni")))
#define EF_TARGET_AVX512 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vbmi2")))
#define EF_TARGET_AMX \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vbmi2,amx-tile,amx-int8")))
#else
#define EF_ARCH_X86 0
#endif

#if defined(__aarch64__)
#define EF_ARCH_ARM64 1
#else
#define EF_ARCH_ARM64 0
#endif

#define EF_INLINE static inline __attribute__((always_inline))
#define EF_MIN(a, b) ((a) < (b) ? (a) : (b))
#define EF_MAX(a, b) ((a) > (b) ? (a) : (b))
#define EF_ROUND_UP(x, q) ((((x) + (q) - 1) / (q)) * (q))
#define EF_DIV_UP(x, q) (((x) + (q) - 1) / (q))

/* Arch flags: detected once; ef_arch_flags() is the detected set narrowed by the override
 * (EDGEFLEET_KERNELS_ISA env var or ef_set_isa()). Dispatchers consult ef_arch_flags(). */
uint32_t ef_arch_flags(void);
uint32_t ef_arch_flags_detected(void);
/* name: "auto", "scalar", "avx2", "avxvnni", "avx512", "amx", "neon". Each name allows its own
 * level and those below it on the same line (amx > avx512 > avxvnni > avx2; "avx2" excludes
 * every VNNI kernel). Returns 0 on success, -1 if unknown, -2 if the
 * CPU (or this build) cannot run it. */
int ef_set_isa(const char* name);
const char* ef_isa_name(void); /* name of the best ISA in the current mask */
/* The clock this core runs at now, in GHz, measured (0 where not implemented): the
 * benchmarks' peak fractions need the running clock, which /proc/cpuinfo's nominal "cpu
 * MHz" often is not (a VM reports its base clock; cores boost well above it). */
double ef_core_ghz(void);

/* Activation clamp shared by every epilogue: ReLU is [0, inf], ReLU6 [0, 6], none
 * [-inf, inf]. Written as compares so NaN maps to lo, exactly like AVX2 max_ps(y, lo) and
 * NEON's fmax... sequence used in the SIMD epilogues. */
EF_INLINE float ef_clamp(float y, float lo, float hi) {
  y = y > lo ? y : lo;
  return y < hi ? y : hi;
}

/* Unaligned loads of small integers without breaking strict aliasing. */
EF_INLINE int32_t ef_load_i32(const void* p) { int32_t v; memcpy(&v, p, sizeof v); return v; }
EF_INLINE uint64_t ef_load_u64(const void* p) { uint64_t v; memcpy(&v, p, sizeof v); return v; }

/* 64-byte aligned allocation for packed weights and scratch (cache-line aligned so SIMD
 * loads never split lines in the hot loops). */
void* ef_aligned_alloc(size_t bytes);
void ef_aligned_free(void* p);

/* Scratch for one kernel call: the caller's stack buffer when `bytes` fit in it, else an
 * aligned allocation (NULL if that fails); ef_scratch_free frees only the latter. Small calls
 * (a GEMV, the layers of a small CNN) then skip a malloc and free that cost a sizeable part
 * of a sub-microsecond call. */
#define EF_STACK_SCRATCH 8192
EF_INLINE void* ef_scratch(size_t bytes, void* stack, size_t stack_bytes) {
  return bytes <= stack_bytes ? stack : ef_aligned_alloc(bytes);
}
EF_INLINE void ef_scratch_free(void* p, const void* stack) {
  if (p != stack) ef_aligned_free(p);
}
