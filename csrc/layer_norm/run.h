// The LayerNorm kernel run from tensors, for the block ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace clusterfusion::layer_norm {

// out = layer_norm(x) * weight + bias over the last dimension, on the current
// stream. x: [m, k] contiguous and 16-byte aligned, k a multiple of 8 and at most
// max_features(); weight, bias: [k] of x's dtype (bias may be absent); out: like x.
// Checked by the caller. `clear`, if given, is an int32 tensor the kernel zeroes
// for a later kernel of the op (see launch.h).
void run(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& out,
         double eps, bool pdl, const std::optional<at::Tensor>& clear = std::nullopt);

}  // namespace clusterfusion::layer_norm
