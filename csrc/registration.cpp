// The schema of every op (one block per op folder under ops/; each folder
// registers its own backends), and the Python module that loads them.
#include <torch/extension.h>
#include <torch/library.h>

#include "gemv/config.h"
#include "gemv/plan.h"
#include "host/device_model.h"
#include "ops/mlp_down_residual/original_entry_points.h"

TORCH_LIBRARY(clusterfusion, m) {
  // ops/mlp_down_residual: hidden_states + attn_output + mlp_intermediate @ weight.T + bias.
  // `plan` pins the launch plan ("auto" or "BLOCK_N:CLUSTER[:STAGES]"), `pdl`
  // allows programmatic dependent launch (it never changes the result; a pinned
  // plan splits the reduction differently and so may change its rounding).
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
  // ops/gpt_neox_layer: GPT-NeoX's parallel-residual decode layer for one new token,
  // hidden_states + attention_block(...) + mlp(layer_norm(hidden_states)), appending
  // this token's key and value to the caches: one launch of the layer kernel
  // (layer_plan "one_launch", where it serves), else the two block ops in turn.
  m.def(
      "gpt_neox_layer(Tensor hidden_states, Tensor attn_ln_weight, Tensor? attn_ln_bias, Tensor qkv_weight, "
      "Tensor? qkv_bias, Tensor dense_weight, Tensor? dense_bias, Tensor mlp_ln_weight, Tensor? mlp_ln_bias, "
      "Tensor up_weight, Tensor? up_bias, Tensor down_weight, Tensor? down_bias, Tensor cos, Tensor sin, "
      "Tensor(a!) key_cache, Tensor(b!) value_cache, Tensor cache_position, Tensor? attention_mask=None, "
      "float eps=1e-05, *, str layer_plan=\"auto\", str attention_plan=\"auto\", str block_plan=\"auto\", "
      "bool pdl=True) -> Tensor");
  m.def("gpt_neox_layer_plan(Tensor qkv_weight, Tensor up_weight, int heads) -> int[]");
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
  using namespace clusterfusion::mlp_down_residual;
  using clusterfusion::gemv::Tile;
  m.doc() = "clusterfusion CUDA/C++ extension (ops are registered under torch.ops.clusterfusion)";
  m.attr("MLP_DOWN_MAX_FUSED_M") = Tile::kMaxM;
  // The GPU targets this build has code for, e.g. "sm_90a/sm_120a".
  m.attr("CUDA_ARCHS") = clusterfusion::build_archs();
  // The ops' plan grammar, for clusterfusion.tuning to check a pin where it is set.
  m.def(
      "check_plan",
      [](const std::string& setting, const std::string& text) {
        constexpr const char* kCaller = "clusterfusion.tuning";
        try {
          if (setting == "plan") {
            clusterfusion::gemv::parse_plan(kCaller, text);
          } else if (setting == "block_plan") {
            clusterfusion::gemv::parse_plan_pair(kCaller, text, "UP", "DOWN", "block_plan");
          } else if (setting == "attention_plan") {
            clusterfusion::gemv::parse_plan_pair(kCaller, text, "QKV", "DENSE", "attention_plan");
          } else {
            throw py::value_error("check_plan: unknown setting '" + setting + "'");
          }
        } catch (const c10::ValueError& error) {
          throw py::value_error(error.what_without_backtrace());
        }
      },
      py::arg("setting"), py::arg("text"),
      "Raises ValueError unless `text` is a pin the ops accept for `setting` (plan, block_plan or attention_plan)");
  m.def("pythia_2b8_mlp_only", &pythia_2b8_mlp_only, py::arg("hidden_states"), py::arg("attn_output"),
        py::arg("mlp_intermediate"), py::arg("mlp_down_weight"), py::arg("mlp_down_bias"),
        "hidden_states + attn_output + mlp_intermediate @ mlp_down_weight.T + mlp_down_bias for "
        "Pythia-2.8B (mlp_down_weight is [2560, 10240])");
  m.def("pythia_6b9_mlp_only", &pythia_6b9_mlp_only, py::arg("hidden_states"), py::arg("attn_output"),
        py::arg("mlp_intermediate"), py::arg("mlp_down_weight"), py::arg("mlp_down_bias"),
        "hidden_states + attn_output + mlp_intermediate @ mlp_down_weight.T + mlp_down_bias for "
        "Pythia-6.9B (mlp_down_weight is [4096, 16384])");
}
