#include "core/model_files.hpp"

#include "base/file_util.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn::detail {

namespace {

// The weights file of `path` (see resolve_model_files).
std::string locate_weights(const std::string& path, Checkpoints accepted) {
  if (!is_directory(path)) {
    if (!is_regular_file(path)) throw Error(ErrorKind::kNotFound, path + ": no such model file or folder", path);
    return path;
  }
  const std::string safetensors = join_path(path, "model.safetensors");
  if (is_regular_file(safetensors)) return safetensors;
  const std::string bin = join_path(path, "pytorch_model.bin");
  if (is_regular_file(bin)) {
    if (accepted == Checkpoints::kSafetensorsOrTorch) return bin;
    throw Error(ErrorKind::kUnsupported,
                path + ": has pytorch_model.bin but no model.safetensors; convert it first: vitmsn-convert " + path +
                    " " + safetensors,
                bin);
  }
  throw Error(ErrorKind::kNotFound,
              path + (accepted == Checkpoints::kSafetensorsOrTorch
                          ? ": no model.safetensors or pytorch_model.bin in this folder"
                          : ": no model.safetensors in this folder"),
              path);
}

}  // namespace

ModelFiles resolve_model_files(const std::string& path, Checkpoints accepted, FileAccess access) {
  ModelFiles m;
  m.weights = locate_weights(path, accepted);
  const bool safetensors = accepted == Checkpoints::kSafetensors || detail::ends_with(m.weights, ".safetensors");
  if (safetensors) m.file = std::make_unique<SafetensorsFile>(SafetensorsFile::open(m.weights, {}, access));
  static const std::map<std::string, std::string> kNoMetadata;
  const auto& meta = m.file ? m.file->metadata() : kNoMetadata;
  const std::string dir = parent_dir(m.weights);

  const std::string config_json = join_path(dir, "config.json");
  if (auto it = meta.find("config"); it != meta.end()) {
    m.config = parse_config(it->second, m.weights + " (__metadata__ config)");
    m.config_source = m.weights + " (__metadata__)";
  } else if (is_regular_file(config_json)) {
    m.config = read_config(config_json);
    m.config_source = config_json;
  } else {
    throw Error(ErrorKind::kNotFound,
                m.weights +
                    ": no model config: no \"config\" entry in its __metadata__ and no config.json beside it (" +
                    config_json + ")",
                config_json);
  }

  const std::string pre_json = join_path(dir, "preprocessor_config.json");
  if (auto it = meta.find("preprocessor_config"); it != meta.end()) {
    m.preprocessor = parse_preprocessor_config(it->second, m.weights + " (__metadata__ preprocessor_config)");
    m.preprocessor_source = m.weights + " (__metadata__)";
  } else if (is_regular_file(pre_json)) {
    m.preprocessor = read_preprocessor_config(pre_json);
    m.preprocessor_source = pre_json;
  } else {
    m.preprocessor_source = "defaults (facebook/vit-msn-large-7's)";
  }
  return m;
}

}  // namespace vitmsn::detail
