// The original ClusterFusionPlus-MLP entry points: mlp_down_residual with a
// Pythia model's sizes enforced, under the names and argument order that
// project used.
#pragma once

#include <ATen/core/Tensor.h>

namespace clusterfusion::mlp_down_residual {

at::Tensor pythia_2b8_mlp_only(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                               const at::Tensor& mlp_intermediate, const at::Tensor& mlp_down_weight,
                               const at::Tensor& mlp_down_bias);

at::Tensor pythia_6b9_mlp_only(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                               const at::Tensor& mlp_intermediate, const at::Tensor& mlp_down_weight,
                               const at::Tensor& mlp_down_bias);

}  // namespace clusterfusion::mlp_down_residual
