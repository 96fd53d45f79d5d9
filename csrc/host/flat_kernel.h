// Inside the project an op's arguments travel as one struct (its op.h writes the
// list once, in schema order); the dispatcher registers functions of the flat
// argument list. FlatKernel<Signature> turns a function of the struct into that
// flat function, and builds the Autograd kernel of ops whose gradients are their
// ATen composite's.
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>

#include <optional>

namespace clusterfusion {

inline bool needs_grad(const at::Tensor& t) { return t.requires_grad(); }
inline bool needs_grad(const std::optional<at::Tensor>& t) { return t.has_value() && t->requires_grad(); }
template <typename T>
bool needs_grad(const T&) {
  return false;
}

template <typename Signature>
struct FlatKernel;

template <typename R, typename... A>
struct FlatKernel<R(A...)> {
  using Handle = c10::TypedOperatorHandle<R(A...)>;

  // The dispatcher's kernel for `Fn`, a function of the op's argument struct.
  template <typename Args, R (*Fn)(const Args&)>
  static R of(A... args) {
    return Fn(Args{args...});
  }

  // The Autograd kernel: when a gradient is needed the op runs as `Composite`,
  // whose recorded ATen graph gives the gradients; otherwise it redispatches
  // below autograd (through `handle`) to the backend's fused kernels.
  template <typename Args, R (*Composite)(const Args&), const Handle& (*handle)()>
  static R autograd(A... args) {
    if (at::GradMode::is_enabled() && (needs_grad(args) || ...)) return Composite(Args{args...});
    at::AutoDispatchBelowADInplaceOrView guard;
    return handle().call(args...);
  }
};

}  // namespace clusterfusion
