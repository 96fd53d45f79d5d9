// The norm row stage: one row of k features normalized by a group of threads
// (LayerNorm with fp32 statistics: the mean, then the mean squared deviation,
// both from registers) and rounded once to T. Used by the LayerNorm kernel that
// opens each block op (a whole CTA) and by the layer kernel (its consumer warps).
// No torch headers.
#pragma once

#include "clusterfusion/device/numeric.cuh"
#include "clusterfusion/device/reduce.cuh"
#include "clusterfusion/device/vector.cuh"

namespace clusterfusion::stages {

// 16-byte vectors of eight 16-bit values each thread holds: a row of k features
// takes k / 8 vectors, at most kNormVectorsPerThread per thread of the group.
constexpr int kNormVectorsPerThread = 4;

// out = (x - mean) * rstd * weight + bias, rounded to T. x, weight, bias, out:
// 16-byte aligned, k a multiple of 8 and at most 8 * kNormVectorsPerThread *
// Group::threads(); bias may be null. `partials` holds one float per warp of the
// group plus one. Every thread of the group calls it.
template <typename T, typename Group = device::WholeBlock>
__device__ void layer_norm_row(const T* x, const T* weight, const T* bias, T* out, int k, float eps,
                               float* partials) {
  using device::load_vector;
  using device::to_float;
  using device::Vector8;
  const int vectors = k / 8;
  Vector8<T> in[kNormVectorsPerThread], w[kNormVectorsPerThread], b[kNormVectorsPerThread];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kNormVectorsPerThread; ++i) {
    const int v = Group::thread() + i * Group::threads();
    if (v >= vectors) continue;
    in[i] = load_vector(x + v * 8);
    w[i] = load_vector(weight + v * 8);
    if (bias != nullptr) b[i] = load_vector(bias + v * 8);
#pragma unroll
    for (int j = 0; j < 8; ++j) sum += to_float(in[i].v[j]);
  }
  const float mean = device::block_sum<Group>(sum, partials) / k;
  float squares = 0.f;
#pragma unroll
  for (int i = 0; i < kNormVectorsPerThread; ++i) {
    if (Group::thread() + i * Group::threads() >= vectors) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float d = to_float(in[i].v[j]) - mean;
      squares += d * d;
    }
  }
  const float rstd = rsqrtf(device::block_sum<Group>(squares, partials) / k + eps);
#pragma unroll
  for (int i = 0; i < kNormVectorsPerThread; ++i) {
    const int v = Group::thread() + i * Group::threads();
    if (v >= vectors) continue;
    Vector8<T> normalized;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float shift = bias != nullptr ? to_float(b[i].v[j]) : 0.f;
      normalized.v[j] = device::from_float<T>((to_float(in[i].v[j]) - mean) * rstd * to_float(w[i].v[j]) + shift);
    }
    device::store_vector(out + v * 8, normalized);
  }
}

}  // namespace clusterfusion::stages
