/* A small persistent thread pool: ef_parallel_for splits [0, count) into one contiguous
 * share per thread; the calling thread runs the first share itself, and a thread that is
 * done takes what is left of a late one's (threadpool.c). Kernels split work over output
 * columns (N), so threads never write the same output. */
#pragma once
#include <stddef.h>

typedef void (*ef_range_fn)(void* ctx, size_t begin, size_t end);

/* cost_per_item: rough multiply-adds per item, so tiny jobs stay on the calling thread. */
void ef_parallel_for(size_t count, size_t cost_per_item, ef_range_fn fn, void* ctx);
void ef_set_num_threads(int n); /* n <= 0 means one per online CPU */
int ef_get_num_threads(void);
