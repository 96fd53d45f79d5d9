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
#include "clusterfusion/device/numeric.cuh"
#include "clusterfusion/device/pdl.cuh"
#include "clusterfusion/device/reduce.cuh"
#include "clusterfusion/device/vector.cuh"
#include "decode_attention.h"

namespace clusterfusion::attention_block {

using device::to_float;
using device::Vector8;

constexpr float kMinusInfinity = -__builtin_huge_valf();

// Element d of x (a head's query or key) after HuggingFace's rotary embedding
// (rotate_half convention) on the first rotary_dims elements, rounded to T as
// HuggingFace's projection output is.
template <typename T>
__device__ __forceinline__ T rotated(const T* x, int d, const DecodeAttentionParams& p) {
  if (d >= p.rotary_dims) return x[d];
  const int half = p.rotary_dims / 2;
  const float partner = d < half ? -to_float(x[d + half]) : to_float(x[d - half]);
  const float c = to_float(static_cast<const T*>(p.cos)[d]);
  const float s = to_float(static_cast<const T*>(p.sin)[d]);
  return device::from_float<T>(to_float(x[d]) * c + partner * s);
}

template <typename T>
__device__ __forceinline__ float mask_term(const DecodeAttentionParams& p, int64_t position) {
  switch (p.mask_kind) {
    case MaskKind::kBool:
      return static_cast<const bool*>(p.mask)[position] ? 0.f : kMinusInfinity;
    case MaskKind::kAdditive:
      return to_float(static_cast<const T*>(p.mask)[position]);
    case MaskKind::kFloat:
      return static_cast<const float*>(p.mask)[position];
    default:
      return 0.f;
  }
}

// The shared-memory layout of one worker.
template <typename T, int kHeadDim>
struct WorkerSmem {
  static constexpr int kVectors = kHeadDim / 8;      // 16-byte vectors per cached row
  static constexpr int kGroups = kChunk / kVectors;  // position groups of the value pass
  static_assert(kHeadDim % 8 == 0 && kVectors <= kChunk, "a row is whole 16-byte vectors, at most one per thread");
  float query[kHeadDim];            // rotated, rounded to T, in fp32
  alignas(16) T new_key[kHeadDim];  // this token's key and value, when this worker holds its position
  alignas(16) T new_value[kHeadDim];
  float probs[kChunk];              // exp(score - running max) of the chunk's positions
  float values[kGroups][kHeadDim];  // each group's share of the chunk's probs @ V
  float reduce[kChunk / 32 + 1];
  int merges;                       // this worker arrived last: it merges the head
};

// One chunk's cached rows in registers. Thread t = g * kVectors + j holds the
// key row of position chunk_start + t, and vector j of the value rows of
// positions chunk_start + g, + g + kGroups, ...
template <typename T, int kHeadDim>
struct ChunkRows {
  using Smem = WorkerSmem<T, kHeadDim>;
  static constexpr int kValueRows = (kChunk + Smem::kGroups - 1) / Smem::kGroups;
  Vector8<T> key[Smem::kVectors];
  Vector8<T> value[kValueRows];

  __device__ static int group() { return threadIdx.x / Smem::kVectors; }
  __device__ static int vector() { return threadIdx.x % Smem::kVectors; }
  __device__ static int value_row(int r) { return group() + r * Smem::kGroups; }

  // Rows past `last` are not loaded (and not used).
  __device__ void load(const T* keys, const T* values, int64_t chunk_start, int64_t last) {
    const int64_t position = chunk_start + threadIdx.x;
    if (position <= last) {
#pragma unroll
      for (int v = 0; v < Smem::kVectors; ++v) key[v] = device::load_vector(keys + position * kHeadDim + 8 * v);
    }
#pragma unroll
    for (int r = 0; r < kValueRows; ++r) {
      const int i = value_row(r);
      if (group() < Smem::kGroups && i < kChunk && chunk_start + i <= last) {
        value[r] = device::load_vector(values + (chunk_start + i) * kHeadDim + 8 * vector());
      }
    }
  }

  // (q . k) * scale + mask for this thread's position; -inf past `last`. The
  // row at `last` is this token's key, from shared memory.
  __device__ float score(const Smem& smem, int64_t position, int64_t last, const DecodeAttentionParams& p) const {
    if (position > last) return kMinusInfinity;
    float dot = 0.f;
#pragma unroll
    for (int v = 0; v < Smem::kVectors; ++v) {
      const Vector8<T> k = position == last ? device::load_vector(smem.new_key + 8 * v) : key[v];
#pragma unroll
      for (int j = 0; j < 8; ++j) dot += smem.query[8 * v + j] * to_float(k.v[j]);
    }
    return dot * p.scale + mask_term<T>(p, position);
  }

  // smem.values[group][8 * vector ...] = this thread's share of probs @ V.
  __device__ void weigh_values(Smem& smem, int64_t chunk_start, int64_t last) const {
    if (group() >= Smem::kGroups) return;
    float sum[8] = {};
#pragma unroll
    for (int r = 0; r < kValueRows; ++r) {
      const int i = value_row(r);
      if (i >= kChunk || chunk_start + i > last) continue;
      const Vector8<T> v =
          chunk_start + i == last ? device::load_vector(smem.new_value + 8 * vector()) : value[r];
      const float prob = smem.probs[i];
#pragma unroll
      for (int j = 0; j < 8; ++j) sum[j] += prob * to_float(v.v[j]);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) smem.values[group()][8 * vector() + j] = sum[j];
  }
};

// The running softmax of one worker: thread t holds output dims t, t + kChunk, ...
template <int kHeadDim>
struct RunningSoftmax {
  static constexpr int kDimsPerThread = (kHeadDim + kChunk - 1) / kChunk;
  float max = kMinusInfinity;
  float sum = 0.f;
  float out[kDimsPerThread] = {};

  // Folds in one chunk whose rows are in `rows` (every thread of the CTA calls it).
  template <typename T>
  __device__ void add_chunk(WorkerSmem<T, kHeadDim>& smem, const ChunkRows<T, kHeadDim>& rows, int64_t chunk_start,
                            int64_t last, const DecodeAttentionParams& p) {
    const int64_t position = chunk_start + threadIdx.x;
    const float score = rows.score(smem, position, last, p);
    const float new_max = fmaxf(max, device::block_max(score, smem.reduce));
    if (new_max == kMinusInfinity) return;  // every position so far masked (uniform across the CTA)
    const float prob = position <= last ? __expf(score - new_max) : 0.f;
    smem.probs[threadIdx.x] = prob;
    const float chunk_sum = device::block_sum(prob, smem.reduce);  // also publishes probs
    const float rescale = __expf(max - new_max);
    sum = sum * rescale + chunk_sum;
    max = new_max;
    rows.weigh_values(smem, chunk_start, last);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kDimsPerThread; ++i) {
      const int d = threadIdx.x + i * kChunk;
      if (d >= kHeadDim) break;
      float chunk = 0.f;
#pragma unroll
      for (int g = 0; g < WorkerSmem<T, kHeadDim>::kGroups; ++g) chunk += smem.values[g][d];
      out[i] = out[i] * rescale + chunk;
    }
    __syncthreads();  // probs and values are rewritten by the next chunk
  }

  __device__ void store(float* partial) const {
#pragma unroll
    for (int i = 0; i < kDimsPerThread; ++i) {
      const int d = threadIdx.x + i * kChunk;
      if (d < kHeadDim) partial[d] = out[i];
    }
    if (threadIdx.x == 0) {
      partial[kHeadDim] = max;
      partial[kHeadDim + 1] = sum;
    }
  }
};

// out[head] = the partials of workers 0..used-1 merged in worker order. Reads
// through L2: the partials were written by other CTAs.
template <typename T, int kHeadDim>
__device__ void merge_head(const DecodeAttentionParams& p, int head, int used) {
  const float* partials = p.partials + static_cast<size_t>(head) * p.workers * (kHeadDim + 2);
  float max = kMinusInfinity;
  for (int w = 0; w < used; ++w) max = fmaxf(max, __ldcg(partials + w * (kHeadDim + 2) + kHeadDim));
  T* out = static_cast<T*>(p.out) + static_cast<size_t>(head) * kHeadDim;
  for (int d = threadIdx.x; d < kHeadDim; d += blockDim.x) {
    float sum = 0.f;
    float value = 0.f;
    for (int w = 0; w < used; ++w) {
      const float* partial = partials + w * (kHeadDim + 2);
      const float weight = __expf(__ldcg(partial + kHeadDim) - max);
      sum += __ldcg(partial + kHeadDim + 1) * weight;
      value += __ldcg(partial + d) * weight;
    }
    out[d] = device::from_float<T>(value / sum);
  }
}

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kChunk) decode_attention_kernel(const DecodeAttentionParams p) {
  using Smem = WorkerSmem<T, kHeadDim>;
  __shared__ Smem smem;
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
  ChunkRows<T, kHeadDim> rows;
  rows.load(keys, values, first_chunk, last);

  device::grid_dependency_wait();  // the QKV projection (a no-op in stream order)
  device::grid_dependency_launch_dependents();
  const T* qkv = static_cast<const T*>(p.qkv) + static_cast<size_t>(head) * 3 * kHeadDim;
  const bool holds_new_row = (last / kChunk) % p.workers == worker;
  for (int d = threadIdx.x; d < kHeadDim; d += blockDim.x) {
    smem.query[d] = to_float(rotated(qkv, d, p));
    if (holds_new_row) {
      const T key = rotated(qkv + kHeadDim, d, p);
      const T value = qkv[2 * kHeadDim + d];
      smem.new_key[d] = key;
      smem.new_value[d] = value;
      keys[last * kHeadDim + d] = key;
      values[last * kHeadDim + d] = value;
    }
  }
  __syncthreads();

  RunningSoftmax<kHeadDim> run;
  const int64_t stride = static_cast<int64_t>(p.workers) * kChunk;
  for (int64_t chunk_start = first_chunk;;) {
    run.add_chunk(smem, rows, chunk_start, last, p);
    chunk_start += stride;
    if (chunk_start > last) break;
    rows.load(keys, values, chunk_start, last);
  }

  const int used = static_cast<int>(min(static_cast<int64_t>(p.workers), last / kChunk + 1));
  run.store(p.partials + (static_cast<size_t>(head) * p.workers + worker) * (kHeadDim + 2));
  __threadfence();  // the partial is visible device-wide before this worker counts itself in
  __syncthreads();
  if (threadIdx.x == 0) smem.merges = atomicAdd(p.arrivals + head, 1) == used - 1;
  __syncthreads();
  if (!smem.merges) return;
  __threadfence();
  merge_head<T, kHeadDim>(p, head, used);
}

}  // namespace clusterfusion::attention_block
