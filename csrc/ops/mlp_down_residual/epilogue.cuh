// The epilogue of the fused MLP-down + residual op:
//   out[m, n] = y[m, n] + bias[n] + attn_output[m, n] + hidden_states[m, n].
// No torch headers.
#pragma once

#include <cstddef>

#include "clusterfusion/device/numeric.cuh"

namespace clusterfusion::mlp_down_residual {

// bias + attn + hidden, read while the weights stream; the output written once.
template <typename T>
struct ResidualEpilogue {
  const T* hidden_states;
  const T* attn_output;
  const T* bias;  // or nullptr
  T* out;
  int n;

  __device__ float terms(int m, int col) const {
    const size_t at = static_cast<size_t>(m) * n + col;
    float r = bias != nullptr ? device::to_float(bias[col]) : 0.f;
    r += device::to_float(attn_output[at]);
    r += device::to_float(hidden_states[at]);
    return r;
  }

  __device__ void store(int m, int col, float value) const {
    out[static_cast<size_t>(m) * n + col] = device::from_float<T>(value);
  }
};

}  // namespace clusterfusion::mlp_down_residual
