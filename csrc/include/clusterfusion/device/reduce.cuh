// Sums and maxima across a warp and across a CTA in a fixed order, so the same inputs
// give bitwise the same result on every run. No torch headers.
#pragma once

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

struct Sum {
  static constexpr float kIdentity = 0.f;
  __device__ static float warp(float v) { return warp_sum(v); }
  __device__ static float combine(float a, float b) { return a + b; }
};

struct Max {
  static constexpr float kIdentity = -__builtin_huge_valf();
  __device__ static float warp(float v) { return warp_max(v); }
  __device__ static float combine(float a, float b) { return fmaxf(a, b); }
};

// Every thread's value reduced with Op, returned to all threads: warp results
// combined in warp order. `partials` holds one float per warp plus one; every
// thread of the CTA must call it (it synchronizes the CTA twice).
template <typename Op>
__device__ __forceinline__ float block_reduce(float value, float* partials) {
  const int warp = threadIdx.x / 32;
  const int warps = (blockDim.x + 31) / 32;
  value = Op::warp(value);
  if (threadIdx.x % 32 == 0) partials[warp] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = Op::kIdentity;
    for (int w = 0; w < warps; ++w) total = Op::combine(total, partials[w]);
    partials[warps] = total;
  }
  __syncthreads();
  const float total = partials[warps];
  __syncthreads();  // partials may be reused by the next call
  return total;
}

__device__ __forceinline__ float block_sum(float value, float* partials) { return block_reduce<Sum>(value, partials); }
__device__ __forceinline__ float block_max(float value, float* partials) { return block_reduce<Max>(value, partials); }

}  // namespace clusterfusion::device
