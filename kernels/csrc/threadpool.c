/* Persistent pthread pool (see threadpool.h).
 *
 * Workers sleep on a condition variable and wake when the job generation changes, so a
 * GEMV of a few microseconds does not pay for thread creation. Only one job runs at a
 * time: a second caller (another Python thread, the GIL is released during compute) that
 * finds the pool busy runs its whole range on its own thread instead of waiting. After
 * fork() the child starts with no workers and creates them again on first use. */
#include "threadpool.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define EF_MAX_THREADS 64
#define EF_MIN_COST_PER_THREAD ((size_t)1 << 17) /* ~128K multiply-adds, ~5-10 us */
#define EF_MAX(a, b) ((a) > (b) ? (a) : (b))

static struct {
  pthread_mutex_t lock;      /* guards everything below */
  pthread_cond_t wake;       /* generation changed */
  pthread_cond_t done;       /* pending reached zero */
  pthread_mutex_t call_lock; /* held by the caller that owns the running job */
  int started;               /* worker threads created so far */
  int threads;               /* threads a job uses, caller included */
  uint64_t generation;
  ef_range_fn fn;
  void* ctx;
  size_t count;
  int job_threads;
  int pending;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
          PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, NULL, NULL, 0, 0, 0};

static uint64_t start_generation[EF_MAX_THREADS];

static void run_part(ef_range_fn fn, void* ctx, size_t count, int part, int parts) {
  size_t begin = count * (size_t)part / (size_t)parts;
  size_t end = count * (size_t)(part + 1) / (size_t)parts;
  if (begin < end) fn(ctx, begin, end);
}

/* Spin this many polls before sleeping: on a busy machine a futex wake-up can take tens of
 * microseconds, longer than a whole small GEMV, while back-to-back kernel calls (one per
 * layer) arrive well within the spin window. */
#define EF_SPIN_POLLS 20000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static void* worker_main(void* arg) {
  const int id = (int)(intptr_t)arg; /* workers are parts 1..threads-1 */
  pthread_mutex_lock(&pool.lock);
  /* The generation when this worker was created, not when it first runs: the job that
   * created it may already have been published by the time it takes the lock. */
  uint64_t seen = start_generation[id];
  for (;;) {
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < EF_SPIN_POLLS && __atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE) == seen; i++) cpu_relax();
    pthread_mutex_lock(&pool.lock);
    while (pool.generation == seen) pthread_cond_wait(&pool.wake, &pool.lock);
    seen = pool.generation;
    const int parts = pool.job_threads;
    if (id >= parts) continue; /* not needed for this job */
    ef_range_fn fn = pool.fn;
    void* ctx = pool.ctx;
    size_t count = pool.count;
    pthread_mutex_unlock(&pool.lock);
    run_part(fn, ctx, count, id, parts);
    pthread_mutex_lock(&pool.lock);
    if (__atomic_sub_fetch(&pool.pending, 1, __ATOMIC_ACQ_REL) == 0) pthread_cond_signal(&pool.done);
  }
  return NULL;
}

static void reset_after_fork(void) {
  /* The child has only the forking thread; forget the parent's workers. */
  pthread_mutex_init(&pool.lock, NULL);
  pthread_mutex_init(&pool.call_lock, NULL);
  pthread_cond_init(&pool.wake, NULL);
  pthread_cond_init(&pool.done, NULL);
  pool.started = 0;
  pool.pending = 0;
}

static int default_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : (n > EF_MAX_THREADS ? EF_MAX_THREADS : (int)n);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(NULL, NULL, reset_after_fork); }

void ef_set_num_threads(int n) {
  if (n <= 0) n = default_threads();
  if (n > EF_MAX_THREADS) n = EF_MAX_THREADS;
  pthread_mutex_lock(&pool.lock);
  pool.threads = n;
  pthread_mutex_unlock(&pool.lock);
}

int ef_get_num_threads(void) {
  pthread_mutex_lock(&pool.lock);
  if (pool.threads == 0) pool.threads = default_threads();
  int n = pool.threads;
  pthread_mutex_unlock(&pool.lock);
  return n;
}

/* Create workers up to threads-1; returns how many threads a job may use. */
static int ensure_workers(int threads) {
  pthread_once(&atfork_once, register_atfork);
  while (pool.started < threads - 1) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    start_generation[pool.started + 1] = pool.generation;
    int rc = pthread_create(&t, &attr, worker_main, (void*)(intptr_t)(pool.started + 1));
    pthread_attr_destroy(&attr);
    if (rc != 0) break; /* run with the workers we have */
    pool.started++;
  }
  return pool.started + 1 < threads ? pool.started + 1 : threads;
}

void ef_parallel_for(size_t count, size_t cost_per_item, ef_range_fn fn, void* ctx) {
  if (count == 0) return;
  int threads = ef_get_num_threads();
  if ((size_t)threads > count) threads = (int)count;
  /* Below ~EF_MIN_COST_PER_THREAD units of work per thread, waking a thread costs more than
   * it saves. */
  const size_t total = count * (cost_per_item ? cost_per_item : 1);
  if ((size_t)threads > total / EF_MIN_COST_PER_THREAD) threads = (int)EF_MAX(1, total / EF_MIN_COST_PER_THREAD);
  if (threads <= 1 || pthread_mutex_trylock(&pool.call_lock) != 0) {
    fn(ctx, 0, count);
    return;
  }
  pthread_mutex_lock(&pool.lock);
  threads = ensure_workers(threads);
  pool.fn = fn;
  pool.ctx = ctx;
  pool.count = count;
  pool.job_threads = threads;
  pool.pending = threads - 1;
  __atomic_add_fetch(&pool.generation, 1, __ATOMIC_RELEASE);
  pthread_cond_broadcast(&pool.wake);
  pthread_mutex_unlock(&pool.lock);

  run_part(fn, ctx, count, 0, threads);

  for (int i = 0; i < EF_SPIN_POLLS && __atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE) > 0; i++) cpu_relax();
  pthread_mutex_lock(&pool.lock);
  while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.lock);
  pthread_mutex_unlock(&pool.lock);
  pthread_mutex_unlock(&pool.call_lock);
}
