// Launch planning of the fused MLP-down + residual kernel: the plan is chosen
// from the device's properties and the problem's sizes, or pinned by the caller.
#pragma once

#include <cstdint>
#include <string>

#include "../../host/device_model.h"
#include "config.h"

namespace clusterfusion::mlp_down {

// A caller's pin: "BLOCK_N:CLUSTER[:STAGES]" (zeros leave the planner free).
struct PlanOverride {
  int block_n = 0;
  int cluster = 0;
  int stages = 0;
  bool operator<(const PlanOverride& o) const;
};

// Parses the `plan` argument ("" or "auto": no pin). Raises ValueError naming it.
PlanOverride parse_plan(const char* op, const std::string& text);

struct Problem {
  ScalarKind kind;
  int m_tiles;
  int64_t n;  // outputs
  int64_t k;  // reduction
};

// The plan for `problem` on `device`, from the process-wide cache. Raises
// RuntimeError when the device cannot run the kernel or no layout fits it.
const LaunchPlan& plan_for(const char* op, const DeviceModel& device, const Problem& problem,
                           const PlanOverride& pin);

}  // namespace clusterfusion::mlp_down
