// The LayerNorm that opens each block op: one CTA per token normalizes its row
// of the layer's input (the norm row stage). It lets the next kernel
// (a projection) launch as soon as it starts, so that kernel's weight prefetch
// hides it. No torch headers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "clusterfusion/device/pdl.cuh"
#include "clusterfusion/stages/norm_row.cuh"

namespace clusterfusion::layer_norm {

constexpr int kLayerNormVectorsPerThread = stages::kNormVectorsPerThread;
constexpr int kMaxLayerNormThreads = 1024;
constexpr int kMaxLayerNormFeatures = 8 * kLayerNormVectorsPerThread * kMaxLayerNormThreads;

// grid = m, block = enough threads for k / 8 vectors at kLayerNormVectorsPerThread each.
// x, weight, bias, out: 16-byte aligned; k a multiple of 8; bias may be null.
// The first CTA also zeroes clear[0, clear_count): counters a later kernel of
// the op's chain needs zeroed (the chain's kernels wait for this one).
template <typename T>
__global__ void layer_norm_kernel(const T* x, const T* weight, const T* bias, T* out, int k, float eps, int* clear,
                                  int clear_count) {
  __shared__ float partials[kMaxLayerNormThreads / 32 + 1];
  device::grid_dependency_launch_dependents();
  device::grid_dependency_wait();  // x may come from the previous kernel
  if (blockIdx.x == 0) {
    for (int i = threadIdx.x; i < clear_count; i += blockDim.x) clear[i] = 0;
  }
  const size_t row = static_cast<size_t>(blockIdx.x) * k;
  stages::layer_norm_row<T>(x + row, weight, bias, out + row, k, eps, partials);
}

}  // namespace clusterfusion::layer_norm
