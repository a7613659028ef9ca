#pragma once
// Where a model's pieces come from: one function, used by Model::load and convert_checkpoint, turns a
// model path into its weights file, its config and its preprocessor settings with one precedence.
#include <memory>
#include <string>

#include "vitmsn/config.hpp"
#include "vitmsn/preprocessor_config.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn::detail {

/// Which checkpoint formats the caller reads.
enum class Checkpoints {
  kSafetensors,         ///< Model::load: the weights must be safetensors
  kSafetensorsOrTorch,  ///< the converter: pytorch_model.bin (torch.save zip) too
};

/// A model path resolved.
struct ModelFiles {
  std::string weights;                    ///< the checkpoint file
  std::unique_ptr<SafetensorsFile> file;  ///< `weights` opened, when it is safetensors (else null)
  Config config;
  std::string config_source;  ///< "<weights> (__metadata__)" or the config.json path
  PreprocessorConfig preprocessor;
  std::string preprocessor_source;  ///< as config_source, or "defaults (facebook/vit-msn-large-7's)"
};

/// Resolves `path`, a model folder or a weights file:
///  - weights: a folder's model.safetensors (kSafetensorsOrTorch: else its pytorch_model.bin); a file
///    is the weights itself (kSafetensorsOrTorch: read as torch.save unless it ends in .safetensors).
///  - config, in this order: the weights file's own `__metadata__` "config" entry (a converted single
///    file describes itself), else `config.json` in the weights file's folder, else an Error.
///  - preprocessor settings, in the same order: `__metadata__` "preprocessor_config", else
///    `preprocessor_config.json` in that folder, else the defaults (facebook/vit-msn-large-7's).
/// \throws Error naming the path: no such file or folder, no weights in a folder (for kSafetensors a
/// folder with only pytorch_model.bin is told to convert it), no config, or a file that fails to parse.
/// `access`: how a safetensors weights file is opened (FileAccess::kCopy: LoadOptions::copy_weights).
ModelFiles resolve_model_files(const std::string& path, Checkpoints accepted, FileAccess access = FileAccess::kMap);

}  // namespace vitmsn::detail
