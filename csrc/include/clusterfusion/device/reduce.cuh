// Sums and maxima across a warp and across a CTA (or a group of its warps) in a fixed order, so the same inputs
// give bitwise the same result on every run. No torch headers.
#pragma once

#include <cstdint>

namespace clusterfusion::device {

// The sum of every lane's value, in the same butterfly order on every call.
__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// The reductions of block_reduce, per value type: an identity, a warp's
// reduction and the combination of two warps' results.
template <typename T>
struct Sum;

template <typename T>
struct Max;

template <>
struct Sum<float> {
  static constexpr float kIdentity = 0.f;
  __device__ static float warp(float v) { return warp_sum(v); }
  __device__ static float combine(float a, float b) { return a + b; }
};

template <>
struct Max<float> {
  static constexpr float kIdentity = -__builtin_huge_valf();
  __device__ static float warp(float v) { return warp_max(v); }
  __device__ static float combine(float a, float b) { return fmaxf(a, b); }
};

template <>
struct Max<uint32_t> {
  static constexpr uint32_t kIdentity = 0u;
  __device__ static uint32_t warp(uint32_t v) { return __reduce_max_sync(0xffffffffu, v); }
  __device__ static uint32_t combine(uint32_t a, uint32_t b) { return a > b ? a : b; }
};

// The threads that run a stage together: a whole CTA, or the consumer warps of a
// warp-specialized CTA (a named barrier, so the producer warp never joins).
struct WholeBlock {
  __device__ static int thread() { return threadIdx.x; }
  __device__ static int threads() { return blockDim.x; }
  __device__ static void sync() { __syncthreads(); }
};

// A whole CTA of kCount threads, known at compile time.
template <int kCount>
struct BlockOf : WholeBlock {
  static constexpr int kThreads = kCount;
  __device__ static constexpr int threads() { return kCount; }
};

// Warps [kFirstWarp, kFirstWarp + kWarps) of the CTA, synchronized on named barrier kBarrier (1..15).
template <int kFirstWarp, int kWarps, int kBarrier>
struct WarpGroup {
  static_assert(kBarrier > 0 && kBarrier < 16, "barrier 0 is __syncthreads'");
  static constexpr int kThreads = 32 * kWarps;
  __device__ static int thread() { return static_cast<int>(threadIdx.x) - 32 * kFirstWarp; }
  __device__ static constexpr int threads() { return kThreads; }
  __device__ static void sync() { asm volatile("bar.sync %0, %1;" ::"n"(kBarrier), "n"(kThreads) : "memory"); }
};

// Every thread's value reduced with Op<T>, returned to all threads of the group:
// warp results combined in warp order. `partials` holds one T per warp plus one;
// every thread of the group must call it (it synchronizes the group three times).
template <template <typename> class Op, typename T, typename Group = WholeBlock>
__device__ __forceinline__ T block_reduce(T value, T* partials) {
  using Reduction = Op<T>;
  const int warp = Group::thread() / 32;
  const int warps = (Group::threads() + 31) / 32;
  value = Reduction::warp(value);
  if (Group::thread() % 32 == 0) partials[warp] = value;
  Group::sync();
  if (Group::thread() == 0) {
    T total = Reduction::kIdentity;
    for (int w = 0; w < warps; ++w) total = Reduction::combine(total, partials[w]);
    partials[warps] = total;
  }
  Group::sync();
  const T total = partials[warps];
  Group::sync();  // partials may be reused by the next call
  return total;
}

template <typename Group = WholeBlock>
__device__ __forceinline__ float block_sum(float value, float* partials) {
  return block_reduce<Sum, float, Group>(value, partials);
}

template <typename T, typename Group = WholeBlock>
__device__ __forceinline__ T block_max(T value, T* partials) {
  return block_reduce<Max, T, Group>(value, partials);
}

}  // namespace clusterfusion::device
