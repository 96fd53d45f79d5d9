"""Turns a copy of the tree into the PDL diagnostic build (never on main): python3 apply.py COPY_ROOT.
CF_DIAG (comma-separated) picks, at run time:
  attn_pdl        the attention kernel launched as the QKV projection's programmatic dependent
  cluster_acquire the GEMV owner's inbox wait with .acquire.cluster instead of the default .acquire.cta
  skip_exit_wait  attention workers without work exit without waiting for the grid dependency
                  (the code before session 29; main now waits)
  snap_qkv        the QKV projection's output copied (stream order, after the attention kernel) to _C._diag_qkv()
  fence_wait      a __threadfence() (MEMBAR.SC.GPU + CCTL.IVALL: an L1 invalidation) right after the wait
  cg_qkv          this token's q, k, v read through L2 only (ld.global.cg) into shared memory after the wait
"""
import pathlib
import sys

root = pathlib.Path(sys.argv[1])

def edit(path, old, new, count=1):
    p = root / path
    s = p.read_text()
    assert s.count(old) >= 1, (path, old[:60])
    p.write_text(s.replace(old, new, count))

# --- flags on the host
edit("csrc/host/checks.h", "namespace clusterfusion {", '''#include <cstdlib>
#include <cstring>
namespace clusterfusion {
inline bool diag(const char* flag) {
  const char* v = std::getenv("CF_DIAG");
  return v != nullptr && std::strstr(v, flag) != nullptr;
}''')
# --- GEMV: inbox wait scope
edit("csrc/gemv/config.h", "  int trigger_chunks_left;  // chunks a CTA has left to consume when it lets the next grid launch\n",
     "  int trigger_chunks_left;  // chunks a CTA has left to consume when it lets the next grid launch\n  int diag_cluster_acquire;\n")
edit("csrc/gemv/operands.cpp", "  p.trigger_chunks_left = plan.trigger_chunks_left;\n",
     "  p.trigger_chunks_left = plan.trigger_chunks_left;\n  p.diag_cluster_acquire = diag(\"cluster_acquire\");\n")
edit("csrc/gemv/operands.cpp", '#include "operands.h"', '#include "operands.h"\n#include "../host/checks.h"')
edit("csrc/include/clusterfusion/device/mbarrier.cuh", "}  // namespace clusterfusion::device", '''
__device__ __forceinline__ void mbarrier_wait_cluster(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\\n"
      ".reg .pred done;\\n"
      "WAIT_%=:\\n"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\\n"
      "@!done bra WAIT_%=;\\n"
      "}\\n" ::"r"(smem_address(bar)),
      "r"(parity)
      : "memory");
}
}  // namespace clusterfusion::device''')
edit("csrc/include/clusterfusion/device/cluster_reduce.cuh",
     "  __device__ void wait() const { mbarrier_wait(barrier_, 0); }",
     "  __device__ void wait(bool cluster_scope) const { if (cluster_scope) mbarrier_wait_cluster(barrier_, 0); else mbarrier_wait(barrier_, 0); }")
edit("csrc/gemv/kernel.cuh", "  inbox.wait();", "  inbox.wait(p.diag_cluster_acquire != 0);")
# --- attention: PDL edge and early exits
edit("csrc/ops/attention_block/decode_attention.h", "  int workers;              // CTAs per head; worker w scores chunks w, w + workers, ...\n};",
     "  int workers;\n  int diag_skip_exit_wait;\n};")
edit("csrc/ops/attention_block/decode_attention.cuh", '''    device::grid_dependency_wait();
    device::grid_dependency_launch_dependents();
    return;''', '''    if (!p.diag_skip_exit_wait) device::grid_dependency_wait();
    device::grid_dependency_launch_dependents();
    return;''')
edit("csrc/ops/attention_block/decode_attention.cu",
     "return launch_kernel(dim3(p.heads, p.workers, 1), dim3(kChunk, 1, 1), false, stream,",
     "return launch_kernel(dim3(p.heads, p.workers, 1), dim3(kChunk, 1, 1), diag(\"attn_pdl\"), stream,")
edit("csrc/ops/attention_block/decode_attention.cu", '#include "decode_attention.cuh"',
     '#include "decode_attention.cuh"\n#include "../../host/checks.h"')
edit("csrc/ops/attention_block/cuda.cpp", "  params.terms.scale = ",
     "  params.diag_skip_exit_wait = diag(\"skip_exit_wait\");\n  params.terms.scale = ")
edit("csrc/ops/attention_block/cuda.cpp", '''  C10_CUDA_KERNEL_LAUNCH_CHECK();
  gemv::run_bias_projection(kOp, Activation::kNone, attn,''', '''  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (diag("snap_qkv")) diag_qkv() = qkv.clone();
  gemv::run_bias_projection(kOp, Activation::kNone, attn,''')
edit("csrc/ops/attention_block/cuda.cpp", "namespace clusterfusion::attention_block {\nnamespace {",
     "namespace clusterfusion::attention_block {\nat::Tensor& diag_qkv() { static at::Tensor t; return t; }\nnamespace {")
edit("csrc/registration.cpp", "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {",
     "namespace clusterfusion::attention_block { at::Tensor& diag_qkv(); }\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\n  m.def(\"_diag_qkv\", [] { return clusterfusion::attention_block::diag_qkv(); });")
edit("csrc/ops/attention_block/decode_attention.h", "  int diag_skip_exit_wait;\n", "  int diag_skip_exit_wait;\n  int diag_fence;\n  int diag_cg;\n")
edit("csrc/ops/attention_block/cuda.cpp", "  params.diag_skip_exit_wait = diag(\"skip_exit_wait\");\n",
     "  params.diag_skip_exit_wait = diag(\"skip_exit_wait\");\n  params.diag_fence = diag(\"fence_wait\");\n  params.diag_cg = diag(\"cg_qkv\");\n")
edit("csrc/ops/attention_block/decode_attention.cuh", '''  device::grid_dependency_launch_dependents();
  const T* qkv = static_cast<const T*>(p.qkv) + static_cast<size_t>(head) * 3 * kHeadDim;''', '''  device::grid_dependency_launch_dependents();
  if (p.diag_fence) __threadfence();
  const T* qkv = static_cast<const T*>(p.qkv) + static_cast<size_t>(head) * 3 * kHeadDim;
  __shared__ T diag_qkv[3 * kHeadDim];
  if (p.diag_cg) {
    const unsigned short* bits = reinterpret_cast<const unsigned short*>(qkv);
    for (int d = threadIdx.x; d < 3 * kHeadDim; d += blockDim.x) {
      const unsigned short b = __ldcg(bits + d);
      diag_qkv[d] = *reinterpret_cast<const T*>(&b);
    }
    __syncthreads();
    qkv = diag_qkv;
  }''')
print("diagnostic build applied to", root)
