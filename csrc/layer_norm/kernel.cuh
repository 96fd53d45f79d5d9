// The LayerNorm that opens each block op: one CTA per token normalizes its row
// of the layer's input with fp32 statistics (mean, then the mean squared
// deviation, both from registers) and rounds once to T. It lets the next kernel
// (a projection) launch as soon as it starts, so that kernel's weight prefetch
// hides it. No torch headers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "clusterfusion/device/numeric.cuh"
#include "clusterfusion/device/pdl.cuh"
#include "clusterfusion/device/reduce.cuh"
#include "clusterfusion/device/vector.cuh"

namespace clusterfusion::layer_norm {

// 16-byte vectors of eight 16-bit values each thread holds: a row of k
// features takes k / 8 vectors over at most kMaxLayerNormThreads threads.
constexpr int kLayerNormVectorsPerThread = 4;
constexpr int kMaxLayerNormThreads = 1024;
constexpr int kMaxLayerNormFeatures = 8 * kLayerNormVectorsPerThread * kMaxLayerNormThreads;

// grid = m, block = enough threads for k / 8 vectors at kLayerNormVectorsPerThread each.
// x, weight, bias, out: 16-byte aligned; k a multiple of 8; bias may be null.
// The first CTA also zeroes clear[0, clear_count): counters a later kernel of
// the op's chain needs zeroed (the chain's kernels wait for this one).
template <typename T>
__global__ void layer_norm_kernel(const T* x, const T* weight, const T* bias, T* out, int k, float eps, int* clear,
                                  int clear_count) {
  using device::load_vector;
  using device::to_float;
  using device::Vector8;
  __shared__ float partials[kMaxLayerNormThreads / 32 + 1];
  device::grid_dependency_launch_dependents();
  device::grid_dependency_wait();  // x may come from the previous kernel
  if (blockIdx.x == 0) {
    for (int i = threadIdx.x; i < clear_count; i += blockDim.x) clear[i] = 0;
  }

  const size_t row = static_cast<size_t>(blockIdx.x) * k;
  const int vectors = k / 8;
  Vector8<T> in[kLayerNormVectorsPerThread], w[kLayerNormVectorsPerThread], b[kLayerNormVectorsPerThread];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kLayerNormVectorsPerThread; ++i) {
    const int v = threadIdx.x + i * blockDim.x;
    if (v >= vectors) continue;
    in[i] = load_vector(x + row + v * 8);
    w[i] = load_vector(weight + v * 8);
    if (bias != nullptr) b[i] = load_vector(bias + v * 8);
#pragma unroll
    for (int j = 0; j < 8; ++j) sum += to_float(in[i].v[j]);
  }
  const float mean = device::block_sum(sum, partials) / k;
  float squares = 0.f;
#pragma unroll
  for (int i = 0; i < kLayerNormVectorsPerThread; ++i) {
    if (threadIdx.x + i * blockDim.x >= vectors) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float d = to_float(in[i].v[j]) - mean;
      squares += d * d;
    }
  }
  const float rstd = rsqrtf(device::block_sum(squares, partials) / k + eps);
#pragma unroll
  for (int i = 0; i < kLayerNormVectorsPerThread; ++i) {
    const int v = threadIdx.x + i * blockDim.x;
    if (v >= vectors) continue;
    Vector8<T> normalized;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float shift = bias != nullptr ? to_float(b[i].v[j]) : 0.f;
      normalized.v[j] = device::from_float<T>((to_float(in[i].v[j]) - mean) * rstd * to_float(w[i].v[j]) + shift);
    }
    device::store_vector(out + row + v * 8, normalized);
  }
}

}  // namespace clusterfusion::layer_norm
