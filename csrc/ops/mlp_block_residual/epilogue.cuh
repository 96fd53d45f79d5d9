// The epilogue of the MLP block's up projection:
//   intermediate[m, n] = gelu(y[m, n] + bias[n]), the exact (erf) GELU, rounded once.
// No torch headers.
#pragma once

#include <cstddef>

#include "clusterfusion/device/numeric.cuh"

namespace clusterfusion::mlp_block {

template <typename T>
struct BiasGeluEpilogue {
  const T* bias;  // or nullptr
  T* out;         // [m, n]
  int n;

  __device__ float terms(int, int col) const { return bias != nullptr ? device::to_float(bias[col]) : 0.f; }

  __device__ void store(int m, int col, float value) const {
    const float gelu = 0.5f * value * (1.f + erff(value * 0.70710678118654752f));
    out[static_cast<size_t>(m) * n + col] = device::from_float<T>(gelu);
  }
};

}  // namespace clusterfusion::mlp_block
