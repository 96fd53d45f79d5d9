// Operator schemas, the CPU reference implementation, the seed project's model
// entry points, and the Python module that loads them.
#include <ATen/ATen.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "dispatch/checks.h"
#include "dispatch/reference.h"

namespace clusterfusion {
namespace {

const std::initializer_list<at::ScalarType> kCpuDtypes = {at::kHalf, at::kBFloat16, at::kFloat};

at::Tensor mlp_down_residual_cpu(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                                 const at::Tensor& mlp_intermediate, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias) {
  check_mlp_down_residual_args(hidden_states, attn_output, mlp_intermediate, weight, bias);
  check_dtype_allowed(weight, kCpuDtypes, "CPU");
  return mlp_down_residual_reference(hidden_states, attn_output, mlp_intermediate, weight, bias);
}

std::string mlp_down_residual_unsupported_reason_cpu(const at::Tensor& weight) {
  return failure_message([&] { check_dtype_allowed(weight, kCpuDtypes, "CPU"); });
}

// The seed project's entry points: mlp_down_residual with the model's sizes enforced.
at::Tensor pythia_mlp_only(const char* name, int64_t hidden, int64_t ffn,
                           const at::Tensor& hidden_states, const at::Tensor& attn_output,
                           const at::Tensor& mlp_intermediate, const at::Tensor& mlp_down_weight,
                           const at::Tensor& mlp_down_bias) {
  TORCH_CHECK_VALUE(mlp_down_weight.dim() == 2 && mlp_down_weight.size(0) == hidden &&
                        mlp_down_weight.size(1) == ffn,
                    "clusterfusion.", name, ": argument 'mlp_down_weight' must have shape [",
                    hidden, ", ", ffn, "] ([hidden, ffn], HuggingFace's dense_4h_to_h.weight); got shape ",
                    mlp_down_weight.sizes());
  static const auto op = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("clusterfusion::mlp_down_residual", "")
                              .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, const std::optional<at::Tensor>&)>();
  return op.call(hidden_states, attn_output, mlp_intermediate, mlp_down_weight, mlp_down_bias);
}

}  // namespace

at::Tensor pythia_2b8_mlp_only(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                               const at::Tensor& mlp_intermediate, const at::Tensor& mlp_down_weight,
                               const at::Tensor& mlp_down_bias) {
  return pythia_mlp_only("pythia_2b8_mlp_only", 2560, 10240, hidden_states, attn_output,
                         mlp_intermediate, mlp_down_weight, mlp_down_bias);
}

at::Tensor pythia_6b9_mlp_only(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                               const at::Tensor& mlp_intermediate, const at::Tensor& mlp_down_weight,
                               const at::Tensor& mlp_down_bias) {
  return pythia_mlp_only("pythia_6b9_mlp_only", 4096, 16384, hidden_states, attn_output,
                         mlp_intermediate, mlp_down_weight, mlp_down_bias);
}

TORCH_LIBRARY(clusterfusion, m) {
  m.def(
      "mlp_down_residual(Tensor hidden_states, Tensor attn_output, Tensor mlp_intermediate, "
      "Tensor weight, Tensor? bias) -> Tensor");
  // Why the backend of weight's device would reject it (the message the op
  // would raise), or "" when it takes it.
  m.def("mlp_down_residual_unsupported_reason(Tensor weight) -> str");
  // Composite: they check the model's sizes and call mlp_down_residual.
  m.def(
      "pythia_2b8_mlp_only(Tensor hidden_states, Tensor attn_output, Tensor mlp_intermediate, "
      "Tensor mlp_down_weight, Tensor mlp_down_bias) -> Tensor",
      &pythia_2b8_mlp_only);
  m.def(
      "pythia_6b9_mlp_only(Tensor hidden_states, Tensor attn_output, Tensor mlp_intermediate, "
      "Tensor mlp_down_weight, Tensor mlp_down_bias) -> Tensor",
      &pythia_6b9_mlp_only);
}

TORCH_LIBRARY_IMPL(clusterfusion, CPU, m) {
  m.impl("mlp_down_residual", &mlp_down_residual_cpu);
  m.impl("mlp_down_residual_unsupported_reason", &mlp_down_residual_unsupported_reason_cpu);
}

}  // namespace clusterfusion

// Importing clusterfusion._C loads this library and so runs the registrations
// above. The ops are reached through torch.ops.clusterfusion; the module also
// carries the seed project's two entry points under their old names.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "clusterfusion CUDA/C++ extension (ops are registered under torch.ops.clusterfusion)";
  namespace py = pybind11;
  m.def("pythia_2b8_mlp_only", &clusterfusion::pythia_2b8_mlp_only, py::arg("hidden_states"),
        py::arg("attn_output"), py::arg("mlp_intermediate"), py::arg("mlp_down_weight"),
        py::arg("mlp_down_bias"),
        "hidden_states + attn_output + mlp_intermediate @ mlp_down_weight.T + mlp_down_bias for "
        "Pythia-2.8B (mlp_down_weight is [2560, 10240])");
  m.def("pythia_6b9_mlp_only", &clusterfusion::pythia_6b9_mlp_only, py::arg("hidden_states"),
        py::arg("attn_output"), py::arg("mlp_intermediate"), py::arg("mlp_down_weight"),
        py::arg("mlp_down_bias"),
        "hidden_states + attn_output + mlp_intermediate @ mlp_down_weight.T + mlp_down_bias for "
        "Pythia-6.9B (mlp_down_weight is [4096, 16384])");
}
