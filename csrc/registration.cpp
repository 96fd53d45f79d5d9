// The schema of every op (one block per op folder under ops/; each folder
// registers its own backends), and the Python module that loads them.
#include <torch/extension.h>
#include <torch/library.h>

#include "gemv/config.h"
#include "ops/mlp_down_residual/seed.h"

TORCH_LIBRARY(clusterfusion, m) {
  // ops/mlp_down_residual: hidden_states + attn_output + mlp_intermediate @ weight.T + bias.
  // `plan` pins the launch plan ("auto" or "BLOCK_N:CLUSTER[:STAGES]"), `pdl`
  // allows programmatic dependent launch; neither changes the result.
  m.def(
      "mlp_down_residual(Tensor hidden_states, Tensor attn_output, Tensor mlp_intermediate, Tensor weight, "
      "Tensor? bias=None, *, str plan=\"auto\", bool pdl=True) -> Tensor");
  // Why the backend of weight's device would reject it (the message the op would raise), or "".
  m.def("mlp_down_residual_unsupported_reason(Tensor weight) -> str");
  // The launch plan the op uses for `m` tokens (see clusterfusion.mlp_down_residual_plan).
  m.def("mlp_down_residual_plan(Tensor weight, int m, *, str plan=\"auto\") -> int[]");
  // ops/mlp_block_residual: hidden_states + attn_output + down(gelu(up(layer_norm(hidden_states)))),
  // GPT-NeoX's parallel-residual MLP branch. `plan` pins both launch plans
  // ("auto" or "UP;DOWN", each "auto" or "BLOCK_N:CLUSTER[:STAGES]").
  m.def(
      "mlp_block_residual(Tensor hidden_states, Tensor attn_output, Tensor ln_weight, Tensor? ln_bias, "
      "Tensor up_weight, Tensor? up_bias, Tensor down_weight, Tensor? down_bias, float eps=1e-05, *, "
      "str plan=\"auto\", bool pdl=True) -> Tensor");
  m.def("mlp_block_residual_unsupported_reason(Tensor up_weight, Tensor down_weight) -> str");
  m.def("mlp_block_residual_plan(Tensor up_weight, Tensor down_weight, int m, *, str plan=\"auto\") -> int[]");
  // ops/attention_block: GPT-NeoX's attention branch for one new token (batch 1):
  // dense(attention(rotary(query_key_value(layer_norm(hidden_states))))) + dense_bias,
  // appending this token's key and value to the caches at cache_position (a
  // device scalar) and attending over positions 0..cache_position. `plan` pins
  // both launch plans ("auto" or "QKV;DENSE").
  m.def(
      "attention_block(Tensor hidden_states, Tensor ln_weight, Tensor? ln_bias, Tensor qkv_weight, "
      "Tensor? qkv_bias, Tensor dense_weight, Tensor? dense_bias, Tensor cos, Tensor sin, Tensor(a!) key_cache, "
      "Tensor(b!) value_cache, Tensor cache_position, Tensor? attention_mask=None, float eps=1e-05, *, "
      "str plan=\"auto\", bool pdl=True) -> Tensor");
  m.def("attention_block_unsupported_reason(Tensor qkv_weight, Tensor dense_weight, int head_dim) -> str");
  m.def("attention_block_plan(Tensor qkv_weight, Tensor dense_weight, *, str plan=\"auto\") -> int[]");
  // ops/sample_tokens: one token per row of logits [..., vocab]: temperature, the
  // kept prefix of the ranking (top_k tokens or top_p of the probability), then
  // the kept token where the running probability passes uniform (see rules.h).
  // Every setting holds one value or one per row, read on the device.
  m.def("sample_tokens(Tensor logits, Tensor uniform, Tensor temperature, Tensor top_k, Tensor top_p) -> Tensor");
  // The original project's entry points (composite).
  m.def(
      "pythia_2b8_mlp_only(Tensor hidden_states, Tensor attn_output, Tensor mlp_intermediate, "
      "Tensor mlp_down_weight, Tensor mlp_down_bias) -> Tensor");
  m.def(
      "pythia_6b9_mlp_only(Tensor hidden_states, Tensor attn_output, Tensor mlp_intermediate, "
      "Tensor mlp_down_weight, Tensor mlp_down_bias) -> Tensor");
}

// Importing clusterfusion._C loads this library and so runs every registration.
// The ops are reached through torch.ops.clusterfusion; the module also carries
// the original project's two entry points under their old names and the
// kernels' limits.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  using namespace clusterfusion::mlp_down;
  using clusterfusion::gemv::Tile;
  m.doc() = "clusterfusion CUDA/C++ extension (ops are registered under torch.ops.clusterfusion)";
  m.attr("MLP_DOWN_MAX_FUSED_M") = Tile::kMaxM;
  m.def("pythia_2b8_mlp_only", &pythia_2b8_mlp_only, py::arg("hidden_states"), py::arg("attn_output"),
        py::arg("mlp_intermediate"), py::arg("mlp_down_weight"), py::arg("mlp_down_bias"),
        "hidden_states + attn_output + mlp_intermediate @ mlp_down_weight.T + mlp_down_bias for "
        "Pythia-2.8B (mlp_down_weight is [2560, 10240])");
  m.def("pythia_6b9_mlp_only", &pythia_6b9_mlp_only, py::arg("hidden_states"), py::arg("attn_output"),
        py::arg("mlp_intermediate"), py::arg("mlp_down_weight"), py::arg("mlp_down_bias"),
        "hidden_states + attn_output + mlp_intermediate @ mlp_down_weight.T + mlp_down_bias for "
        "Pythia-6.9B (mlp_down_weight is [4096, 16384])");
}
