// CUDA backend of clusterfusion::mlp_down_residual: argument checks, the launch
// plan chosen from the device's properties, cached tensor maps, and the launch
// on PyTorch's current stream (no host synchronization, no allocation besides
// the output, so it is safe inside CUDA-graph capture).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

#include "checks.h"
#include "reference.h"
#include "tensor_map.h"
#include "../kernels/mlp_down_residual.h"

#ifndef CLUSTERFUSION_CUDA_ARCHS
#define CLUSTERFUSION_CUDA_ARCHS unknown
#endif
#define CLUSTERFUSION_STRINGIFY_(x) #x
#define CLUSTERFUSION_STRINGIFY(x) CLUSTERFUSION_STRINGIFY_(x)

namespace clusterfusion {
namespace {

using mlp_down::LaunchPlan;
using mlp_down::ScalarKind;
using mlp_down::Tile;

constexpr const char* kOp = "clusterfusion.mlp_down_residual";
constexpr const char* kBuildArchs = CLUSTERFUSION_STRINGIFY(CLUSTERFUSION_CUDA_ARCHS);

bool env_flag(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return !(v[0] == '0' && v[1] == '\0');
}

// Programmatic dependent launch: on by default; CLUSTERFUSION_PDL=0 turns it off.
bool use_programmatic_launch() {
  static const bool enabled = env_flag("CLUSTERFUSION_PDL", true);
  return enabled;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Loaded device-memory latency: an SM with fewer weight bytes in flight than its
// share of the bandwidth times this streams proportionally slower (Little's law).
constexpr double kLoadedLatencySeconds = 2.5e-6;

// The ring is sized to cover more than that: across a launch boundary a CTA
// starts with its whole ring in flight and the queues are long. A per-CTA trace
// of 32-layer graphs (H200, M=1) put the first full stage 2-4 us after a CTA's
// start and griddepcontrol.wait's return 0.5-1.6 us after the previous grid's
// end. Same call: 2.8B 176:8 at 7 stages 14.9 us and 9 stages 14.8 us, against
// 15.0-15.1 at the 2.5 us depth (5 stages); 6.9B 64:2 at 16 or 24 stages 33.7 us
// against 34.0 at 12.
constexpr double kRingCoverSeconds = 5e-6;

// Past this depth, rings of small stages got slower: 2.8B 40:2 at 32 stages
// 17.1 us against 15.0 at 16 (H200, same call).
constexpr int kMaxPlannedStages = 16;

// Fixed cost of one pipeline stage whatever its size (barrier round trips, two
// TMA issues, the consumers' wait, fragment loads and MMA chain). Plans made of
// many small stages bottom out there: H200 (1.98 GHz), 2.8B as 24:1, 160 stages
// per CTA, 26.9 us; 6.9B as 32:1, 256 stages, 41.8 us: about 150 ns a stage.
constexpr double kStageOverheadCycles = 300;

// How much of a CTA's streaming time its stages' fixed cost may take before it,
// not the memory, sets the pace. H200: 6.9B 64:2, whose stages cost 0.67x its
// streaming time, was the fastest plan. 2.8B 40:2 (1.07x) ran at 15.1-15.6 us
// against 14.8 us for 176:8, but it stayed at 14.8-15.0 us with a quarter of
// the stages (docs/performance.md, v11c): the bound keeps the planner off a
// plan that is slower for other reasons too.
constexpr double kOverlappableOverhead = 0.8;

// When a CTA lets the next grid launch: once this fraction of its chunks is
// left to consume. CTAs of one grid finish up to a fifth of their stream apart
// (the SMs get unequal bandwidth), and the next grid's CTAs can take over the
// SMs that free up first only if that grid is already launched. Triggering
// after the last weight load (a ring's worth left) was too late for 6.9B 64:2:16
// (16 of 128 chunks left: 33.45 us; from 0.3 to 1.0 of them left: 32.8 us).
// Triggering at the start was too early for 2.8B 184:8:8 (14.12 us against
// 13.8-13.9 from 0.4 to 0.5 left): the next grid's first clusters then fill
// their rings while this grid ramps up, not while it drains. H200, M=1, same call,
// with the L2 promotion of the time (256 bytes; see tensor_map.cpp).
constexpr double kTriggerFractionLeft = 0.5;

// Rates of the device the planner works from.
struct DeviceRates {
  double peak_bytes_per_second;  // from the memory clock and bus width
  double sm_cycles_per_second;
};

DeviceRates device_rates(int device) {
  int memory_khz = 0;
  int bus_bits = 0;
  int sm_khz = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&memory_khz, cudaDevAttrMemoryClockRate, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_khz, cudaDevAttrClockRate, device));
  return {2.0 * memory_khz * 1e3 * bus_bits / 8.0,  // double data rate
          sm_khz * 1e3};
}

void check_device_supported(const at::Tensor& weight, ScalarKind kind, int mma_tiles,
                            size_t smem_limit) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(weight.device().index());
  TORCH_CHECK(prop->major >= 9, kOp, ": ", weight.device(), " (", prop->name,
              ") has compute capability ", prop->major, ".", prop->minor,
              "; the kernel needs TMA and thread-block clusters (9.0 or newer). This build "
              "targets: ", kBuildArchs);
  const cudaError_t err = mlp_down::configure_kernel(kind, mma_tiles, smem_limit);
  if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction) {
    (void)cudaGetLastError();
    TORCH_CHECK(false, kOp, ": this build of clusterfusion has no code for ", weight.device(), " (",
                prop->name, ", compute capability ", prop->major, ".", prop->minor,
                "); it targets ", kBuildArchs,
                ". Rebuild with CLUSTERFUSION_CUDA_ARCHS naming this GPU (e.g. \"", prop->major,
                prop->minor, "a\").");
  }
  C10_CUDA_CHECK(err);
}

// CLUSTERFUSION_PLAN="BLOCK_N:CLUSTER[:STAGES]" pins the launch plan (for tuning
// and benchmarking); unset, the planner below decides.
struct PlanOverride {
  int block_n = 0;
  int cluster = 0;
  int stages = 0;
};

const PlanOverride& plan_override() {
  static const PlanOverride parsed = [] {
    PlanOverride o;
    const char* v = std::getenv("CLUSTERFUSION_PLAN");
    if (v != nullptr && *v != '\0') {
      const int n = std::sscanf(v, "%d:%d:%d", &o.block_n, &o.cluster, &o.stages);
      TORCH_CHECK_VALUE(n >= 2 && o.block_n % Tile::kRowStep == 0 && o.block_n >= Tile::kMinBlockN &&
                            o.block_n <= Tile::kMaxBlockN && o.cluster >= 1 &&
                            o.cluster <= Tile::kMaxClusterSize &&
                            (n < 3 || (o.stages >= Tile::kMinStages && o.stages <= Tile::kMaxStages)),
                        "CLUSTERFUSION_PLAN must be BLOCK_N:CLUSTER[:STAGES] with BLOCK_N a multiple "
                        "of ", Tile::kRowStep, " in [", Tile::kMinBlockN, ", ", Tile::kMaxBlockN,
                        "], CLUSTER in [1, ", Tile::kMaxClusterSize, "] and STAGES in [",
                        Tile::kMinStages, ", ", Tile::kMaxStages, "]; got \"", v, "\"");
    }
    return o;
  }();
  return parsed;
}

// What the planner knows about the device and the problem.
struct PlanContext {
  ScalarKind kind;
  int mma_tiles;
  int64_t hidden;
  int64_t k_chunks;               // ceil(ffn / kChunkK)
  size_t smem_optin;              // shared memory one CTA may use
  size_t smem_exclusive;          // the least a CTA must ask for to keep its SM to itself
  double sm_bytes_per_second;     // an SM's share of the peak bandwidth
  double inflight_bytes_per_sm;   // Little's law: below this an SM streams slower
  double ring_bytes_per_sm;       // what the ring is sized for (kRingCoverSeconds)
  double stage_overhead_seconds;  // kStageOverheadCycles at the SM clock
  PlanOverride forced;
};

// Modeled time of a plan: the longer of its busiest CTA's weight stream and
// its stages' fixed cost (see kOverlappableOverhead), times the waves of
// clusters. Ties go to the plan with less fixed cost.
struct PlanCost {
  double seconds = 0;
  double overhead_seconds = 0;
  bool operator<(const PlanCost& o) const {
    return seconds != o.seconds ? seconds < o.seconds : overhead_seconds < o.overhead_seconds;
  }
};

// Lays out the problem with `cluster` CTAs per cluster, `block_n` rows per
// cluster and one CTA per multiprocessor. Returns false when that does not fit
// the device; otherwise fills the plan and its cost. Only weight bytes count
// towards the stream: the input tiles come from L2, not from device memory.
bool evaluate_plan(const PlanContext& c, int cluster, int block_n, LaunchPlan* plan, PlanCost* cost) {
  const int64_t chunks = ceil_div(c.k_chunks, cluster);
  const double weight_tile = static_cast<double>(block_n) * Tile::kChunkBytes;
  int stages = c.forced.stages;
  if (stages == 0) {
    const double wanted = std::ceil(c.ring_bytes_per_sm / weight_tile);
    stages = static_cast<int>(std::clamp<double>(wanted, Tile::kMinStages, kMaxPlannedStages));
  }
  while (stages >= Tile::kMinStages &&
         mlp_down::smem_bytes(block_n, c.mma_tiles, cluster, stages) > c.smem_optin) {
    --stages;
  }
  if (stages < Tile::kMinStages) return false;
  plan->block_n = block_n;
  plan->cluster_size = cluster;
  plan->row_tiles = static_cast<int>(ceil_div(c.hidden, block_n));
  plan->chunks_per_cta = static_cast<int>(chunks);
  plan->stages = static_cast<int>(std::min<int64_t>(stages, chunks));
  plan->trigger_chunks_left = static_cast<int>(std::ceil(chunks * kTriggerFractionLeft));
  plan->threads = 32 * (1 + mlp_down::consumer_warps(block_n));
  plan->smem_bytes = std::max(mlp_down::smem_bytes(block_n, c.mma_tiles, cluster, plan->stages),
                              c.smem_exclusive);
  int resident = 0;
  C10_CUDA_CHECK(mlp_down::max_active_clusters(c.kind, c.mma_tiles, cluster, plan->threads,
                                               plan->smem_bytes, &resident));
  if (resident <= 0) return false;
  plan->resident_clusters = resident;
  // Little's law again: an SM with fewer bytes in flight than the target
  // streams proportionally slower (H200, 6.9B, M=1: 2 stages of a 256-row tile
  // took 49.7 us, 3 stages 37.6 us).
  const double starvation = std::max(1.0, c.inflight_bytes_per_sm / (weight_tile * plan->stages));
  // One cluster slot stays free for the next grid. When a grid takes every
  // slot, the next grid's last cluster can only start where this grid's last
  // one exits, finishes last in turn, and the lag carries over layer after
  // layer (trace, H200, 2.8B 176:8, 15 of 15 slots: 1-3 clusters started
  // after the previous grid's end, about 1 us after the others, and one of
  // them finished last in 29 of 31 layers). Same call: 184:8:9 (14 slots,
  // 112 SMs) 13.8 us against 176:8:9 (15 slots, 120 SMs) 14.5-14.6 us.
  const int slots = std::max(1, resident - 1);
  const double waves = static_cast<double>(ceil_div(plan->row_tiles, slots));
  const double stream = chunks * weight_tile * starvation / c.sm_bytes_per_second;
  const double overhead = chunks * c.stage_overhead_seconds;
  cost->seconds = waves * std::max(stream, overhead / kOverlappableOverhead);
  cost->overhead_seconds = waves * overhead;
  return true;
}

// Picks block_n (weight rows per cluster), the cluster size (CTAs splitting the
// reduction) and the pipeline depth for one problem on one device, at the
// lowest cost of evaluate_plan.
//  * Residency is queried, not assumed, so the choice follows the SM count, the
//    GPC layout and the shared memory of the card.
//  * The ring holds the SM's share of the peak bandwidth for kRingCoverSeconds,
//    in at most kMaxPlannedStages stages and what shared memory allows. When two
//    CTAs shared an SM (v3, H100, 2.8B) deeper rings were slower (3 stages
//    21.5 us, 5 stages 23.8, 10 stages 25.3); with an SM per CTA they gain a
//    little (H200, see kRingCoverSeconds). The H100 has not run the latter.
//  * Every CTA asks for more than half a multiprocessor's shared memory, so no
//    other CTA of this kernel shares its SM. Otherwise the block scheduler packs
//    two CTAs onto the SMs that free up first (with programmatic dependent
//    launch, those of the next grid too); they stream at about half speed and
//    the grid waits for them. H200, M=1, same run: 2.8B 17.3 -> 14.5 us, 6.9B
//    37.0 -> 34.0 us. The next grid still launches early: its CTAs take over
//    each SM as soon as this grid's CTA leaves it.
//  * Tiles step by 8 rows, so the grid can cover the SMs that clusters of the
//    chosen size can occupy at once (the GPC layout decides how many), less
//    one cluster slot left to the next grid (see evaluate_plan).
LaunchPlan choose_plan(const at::Tensor& weight, ScalarKind kind, int mma_tiles, int64_t hidden,
                       int64_t ffn) {
  const int device = weight.device().index();
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device);
  PlanContext c{};
  c.kind = kind;
  c.mma_tiles = mma_tiles;
  c.hidden = hidden;
  c.k_chunks = ceil_div(ffn, Tile::kChunkK);
  c.smem_optin = prop->sharedMemPerBlockOptin;
  // Two CTAs fit on an SM when both requests plus the per-block reservation do.
  c.smem_exclusive = std::min<size_t>(
      c.smem_optin, prop->sharedMemPerMultiprocessor / 2 - prop->reservedSharedMemPerBlock + 1);
  const DeviceRates rates = device_rates(device);
  c.sm_bytes_per_second = rates.peak_bytes_per_second / prop->multiProcessorCount;
  c.inflight_bytes_per_sm = c.sm_bytes_per_second * kLoadedLatencySeconds;
  c.ring_bytes_per_sm = c.sm_bytes_per_second * kRingCoverSeconds;
  c.stage_overhead_seconds = kStageOverheadCycles / rates.sm_cycles_per_second;
  c.forced = plan_override();
  check_device_supported(weight, kind, mma_tiles, c.smem_optin);

  const int widest = static_cast<int>(
      std::min<int64_t>(Tile::kMaxBlockN, ceil_div(hidden, Tile::kRowStep) * Tile::kRowStep));
  LaunchPlan best;
  PlanCost best_cost;
  for (int cluster = 1; cluster <= Tile::kMaxClusterSize && cluster <= c.k_chunks; ++cluster) {
    if (c.forced.cluster != 0 && cluster != c.forced.cluster) continue;
    for (int block_n = widest; block_n >= Tile::kMinBlockN; block_n -= Tile::kRowStep) {
      if (c.forced.block_n != 0 && block_n != c.forced.block_n) continue;
      LaunchPlan plan;
      PlanCost cost;
      if (!evaluate_plan(c, cluster, block_n, &plan, &cost)) continue;
      // Exact ties go to the smaller cluster, then the wider tile (loop order).
      if (best.block_n == 0 || cost < best_cost) {
        best = plan;
        best_cost = cost;
      }
    }
  }
  TORCH_CHECK(best.block_n != 0, kOp, ": no launch configuration fits ", weight.device(), " (",
              prop->name, ", ", c.smem_optin, " bytes of shared memory per block)",
              c.forced.block_n != 0 ? " with CLUSTERFUSION_PLAN set" : "");
  if (env_flag("CLUSTERFUSION_VERBOSE", false)) {
    std::fprintf(stderr,
                 "[clusterfusion] %s: hidden=%lld ffn=%lld mma_tiles=%d -> block_n=%d cluster=%d "
                 "grid=(%d,%d) chunks/cta=%d stages=%d trigger_chunks_left=%d threads=%d smem=%zu "
                 "resident_clusters=%d modeled_us=%.1f\n",
                 prop->name, static_cast<long long>(hidden), static_cast<long long>(ffn), mma_tiles,
                 best.block_n, best.cluster_size, best.cluster_size, best.row_tiles,
                 best.chunks_per_cta, best.stages, best.trigger_chunks_left, best.threads, best.smem_bytes,
                 best.resident_clusters, best_cost.seconds * 1e6);
  }
  return best;
}

const LaunchPlan& plan_for(const at::Tensor& weight, ScalarKind kind, int mma_tiles, int64_t hidden,
                           int64_t ffn) {
  using Key = std::tuple<int, int, int, int64_t, int64_t>;
  static std::mutex mutex;
  static std::map<Key, LaunchPlan> plans;
  const Key key{weight.device().index(), static_cast<int>(kind), mma_tiles, hidden, ffn};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it == plans.end()) {
    it = plans.emplace(key, choose_plan(weight, kind, mma_tiles, hidden, ffn)).first;
  }
  return it->second;
}

void check_cuda_args(const at::Tensor& weight, int64_t ffn) {
  TORCH_CHECK_VALUE(weight.is_cuda(), kOp, ": argument 'weight' must be a CUDA tensor; got ",
                    weight.device());
  const int64_t elem = weight.element_size();
  TORCH_CHECK_VALUE(ffn % (16 / elem) == 0, kOp, ": ffn = weight.shape[1] must be a multiple of ",
                    16 / elem, " (16-byte rows for the Tensor Memory Accelerator); got ", ffn);
  TORCH_CHECK_VALUE(weight.stride(1) == 1, kOp,
                    ": argument 'weight' must have unit stride along ffn (dim 1); got strides ",
                    weight.strides(), ". Pass the weight as stored, not transposed.");
  TORCH_CHECK_VALUE((weight.stride(0) * elem) % 16 == 0, kOp,
                    ": argument 'weight' must have a row stride that is a multiple of 16 bytes; got ",
                    weight.stride(0) * elem, " bytes");
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(weight.data_ptr()) % 16 == 0, kOp,
                    ": argument 'weight' must start at a 16-byte aligned address; got ",
                    weight.data_ptr(), " (a view with an odd storage offset?)");
}

const std::initializer_list<at::ScalarType> kCudaDtypes = {at::kHalf, at::kBFloat16};

ScalarKind scalar_kind(const at::Tensor& weight) {
  return weight.scalar_type() == at::kHalf ? ScalarKind::kHalf : ScalarKind::kBFloat16;
}

// Everything the CUDA backend requires of the weight alone: dtype, layout, and
// a GPU this build has code for.
std::string mlp_down_residual_unsupported_reason_cuda(const at::Tensor& weight) {
  return failure_message([&] {
    TORCH_CHECK_VALUE(weight.dim() == 2, kOp, ": argument 'weight' must be 2-D [hidden, ffn]; got shape ",
                      weight.sizes());
    check_dtype_allowed(weight, kCudaDtypes, "CUDA");
    check_cuda_args(weight, weight.size(1));
    const c10::cuda::CUDAGuard guard(weight.device());
    check_device_supported(weight, scalar_kind(weight), 1,
                           at::cuda::getDeviceProperties(weight.device().index())->sharedMemPerBlockOptin);
  });
}

CUtensorMapDataType tma_dtype(ScalarKind kind) {
  return kind == ScalarKind::kHalf ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
}

at::Tensor mlp_down_residual_cuda(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                                  const at::Tensor& mlp_intermediate, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias) {
  const MlpDownShape shape =
      check_mlp_down_residual_args(hidden_states, attn_output, mlp_intermediate, weight, bias);
  check_dtype_allowed(weight, kCudaDtypes, "CUDA");
  check_cuda_args(weight, shape.ffn);
  const c10::cuda::CUDAGuard guard(weight.device());

  if (shape.rows > Tile::kMaxInputRows) {
    return mlp_down_residual_reference(hidden_states, attn_output, mlp_intermediate, weight, bias);
  }
  at::Tensor out = at::empty_like(hidden_states, at::MemoryFormat::Contiguous);
  if (shape.rows == 0) return out;

  const at::Tensor hidden = hidden_states.contiguous();
  const at::Tensor attn = attn_output.contiguous();
  at::Tensor x = mlp_intermediate.reshape({shape.rows, shape.ffn}).contiguous();
  if (reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0) x = x.clone();  // TMA needs 16-byte alignment
  const std::optional<at::Tensor> b =
      bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;

  const ScalarKind kind = scalar_kind(weight);
  const int mma_tiles = mlp_down::mma_tiles_for_rows(static_cast<int>(shape.rows));
  const LaunchPlan& plan = plan_for(weight, kind, mma_tiles, shape.hidden, shape.ffn);

  const int64_t elem = weight.element_size();
  const CUtensorMap weight_map = tiled_tensor_map(
      {weight.data_ptr(), tma_dtype(kind), static_cast<uint64_t>(shape.ffn),
       static_cast<uint64_t>(shape.hidden), static_cast<uint64_t>(weight.stride(0) * elem),
       Tile::kChunkK, static_cast<uint32_t>(plan.block_n), CU_TENSOR_MAP_SWIZZLE_128B});
  const CUtensorMap input_map = tiled_tensor_map(
      {x.data_ptr(), tma_dtype(kind), static_cast<uint64_t>(shape.ffn),
       static_cast<uint64_t>(shape.rows), static_cast<uint64_t>(shape.ffn * elem), Tile::kChunkK,
       static_cast<uint32_t>(mlp_down::input_rows_padded(mma_tiles)), CU_TENSOR_MAP_SWIZZLE_128B});

  mlp_down::Params params{};
  params.hidden_states = hidden.data_ptr();
  params.attn_output = attn.data_ptr();
  params.bias = b.has_value() ? b->data_ptr() : nullptr;
  params.out = out.data_ptr();
  params.rows = static_cast<int>(shape.rows);
  params.n = static_cast<int>(shape.hidden);
  params.k_chunks = static_cast<int>(ceil_div(shape.ffn, Tile::kChunkK));
  params.chunks_per_cta = plan.chunks_per_cta;
  params.block_n = plan.block_n;
  params.stages = plan.stages;
  params.trigger_chunks_left = plan.trigger_chunks_left;

  C10_CUDA_CHECK(mlp_down::launch(kind, mma_tiles, weight_map, input_map, params, plan,
                                  use_programmatic_launch(), at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CUDA, m) {
  m.impl("mlp_down_residual", &mlp_down_residual_cuda);
  m.impl("mlp_down_residual_unsupported_reason", &mlp_down_residual_unsupported_reason_cuda);
}

}  // namespace clusterfusion
