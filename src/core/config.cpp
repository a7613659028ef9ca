#include "vitmsn/config.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "base/file_util.hpp"
#include "base/json_error.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn {

namespace {

using nlohmann::json;

int get_int(const json& j, const char* key, int fallback, bool required, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (required) throw Error(ErrorKind::kMalformed, source + ": missing field '" + key + "'");
    return fallback;
  }
  if (!it->is_number_integer())
    throw Error(ErrorKind::kMalformed, source + ": field '" + std::string(key) + "' must be an integer");
  const auto v = it->get<std::int64_t>();
  if (v <= 0 || v > (1 << 24))
    throw Error(ErrorKind::kMalformed,
                source + ": field '" + std::string(key) + "' = " + std::to_string(v) + " is out of range");
  return static_cast<int>(v);
}

}  // namespace

void check_input_size(const Config& c, int height, int width) {
  const long long p = c.patch_size;
  const std::string size = std::to_string(height) + "x" + std::to_string(width);
  auto nearest = [&](long long v) { return std::max(p, (v + p / 2) / p * p); };
  if (height < p || width < p || height % p || width % p)
    throw Error(ErrorKind::kArgument, size + ": height and width must be positive multiples of the patch size " +
                                          std::to_string(p) + "; the nearest valid size is " +
                                          std::to_string(nearest(height)) + "x" + std::to_string(nearest(width)));
  const long long tokens = (height / p) * (width / p) + 1;
  if (tokens > kMaxInputTokens) {
    long long side = 1;  // the largest square grid within the limit
    while ((side + 1) * (side + 1) + 1 <= kMaxInputTokens) ++side;
    throw Error(ErrorKind::kLimit, size + " makes " + std::to_string(tokens) + " tokens at patch size " +
                                       std::to_string(p) + ", more than the limit of " +
                                       std::to_string(kMaxInputTokens) + " (the largest square size is " +
                                       std::to_string(side * p) + "x" + std::to_string(side * p) + ")");
  }
}

Config parse_config(const std::string& json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kMalformed, source + ": not valid JSON: " + detail::describe_json_error(e, json_text));
  }
  if (!j.is_object()) throw Error(ErrorKind::kMalformed, source + ": config is not a JSON object");
  // A preprocessor_config.json given where the model's config.json belongs: say so, not "missing field".
  if (!j.contains("hidden_size") &&
      (j.contains("image_mean") || j.contains("do_normalize") || j.contains("do_resize") || j.contains("resample")))
    throw Error(ErrorKind::kMalformed, source +
                                           ": a preprocessor config (it has preprocessing keys and no hidden_size), "
                                           "not a model's config.json");
  Config c;
  c.hidden_size = get_int(j, "hidden_size", c.hidden_size, true, source);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", c.num_hidden_layers, true, source);
  c.num_attention_heads = get_int(j, "num_attention_heads", c.num_attention_heads, true, source);
  c.intermediate_size = get_int(j, "intermediate_size", c.intermediate_size, true, source);
  c.patch_size = get_int(j, "patch_size", c.patch_size, true, source);
  c.image_size = get_int(j, "image_size", c.image_size, false, source);
  c.num_channels = get_int(j, "num_channels", c.num_channels, false, source);
  if (auto it = j.find("layer_norm_eps"); it != j.end()) {
    if (!it->is_number() || it->get<double>() < 0.0 || it->get<double>() > 1.0)
      throw Error(ErrorKind::kMalformed, source + ": field 'layer_norm_eps' must be a number in [0, 1]");
    c.layer_norm_eps = it->get<double>();
  }
  if (auto it = j.find("qkv_bias"); it != j.end()) {
    if (!it->is_boolean()) throw Error(ErrorKind::kMalformed, source + ": field 'qkv_bias' must be true or false");
    c.qkv_bias = it->get<bool>();
  }
  if (auto it = j.find("hidden_act"); it != j.end()) {
    if (!it->is_string()) throw Error(ErrorKind::kMalformed, source + ": field 'hidden_act' must be a string");
    c.hidden_act = it->get<std::string>();
  }
  if (c.hidden_act != "gelu")
    throw Error(ErrorKind::kUnsupported,
                source + ": hidden_act '" + c.hidden_act + "' is not supported (ViT-MSN uses \"gelu\")");
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) c.model_type = it->get<std::string>();
  if (c.hidden_size % c.num_attention_heads != 0)
    throw Error(ErrorKind::kMalformed, source + ": hidden_size " + std::to_string(c.hidden_size) +
                                           " is not divisible by num_attention_heads " +
                                           std::to_string(c.num_attention_heads));
  if (c.image_size % c.patch_size != 0)
    throw Error(ErrorKind::kMalformed, source + ": image_size " + std::to_string(c.image_size) +
                                           " is not a multiple of patch_size " + std::to_string(c.patch_size));
  if (auto it = j.find("id2label"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) throw Error(ErrorKind::kMalformed, source + ": field 'id2label' must be an object");
    const std::size_t n = it->size();
    std::vector<std::string> labels(n);
    std::vector<bool> seen(n, false);
    for (auto e = it->begin(); e != it->end(); ++e) {
      std::size_t pos = 0;
      long id = -1;
      try {
        id = std::stol(e.key(), &pos);
      } catch (const std::exception&) {
        pos = 0;
      }
      if (pos != e.key().size() || id < 0 || static_cast<std::size_t>(id) >= n || seen[id])
        throw Error(ErrorKind::kMalformed,
                    source + ": id2label key '" + e.key() + "' is not one of the ids 0.." + std::to_string(n - 1));
      if (!e.value().is_string())
        throw Error(ErrorKind::kMalformed, source + ": id2label['" + e.key() + "'] must be a string");
      labels[id] = e.value().get<std::string>();
      seen[id] = true;
    }
    c.id2label = std::move(labels);
  }
  return c;
}

Config read_config(const std::string& path) { return parse_config(detail::read_text_file(path), path); }

std::string to_json(const Config& c) {
  json j = {{"model_type", c.model_type},
            {"hidden_size", c.hidden_size},
            {"num_hidden_layers", c.num_hidden_layers},
            {"num_attention_heads", c.num_attention_heads},
            {"intermediate_size", c.intermediate_size},
            {"patch_size", c.patch_size},
            {"image_size", c.image_size},
            {"num_channels", c.num_channels},
            {"layer_norm_eps", c.layer_norm_eps},
            {"qkv_bias", c.qkv_bias},
            {"hidden_act", c.hidden_act}};
  if (!c.id2label.empty()) {
    json labels = json::object(), ids = json::object();
    for (std::size_t i = 0; i < c.id2label.size(); ++i) {
      labels[std::to_string(i)] = c.id2label[i];
      ids[c.id2label[i]] = i;
    }
    j["id2label"] = labels;
    j["label2id"] = ids;
  }
  return j.dump(2);
}

}  // namespace vitmsn
