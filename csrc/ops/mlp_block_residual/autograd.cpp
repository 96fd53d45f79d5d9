// Autograd of clusterfusion::mlp_block_residual, for every backend: when a
// gradient is needed the op runs as its ATen composite (reference.h), whose
// recorded graph gives exactly the gradients of the HuggingFace block;
// otherwise it redispatches below autograd to the fused kernels.
#include <torch/library.h>

#include "../../host/flat_kernel.h"
#include "op.h"
#include "reference.h"

namespace clusterfusion::mlp_block_residual {

TORCH_LIBRARY_IMPL(clusterfusion, Autograd, m) {
  m.impl("mlp_block_residual", &FlatKernel<OpSignature>::autograd<Args, &composite, &op_handle>);
}

}  // namespace clusterfusion::mlp_block_residual
