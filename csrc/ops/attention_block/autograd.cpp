// Autograd of clusterfusion::attention_block, for every backend: when a gradient
// is needed the op runs as its ATen composite (reference.h, which reads the
// position on the host), whose recorded graph gives HuggingFace's gradients;
// otherwise it redispatches below autograd to the fused kernels.
#include <torch/library.h>

#include "../../host/flat_kernel.h"
#include "op.h"
#include "reference.h"

namespace clusterfusion::attention_block {

TORCH_LIBRARY_IMPL(clusterfusion, Autograd, m) {
  m.impl("attention_block", &FlatKernel<OpSignature>::autograd<Args, &composite, &op_handle>);
}

}  // namespace clusterfusion::attention_block
