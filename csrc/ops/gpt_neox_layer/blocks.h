// clusterfusion.gpt_neox_layer as its two block ops (attention_block, then
// mlp_block_residual with its output as attn_output), through the dispatcher:
// the CPU backend, the gradients (each block records its own) and the CUDA
// backend wherever the one-launch kernel does not serve.
#pragma once

#include <ATen/core/Tensor.h>

#include "op.h"

namespace clusterfusion::gpt_neox_layer {

// The layer's own checks: its plan and the LayerNorm parameters under its names,
// then the MLP block's arguments (before the attention block writes the caches,
// so a bad one leaves them as they were); the blocks check and name the rest.
void check_layer_args(const Args& a);

at::Tensor through_blocks(const Args& a);

}  // namespace clusterfusion::gpt_neox_layer
