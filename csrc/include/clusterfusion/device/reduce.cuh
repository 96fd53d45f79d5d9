// Sums and maxima across a warp and across a CTA in a fixed order, so the same inputs
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

// Every thread's value reduced with Op<T>, returned to all threads: warp
// results combined in warp order. `partials` holds one T per warp plus one;
// every thread of the CTA must call it (it synchronizes the CTA three times).
template <template <typename> class Op, typename T>
__device__ __forceinline__ T block_reduce(T value, T* partials) {
  using Reduction = Op<T>;
  const int warp = threadIdx.x / 32;
  const int warps = (blockDim.x + 31) / 32;
  value = Reduction::warp(value);
  if (threadIdx.x % 32 == 0) partials[warp] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    T total = Reduction::kIdentity;
    for (int w = 0; w < warps; ++w) total = Reduction::combine(total, partials[w]);
    partials[warps] = total;
  }
  __syncthreads();
  const T total = partials[warps];
  __syncthreads();  // partials may be reused by the next call
  return total;
}

__device__ __forceinline__ float block_sum(float value, float* partials) { return block_reduce<Sum>(value, partials); }

template <typename T>
__device__ __forceinline__ T block_max(T value, T* partials) {
  return block_reduce<Max>(value, partials);
}

}  // namespace clusterfusion::device
