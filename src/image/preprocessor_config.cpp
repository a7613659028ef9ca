// preprocessor_config.json: Hugging Face ViTImageProcessor settings, parsed, validated and written
// back. Unknown keys are ignored; a mistyped or out-of-range key is an Error naming it.
#include "vitmsn/preprocessor_config.hpp"

#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "base/file_util.hpp"
#include "base/json_error.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn {
namespace {

using nlohmann::json;

/// Largest accepted size or crop side in a config (Pillow has no limit; this keeps a typo in a
/// config from asking for a terabyte).
constexpr int kMaxSide = 1 << 16;

[[noreturn]] void bad_key(const std::string& source, const std::string& key, const std::string& problem) {
  throw Error(ErrorKind::kMalformed, source + ": key '" + key + "' " + problem);
}

std::string describe(const json& value) {
  // dump() recurses once per nesting level: a container of containers is described by its size,
  // or a hostile file nested a million levels deep overflows the stack.
  for (const json& item : value) {
    if (item.is_structured()) {
      return std::string(value.type_name()) + " of " + std::to_string(value.size()) + " nested values";
    }
  }
  std::string text = value.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return std::string(value.type_name()) + " " + text;
}

/// The value of `key`, or null when absent. HF writes null for unset options; null keeps the default.
const json& member(const json& object, const char* key) {
  static const json kNull;
  const auto it = object.find(key);
  return it == object.end() ? kNull : *it;
}

void read_bool(const json& object, const char* key, const std::string& source, bool* out) {
  const json& v = member(object, key);
  if (v.is_null()) return;
  if (!v.is_boolean()) bad_key(source, key, "must be true or false, got " + describe(v));
  *out = v.get<bool>();
}

/// True when the JSON integer `v` lies in [lo, hi] (non-negative literals are stored unsigned).
bool integer_in_range(const json& v, std::int64_t lo, std::int64_t hi) {
  if (v.is_number_unsigned()) {
    const std::uint64_t u = v.get<std::uint64_t>();
    return (lo <= 0 || u >= static_cast<std::uint64_t>(lo)) && u <= static_cast<std::uint64_t>(hi);
  }
  const std::int64_t i = v.get<std::int64_t>();
  return i >= lo && i <= hi;
}

int read_side(const json& v, const std::string& key, const std::string& source, int min_value) {
  if (!v.is_number_integer()) bad_key(source, key, "must be an integer, got " + describe(v));
  if (!integer_in_range(v, min_value, kMaxSide)) {
    bad_key(source, key,
            "must be between " + std::to_string(min_value) + " and " + std::to_string(kMaxSide) + ", got " + v.dump());
  }
  return v.get<int>();
}

/// `size` / `crop_size`: an integer (square) or {"height": h, "width": w}.
void read_height_width(const json& v, const std::string& key, const std::string& source, int* height, int* width) {
  if (v.is_number_integer()) {
    *height = *width = read_side(v, key, source, 1);
    return;
  }
  if (!v.is_object() || !v.contains("height") || !v.contains("width")) {
    bad_key(source, key, "must be an integer or an object with 'height' and 'width', got " + describe(v));
  }
  *height = read_side(v.at("height"), key + ".height", source, 1);
  *width = read_side(v.at("width"), key + ".width", source, 1);
}

double read_number(const json& v, const std::string& key, const std::string& source) {
  if (!v.is_number()) bad_key(source, key, "must be a number, got " + describe(v));
  const double d = v.get<double>();
  if (!std::isfinite(d)) bad_key(source, key, "must be finite, got " + v.dump());
  return d;
}

/// `image_mean` / `image_std`: three numbers, or one number (bare or in a list) for all channels.
std::array<double, 3> read_triplet(const json& v, const std::string& key, const std::string& source) {
  if (v.is_number()) {
    const double d = read_number(v, key, source);
    return {d, d, d};
  }
  if (!v.is_array() || (v.size() != 3 && v.size() != 1)) {
    bad_key(source, key, "must be a number or a list of 3 numbers, got " + describe(v));
  }
  std::array<double, 3> out{};
  for (std::size_t c = 0; c < 3; ++c) {
    const std::size_t i = v.size() == 1 ? 0 : c;
    out[c] = read_number(v[i], key + "[" + std::to_string(i) + "]", source);
  }
  return out;
}

}  // namespace

void validate_preprocessor_config(const PreprocessorConfig& c, const std::string& source) {
  auto side = [&](int value, const char* key, int min_value) {
    if (value < min_value || value > kMaxSide) {
      bad_key(source, key,
              "must be between " + std::to_string(min_value) + " and " + std::to_string(kMaxSide) + ", got " +
                  std::to_string(value));
    }
  };
  side(c.height, "size.height", 1);
  side(c.width, "size.width", 1);
  side(c.shortest_edge, "size.shortest_edge", 0);
  side(c.crop_height, "crop_size.height", 1);
  side(c.crop_width, "crop_size.width", 1);
  const int resample = static_cast<int>(c.resample);
  if (resample < 0 || resample > 5) {
    bad_key(source, "resample", "must be 0..5, got " + std::to_string(resample));
  }
  if (!std::isfinite(c.rescale_factor) || c.rescale_factor <= 0) {
    bad_key(source, "rescale_factor", "must be a finite number > 0");
  }
  for (int i = 0; i < 3; ++i) {
    if (!std::isfinite(c.image_mean[i])) bad_key(source, "image_mean", "must be finite");
    if (!std::isfinite(c.image_std[i]) || c.image_std[i] <= 0) {
      bad_key(source, "image_std", "must be finite and > 0, got " + std::to_string(c.image_std[i]));
    }
  }
}

PreprocessorConfig parse_preprocessor_config(const std::string& json_text, const std::string& source) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers like 1e400
    throw Error(ErrorKind::kMalformed, source + ": invalid JSON: " + detail::describe_json_error(e, json_text));
  }
  if (!root.is_object()) throw Error(ErrorKind::kMalformed, source + ": expected a JSON object, got " + describe(root));

  PreprocessorConfig c;
  read_bool(root, "do_resize", source, &c.do_resize);
  if (const json& size = member(root, "size"); !size.is_null()) {
    if (size.is_object() && size.contains("shortest_edge")) {
      if (size.contains("height") || size.contains("width")) {
        bad_key(source, "size", "has both 'shortest_edge' and 'height'/'width'");
      }
      if (size.contains("longest_edge") && !size.at("longest_edge").is_null()) {
        bad_key(source, "size", "with 'longest_edge' is not supported");
      }
      c.shortest_edge = read_side(size.at("shortest_edge"), "size.shortest_edge", source, 1);
    } else {
      read_height_width(size, "size", source, &c.height, &c.width);
      c.shortest_edge = 0;
    }
  }
  if (const json& v = member(root, "resample"); !v.is_null()) {
    if (!v.is_number_integer()) bad_key(source, "resample", "must be an integer, got " + describe(v));
    const bool in_range = integer_in_range(v, 0, 5);
    if (!in_range) {
      bad_key(source, "resample", "must be 0..5 (nearest, lanczos, bilinear, bicubic, box, hamming), got " + v.dump());
    }
    c.resample = static_cast<Resample>(v.get<int>());
  }
  read_bool(root, "do_center_crop", source, &c.do_center_crop);
  if (const json& v = member(root, "crop_size"); !v.is_null()) {
    read_height_width(v, "crop_size", source, &c.crop_height, &c.crop_width);
  }
  read_bool(root, "do_rescale", source, &c.do_rescale);
  if (const json& v = member(root, "rescale_factor"); !v.is_null()) {
    c.rescale_factor = read_number(v, "rescale_factor", source);
  }
  read_bool(root, "do_normalize", source, &c.do_normalize);
  if (const json& v = member(root, "image_mean"); !v.is_null()) {
    c.image_mean = read_triplet(v, "image_mean", source);
  }
  if (const json& v = member(root, "image_std"); !v.is_null()) {
    c.image_std = read_triplet(v, "image_std", source);
  }
  read_bool(root, "do_convert_rgb", source, &c.do_convert_rgb);
  validate_preprocessor_config(c, source);
  return c;
}

PreprocessorConfig read_preprocessor_config(const std::string& path) {
  // Missing, unreadable, a directory, larger than 1 MB: read_text_file throws naming the path.
  return parse_preprocessor_config(detail::read_text_file(path, 1u << 20), path);
}

std::string to_json(const PreprocessorConfig& c) {
  json j;  // object keys are sorted, as HF writes them (sort_keys=True)
  j["do_center_crop"] = c.do_center_crop;
  j["crop_size"] = {{"height", c.crop_height}, {"width", c.crop_width}};
  j["do_convert_rgb"] = c.do_convert_rgb;
  j["do_normalize"] = c.do_normalize;
  j["do_rescale"] = c.do_rescale;
  j["do_resize"] = c.do_resize;
  j["image_mean"] = {c.image_mean[0], c.image_mean[1], c.image_mean[2]};
  j["image_processor_type"] = "ViTImageProcessor";
  j["image_std"] = {c.image_std[0], c.image_std[1], c.image_std[2]};
  j["resample"] = static_cast<int>(c.resample);
  j["rescale_factor"] = c.rescale_factor;
  if (c.shortest_edge > 0) {
    j["size"] = {{"shortest_edge", c.shortest_edge}};
  } else {
    j["size"] = {{"height", c.height}, {"width", c.width}};
  }
  return j.dump(2) + "\n";
}

}  // namespace vitmsn
