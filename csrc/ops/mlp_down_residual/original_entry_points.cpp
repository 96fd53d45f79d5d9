#include "original_entry_points.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include "op.h"

namespace clusterfusion::mlp_down_residual {
namespace {

at::Tensor pythia_mlp_only(const char* name, int64_t hidden, int64_t ffn, const at::Tensor& hidden_states,
                           const at::Tensor& attn_output, const at::Tensor& mlp_intermediate,
                           const at::Tensor& mlp_down_weight, const at::Tensor& mlp_down_bias) {
  TORCH_CHECK_VALUE(mlp_down_weight.dim() == 2 && mlp_down_weight.size(0) == hidden &&
                        mlp_down_weight.size(1) == ffn,
                    "clusterfusion.", name, ": argument 'mlp_down_weight' must have shape [", hidden, ", ", ffn,
                    "] ([hidden, ffn], HuggingFace's dense_4h_to_h.weight); got shape ", mlp_down_weight.sizes());
  return op_handle().call(hidden_states, attn_output, mlp_intermediate, mlp_down_weight, mlp_down_bias, "auto", true);
}

}  // namespace

at::Tensor pythia_2b8_mlp_only(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                               const at::Tensor& mlp_intermediate, const at::Tensor& mlp_down_weight,
                               const at::Tensor& mlp_down_bias) {
  return pythia_mlp_only("pythia_2b8_mlp_only", 2560, 10240, hidden_states, attn_output, mlp_intermediate,
                         mlp_down_weight, mlp_down_bias);
}

at::Tensor pythia_6b9_mlp_only(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                               const at::Tensor& mlp_intermediate, const at::Tensor& mlp_down_weight,
                               const at::Tensor& mlp_down_bias) {
  return pythia_mlp_only("pythia_6b9_mlp_only", 4096, 16384, hidden_states, attn_output, mlp_intermediate,
                         mlp_down_weight, mlp_down_bias);
}

// Composite: they check the model's sizes and call mlp_down_residual, whose
// backends and fake serve every device and torch.compile.
TORCH_LIBRARY_IMPL(clusterfusion, CompositeImplicitAutograd, m) {
  m.impl("pythia_2b8_mlp_only", &pythia_2b8_mlp_only);
  m.impl("pythia_6b9_mlp_only", &pythia_6b9_mlp_only);
}

}  // namespace clusterfusion::mlp_down_residual
