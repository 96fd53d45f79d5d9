// What the attention worker stage needs to rotate and score besides the caches,
// shared by host and device code (a plain struct; no torch headers).
#pragma once

namespace clusterfusion::stages {

enum class MaskKind : int {
  kNone,      // attend to every position 0..position
  kBool,      // true: attend
  kAdditive,  // added to the scaled score, in the element type
  kFloat,     // added to the scaled score, fp32
};

// What rotating and scoring need besides the caches. Element pointers are of the
// op's element type T (fp16 or bf16) unless the mask is kBool or kFloat.
struct AttentionTerms {
  const void* cos;   // [rotary_dims], for this token's position
  const void* sin;   // [rotary_dims]
  const void* mask;  // [max_len] or nullptr (mask_kind kNone)
  MaskKind mask_kind;
  int rotary_dims;   // even, in [2, head_dim]
  float scale;
};

}  // namespace clusterfusion::stages
