// The epilogue of a plain projection: out[m, n] = activation(y[m, n] + bias[n]),
// rounded once. No torch headers.
#pragma once

#include <cstddef>

#include "clusterfusion/device/numeric.cuh"
#include "bias_projection_kernels.h"

namespace clusterfusion::gemv {

template <Activation kActivation>
__device__ __forceinline__ float activate(float value) {
  if constexpr (kActivation == Activation::kExactGelu) {
    return 0.5f * value * (1.f + erff(value * 0.70710678118654752f));
  } else {
    return value;
  }
}

template <Activation kActivation>
struct BiasEpilogueOf {
  template <typename T>
  struct Epilogue {
    const T* bias;  // or nullptr
    T* out;         // [m, n]
    int n;

    __device__ float terms(int, int col) const { return bias != nullptr ? device::to_float(bias[col]) : 0.f; }

    __device__ void store(int m, int col, float value) const {
      out[static_cast<size_t>(m) * n + col] = device::from_float<T>(activate<kActivation>(value));
    }
  };
};

}  // namespace clusterfusion::gemv
