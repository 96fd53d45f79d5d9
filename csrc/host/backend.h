// What the ops' CPU and CUDA backends share besides argument checks: the dtypes
// each computes in, the CPU backend's answers to the plan and support queries,
// and the registration of an op's three dispatcher entries.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "checks.h"

namespace clusterfusion {

// The CPU backends compute fp16 and bf16 in fp32 and round once.
inline const std::initializer_list<at::ScalarType> kCpuDtypes = {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble};
inline const std::initializer_list<at::ScalarType> kCudaDtypes = {at::kHalf, at::kBFloat16};

// The dtype a CPU backend computes a `dtype` op in.
inline at::ScalarType cpu_compute_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble ? dtype : at::kFloat;
}

// A CPU op's `_unsupported_reason`: only the weights' dtype can rule it out.
inline std::string cpu_unsupported_reason(const char* op, const char* arg, const at::Tensor& weight) {
  return failure_message([&] { check_dtype_allowed(op, arg, weight, kCpuDtypes, "CPU"); });
}

// A CPU op's `_plan`: there is nothing to plan.
[[noreturn]] inline void cpu_has_no_plan(const char* op, const char* arg, const at::Tensor& weight) {
  C10_THROW_ERROR(ValueError, c10::str(op, ": launch plans exist for CUDA weights only; argument '", arg, "' is on ",
                                       weight.device()));
}

// Registers a backend's kernels of op `name` and of its `name_unsupported_reason` and `name_plan` queries.
template <typename Kernel, typename Reason, typename Plan>
void impl_op(torch::Library& m, const std::string& name, Kernel kernel, Reason reason, Plan plan) {
  m.impl(name.c_str(), kernel);
  m.impl((name + "_unsupported_reason").c_str(), reason);
  m.impl((name + "_plan").c_str(), plan);
}

}  // namespace clusterfusion
