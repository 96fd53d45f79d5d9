#include "run.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "../host/dtype.h"
#include "../host/tensors.h"
#include "launch.h"

namespace clusterfusion::layer_norm {

void run(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& out,
         double eps, bool pdl, const std::optional<at::Tensor>& clear) {
  const at::Tensor gamma = contiguous_aligned(weight);
  const std::optional<at::Tensor> beta =
      bias.has_value() ? std::optional<at::Tensor>(contiguous_aligned(*bias)) : std::nullopt;
  C10_CUDA_CHECK(launch(scalar_kind(x), x.data_ptr(), gamma.data_ptr(), beta.has_value() ? beta->data_ptr() : nullptr,
                        out.data_ptr(), static_cast<int>(x.size(0)), static_cast<int>(x.size(1)),
                        static_cast<float>(eps), clear.has_value() ? clear->data_ptr<int>() : nullptr,
                        clear.has_value() ? static_cast<int>(clear->numel()) : 0, pdl,
                        at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace clusterfusion::layer_norm
