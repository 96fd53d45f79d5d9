// Sums across a warp and across a CTA in a fixed order, so the same inputs
// give bitwise the same result on every run. No torch headers.
#pragma once

namespace clusterfusion::device {

// The sum of every lane's value, in the same butterfly order on every call.
__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// The sum of every thread's value, returned to all threads: warp sums added in
// warp order. `partials` holds one float per warp plus one; every thread of the
// CTA must call it (it synchronizes the CTA twice).
__device__ __forceinline__ float block_sum(float value, float* partials) {
  const int warp = threadIdx.x / 32;
  const int warps = (blockDim.x + 31) / 32;
  value = warp_sum(value);
  if (threadIdx.x % 32 == 0) partials[warp] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < warps; ++w) total += partials[w];
    partials[warps] = total;
  }
  __syncthreads();
  const float total = partials[warps];
  __syncthreads();  // partials may be reused by the next call
  return total;
}

}  // namespace clusterfusion::device
