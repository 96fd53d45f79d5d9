// The planner's cost model. Its constants are measured; docs/performance.md
// ("Choosing the launch plan") gives the measurements behind each.
#include "plan.h"

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <tuple>

#include "../host/plan_search.h"
#include "smem_layout.h"

namespace clusterfusion::gemv {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Loaded device-memory latency: an SM with fewer weight bytes in flight than its
// share of the bandwidth times this streams proportionally slower (Little's law).
constexpr double kLoadedLatencySeconds = 2.5e-6;

// The ring covers more than that: across a launch boundary a CTA starts with
// its whole ring in flight behind every other SM's requests.
constexpr double kRingCoverSeconds = 5e-6;

// Deeper rings of small stages were slower.
constexpr int kMaxPlannedStages = 16;

// Fixed cost of one pipeline stage whatever its size (barrier round trips, two
// TMA issues, the consumers' wait, fragment loads and MMA chain).
constexpr double kStageOverheadCycles = 300;

// How much of a CTA's streaming time its stages' fixed cost may take before it,
// not the memory, sets the pace.
constexpr double kOverlappableOverhead = 0.8;

// A CTA lets the next grid launch once this fraction of its chunks is left: the
// CTAs of one grid finish up to a fifth of their stream apart, and the next
// grid can take over the SMs that free up first only if it is already launched.
constexpr double kTriggerFractionLeft = 0.5;

struct Candidate {
  int cluster;
  int block_n;
};

// Modeled time: the longer of the busiest CTA's weight stream and its stages'
// fixed cost (see kOverlappableOverhead), times the waves of clusters. Ties go
// to the plan with less fixed cost.
struct PlanCost {
  double seconds = 0;
  double overhead_seconds = 0;
  bool operator<(const PlanCost& o) const {
    return seconds != o.seconds ? seconds < o.seconds : overhead_seconds < o.overhead_seconds;
  }
};

struct Scored {
  LaunchPlan plan;
  PlanCost cost;
};

// One CTA per SM, block_n outputs per cluster, the reduction split across the
// cluster. Only weight bytes count towards the stream: the input tiles come
// from L2, not from device memory.
class Traits {
 public:
  using Candidate = gemv::Candidate;
  using Scored = gemv::Scored;

  Traits(const KernelQueries& kernel, const DeviceModel& d, const Problem& p, const PlanOverride& pin)
      : kernel_(kernel), device_(d), problem_(p), pin_(pin), k_chunks_(ceil_div(p.k, Tile::kChunkK)) {
    const double sm_rate = d.sm_bytes_per_second();
    inflight_bytes_per_sm_ = sm_rate * kLoadedLatencySeconds;
    ring_bytes_per_sm_ = sm_rate * kRingCoverSeconds;
    stage_overhead_seconds_ = kStageOverheadCycles / d.sm_cycles_per_second;
  }

  // Exact ties go to the smaller cluster, then the wider tile (visit order).
  template <typename F>
  void for_each_candidate(F&& visit) const {
    const int widest = static_cast<int>(std::min<int64_t>(
        Tile::kMaxBlockN, ceil_div(problem_.n, Tile::kBlockNStep) * Tile::kBlockNStep));
    for (int cluster = 1; cluster <= Tile::kMaxClusterSize && cluster <= k_chunks_; ++cluster) {
      if (pin_.cluster != 0 && cluster != pin_.cluster) continue;
      for (int block_n = widest; block_n >= Tile::kMinBlockN; block_n -= Tile::kBlockNStep) {
        if (pin_.block_n != 0 && block_n != pin_.block_n) continue;
        visit(Candidate{cluster, block_n});
      }
    }
  }

  std::optional<Scored> evaluate(const Candidate& c) const {
    const int64_t chunks = ceil_div(k_chunks_, c.cluster);
    const double weight_tile = static_cast<double>(c.block_n) * Tile::kChunkBytes;
    int stages = pin_.stages;
    if (stages == 0) {
      const double wanted = std::ceil(ring_bytes_per_sm_ / weight_tile);
      stages = static_cast<int>(std::clamp<double>(wanted, Tile::kMinStages, kMaxPlannedStages));
    }
    auto bytes = [&](int s) { return SmemLayout(c.block_n, problem_.m_tiles, c.cluster, s).request_bytes(); };
    while (stages >= Tile::kMinStages && bytes(stages) > device_.smem_per_block_optin) --stages;
    if (stages < Tile::kMinStages) return std::nullopt;

    Scored s;
    LaunchPlan& plan = s.plan;
    plan.block_n = c.block_n;
    plan.cluster_size = c.cluster;
    plan.n_tiles = static_cast<int>(ceil_div(problem_.n, c.block_n));
    plan.chunks_per_cta = static_cast<int>(chunks);
    plan.stages = static_cast<int>(std::min<int64_t>(stages, chunks));
    plan.trigger_chunks_left = static_cast<int>(std::ceil(chunks * kTriggerFractionLeft));
    plan.threads = threads_for(c.block_n);
    // More than half an SM's shared memory: no other CTA of this kernel shares
    // the SM (two on one SM stream at about half speed and the grid waits for them).
    plan.smem_bytes = std::max(bytes(plan.stages), device_.smem_exclusive);
    int resident = 0;
    C10_CUDA_CHECK(kernel_.max_active_clusters(problem_.kind, problem_.m_tiles, c.cluster, plan.threads,
                                               plan.smem_bytes, &resident));
    if (resident <= 0) return std::nullopt;
    plan.resident_clusters = resident;

    // Little's law: an SM with fewer bytes in flight than the target streams
    // proportionally slower.
    const double starvation = std::max(1.0, inflight_bytes_per_sm_ / (weight_tile * plan.stages));
    // One cluster slot stays free for the next grid: when a grid takes every
    // slot, the next grid's last cluster can only start where this grid's last
    // one exits, and the lag carries over layer after layer.
    const int slots = std::max(1, resident - 1);
    const double waves = static_cast<double>(ceil_div(plan.n_tiles, slots));
    const double stream = chunks * weight_tile * starvation / device_.sm_bytes_per_second();
    const double overhead = chunks * stage_overhead_seconds_;
    s.cost.seconds = waves * std::max(stream, overhead / kOverlappableOverhead);
    s.cost.overhead_seconds = waves * overhead;
    return s;
  }

 private:
  KernelQueries kernel_;
  const DeviceModel& device_;
  Problem problem_;
  PlanOverride pin_;
  int64_t k_chunks_;
  double inflight_bytes_per_sm_ = 0;
  double ring_bytes_per_sm_ = 0;
  double stage_overhead_seconds_ = 0;
};

LaunchPlan choose_plan(const char* op, const KernelQueries& kernel, const DeviceModel& device,
                       const Problem& problem, const PlanOverride& pin) {
  check_device_supported(op, device, kernel.configure(problem.kind, problem.m_tiles, device.smem_per_block_optin));
  const std::optional<Scored> best = search_plan(Traits(kernel, device, problem, pin));
  TORCH_CHECK(best.has_value(), op, ": no launch configuration fits cuda:", device.index, " (",
              device.name, ", ", device.smem_per_block_optin, " bytes of shared memory per block)",
              pin.block_n != 0 ? " with the pinned plan" : "");
  return best->plan;
}

}  // namespace

bool PlanOverride::operator<(const PlanOverride& o) const {
  return std::tie(block_n, cluster, stages) < std::tie(o.block_n, o.cluster, o.stages);
}

PlanOverride parse_plan(const char* op, const std::string& text, const char* arg) {
  PlanOverride o;
  if (text.empty() || text == "auto") return o;
  // Digits and colons only, no colon last: sscanf alone would stop at trailing text ("184:8x").
  const bool plain = text.find_first_not_of("0123456789:") == std::string::npos && text.back() != ':';
  char tail = 0;
  const int fields = std::sscanf(text.c_str(), "%d:%d:%d%c", &o.block_n, &o.cluster, &o.stages, &tail);
  const bool ok = plain && (fields == 2 || fields == 3) && o.block_n % Tile::kBlockNStep == 0 &&
                  o.block_n >= Tile::kMinBlockN && o.block_n <= Tile::kMaxBlockN && o.cluster >= 1 &&
                  o.cluster <= Tile::kMaxClusterSize &&
                  (fields == 2 || (o.stages >= Tile::kMinStages && o.stages <= Tile::kMaxStages));
  TORCH_CHECK_VALUE(ok, op, ": argument '", arg, "' must be \"auto\" or \"BLOCK_N:CLUSTER[:STAGES]\" with BLOCK_N a "
                    "multiple of ", Tile::kBlockNStep, " in [", Tile::kMinBlockN, ", ", Tile::kMaxBlockN,
                    "], CLUSTER in [1, ", Tile::kMaxClusterSize, "] and STAGES in [", Tile::kMinStages, ", ",
                    Tile::kMaxStages, "]; got \"", text, "\"");
  if (fields == 2) o.stages = 0;
  return o;
}

PlanPair parse_plan_pair(const char* op, const std::string& text, const char* first, const char* second,
                         const char* arg) {
  if (text.empty() || text == "auto") return {};
  const size_t split = text.find(';');
  TORCH_CHECK_VALUE(split != std::string::npos, op, ": argument '", arg, "' must be \"auto\" or \"", first, ";",
                    second, "\", each \"auto\" or \"BLOCK_N:CLUSTER[:STAGES]\" (the two projections' plans); got \"",
                    text, "\"");
  auto part = [arg](std::string name) {  // "plan (up)" for "UP"
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    return std::string(arg) + " (" + name + ")";
  };
  const std::string first_arg = part(first);
  const std::string second_arg = part(second);
  return {parse_plan(op, text.substr(0, split), first_arg.c_str()),
          parse_plan(op, text.substr(split + 1), second_arg.c_str())};
}

const LaunchPlan& plan_for(const char* op, const KernelQueries& kernel, const DeviceModel& device,
                           const Problem& problem, const PlanOverride& pin) {
  using Key = std::tuple<const void*, int, int, int, int64_t, int64_t, PlanOverride>;
  static PlanCache<Key, LaunchPlan> cache;
  const Key key{reinterpret_cast<const void*>(kernel.configure), device.index, static_cast<int>(problem.kind),
                problem.m_tiles, problem.n, problem.k, pin};
  return cache.get(key, [&] { return choose_plan(op, kernel, device, problem, pin); });
}

}  // namespace clusterfusion::gemv
