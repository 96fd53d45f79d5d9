// The one-launch layer's plan on the host: which CTA does what (the same dealing
// as clusterfusion/_layer_plan.py, whose CPU interpreter is its reference), as
// the table of CtaWork the kernel reads. No torch headers.
#pragma once

#include <vector>

#include "layer_kernel.h"

namespace clusterfusion::gpt_neox_layer {

struct LayerShape {
  int hidden;
  int heads;
  int ffn;
  int head_dim() const { return hidden / heads; }
  // Weight elements each of `ctas` CTAs streams when the layer's are shared evenly.
  double fair_share(int ctas) const {
    return (4.0 * hidden * hidden + 2.0 * hidden * static_cast<double>(ffn)) / ctas;
  }
};

// The work of each of `ctas` CTAs (clusters of `cluster_size`): every cluster
// does at most one head (the caller checks heads <= ctas / cluster_size).
std::vector<CtaWork> deal(const LayerShape& shape, int ctas, int cluster_size);

}  // namespace clusterfusion::gpt_neox_layer
