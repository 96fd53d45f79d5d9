#include "bias_projection.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "../host/device_model.h"
#include "../host/dtype.h"
#include "operands.h"

namespace clusterfusion::gemv {

const LaunchPlan& projection_plan(const char* op, Activation activation, const at::Tensor& weight, int64_t m,
                                  const PlanOverride& pin) {
  const Problem problem{scalar_kind(weight), m_tiles_for(static_cast<int>(m)), weight.size(0), weight.size(1)};
  return plan_for(op, bias_projection_queries(activation), device_model(weight.device().index()), problem, pin);
}

void run_bias_projection(const char* op, Activation activation, const at::Tensor& x, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, const at::Tensor& out, const PlanOverride& pin,
                         bool pdl) {
  const int64_t m = x.size(0);
  const LaunchPlan& plan = projection_plan(op, activation, weight, m, pin);
  const BiasProjectionArgs args{bias.has_value() ? bias->data_ptr() : nullptr, out.data_ptr()};
  C10_CUDA_CHECK(launch_bias_projection(activation, scalar_kind(weight), m_tiles_for(static_cast<int>(m)),
                                        weight_tensor_map(weight, plan), input_tensor_map(x),
                                        params_for(m, weight.size(0), weight.size(1), plan), args, plan, pdl,
                                        at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace clusterfusion::gemv
