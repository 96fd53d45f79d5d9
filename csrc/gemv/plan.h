// Launch planning of the split-K GEMV kernel: the plan is chosen from the
// device's properties, the problem's sizes and what the op asks of the layout,
// or pinned by the caller.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "../host/device_model.h"
#include "config.h"

namespace clusterfusion::gemv {

// A caller's pin: "BLOCK_N:CLUSTER[:STAGES]" (zeros leave the planner free).
struct PlanOverride {
  int block_n = 0;
  int cluster = 0;
  int stages = 0;
  bool operator<(const PlanOverride& o) const;
};

// Parses one plan ("" or "auto": no pin). Raises ValueError naming `arg`.
PlanOverride parse_plan(const char* op, const std::string& text, const char* arg = "plan");

// The plans of an op's two projections: "auto", or "FIRST;SECOND" with each a
// plan as parse_plan takes it (`first`, `second`: the projections' names in messages,
// `arg` the argument's).
struct PlanPair {
  PlanOverride first;
  PlanOverride second;
};
PlanPair parse_plan_pair(const char* op, const std::string& text, const char* first, const char* second,
                         const char* arg = "plan");

// What the planner asks of one epilogue's instantiations of the kernel (gemv::Kernels<E>::queries()).
struct KernelQueries {
  // Lets the instantiation for (kind, m_tiles) use `smem_bytes` of dynamic shared memory.
  cudaError_t (*configure)(ScalarKind kind, int m_tiles, size_t smem_bytes);
  // How many clusters of it the current device holds at once.
  cudaError_t (*max_active_clusters)(ScalarKind kind, int m_tiles, int cluster_size, int threads,
                                     size_t smem_bytes, int* clusters);
};

struct Problem {
  ScalarKind kind;
  int m_tiles;
  int64_t n;  // outputs
  int64_t k;  // reduction
};

// The plan for `problem` on `device`, from the process-wide cache. Raises
// RuntimeError when the device cannot run the kernel or no layout fits it.
const LaunchPlan& plan_for(const char* op, const KernelQueries& kernel, const DeviceModel& device,
                           const Problem& problem, const PlanOverride& pin);

}  // namespace clusterfusion::gemv
