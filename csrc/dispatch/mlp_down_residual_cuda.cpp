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

// Loaded device-memory latency assumed by the pipeline-depth rule (Little's law).
constexpr double kLoadedLatencySeconds = 2.5e-6;

// Bytes each multiprocessor should keep in flight to cover the memory latency
// at the device's peak bandwidth (from its memory clock and bus width).
double inflight_bytes_per_sm(int device, int sms) {
  int clock_khz = 0;
  int bus_bits = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device));
  const double peak_bytes_per_second = 2.0 * clock_khz * 1e3 * bus_bits / 8.0;  // double data rate
  return peak_bytes_per_second * kLoadedLatencySeconds / sms;
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
      TORCH_CHECK_VALUE(n >= 2 && o.block_n % Tile::kWarpRows == 0 && o.block_n >= Tile::kMinBlockN &&
                            o.block_n <= Tile::kMaxBlockN && o.cluster >= 1 &&
                            o.cluster <= Tile::kMaxClusterSize &&
                            (n < 3 || (o.stages >= Tile::kMinStages && o.stages <= Tile::kMaxStages)),
                        "CLUSTERFUSION_PLAN must be BLOCK_N:CLUSTER[:STAGES] with BLOCK_N a multiple "
                        "of ", Tile::kWarpRows, " in [", Tile::kMinBlockN, ", ", Tile::kMaxBlockN,
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
  int64_t k_chunks;             // ceil(ffn / kChunkK)
  int64_t sms;
  size_t smem_optin;            // shared memory one CTA may use
  size_t smem_budget;           // half a multiprocessor: room for the next grid
  double inflight_bytes_per_sm; // Little's law target
  PlanOverride forced;
};

// Lays out the problem with `cluster` CTAs per cluster and `block_n` rows per
// cluster. Returns false when that does not fit the device; otherwise fills the
// plan and its cost: the bytes the busiest multiprocessor moves into shared
// memory (weight and input tiles) times the waves of clusters the device holds
// at once, stretched when the ring cannot hold the Little's-law target.
bool evaluate_plan(const PlanContext& c, int cluster, int block_n, LaunchPlan* plan, double* cost) {
  const int64_t chunks = ceil_div(c.k_chunks, cluster);
  int stages = c.forced.stages != 0 ? c.forced.stages : Tile::kMaxStages;
  const size_t limit = c.forced.stages != 0 ? c.smem_optin : c.smem_budget;
  while (stages >= Tile::kMinStages &&
         mlp_down::smem_bytes(block_n, c.mma_tiles, cluster, stages) > limit) {
    --stages;
  }
  if (stages < Tile::kMinStages) return false;
  plan->block_n = block_n;
  plan->cluster_size = cluster;
  plan->row_tiles = static_cast<int>(ceil_div(c.hidden, block_n));
  plan->chunks_per_cta = static_cast<int>(chunks);
  plan->stages = static_cast<int>(std::min<int64_t>(stages, chunks));
  plan->threads = 32 * (1 + block_n / Tile::kWarpRows);
  plan->smem_bytes = mlp_down::smem_bytes(block_n, c.mma_tiles, cluster, plan->stages);
  int resident = 0;
  C10_CUDA_CHECK(mlp_down::max_active_clusters(c.kind, c.mma_tiles, cluster, plan->threads,
                                               plan->smem_bytes, &resident));
  if (resident <= 0) return false;
  const int64_t ctas = int64_t{plan->row_tiles} * cluster;
  const int64_t per_wave = std::min<int64_t>(ctas, int64_t{resident} * cluster);
  const size_t stage = mlp_down::stage_bytes(block_n, c.mma_tiles);
  const double per_sm_stage_bytes = static_cast<double>(ceil_div(per_wave, c.sms) * stage);
  if (c.forced.stages == 0) {  // shallower only frees shared memory: residency still holds
    const int wanted = static_cast<int>(std::ceil(c.inflight_bytes_per_sm / per_sm_stage_bytes));
    plan->stages = std::clamp(wanted, std::min(Tile::kMinStages, plan->stages), plan->stages);
    plan->smem_bytes = mlp_down::smem_bytes(block_n, c.mma_tiles, cluster, plan->stages);
  }
  // Little's law again: an SM with fewer bytes in flight than the target
  // streams proportionally slower (H200, 6.9B, M=1: 2 stages of a 256-row tile
  // took 49.7 us, 3 stages 37.6 us).
  const double starvation =
      std::max(1.0, c.inflight_bytes_per_sm / (per_sm_stage_bytes * plan->stages));
  *cost = static_cast<double>(ceil_div(plan->row_tiles, resident)) *
          static_cast<double>(ceil_div(per_wave, c.sms)) * static_cast<double>(chunks) *
          static_cast<double>(stage) * starvation;
  return true;
}

// Picks block_n (weight rows per cluster), the cluster size (CTAs splitting the
// reduction) and the pipeline depth for one problem on one device, at the
// lowest cost of evaluate_plan.
//  * Residency is queried, not assumed, so the choice follows the SM count, the
//    GPC layout and the shared memory of the card.
//  * The pipeline is only as deep as Little's law asks: bytes in flight per SM
//    of about peak bandwidth x loaded latency / SMs. Deeper rings were measured
//    slower (H100, 2.8B: 3 stages 21.5 us, 5 stages 23.8 us, 10 stages 25.3 us):
//    the extra requests only queue and stretch the tail.
//  * Shared memory per CTA stays within half a multiprocessor, so the next grid
//    in the stream (with programmatic dependent launch) can become resident
//    beside this one while it finishes.
LaunchPlan choose_plan(const at::Tensor& weight, ScalarKind kind, int mma_tiles, int64_t hidden,
                       int64_t ffn) {
  const int device = weight.device().index();
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device);
  PlanContext c{};
  c.kind = kind;
  c.mma_tiles = mma_tiles;
  c.hidden = hidden;
  c.k_chunks = ceil_div(ffn, Tile::kChunkK);
  c.sms = prop->multiProcessorCount;
  c.smem_optin = prop->sharedMemPerBlockOptin;
  c.smem_budget = std::min<size_t>(
      c.smem_optin, prop->sharedMemPerMultiprocessor / 2 - prop->reservedSharedMemPerBlock);
  c.inflight_bytes_per_sm = inflight_bytes_per_sm(device, c.sms);
  c.forced = plan_override();
  check_device_supported(weight, kind, mma_tiles, c.smem_optin);

  const int widest = static_cast<int>(
      std::min<int64_t>(Tile::kMaxBlockN, ceil_div(hidden, Tile::kWarpRows) * Tile::kWarpRows));
  LaunchPlan best;
  double best_cost = 0;
  for (int cluster = 1; cluster <= Tile::kMaxClusterSize && cluster <= c.k_chunks; ++cluster) {
    if (c.forced.cluster != 0 && cluster != c.forced.cluster) continue;
    for (int block_n = widest; block_n >= Tile::kMinBlockN; block_n -= Tile::kWarpRows) {
      if (c.forced.block_n != 0 && block_n != c.forced.block_n) continue;
      LaunchPlan plan;
      double cost = 0;
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
                 "grid=(%d,%d) chunks/cta=%d stages=%d threads=%d smem=%zu\n",
                 prop->name, static_cast<long long>(hidden), static_cast<long long>(ffn), mma_tiles,
                 best.block_n, best.cluster_size, best.cluster_size, best.row_tiles,
                 best.chunks_per_cta, best.stages, best.threads, best.smem_bytes);
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

CUtensorMapDataType tma_dtype(ScalarKind kind) {
  return kind == ScalarKind::kHalf ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
}

at::Tensor mlp_down_residual_cuda(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                                  const at::Tensor& mlp_intermediate, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias) {
  const MlpDownShape shape =
      check_mlp_down_residual_args(hidden_states, attn_output, mlp_intermediate, weight, bias);
  check_dtype_allowed(weight, {at::kHalf, at::kBFloat16}, "CUDA");
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

  const ScalarKind kind = weight.scalar_type() == at::kHalf ? ScalarKind::kHalf : ScalarKind::kBFloat16;
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

  C10_CUDA_CHECK(mlp_down::launch(kind, mma_tiles, weight_map, input_map, params, plan,
                                  use_programmatic_launch(), at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CUDA, m) { m.impl("mlp_down_residual", &mlp_down_residual_cuda); }

}  // namespace clusterfusion
