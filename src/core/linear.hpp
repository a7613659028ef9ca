#pragma once
// A linear layer y = x·Wᵀ + b as the forward runs it: its weights prepared once, when the model is
// loaded, for the kernel that will read them, so that the forward neither packs weights nor branches
// on their dtype (model.cpp calls apply()). Internal.
//
// What prepare() makes of the stored weights (LinearWeight, maybe several stacked along the output:
// the query, key and value projections as one operand):
//   float32, compute f32  -> panels of the kernel table's micro-tile width (KernelTable::pack_panels),
//                            read by gemm_packed: the same bits as packing them on every call;
//                            the portable table (no panels) reads them as stored;
//   bf16 / f16, compute f32 -> used as stored, widened to float32 inside the GEMM on every call (the
//                            file stays half the size in memory);
//   any float type, compute bf16 -> bf16 panels (bf16::pack) for gemm_bf16;
//   int8                  -> used as stored (vitmsn-convert writes the int8 panel layout), gemm_int8
//                            with the outlier split;
//   parts of different storage types (a tensor widened at load) -> one Linear per part;
//   float32 stored as panels (vitmsn-convert --layout panels), compute f32, of this table's width
//                         -> read in place from the file by gemm_packed (nothing copied at load);
//                            another width, the portable table or bf16 compute: laid out [out, in]
//                            again at load and prepared as above.
// A `release` callback receives each stored weight that was copied into packed form: the model gives
// its pages back (file maps), so that resident memory holds the packed copy only.
#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include "core/weights.hpp"
#include "cpu/bf16_format.hpp"
#include "cpu/cpu.hpp"
#include "cpu/int8_reference.hpp"
#include "cpu/kernels.hpp"

namespace vitmsn::detail {

/// The arithmetic of the linear layers (LoadOptions::compute once resolved).
enum class LinearCompute { kF32, kBF16 };

class Linear {
 public:
  Linear() = default;

  /// Prepares `parts` (1 to 3 weights of K inputs each, stacked along the output in order) for
  /// `compute` on the kernels of `isa`; `threads` share the packing. bf16 compute of int8 weights is
  /// the caller's to refuse. `release` (may be empty) is called with each part whose stored values are
  /// no longer read.
  static Linear prepare(Isa isa, const std::vector<const LinearWeight*>& parts, LinearCompute compute, int threads,
                        const std::function<void(const LinearWeight&)>& release);

  /// y[M, N] = epilogue(x[M, K]·Wᵀ), N = out_features() (ep.bias covers all N columns). Safe to call
  /// from several threads at once (the outlier split's scratch is per calling thread).
  void apply(int M, const float* x, std::ptrdiff_t ldx, float* y, std::ptrdiff_t ldy, const Epilogue& ep,
             int threads) const;

  int out_features() const { return n_; }
  int in_features() const { return k_; }
  /// Bytes of weights this layer holds itself (packed copies); 0 when it reads the stored weights.
  std::size_t packed_bytes() const;
  /// True when apply() reads only what this layer holds (panels): the stored weights are not read
  /// after prepare(). False for panels read in place from the file.
  bool holds_its_weights() const;

  /// The activation scheme of an int8 layer (int8_reference.hpp): the default, or one it was chosen
  /// against, for tests that measure the difference. No effect on other layers. Not thread-safe
  /// with apply().
  void set_int8_scheme(const int8::Scheme& scheme);

 private:
  /// prepare() for weights stored as panels (LinearWeight::panel_width > 0).
  static Linear from_panels(Isa isa, const std::vector<const LinearWeight*>& parts, LinearCompute compute, int threads,
                            const std::function<void(const LinearWeight&)>& release);

  enum class Path { kNone, kPanels, kStored, kBF16, kInt8, kParts };
  Path path_ = Path::kNone;
  Isa isa_ = Isa::kPortable;
  int n_ = 0, k_ = 0;
  std::vector<const LinearWeight*> stored_;        // kStored, kInt8: the stored parts (same dtype, same rows)
  std::shared_ptr<float> panels_;                  // kPanels
  std::size_t panel_floats_ = 0;                   // kPanels: the floats it holds (0: the file's, in place)
  bool panels_in_file_ = false;                    // kPanels read in place from the file's map
  std::vector<std::shared_ptr<const void>> keep_;  // weights laid out again at load that stored_ reads
  bf16::Panels bf16_;                              // kBF16
  std::vector<Linear> parts_;                      // kParts: one per stored part, side by side along N
  int8::Scheme int8_scheme_;                       // kInt8
};

/// One encoder block's linear layers: q | k | v stacked, the attention output, fc1, fc2.
struct LayerLinears {
  Linear qkv, attention_output, intermediate, output;
};

}  // namespace vitmsn::detail
