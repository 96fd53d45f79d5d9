// Operand preparation shared by the CUDA backends.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace clusterfusion {

// `t` contiguous and starting on a 16-byte boundary (TMA and 16-byte vector
// loads need it): `t` itself when it already is, else a copy.
inline at::Tensor contiguous_aligned(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0 ? c : c.clone();
}

}  // namespace clusterfusion
