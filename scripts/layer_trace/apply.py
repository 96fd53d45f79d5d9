"""Turns a copy of the tree into the layer kernel's trace build (never on main):
python3 apply.py COPY_ROOT. With CF_TRACE set, every CTA of the layer kernel writes
%globaltimer stamps (ns) at its phase boundaries into a [ctas, 16] int64 tensor that
_C._layer_trace() returns (the last launch's):

  consumer warps (thread 0), in the kernel's order: 0 start, 1 both LayerNorms done
  and the cluster started, 2 QKV tiles done (partials sent), 5 the ranks' q, k, v
  partials in, 6 attention merged, 7 dense tiles done, 3 GELU(up) done, 4 down tiles
  done, 8 partial sum published, 9 every CTA's partial in (the counter), 10 outputs
  written; producer: 14 start, 15 last weight tile issued.
"""
import pathlib
import sys

root = pathlib.Path(sys.argv[1])


def edit(path, old, new):
    p = root / path
    s = p.read_text()
    assert s.count(old) == 1, (path, old[:70], s.count(old))
    p.write_text(s.replace(old, new))


K = "csrc/ops/gpt_neox_layer/layer_kernel.cuh"
edit("csrc/ops/gpt_neox_layer/layer_kernel.h", "  float eps;\n};", "  float eps;\n  unsigned long long* trace;\n};")
edit(K, "  const int mlp_rows = w.mlp_end - w.mlp_begin;\n", '''  const int mlp_rows = w.mlp_end - w.mlp_begin;
  auto stamp = [&](int k) {
    if (p.trace == nullptr) return;
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    p.trace[cta * 16 + k] = t;
  };
''')
edit(K, "    if (lane == 0) produce(ring, items);", "    if (lane == 0) {\n      stamp(14);\n      produce(ring, items);\n      stamp(15);\n    }")
edit(K, "  const int thread = Consumers::thread();\n",
     "  const int thread = Consumers::thread();\n  auto mark = [&](int k) {\n    if (thread == 0) stamp(k);\n  };\n  mark(0);\n")
edit(K, "  cluster_wait();  // every peer has started: its barriers exist\n",
     "  cluster_wait();  // every peer has started: its barriers exist\n  mark(1);\n")
edit(K, "    send_to_cluster(qkv_slots, rank * kQkvRows + row, value, qkv_barrier, cluster_size);\n  });\n",
     "    send_to_cluster(qkv_slots, rank * kQkvRows + row, value, qkv_barrier, cluster_size);\n  });\n  mark(2);\n")
edit(K, "  Consumers::sync();  // the slice's GELU(up) is complete\n",
     "  Consumers::sync();  // the slice's GELU(up) is complete\n  mark(3);\n")
edit(K, "  gemv.run(items[3], mlp_input, [&](int row, float value) { partial[row] += value; });\n",
     "  gemv.run(items[3], mlp_input, [&](int row, float value) { partial[row] += value; });\n  mark(4);\n")
edit(K, "    mbarrier_wait(qkv_barrier, 0);\n", "    mbarrier_wait(qkv_barrier, 0);\n    mark(5);\n")
edit(K, "    Consumers::sync();  // the attention output is complete\n",
     "    Consumers::sync();  // the attention output is complete\n    mark(6);\n")
edit(K, "    Consumers::sync();  // the dense columns' partial sums are in\n",
     "    Consumers::sync();  // the dense columns' partial sums are in\n    mark(7);\n")
edit(K, "  const GridCounter counter(", "  mark(8);\n  const GridCounter counter(")
edit(K, "    counter.wait_all();\n", "    counter.wait_all();\n    stamp(9);\n")
edit(K, "  if (thread == 0) counter.leave();", "  if (thread == 0) {\n    counter.leave();\n    stamp(10);\n  }")
C = "csrc/ops/gpt_neox_layer/cuda.cpp"
edit(C, "namespace clusterfusion::gpt_neox_layer {\nnamespace {", '''#include <cstdlib>
namespace clusterfusion::gpt_neox_layer {
at::Tensor& layer_trace() {
  static at::Tensor t;
  return t;
}
namespace {
unsigned long long* trace_pointer(const at::Tensor& like, int ctas) {
  if (std::getenv("CF_TRACE") == nullptr) return nullptr;
  at::Tensor& t = layer_trace();
  if (!t.defined() || t.size(0) != ctas) t = at::zeros({ctas, 16}, like.options().dtype(at::kLong));
  return reinterpret_cast<unsigned long long*>(t.data_ptr<int64_t>());
}''')
edit(C, "  p.eps = static_cast<float>(a.eps);\n", "  p.eps = static_cast<float>(a.eps);\n  p.trace = trace_pointer(out, setup.ctas);\n")
edit("csrc/registration.cpp", "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {",
     "namespace clusterfusion::gpt_neox_layer { at::Tensor& layer_trace(); }\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\n"
     "  m.def(\"_layer_trace\", [] { return clusterfusion::gpt_neox_layer::layer_trace(); });")
print("trace build applied to", root)
