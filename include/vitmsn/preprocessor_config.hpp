#pragma once
/// \file
/// The settings of Hugging Face's ViTImageProcessor, as in a `preprocessor_config.json`.

#include <array>
#include <string>

#include "vitmsn/export.hpp"

namespace vitmsn {

/// Pillow's resampling filters, with Pillow's / Hugging Face's integer codes.
enum class Resample { kNearest = 0, kLanczos = 1, kBilinear = 2, kBicubic = 3, kBox = 4, kHamming = 5 };

/// The settings of a `preprocessor_config.json`. Defaults are the model card's
/// (facebook/vit-msn-large-7): resize to 224x224 bilinear, rescale 1/255, ImageNet mean/std.
struct PreprocessorConfig {
  bool do_resize = true;
  int height = 224;       ///< target height when `shortest_edge == 0`
  int width = 224;        ///< target width when `shortest_edge == 0`
  int shortest_edge = 0;  ///< when > 0: resize so the shorter side has this length (aspect kept)
  Resample resample = Resample::kBilinear;
  bool do_center_crop = false;
  int crop_height = 224;
  int crop_width = 224;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean{0.485, 0.456, 0.406};
  std::array<double, 3> image_std{0.229, 0.224, 0.225};
  bool do_convert_rgb = true;
};

/// Parses the JSON text of a `preprocessor_config.json`. Unknown keys are ignored (HF writes null for
/// unset options: null keeps the default); keys of the wrong type or out of range throw Error naming
/// `source` and the key.
VITMSN_API PreprocessorConfig parse_preprocessor_config(const std::string& json_text, const std::string& source);

/// Reads a `preprocessor_config.json` file. \throws Error naming the file.
VITMSN_API PreprocessorConfig read_preprocessor_config(const std::string& path);

/// Checks the ranges parse_preprocessor_config() checks (sizes 1..65536, resample 0..5, a finite
/// rescale factor > 0, finite means, finite stds > 0). \throws Error naming `source` and the key.
VITMSN_API void validate_preprocessor_config(const PreprocessorConfig& config, const std::string& source);

/// Serialises a config to the JSON form Hugging Face writes (round-trips through parse).
VITMSN_API std::string to_json(const PreprocessorConfig& config);

}  // namespace vitmsn
