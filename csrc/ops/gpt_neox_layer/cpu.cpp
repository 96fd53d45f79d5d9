// CPU and Autograd kernels of clusterfusion.gpt_neox_layer: on the CPU, and
// whenever a gradient is needed, the layer is its two block ops (their CPU
// references and their recorded gradients).
#include <torch/library.h>

#include "../../host/backend.h"
#include "../../host/flat_kernel.h"
#include "blocks.h"
#include "op.h"

namespace clusterfusion::gpt_neox_layer {

namespace {

std::vector<int64_t> plan_cpu(const at::Tensor& qkv_weight, const at::Tensor&, int64_t) {
  cpu_has_no_plan(kOp, "qkv_weight", qkv_weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CPU, m) {
  m.impl("gpt_neox_layer", &FlatKernel<OpSignature>::of<Args, &through_blocks>);
  m.impl("gpt_neox_layer_plan", &plan_cpu);
}

TORCH_LIBRARY_IMPL(clusterfusion, Autograd, m) {
  m.impl("gpt_neox_layer", &FlatKernel<OpSignature>::autograd<Args, &through_blocks, &op_handle>);
}

}  // namespace clusterfusion::gpt_neox_layer
