/* Persistent pthread pool (see threadpool.h).
 *
 * Work is handed out dynamically: [0, count) is cut into chunks (a few per thread) that the
 * caller and the workers claim with atomic counters. The caller always works too, and it
 * only waits for chunks a worker has actually claimed: on a busy machine a worker that is
 * not scheduled in time simply gets nothing, instead of the caller sleeping until the
 * kernel gives that worker a core (with a static split that wait is often far longer than
 * the whole GEMV).
 *
 * Claims are home-first: thread slot t (the caller is 0, worker i is i + 1) owns the t-th
 * contiguous share of the chunks and claims those first, in order; only then does it take
 * chunks left in the other shares. So when every thread is on time, each thread walks one
 * contiguous run of rows, the same as in the call before: on separate cores a GEMV whose
 * weights fit the cores' L2 caches together (not one alone) reads them from its own core's
 * L2, and on any CPU each thread's weights are one sequential stream for the prefetchers.
 * With one shared counter the chunks went to whichever thread asked first, interleaved and a
 * different mix every call (on two threads the 1536 x 1536 sparse int8 GEMV of
 * benchmarks/kernels_gemm.py ran ~20 % slower so on the session-10 Xeon, whose two vCPUs
 * behave like hyperthreads of one core: which of the two effects it was is not measured).
 *
 * Protocol per job: the caller publishes it (generation++) with `open` = 1; a worker joins
 * only while the job is open (under the lock, joined++), claims chunks, and leaves
 * (joined--). When the caller runs out of chunks it closes the job and waits for joined to
 * reach zero, so no worker touches the job (which lives on the caller's stack) afterwards.
 *
 * Workers spin briefly before sleeping, and a caller that finished first spins briefly for
 * the workers still inside, so back-to-back calls (one per layer) do not pay a futex sleep
 * and wake-up each. Only one job runs at a time: a second caller (another Python thread;
 * the GIL is released) that finds the pool busy runs its whole range itself. After fork()
 * the child starts with no workers and creates them again on first use. */
#include "threadpool.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define EF_MAX_THREADS 64
#define EF_CHUNKS_PER_THREAD 8 /* small claims: a preempted worker holds back little */
#define EF_MIN_COST_PER_THREAD ((size_t)1 << 17) /* ~128K multiply-adds, ~5-10 us */
#define EF_SPIN_POLLS 20000
#define EF_MAX(a, b) ((a) > (b) ? (a) : (b))

static struct {
  pthread_mutex_t lock;      /* guards the fields below except the atomics */
  pthread_cond_t wake;       /* generation changed */
  pthread_cond_t done;       /* joined reached zero */
  pthread_mutex_t call_lock; /* held by the caller that owns the running job */
  int started;               /* worker threads created so far */
  int threads;               /* threads a job may use, caller included */
  uint64_t generation;       /* atomic reads while spinning */
  int open;                  /* the current job still accepts workers */
  int joined;                /* workers inside the current job (changed under the lock, atomically,
                                because the finishing caller also polls it without the lock) */
  ef_range_fn fn;
  void* ctx;
  size_t count, chunks;
  int slots; /* threads of the current job: the shares the chunks are cut into */
  /* next_chunk[t].v: the next unclaimed chunk of slot t's share (atomic); a cache line each,
   * so that claims in one share do not slow the others */
  struct {
    _Alignas(64) size_t v;
  } next_chunk[EF_MAX_THREADS];
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER,
          .call_lock = PTHREAD_MUTEX_INITIALIZER};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Last chunk (exclusive) of slot t's share when `chunks` are cut into `slots` shares; the
 * share starts where slot t - 1's ends. */
static size_t share_end(size_t chunks, int slots, int t) { return chunks * (size_t)(t + 1) / (size_t)slots; }

/* Claims and runs the chunks of slot `home`'s share, then whatever is left of the others'
 * (in slot order after home), until none is left. */
static void run_chunks(ef_range_fn fn, void* ctx, size_t count, size_t chunks, int slots, int home) {
  for (int i = 0; i < slots; i++) {
    const int t = (home + i) % slots;
    const size_t end_chunk = share_end(chunks, slots, t);
    for (;;) {
      const size_t c = __atomic_fetch_add(&pool.next_chunk[t].v, 1, __ATOMIC_RELAXED);
      if (c >= end_chunk) break;
      const size_t begin = count * c / chunks, end = count * (c + 1) / chunks;
      if (begin < end) fn(ctx, begin, end);
    }
  }
}

typedef struct {
  uint64_t generation; /* when created: only newer jobs count */
  int slot;            /* 1 + creation order: which share of a job's chunks is this worker's */
} worker_args;

static void* worker_main(void* arg) {
  const worker_args args = *(const worker_args*)arg;
  free(arg);
  uint64_t seen = args.generation;
  pthread_mutex_lock(&pool.lock);
  for (;;) {
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < EF_SPIN_POLLS && __atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE) == seen; i++) cpu_relax();
    pthread_mutex_lock(&pool.lock);
    while (pool.generation == seen) pthread_cond_wait(&pool.wake, &pool.lock);
    seen = pool.generation;
    /* woke too late (the caller already finished), or the job has no share for this slot */
    if (!pool.open || args.slot >= pool.slots) continue;
    __atomic_add_fetch(&pool.joined, 1, __ATOMIC_RELAXED);
    ef_range_fn fn = pool.fn;
    void* ctx = pool.ctx;
    const size_t count = pool.count, chunks = pool.chunks;
    const int slots = pool.slots;
    pthread_mutex_unlock(&pool.lock);
    run_chunks(fn, ctx, count, chunks, slots, args.slot);
    pthread_mutex_lock(&pool.lock);
    /* release: the chunks' output is visible to a caller that sees zero while spinning */
    if (__atomic_sub_fetch(&pool.joined, 1, __ATOMIC_RELEASE) == 0 && !pool.open) pthread_cond_signal(&pool.done);
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
  pool.open = 0;
  pool.joined = 0;
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

/* Creates workers up to threads - 1 (lock held); returns the threads a job may use. */
static int ensure_workers(int threads) {
  pthread_once(&atfork_once, register_atfork);
  while (pool.started < threads - 1) {
    worker_args* args = malloc(sizeof *args); /* the worker frees it */
    if (args == NULL) break;
    args->generation = pool.generation;
    args->slot = pool.started + 1;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, worker_main, args);
    pthread_attr_destroy(&attr);
    if (rc != 0) { /* run with the workers we have */
      free(args);
      break;
    }
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
  size_t chunks = (size_t)threads * EF_CHUNKS_PER_THREAD;
  if (chunks > count) chunks = count;

  pthread_mutex_lock(&pool.lock);
  threads = ensure_workers(threads);
  pool.fn = fn;
  pool.ctx = ctx;
  pool.count = count;
  pool.chunks = chunks;
  pool.slots = threads;
  for (int t = 0; t < threads; t++)
    __atomic_store_n(&pool.next_chunk[t].v, t == 0 ? 0 : share_end(chunks, threads, t - 1), __ATOMIC_RELAXED);
  pool.open = 1;
  pool.joined = 0;
  __atomic_add_fetch(&pool.generation, 1, __ATOMIC_RELEASE);
  pthread_cond_broadcast(&pool.wake);
  pthread_mutex_unlock(&pool.lock);

  run_chunks(fn, ctx, count, chunks, threads, 0);

  pthread_mutex_lock(&pool.lock);
  pool.open = 0; /* late workers skip this job */
  pthread_mutex_unlock(&pool.lock);
  /* A worker still inside usually has one chunk left, a few microseconds: spin for it
   * rather than sleep, since a futex sleep and wake-up costs about as much again (more in a
   * VM) on every call of a model's many small ops. */
  for (int i = 0; i < EF_SPIN_POLLS && __atomic_load_n(&pool.joined, __ATOMIC_ACQUIRE) > 0; i++) cpu_relax();
  pthread_mutex_lock(&pool.lock);
  while (pool.joined > 0) pthread_cond_wait(&pool.done, &pool.lock);
  pthread_mutex_unlock(&pool.lock);
  pthread_mutex_unlock(&pool.call_lock);
}
