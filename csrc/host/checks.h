// Argument checks shared by every op's backends. Each failure names the op and
// the argument, what it got and what it needs, and raises ValueError (shape,
// device, layout) or TypeError (dtype) in Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>

namespace clusterfusion {

// The message `check` raises, or "" when it passes: lets a backend say whether
// it would take an argument without running the op.
template <typename Check>
std::string failure_message(Check&& check) {
  try {
    check();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return {};
}

inline void check_dtype_allowed(const char* op, const char* arg, const at::Tensor& t,
                                std::initializer_list<at::ScalarType> allowed, const char* backend) {
  for (at::ScalarType s : allowed) {
    if (t.scalar_type() == s) return;
  }
  std::string names;
  for (at::ScalarType s : allowed) names += (names.empty() ? "" : ", ") + std::string(c10::toString(s));
  TORCH_CHECK_TYPE(false, op, ": argument '", arg, "' has dtype ", t.scalar_type(), "; the ", backend,
                   " implementation supports ", names);
}

// A named tensor argument; `tensor` may be null for an absent optional one.
using NamedTensor = std::pair<const char*, const at::Tensor*>;

// Every present tensor of `others` has the dtype and device of `like`.
inline void check_like(const char* op, const NamedTensor& like, std::initializer_list<NamedTensor> others) {
  const at::Tensor& ref = *like.second;
  for (const auto& [name, t] : others) {
    if (t == nullptr) continue;
    TORCH_CHECK_TYPE(t->scalar_type() == ref.scalar_type(), op, ": argument '", name, "' has dtype ",
                     t->scalar_type(), "; expected ", ref.scalar_type(), " like '", like.first, "'");
    TORCH_CHECK_VALUE(t->device() == ref.device(), op, ": argument '", name, "' is on ", t->device(),
                      "; expected ", ref.device(), " like '", like.first, "'");
  }
}

// The parallel residual's two operands: hidden_states [..., hidden] and
// attn_output of the same shape. `hidden_is` says where hidden comes from.
inline void check_residuals(const char* op, const at::Tensor& hidden_states, const at::Tensor& attn_output,
                            int64_t hidden, const char* hidden_is) {
  TORCH_CHECK_VALUE(hidden_states.dim() >= 1 && hidden_states.size(-1) == hidden, op,
                    ": argument 'hidden_states' must have shape [..., ", hidden, "] (hidden = ", hidden_is,
                    "); got shape ", hidden_states.sizes());
  TORCH_CHECK_VALUE(attn_output.sizes() == hidden_states.sizes(), op,
                    ": argument 'attn_output' must have the shape of hidden_states ", hidden_states.sizes(),
                    "; got shape ", attn_output.sizes());
}

// An optional 1-D operand (a LayerNorm vector, a bias) of `size` elements;
// `what` names the size in messages.
inline void check_vector(const char* op, const char* arg, const std::optional<at::Tensor>& t, int64_t size,
                         const char* what) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == size, op, ": argument '", arg, "' must have shape [", size, "] (",
                    what, "); got shape ", t->sizes());
}

// A 2-D operand the Tensor Memory Accelerator streams as stored: unit stride
// along its last dimension, rows that start on 16-byte boundaries.
inline void check_tma_streamable(const char* op, const char* arg, const at::Tensor& t,
                                 const char* inner_name) {
  const int64_t elem = t.element_size();
  TORCH_CHECK_VALUE(t.size(1) % (16 / elem) == 0, op, ": ", inner_name, " = ", arg,
                    ".shape[1] must be a multiple of ", 16 / elem,
                    " (16-byte rows for the Tensor Memory Accelerator); got ", t.size(1));
  TORCH_CHECK_VALUE(t.stride(1) == 1, op, ": argument '", arg, "' must have unit stride along ",
                    inner_name, " (dim 1); got strides ", t.strides(),
                    ". Pass the weight as stored, not transposed.");
  TORCH_CHECK_VALUE((t.stride(0) * elem) % 16 == 0, op, ": argument '", arg,
                    "' must have a row stride that is a multiple of 16 bytes; got ", t.stride(0) * elem,
                    " bytes");
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, op, ": argument '", arg,
                    "' must start at a 16-byte aligned address; got ", t.data_ptr(),
                    " (a view with an odd storage offset?)");
}

}  // namespace clusterfusion
