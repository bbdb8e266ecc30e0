/* CPU feature detection into one arch-flags mask, plus the override used by tests.
 *
 * A bit is set only when this build contains the code (compile-time switch) and the CPU
 * reports the feature (__builtin_cpu_supports on x86; NEON is the aarch64 baseline). The
 * override narrows the mask: EDGEFLEET_KERNELS_ISA=scalar in the environment, or
 * ef_set_isa("scalar") from Python, forces the portable reference path everywhere. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static uint32_t g_detected;
static uint32_t g_active; /* detected & override; read by every dispatcher */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static uint32_t detect_cpu(void) {
  uint32_t flags = EF_ARCH_SCALAR;
#if EF_ARCH_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    flags |= EF_ARCH_X86_AVX2;
    if (__builtin_cpu_supports("avxvnni")) flags |= EF_ARCH_X86_AVXVNNI;
  }
#endif
#if EF_ARCH_ARM64
  flags |= EF_ARCH_ARM_NEON;
#endif
  return flags;
}

/* Mask of flags an ISA name allows; UINT32_MAX for "auto", 0 for unknown names. */
static int mask_for_name(const char* name, uint32_t* mask) {
  if (name == NULL || strcmp(name, "auto") == 0 || name[0] == '\0') { *mask = UINT32_MAX; return 0; }
  if (strcmp(name, "scalar") == 0) { *mask = EF_ARCH_SCALAR; return 0; }
  if (strcmp(name, "avx2") == 0) { *mask = EF_ARCH_X86_AVX2; return 0; }
  if (strcmp(name, "avxvnni") == 0) { *mask = EF_ARCH_X86_AVX2 | EF_ARCH_X86_AVXVNNI; return 0; }
  if (strcmp(name, "neon") == 0) { *mask = EF_ARCH_ARM_NEON; return 0; }
  return -1;
}

static void init_once(void) {
  g_detected = detect_cpu();
  g_active = g_detected;
  uint32_t mask;
  const char* env = getenv("EDGEFLEET_KERNELS_ISA");
  /* An unknown or unavailable name in the environment falls back to auto detection
   * rather than failing the import; ef_set_isa() reports errors explicitly. */
  if (env != NULL && mask_for_name(env, &mask) == 0 && (mask == UINT32_MAX || (g_detected & mask) == mask)) {
    g_active = g_detected & mask;
  }
}

uint32_t ef_arch_flags_detected(void) { pthread_once(&g_once, init_once); return g_detected; }
uint32_t ef_arch_flags(void) { pthread_once(&g_once, init_once); return __atomic_load_n(&g_active, __ATOMIC_RELAXED); }

int ef_set_isa(const char* name) {
  pthread_once(&g_once, init_once);
  uint32_t mask;
  if (mask_for_name(name, &mask) != 0) return -1;
  if (mask != UINT32_MAX && (g_detected & mask) != mask) return -2;
  __atomic_store_n(&g_active, g_detected & mask, __ATOMIC_RELAXED);
  return 0;
}

const char* ef_isa_name(void) {
  uint32_t flags = ef_arch_flags();
  if (flags & EF_ARCH_X86_AVXVNNI) return "avxvnni";
  if (flags & EF_ARCH_X86_AVX2) return "avx2";
  if (flags & EF_ARCH_ARM_NEON) return "neon";
  return "scalar";
}

void* ef_aligned_alloc(size_t bytes) {
  void* p = NULL;
  if (posix_memalign(&p, 64, bytes == 0 ? 64 : EF_ROUND_UP(bytes, 64)) != 0) return NULL;
  return p;
}

void ef_aligned_free(void* p) { free(p); }
