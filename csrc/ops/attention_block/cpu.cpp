// CPU backend of clusterfusion::attention_block: the ATen reference (fp16 and
// bf16 computed in fp32, the caches written in their own dtype), so code built
// on the op runs and is testable without a GPU. A well-formed plan is accepted
// and ignored.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "../../host/flat_kernel.h"
#include "checks.h"
#include "gemv/plan.h"
#include "reference.h"

namespace clusterfusion::attention_block {
namespace {

const std::initializer_list<at::ScalarType> kCpuDtypes = {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble};

at::Tensor attention_block_cpu(const Args& a) {
  const Shape shape = check_args(a);
  gemv::parse_plan_pair(kOp, std::string(a.plan.data(), a.plan.size()), "QKV", "DENSE");
  check_dtype_allowed(kOp, "qkv_weight", a.qkv_weight, kCpuDtypes, "CPU");
  const at::ScalarType dtype = a.qkv_weight.scalar_type();
  return reference(a, shape, dtype == at::kFloat || dtype == at::kDouble ? dtype : at::kFloat);
}

std::string unsupported_reason_cpu(const at::Tensor& qkv_weight, const at::Tensor&, int64_t) {
  return failure_message([&] { check_dtype_allowed(kOp, "qkv_weight", qkv_weight, kCpuDtypes, "CPU"); });
}

std::vector<int64_t> plan_cpu(const at::Tensor& qkv_weight, const at::Tensor&, c10::string_view) {
  TORCH_CHECK_VALUE(false, kOp, ": launch plans exist for CUDA weights only; argument 'qkv_weight' is on ",
                    qkv_weight.device());
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CPU, m) {
  m.impl("attention_block", &FlatKernel<OpSignature>::of<Args, &attention_block_cpu>);
  m.impl("attention_block_unsupported_reason", &unsupported_reason_cpu);
  m.impl("attention_block_plan", &plan_cpu);
}

}  // namespace clusterfusion::attention_block
