/* CPU feature detection into one arch-flags mask, plus the override used by tests.
 *
 * A bit is set only when this build contains the code (compile-time switch) and the CPU
 * reports the feature (__builtin_cpu_supports on x86; NEON is the aarch64 baseline). The
 * override narrows the mask: EDGEFLEET_KERNELS_ISA=scalar in the environment, or
 * ef_set_isa("scalar") from Python, forces the portable reference path everywhere. */
#define EF_HUGE_PAGE_BYTES ((size_t)2 << 20)
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__linux__) && (defined(__x86_64__) || defined(__i386__))
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "common.h"

static uint32_t g_detected;
static uint32_t g_active; /* detected & override; read by every dispatcher */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

#if EF_ARCH_X86
/* Linux hands out the 8 KB AMX tile state only to processes that ask for it; without the
 * grant the first tile instruction faults. Asked once, here; a refusal just means no AMX. */
static int amx_permitted(void) {
#if defined(__linux__)
  const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
  return 0;
#endif
}
#endif

static uint32_t detect_cpu(void) {
  uint32_t flags = EF_ARCH_SCALAR;
#if EF_ARCH_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    flags |= EF_ARCH_X86_AVX2;
    if (__builtin_cpu_supports("avxvnni")) flags |= EF_ARCH_X86_AVXVNNI;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi2")) {
      flags |= EF_ARCH_X86_AVX512;
      if (__builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-int8") && amx_permitted()) {
        flags |= EF_ARCH_X86_AMX;
      }
    }
  }
#endif
#if EF_ARCH_ARM64
  flags |= EF_ARCH_ARM_NEON;
#endif
  return flags;
}

/* An ISA name stands for the flags it allows (its level and the levels below it) and the one
 * flag it requires. `allowed` is UINT32_MAX for "auto"; -1 for unknown names. */
static int mask_for_name(const char* name, uint32_t* allowed, uint32_t* required) {
  static const struct { const char* name; uint32_t allowed, required; } table[] = {
      {"scalar", EF_ARCH_SCALAR, EF_ARCH_SCALAR},
      {"avx2", EF_ARCH_X86_AVX2, EF_ARCH_X86_AVX2},
      {"avxvnni", EF_ARCH_X86_AVX2 | EF_ARCH_X86_AVXVNNI, EF_ARCH_X86_AVXVNNI},
      {"avx512", EF_ARCH_X86_AVX2 | EF_ARCH_X86_AVXVNNI | EF_ARCH_X86_AVX512, EF_ARCH_X86_AVX512},
      {"amx", EF_ARCH_X86_AVX2 | EF_ARCH_X86_AVXVNNI | EF_ARCH_X86_AVX512 | EF_ARCH_X86_AMX, EF_ARCH_X86_AMX},
      {"neon", EF_ARCH_ARM_NEON, EF_ARCH_ARM_NEON},
  };
  if (name == NULL || name[0] == '\0' || strcmp(name, "auto") == 0) {
    *allowed = UINT32_MAX;
    *required = EF_ARCH_SCALAR;
    return 0;
  }
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    if (strcmp(name, table[i].name) == 0) {
      *allowed = table[i].allowed;
      *required = table[i].required;
      return 0;
    }
  }
  return -1;
}

static void init_once(void) {
  g_detected = detect_cpu();
  g_active = g_detected;
  uint32_t allowed, required;
  const char* env = getenv("EDGEFLEET_KERNELS_ISA");
  /* An unknown or unavailable name in the environment falls back to auto detection
   * rather than failing the import; ef_set_isa() reports errors explicitly. */
  if (env != NULL && mask_for_name(env, &allowed, &required) == 0 && (g_detected & required) == required) {
    g_active = g_detected & allowed;
  }
}

uint32_t ef_arch_flags_detected(void) { pthread_once(&g_once, init_once); return g_detected; }
uint32_t ef_arch_flags(void) { pthread_once(&g_once, init_once); return __atomic_load_n(&g_active, __ATOMIC_RELAXED); }

int ef_set_isa(const char* name) {
  pthread_once(&g_once, init_once);
  uint32_t allowed, required;
  if (mask_for_name(name, &allowed, &required) != 0) return -1;
  if ((g_detected & required) != required) return -2;
  __atomic_store_n(&g_active, g_detected & allowed, __ATOMIC_RELAXED);
  return 0;
}

const char* ef_isa_name(void) {
  uint32_t flags = ef_arch_flags();
  if (flags & EF_ARCH_X86_AMX) return "amx";
  if (flags & EF_ARCH_X86_AVX512) return "avx512";
  if (flags & EF_ARCH_X86_AVXVNNI) return "avxvnni";
  if (flags & EF_ARCH_X86_AVX2) return "avx2";
  if (flags & EF_ARCH_ARM_NEON) return "neon";
  return "scalar";
}

void* ef_aligned_alloc(size_t bytes) {
  void* p = NULL;
  if (bytes >= EF_HUGE_PAGE_BYTES) {
    const size_t size = EF_ROUND_UP(bytes, EF_HUGE_PAGE_BYTES);
    if (posix_memalign(&p, EF_HUGE_PAGE_BYTES, size) != 0) return NULL;
#if defined(__linux__)
    (void)madvise(p, size, MADV_HUGEPAGE);
#endif
    return p;
  }
  if (posix_memalign(&p, 64, bytes == 0 ? 64 : EF_ROUND_UP(bytes, 64)) != 0) return NULL;
  return p;
}

void ef_aligned_free(void* p) { free(p); }

#if EF_ARCH_X86
/* A chain of dependent 64-bit multiplies: imul r64 takes 3 cycles on every x86-64 core we
 * target (Intel since Nehalem, AMD Zen 1 to 5), and a chain of them cannot overlap, so the
 * chain's length over its time is the clock. (A chain of adds would not do: recent Intel
 * cores fold small immediate adds at rename, and they run several per cycle.) */
static double imul_chain_ns(long n) {
  struct timespec t0, t1;
  uint64_t a = 3;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long i = 0; i < n; i++) __asm__ volatile("imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0" : "+r"(a));
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
}

double ef_core_ghz(void) {
  const long n = 1000000; /* 12 M cycles: ~3-5 ms per round */
  double best = 1e30;
  (void)imul_chain_ns(n / 10); /* let the core leave any idle clock */
  for (int round = 0; round < 5; round++) {
    const double t = imul_chain_ns(n);
    if (t > 0 && t < best) best = t;
  }
  return best < 1e30 ? (double)n * 4 * 3 / best : 0.0;
}
#else
double ef_core_ghz(void) { return 0.0; }
#endif
