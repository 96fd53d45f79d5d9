// The attention worker stage: one group of threads attends one head's new query
// over a share of the cached positions 0..last, a pass of one position per
// thread at a time, and keeps a running softmax (max, sum, unnormalized output)
// across its passes; the merge stage combines the workers' partials in a fixed
// order. Also the rotary embedding of this token's query and key (HuggingFace's
// rotate_half convention on the first rotary_dims elements) and the mask term.
// Used by the decode attention kernel (a CTA of kChunk threads per worker) and
// by the layer kernel (its consumer warps). No torch headers.
#pragma once

#include <cstdint>

#include "clusterfusion/device/numeric.cuh"
#include "clusterfusion/device/reduce.cuh"
#include "clusterfusion/device/vector.cuh"
#include "attention_terms.h"

namespace clusterfusion::stages {

using device::to_float;
using device::Vector8;

constexpr float kMinusInfinity = -__builtin_huge_valf();

// Element d of x (a head's query or key) after the rotary embedding, rounded to
// T as HuggingFace's projection output is.
template <typename T>
__device__ __forceinline__ T rotated(const T* x, int d, const AttentionTerms& t) {
  if (d >= t.rotary_dims) return x[d];
  const int half = t.rotary_dims / 2;
  const float partner = d < half ? -to_float(x[d + half]) : to_float(x[d - half]);
  const float c = to_float(static_cast<const T*>(t.cos)[d]);
  const float s = to_float(static_cast<const T*>(t.sin)[d]);
  return device::from_float<T>(to_float(x[d]) * c + partner * s);
}

template <typename T>
__device__ __forceinline__ float mask_term(const AttentionTerms& t, int64_t position) {
  switch (t.mask_kind) {
    case MaskKind::kBool:
      return static_cast<const bool*>(t.mask)[position] ? 0.f : kMinusInfinity;
    case MaskKind::kAdditive:
      return to_float(static_cast<const T*>(t.mask)[position]);
    case MaskKind::kFloat:
      return static_cast<const float*>(t.mask)[position];
    default:
      return 0.f;
  }
}

// The shared memory of one worker whose passes cover kPositions positions.
template <typename T, int kHeadDim, int kPositions>
struct WorkerSmem {
  static constexpr int kVectors = kHeadDim / 8;          // 16-byte vectors per cached row
  static constexpr int kGroups = kPositions / kVectors;  // position groups of the value pass
  static_assert(kHeadDim % 8 == 0 && kVectors <= kPositions, "a row is whole 16-byte vectors, at most one per thread");
  float query[kHeadDim];            // rotated, rounded to T, in fp32
  alignas(16) T new_key[kHeadDim];  // this token's key and value
  alignas(16) T new_value[kHeadDim];
  float probs[kPositions];          // exp(score - running max) of the pass's positions
  float values[kGroups][kHeadDim];  // each group's share of the pass's probs @ V
  float reduce[kPositions / 32 + 1];
};

// Fills the worker's query (and, when it holds `last`, its new key and value)
// from this token's q, k, v of the head ([3, head_dim], bias added, rounded to
// T); the caller synchronizes the group before the first pass.
template <typename T, int kHeadDim, int kPositions, typename Group>
__device__ void load_query(WorkerSmem<T, kHeadDim, kPositions>& smem, const T* qkv, const AttentionTerms& t) {
  for (int d = Group::thread(); d < kHeadDim; d += Group::threads()) {
    smem.query[d] = to_float(rotated(qkv, d, t));
    smem.new_key[d] = rotated(qkv + kHeadDim, d, t);
    smem.new_value[d] = qkv[2 * kHeadDim + d];
  }
}

// One pass's cached rows in registers. Thread t = g * kVectors + j of the group
// holds the key row of position pass_start + t, and vector j of the value rows
// of positions pass_start + g, + g + kGroups, ...
template <typename T, int kHeadDim, typename Group>
struct PassRows {
  static constexpr int kPositions = Group::kThreads;
  using Smem = WorkerSmem<T, kHeadDim, kPositions>;
  static constexpr int kValueRows = (kPositions + Smem::kGroups - 1) / Smem::kGroups;
  Vector8<T> key[Smem::kVectors];
  Vector8<T> value[kValueRows];

  __device__ static int group() { return Group::thread() / Smem::kVectors; }
  __device__ static int vector() { return Group::thread() % Smem::kVectors; }
  __device__ static int value_row(int r) { return group() + r * Smem::kGroups; }

  // Rows past `last` are not loaded (and not used); neither is the row at
  // `last`, which is this token's (from shared memory).
  __device__ void load(const T* keys, const T* values, int64_t pass_start, int64_t last) {
    const int64_t position = pass_start + Group::thread();
    if (position < last) {
#pragma unroll
      for (int v = 0; v < Smem::kVectors; ++v) key[v] = device::load_vector(keys + position * kHeadDim + 8 * v);
    }
#pragma unroll
    for (int r = 0; r < kValueRows; ++r) {
      const int i = value_row(r);
      if (group() < Smem::kGroups && i < kPositions && pass_start + i < last) {
        value[r] = device::load_vector(values + (pass_start + i) * kHeadDim + 8 * vector());
      }
    }
  }

  // (q . k) * scale + mask for this thread's position; -inf past `last`.
  template <typename Terms>
  __device__ float score(const Smem& smem, int64_t position, int64_t last, const Terms& t) const {
    if (position > last) return kMinusInfinity;
    float dot = 0.f;
#pragma unroll
    for (int v = 0; v < Smem::kVectors; ++v) {
      const Vector8<T> k = position == last ? device::load_vector(smem.new_key + 8 * v) : key[v];
#pragma unroll
      for (int j = 0; j < 8; ++j) dot += smem.query[8 * v + j] * to_float(k.v[j]);
    }
    return dot * t.scale + mask_term<T>(t, position);
  }

  // smem.values[group][8 * vector ...] = this thread's share of probs @ V.
  __device__ void weigh_values(Smem& smem, int64_t pass_start, int64_t last) const {
    if (group() >= Smem::kGroups) return;
    float sum[8] = {};
#pragma unroll
    for (int r = 0; r < kValueRows; ++r) {
      const int i = value_row(r);
      if (i >= kPositions || pass_start + i > last) continue;
      const Vector8<T> v =
          pass_start + i == last ? device::load_vector(smem.new_value + 8 * vector()) : value[r];
      const float prob = smem.probs[i];
#pragma unroll
      for (int j = 0; j < 8; ++j) sum[j] += prob * to_float(v.v[j]);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) smem.values[group()][8 * vector() + j] = sum[j];
  }
};

// The running softmax of one worker: thread t of the group holds output dims t, t + kPositions, ...
template <int kHeadDim, typename Group>
struct RunningSoftmax {
  static constexpr int kPositions = Group::kThreads;
  static constexpr int kDimsPerThread = (kHeadDim + kPositions - 1) / kPositions;
  float max = kMinusInfinity;
  float sum = 0.f;
  float out[kDimsPerThread] = {};

  // Folds in one pass whose rows are in `rows` (every thread of the group calls it).
  template <typename T>
  __device__ void add_pass(WorkerSmem<T, kHeadDim, kPositions>& smem, const PassRows<T, kHeadDim, Group>& rows,
                           int64_t pass_start, int64_t last, const AttentionTerms& t) {
    const int64_t position = pass_start + Group::thread();
    const float score = rows.score(smem, position, last, t);
    const float new_max = fmaxf(max, device::block_max<float, Group>(score, smem.reduce));
    if (new_max == kMinusInfinity) return;  // every position so far masked (uniform across the group)
    const float prob = position <= last ? __expf(score - new_max) : 0.f;
    smem.probs[Group::thread()] = prob;
    const float pass_sum = device::block_sum<Group>(prob, smem.reduce);  // also publishes probs
    const float rescale = __expf(max - new_max);
    sum = sum * rescale + pass_sum;
    max = new_max;
    rows.weigh_values(smem, pass_start, last);
    Group::sync();
#pragma unroll
    for (int i = 0; i < kDimsPerThread; ++i) {
      const int d = Group::thread() + i * kPositions;
      if (d >= kHeadDim) break;
      float pass = 0.f;
#pragma unroll
      for (int g = 0; g < WorkerSmem<T, kHeadDim, kPositions>::kGroups; ++g) pass += smem.values[g][d];
      out[i] = out[i] * rescale + pass;
    }
    Group::sync();  // probs and values are rewritten by the next pass
  }

  // partial[0, kHeadDim): the unnormalized output; then the max and the sum.
  __device__ void store(float* partial) const {
#pragma unroll
    for (int i = 0; i < kDimsPerThread; ++i) {
      const int d = Group::thread() + i * kPositions;
      if (d < kHeadDim) partial[d] = out[i];
    }
    if (Group::thread() == 0) {
      partial[kHeadDim] = max;
      partial[kHeadDim + 1] = sum;
    }
  }
};

// Folds in the passes first, first + stride, ... up to `last` (at least one):
// `rows` holds the first pass's rows (the caller loads them early); each later
// pass's rows are loaded after the previous pass is folded in.
template <typename T, int kHeadDim, typename Group>
__device__ RunningSoftmax<kHeadDim, Group> attend(WorkerSmem<T, kHeadDim, Group::kThreads>& smem,
                                                  PassRows<T, kHeadDim, Group>& rows, const T* keys,
                                                  const T* values, int64_t first, int64_t stride, int64_t last,
                                                  const AttentionTerms& t) {
  RunningSoftmax<kHeadDim, Group> run;
  for (int64_t pass_start = first;;) {
    run.add_pass(smem, rows, pass_start, last, t);
    pass_start += stride;
    if (pass_start > last) return run;
    rows.load(keys, values, pass_start, last);
  }
}

// The merge stage: out[d] = the partials 0..used-1 (each [head_dim + 2] as
// RunningSoftmax::store writes them; partial(w) points at worker w's) merged in
// worker order, rounded to T. A partial whose max is -inf (every position masked)
// adds nothing unless every partial's is (then the result is NaN, as softmax over
// nothing). load(p) reads a float of a partial (the caller picks the memory path).
template <typename T, int kHeadDim, typename Group, typename Partial, typename Load>
__device__ void merge_partials(Partial partial, int used, Load load, T* out) {
  float max = kMinusInfinity;
  for (int w = 0; w < used; ++w) max = fmaxf(max, load(partial(w) + kHeadDim));
  for (int d = Group::thread(); d < kHeadDim; d += Group::threads()) {
    float sum = 0.f;
    float value = 0.f;
    for (int w = 0; w < used; ++w) {
      const float* p = partial(w);
      const float weight = __expf(load(p + kHeadDim) - max);
      sum += load(p + kHeadDim + 1) * weight;
      value += load(p + d) * weight;
    }
    out[d] = device::from_float<T>(value / sum);
  }
}

}  // namespace clusterfusion::stages
