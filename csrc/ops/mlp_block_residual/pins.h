// The block's `plan` argument: "auto", or "UP;DOWN" with each "auto" or
// "BLOCK_N:CLUSTER[:STAGES]" (the up and the down projection's plans).
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>

#include "checks.h"
#include "gemv/plan.h"

namespace clusterfusion::mlp_block {

struct Pins {
  gemv::PlanOverride up;
  gemv::PlanOverride down;
};

inline Pins parse_pins(c10::string_view text) {
  const std::string s(text.data(), text.size());
  if (s.empty() || s == "auto") return {};
  const size_t split = s.find(';');
  TORCH_CHECK_VALUE(split != std::string::npos, kOp,
                    ": argument 'plan' must be \"auto\" or \"UP;DOWN\", each \"auto\" or "
                    "\"BLOCK_N:CLUSTER[:STAGES]\" (the up and the down projection's plans); got \"",
                    s, "\"");
  return {gemv::parse_plan(kOp, s.substr(0, split), "plan (up)"),
          gemv::parse_plan(kOp, s.substr(split + 1), "plan (down)")};
}

}  // namespace clusterfusion::mlp_block
