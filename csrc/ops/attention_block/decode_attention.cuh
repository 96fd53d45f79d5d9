// Decode attention for one new token, with its rotary embedding and KV-cache
// append, in one kernel. grid = (workers, heads), kChunk threads.
//
//  * Prologue: worker w of head h loads its first chunk of cached keys and
//    values (positions w * kChunk + [0, kChunk), one key row per thread) before
//    it reads this token's q, k, v: the loads are in flight while it does.
//  * Mainloop: the worker rotates the head's query, scores its chunks w,
//    w + workers, ... of positions 0..position and keeps a running softmax (max,
//    sum, unnormalized output) across them. The worker whose chunk holds
//    `position` writes the new key and value there and uses them from shared
//    memory in place of the row it loaded early.
//  * Epilogue: each worker stores its partial; the last worker of a head to
//    arrive merges the head's partials in worker order.
// Every sum runs in a fixed order, so the result does not depend on timing or
// on which worker arrives last. No torch headers.
#pragma once

#include <cstdint>

#include "clusterfusion/device/assert.cuh"
#include "clusterfusion/device/pdl.cuh"
#include "clusterfusion/device/reduce.cuh"
#include "clusterfusion/stages/attention_worker.cuh"
#include "decode_attention.h"

namespace clusterfusion::attention_block {

using Worker = device::BlockOf<kChunk>;

template <typename T, int kHeadDim>
struct KernelSmem {
  stages::WorkerSmem<T, kHeadDim, kChunk> worker;
  int merges;  // this worker arrived last: it merges the head
};

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kChunk) decode_attention_kernel(const DecodeAttentionParams p) {
  __shared__ KernelSmem<T, kHeadDim> smem;
  const int head = blockIdx.x;
  const int worker = blockIdx.y;
  // The position and the cached rows before it come from before this op.
  const int64_t last = *p.position;
  CLUSTERFUSION_DEVICE_CHECK(last >= 0 && last < p.max_len,
                             "clusterfusion.attention_block: cache_position within [0, key_cache.shape[2])");
  const int64_t first_chunk = static_cast<int64_t>(worker) * kChunk;
  const size_t head_offset = static_cast<size_t>(head) * p.max_len * kHeadDim;
  T* keys = static_cast<T*>(p.key_cache) + head_offset;
  T* values = static_cast<T*>(p.value_cache) + head_offset;
  if (first_chunk > last) {
    // A CTA lets the next grid launch only after its own wait has returned, so
    // that a chain of dependent launches stays ordered even through a CTA with no work.
    device::grid_dependency_wait();
    device::grid_dependency_launch_dependents();
    return;
  }
  stages::PassRows<T, kHeadDim, Worker> rows;
  rows.load(keys, values, first_chunk, last);

  device::grid_dependency_wait();  // the QKV projection (a no-op in stream order)
  device::grid_dependency_launch_dependents();
  const T* qkv = static_cast<const T*>(p.qkv) + static_cast<size_t>(head) * 3 * kHeadDim;
  stages::load_query<T, kHeadDim, kChunk, Worker>(smem.worker, qkv, p.terms);
  if ((last / kChunk) % p.workers == worker) {  // this worker's chunk holds the new row
    for (int d = threadIdx.x; d < kHeadDim; d += blockDim.x) {
      keys[last * kHeadDim + d] = smem.worker.new_key[d];
      values[last * kHeadDim + d] = smem.worker.new_value[d];
    }
  }
  __syncthreads();

  const auto run = stages::attend(smem.worker, rows, keys, values, first_chunk,
                                  static_cast<int64_t>(p.workers) * kChunk, last, p.terms);
  const int used = static_cast<int>(min(static_cast<int64_t>(p.workers), last / kChunk + 1));
  float* head_partials = p.partials + static_cast<size_t>(head) * p.workers * (kHeadDim + 2);
  run.store(head_partials + worker * (kHeadDim + 2));
  __threadfence();  // the partial is visible device-wide before this worker counts itself in
  __syncthreads();
  if (threadIdx.x == 0) smem.merges = atomicAdd(p.arrivals + head, 1) == used - 1;
  __syncthreads();
  if (!smem.merges) return;
  __threadfence();
  // The other workers' partials are read through L2: they were written by other CTAs.
  stages::merge_partials<T, kHeadDim, Worker>(
      [&](int w) { return head_partials + w * (kHeadDim + 2); }, used, [](const float* f) { return __ldcg(f); },
      static_cast<T*>(p.out) + static_cast<size_t>(head) * kHeadDim);
}

}  // namespace clusterfusion::attention_block
