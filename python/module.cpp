// vitmsn._core: the Python extension over the C++ library (pybind11). Users import the package
// python/vitmsn, whose __init__.py re-exports this module and adds Model.embed (a loop with a progress
// bar, in Python).
//
// Three rules hold for every entry point here:
// - Outputs are numpy arrays over the library's own buffers: a result (Features, PixelValues, Image)
//   is moved into a heap object owned by a capsule, and the arrays name that capsule as their base.
// - float32 C-contiguous pixel values are read in place (PixelValuesView); other layouts and float
//   dtypes are converted once (counted in _stats()["input_copies"]). Image arrays (uint8) are always
//   copied into the library's Image, which owns its pixels.
// - Decoding, preprocessing and the forward pass run without the GIL (WithoutGil), so Python threads
//   sharing one Model run in parallel. Python objects are only touched with the GIL held: inputs are
//   turned into plain pointers and strings first, results wrapped after.
#include <pybind11/eval.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "vitmsn/vitmsn.hpp"

namespace py = pybind11;

namespace vitmsn::python {
namespace {

// --- Counters for the tests (module function _stats) -------------------------------------------------

struct Stats {
  std::atomic<long long> live_buffers{0};       ///< library buffers currently owned by capsules
  std::atomic<long long> input_copies{0};       ///< pixel-value arrays converted before the forward
  std::atomic<int> in_flight{0};                ///< calls running right now without the GIL
  std::atomic<int> max_in_flight{0};            ///< most such calls at once since the last reset
  std::atomic<long long> released_sections{0};  ///< WithoutGil sections entered
  std::atomic<long long> gil_still_held{0};     ///< sections that found the GIL held (must stay 0)
  std::atomic<std::uintptr_t> last_result{0};   ///< last_hidden_state buffer of the latest forward pass
};

Stats& stats() {
  static Stats s;
  return s;
}

/// Releases the GIL for its lifetime (decoding, preprocessing, the forward pass) and counts the
/// section as in flight: the tests see calls overlap without reading a clock.
class WithoutGil {
 public:
  WithoutGil() {
    Stats& s = stats();
    ++s.released_sections;
    if (PyGILState_Check()) ++s.gil_still_held;
    const int now = ++s.in_flight;
    int seen = s.max_in_flight.load();
    while (now > seen && !s.max_in_flight.compare_exchange_weak(seen, now)) {
    }
  }
  ~WithoutGil() { --stats().in_flight; }
  WithoutGil(const WithoutGil&) = delete;
  WithoutGil& operator=(const WithoutGil&) = delete;

 private:
  py::gil_scoped_release release_;  // constructed before the body above, destroyed after ~WithoutGil's body
};

// --- Library buffers as numpy arrays ----------------------------------------------------------------

template <class T>
void destroy_owned(PyObject* capsule) {
  delete static_cast<T*>(PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule)));
  --stats().live_buffers;
}

/// Moves `value` into a heap object owned by a capsule named `name` (arrays over its memory name the
/// capsule as their base, so it lives as long as the last of them).
template <class T>
py::capsule own(T&& value, const char* name) {
  auto heap = std::make_unique<T>(std::move(value));
  py::capsule capsule(heap.get(), name, &destroy_owned<T>);
  heap.release();
  ++stats().live_buffers;
  return capsule;
}

/// A float32 array over `data` (C order) whose base is `owner`: no copy.
py::array float_view(const float* data, std::vector<py::ssize_t> shape, const py::handle owner) {
  return py::array_t<float>(std::move(shape), data, owner);
}

py::array matrix_view(const Matrix& m, const py::handle owner) {
  return float_view(m.data(), {static_cast<py::ssize_t>(m.rows()), static_cast<py::ssize_t>(m.cols())}, owner);
}

/// A Vector (logits, an embedding) as a 1-D array that owns it.
py::array vector_array(Vector v) {
  const auto n = static_cast<py::ssize_t>(v.size());
  const py::capsule owner = own(std::move(v), "vitmsn.Vector");
  return float_view(static_cast<const Vector*>(owner.get_pointer())->data(), {n}, owner);
}

// --- Inputs -------------------------------------------------------------------------------------------

bool is_path_like(const py::handle x) {
  return PyUnicode_Check(x.ptr()) || PyBytes_Check(x.ptr()) || py::hasattr(x, "__fspath__");
}

/// The bytes of a path argument, as os.fsencode gives them: a str encoded with the filesystem encoding
/// and surrogateescape (so names os.listdir() returns for non-UTF-8 bytes round-trip), bytes as they
/// are, an os.PathLike through os.fspath. \throws Error (argument) for an empty path or one holding NUL.
std::string to_path(const py::handle x) {
  const py::object encoded = py::module_::import("os").attr("fsencode")(x);
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(encoded.ptr(), &data, &size) != 0) throw py::error_already_set();
  if (size == 0) throw Error(ErrorKind::kArgument, "empty path");
  std::string out(data, static_cast<std::size_t>(size));
  if (out.find('\0') != std::string::npos) throw Error(ErrorKind::kArgument, "a path must not contain NUL bytes");
  return out;
}

/// A path (bytes from the library) as Python shows paths: os.fsdecode (surrogateescape).
py::str fs_str(const std::string& path) {
  auto out = py::reinterpret_steal<py::str>(
      PyUnicode_DecodeFSDefaultAndSize(path.data(), static_cast<Py_ssize_t>(path.size())));
  if (!out) throw py::error_already_set();
  return out;
}

/// Bytes that cannot be a path (NUL bytes, longer than any path): most likely an image file's
/// contents passed by mistake. \throws TypeError saying what to pass.
void check_bytes_path(const py::handle x) {
  if (!PyBytes_Check(x.ptr())) return;
  const Py_ssize_t n = PyBytes_GET_SIZE(x.ptr());
  const char* data = PyBytes_AS_STRING(x.ptr());
  if (n > 4096 || std::memchr(data, 0, static_cast<std::size_t>(n)) != nullptr) {
    throw py::type_error("got " + std::to_string(n) +
                         " bytes that are not a file name (an image file's contents?): pass a path (str, bytes "
                         "or os.PathLike), a PIL image (PIL.Image.open(io.BytesIO(data))) or a numpy array");
  }
}

/// True when `x` is a PIL.Image.Image (without importing Pillow: if it is not loaded, x is none).
bool is_pil_image(const py::handle x) {
  const py::dict modules = py::module_::import("sys").attr("modules");
  if (!modules.contains("PIL.Image")) return false;
  return py::isinstance(x, modules["PIL.Image"].attr("Image"));
}

std::string shape_string(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_string(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

int checked_dim(py::ssize_t n, const char* what) {
  if (n > std::numeric_limits<int>::max())
    throw Error(ErrorKind::kLimit, std::string(what) + " " + std::to_string(n) + " is too large");
  return static_cast<int>(n);
}

/// One input of extract_features() & co., turned into plain data with the GIL held and used
/// without it. The py::array members keep the caller's memory alive during the call.
struct Input {
  enum class Kind { kPath, kImage, kPixels } kind = Kind::kPath;
  std::string path;

  // kImage: uint8 [H, W, 3] (RGB) or [H, W] (gray), any strides (copied into an Image without the GIL).
  py::array image_array;
  const std::uint8_t* image_data = nullptr;
  int height = 0, width = 0;
  bool gray = false;
  py::ssize_t stride_y = 0, stride_x = 0, stride_c = 0;

  // kPixels: float32 C-contiguous [C, H, W], read in place.
  py::array pixel_array;
  int channels = 0;

  const float* pixels() const { return static_cast<const float*>(pixel_array.data()); }
  PixelValuesView view() const { return PixelValuesView(pixels(), channels, height, width); }
};

constexpr const char* kInputKinds =
    "an image path, a PIL.Image.Image, a uint8 array [H, W, 3] (RGB) or [H, W] (gray), or float32 pixel values "
    "[3, H, W]";

/// `x` as an array when it is one or offers the array protocols (a torch CPU tensor, a memoryview, ...).
std::optional<py::array> as_array(const py::handle x) {
  if (py::isinstance<py::array>(x)) return py::reinterpret_borrow<py::array>(x);
  if (py::hasattr(x, "__array__") || py::hasattr(x, "__array_interface__") || PyObject_CheckBuffer(x.ptr()))
    return py::reinterpret_steal<py::array>(py::module_::import("numpy").attr("asarray")(x).release());
  return std::nullopt;
}

/// float pixel values [C, H, W] (C-contiguous float32 read in place; anything else converted once).
py::array pixel_array(py::array a) {
  const bool aligned = py::detail::array_proxy(a.ptr())->flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_;
  if (py::array_t<float, py::array::c_style>::check_(a) && aligned) return a;
  ++stats().input_copies;
  return py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
}

/// In-memory images get the limit files get (ImageLimits::max_pixels), with the library's wording (less the
/// C++ name: Python has no keyword for it).
void check_pixel_limit(py::ssize_t height, py::ssize_t width) {
  const std::uint64_t limit = ImageLimits{}.max_pixels;
  const auto pixels = static_cast<std::uint64_t>(height) * static_cast<std::uint64_t>(width);
  if (pixels > limit) {
    throw Error(ErrorKind::kLimit, "image is " + std::to_string(width) + "x" + std::to_string(height) + " = " +
                                       std::to_string(pixels) + " pixels, more than the limit of " +
                                       std::to_string(limit) + " pixels (the limit of image files)");
  }
}

Input to_input(const py::handle x) {
  Input in;
  if (is_path_like(x)) {
    check_bytes_path(x);
    in.kind = Input::Kind::kPath;
    in.path = to_path(x);
    return in;
  }
  py::object source = py::reinterpret_borrow<py::object>(x);
  std::optional<py::array> maybe;
  if (is_pil_image(x)) {
    // Loaded first, so that Pillow's own error (a truncated file, a closed image) surfaces as it is
    // (the array protocols would hide it behind "not an array").
    const py::tuple wh = source.attr("size");  // checked before Pillow decodes or converts anything
    check_pixel_limit(wh[1].cast<py::ssize_t>(), wh[0].cast<py::ssize_t>());
    source.attr("load")();
    // What Hugging Face's processor does with a PIL image: convert("RGB"), then its pixels.
    if (source.attr("mode").cast<std::string>() != "RGB") source = source.attr("convert")("RGB");
    maybe = py::reinterpret_steal<py::array>(py::module_::import("numpy").attr("asarray")(source).release());
  } else {
    maybe = as_array(source);
  }
  if (!maybe) {
    throw py::type_error("expected " + std::string(kInputKinds) + ", got " +
                         py::str(py::type::handle_of(x).attr("__name__")).cast<std::string>());
  }
  const py::array& a = *maybe;
  const char kind = a.dtype().kind();
  if (a.dtype().is(py::dtype::of<std::uint8_t>())) {
    if (!(a.ndim() == 2 || (a.ndim() == 3 && a.shape(2) == 3))) {
      throw Error(ErrorKind::kArgument,
                  "a uint8 image array must be [H, W, 3] (RGB) or [H, W] (gray), got shape " + shape_string(a) +
                      (a.ndim() == 3 && a.shape(2) == 4 ? " (RGBA: drop the alpha channel, e.g. image[..., :3])" : ""));
    }
    check_pixel_limit(a.shape(0), a.shape(1));
    in.kind = Input::Kind::kImage;
    in.image_array = a;
    in.image_data = static_cast<const std::uint8_t*>(a.data());
    in.height = checked_dim(a.shape(0), "image height");
    in.width = checked_dim(a.shape(1), "image width");
    in.gray = a.ndim() == 2;
    in.stride_y = a.strides(0);
    in.stride_x = a.strides(1);
    in.stride_c = in.gray ? 0 : a.strides(2);
    if (in.height == 0 || in.width == 0)
      throw Error(ErrorKind::kArgument, "the image array is empty: shape " + shape_string(a));
    return in;
  }
  if (kind == 'f') {
    if (a.ndim() != 3) {
      throw Error(ErrorKind::kArgument,
                  "float pixel values must be [3, H, W] (channel first, preprocessed), got shape " + shape_string(a) +
                      (a.ndim() == 4 ? "; a batch [B, 3, H, W] goes to model(pixel_values)" : ""));
    }
    if (a.shape(0) != 3 && a.shape(2) == 3) {
      throw Error(ErrorKind::kArgument, "float pixel values must be channel first [3, H, W], got shape " +
                                            shape_string(a) + "; for an image pass uint8 [H, W, 3]");
    }
    in.kind = Input::Kind::kPixels;
    in.pixel_array = pixel_array(a);
    in.channels = checked_dim(a.shape(0), "channel count");
    in.height = checked_dim(a.shape(1), "height");
    in.width = checked_dim(a.shape(2), "width");
    return in;
  }
  throw Error(ErrorKind::kArgument,
              "an array input must be a uint8 image [H, W, 3] / [H, W] or float32 pixel values [3, H, W], got " +
                  dtype_string(a) + " " + shape_string(a));
}

/// The uint8 array of an Input as the library's Image (RGB; gray replicated as Pillow's convert("RGB")).
Image to_image(const Input& in) {
  Image image;
  image.width = in.width;
  image.height = in.height;
  image.rgb.resize(static_cast<std::size_t>(in.width) * in.height * 3);
  std::uint8_t* out = image.rgb.data();
  for (int y = 0; y < in.height; ++y) {
    const std::uint8_t* row = in.image_data + y * in.stride_y;
    if (!in.gray && in.stride_x == 3 && in.stride_c == 1) {
      std::memcpy(out, row, static_cast<std::size_t>(in.width) * 3);
      out += static_cast<std::size_t>(in.width) * 3;
      continue;
    }
    for (int x = 0; x < in.width; ++x) {
      const std::uint8_t* px = row + x * in.stride_x;
      for (int c = 0; c < 3; ++c) *out++ = px[c * in.stride_c];
    }
  }
  return image;
}

/// True for an int (Python's or numpy's: anything with __index__), not a bool.
bool is_int(const py::handle x) { return PyIndex_Check(x.ptr()) && !PyBool_Check(x.ptr()); }

/// An int argument as a C int. \throws TypeError for other types, Error for values out of range.
int to_int(const py::handle x, const char* what) {
  if (!is_int(x)) throw py::type_error(std::string(what) + " must be an int, got " + py::repr(x).cast<std::string>());
  PyObject* index = PyNumber_Index(x.ptr());
  if (!index) throw py::error_already_set();
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(index, &overflow);
  Py_DECREF(index);
  if (overflow || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    throw Error(ErrorKind::kArgument, std::string(what) + " " + py::repr(x).cast<std::string>() + " is out of range");
  }
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
    throw Error(ErrorKind::kArgument, std::string(what) + " " + std::to_string(v) + " is out of range");
  return static_cast<int>(v);
}

/// (height, width) from None, an int (square) or a pair.
/// A size argument's height or width: at most 65536 (the preprocessor's limit, named as `size` here).
int checked_side(int v, const char* side) {
  constexpr int kMaxSide = 65536;
  if (v > kMaxSide) {
    throw Error(ErrorKind::kArgument, std::string("size: the ") + side + " " + std::to_string(v) + " is more than " +
                                          std::to_string(kMaxSide));
  }
  return v;
}

std::optional<std::pair<int, int>> to_size(const py::handle size) {
  if (size.is_none()) return std::nullopt;
  if (is_int(size)) {
    const int s = checked_side(to_int(size, "size"), "side");
    return std::make_pair(s, s);
  }
  if (py::isinstance<py::sequence>(size) && !is_path_like(size) && py::len(size) == 2) {
    const py::sequence seq = py::reinterpret_borrow<py::sequence>(size);
    return std::make_pair(checked_side(to_int(seq[0], "size"), "height"),
                          checked_side(to_int(seq[1], "size"), "width"));
  }
  throw py::type_error("size must be None, an int or a pair (height, width), got " +
                       py::repr(size).cast<std::string>());
}

/// Layer indices from (), an int, an iterable of ints, True (all of `count`) or False/None (none).
std::vector<int> to_indices(const py::handle v, int count) {
  std::vector<int> out;
  if (v.is_none() || (PyBool_Check(v.ptr()) && !v.cast<bool>())) return out;
  if (PyBool_Check(v.ptr())) {
    for (int i = 0; i < count; ++i) out.push_back(i);
    return out;
  }
  if (is_int(v)) return {to_int(v, "a layer index")};
  if (!py::isinstance<py::iterable>(v) || is_path_like(v))
    throw py::type_error("layer indices must be an int, an iterable of ints or True, got " +
                         py::repr(v).cast<std::string>());
  for (const py::handle item : py::iter(v)) out.push_back(to_int(item, "a layer index"));
  return out;
}

// --- Features ----------------------------------------------------------------------------------------

/// The result of one forward pass; the arrays are views of the library's buffers (base: one capsule).
/// A model's backbone identity (backbone_identity()), computed once, on first use: recorded in a
/// converted file's metadata (free), else hashed from the weights (seconds for ViT-L/7).
class Backbone {
 public:
  explicit Backbone(std::string path) : path_(std::move(path)) {}
  /// Without the GIL while computing. \throws Error as backbone_identity().
  const std::string& id() {
    if (!ready_.load(std::memory_order_acquire)) {
      WithoutGil no_gil;
      std::call_once(once_, [&] {
        id_ = backbone_identity(path_);
        ready_.store(true, std::memory_order_release);
      });
    }
    return id_;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_, id_;
  std::once_flag once_;
  std::atomic<bool> ready_{false};
};

struct PyFeatures {
  py::capsule owner;  ///< owns the vitmsn::Features
  py::array last_hidden_state;
  py::dict hidden_states, cls_attention, attentions;
  py::object mean_patch;               ///< computed on first use
  std::shared_ptr<Backbone> backbone;  ///< of the model that computed them (logits() checks it)

  const Features& features() const { return *static_cast<const Features*>(owner.get_pointer()); }
};

PyFeatures wrap(Features&& f) {
  stats().last_result = reinterpret_cast<std::uintptr_t>(f.last_hidden_state.data());  // as the library made it
  PyFeatures out;
  out.owner = own(std::move(f), "vitmsn.Features");
  const Features& g = out.features();
  out.last_hidden_state = matrix_view(g.last_hidden_state, out.owner);
  for (const auto& [i, m] : g.hidden_states) out.hidden_states[py::int_(i)] = matrix_view(m, out.owner);
  for (const auto& [i, m] : g.cls_attention) out.cls_attention[py::int_(i)] = matrix_view(m, out.owner);
  for (const auto& [i, m] : g.attentions) {
    const auto n = static_cast<py::ssize_t>(m.cols());  // [heads·N, N] → [heads, N, N]
    out.attentions[py::int_(i)] = float_view(m.data(), {static_cast<py::ssize_t>(m.rows()) / n, n, n}, out.owner);
  }
  return out;
}

// --- Model -------------------------------------------------------------------------------------------

struct PyModel {
  Model model;
  std::string path;  ///< as given
  std::shared_ptr<Backbone> backbone = std::make_shared<Backbone>(model.source());
  py::object threads = py::none();  ///< as given (pickling)
  bool copy_weights = false;
  std::string compute = "auto";
};

struct PyPreprocessor {
  Preprocessor preprocessor;
};

/// The size of the pixel values an image becomes with `size` (checked: patch multiples, token limit).
Preprocessor sized(const PyModel& m, const std::optional<std::pair<int, int>>& size) {
  if (!size) return m.model.preprocessor();
  check_input_size(m.model.config(), size->first, size->second);
  return m.model.preprocessor().with_size(size->first, size->second);
}

void check_size_for_pixels(const Input& in, const std::optional<std::pair<int, int>>& size) {
  if (in.kind == Input::Kind::kPixels && size && (size->first != in.height || size->second != in.width)) {
    throw Error(ErrorKind::kArgument, "size " + std::to_string(size->first) + "x" + std::to_string(size->second) +
                                          " applies to images; these pixel values are " + std::to_string(in.height) +
                                          "x" + std::to_string(in.width) + " (they are used as they are)");
  }
}

/// Decodes / preprocesses one input to pixel values (without the GIL). For kPixels nothing is made:
/// the caller uses in.view().
PixelValues pixels_of(const Input& in, const Preprocessor& pre) {
  if (in.kind == Input::Kind::kPath) return pre(read_image(in.path));
  return pre(to_image(in));
}

Features forward(const PyModel& m, const Input& in, const Preprocessor& pre, const FeatureOptions& o) {
  if (in.kind == Input::Kind::kPixels) return m.model.extract_features(in.view(), o);
  return m.model.extract_features(pixels_of(in, pre), o);
}

FeatureOptions feature_options(const PyModel& m, const py::handle hidden_states, const py::handle cls_attention,
                               const py::handle attentions) {
  FeatureOptions o;
  const int layers = m.model.config().num_hidden_layers;
  o.hidden_states = to_indices(hidden_states, layers + 1);
  o.cls_attention = to_indices(cls_attention, layers);
  o.attentions = to_indices(attentions, layers);
  return o;
}

PyFeatures extract_features(const PyModel& m, const py::object& x, const py::object& hidden_states,
                            const py::object& cls_attention, const py::object& size, const py::object& attentions) {
  const FeatureOptions o = feature_options(m, hidden_states, cls_attention, attentions);
  const Input in = to_input(x);
  const auto sz = to_size(size);
  check_size_for_pixels(in, sz);
  const Preprocessor pre = sized(m, sz);
  Features f;
  {
    WithoutGil no_gil;
    f = forward(m, in, pre, o);
  }
  PyFeatures out = wrap(std::move(f));
  out.backbone = m.backbone;
  return out;
}

/// model(pixel_values): [B, 3, H, W] -> last_hidden_state [B, N, D] (ViTMSNModel(...).last_hidden_state).
py::array call(const PyModel& m, const py::object& x) {
  const std::optional<py::array> maybe = as_array(x);
  if (!maybe) {
    throw py::type_error("model(pixel_values) takes a float32 array [B, 3, H, W], got " +
                         py::str(py::type::handle_of(x).attr("__name__")).cast<std::string>() +
                         "; images go to extract_features() or embed()");
  }
  const py::array& raw = *maybe;
  if (raw.dtype().kind() == 'f' && raw.ndim() == 4 && raw.shape(1) != 3 && raw.shape(3) == 3) {
    throw Error(ErrorKind::kArgument,
                "model(pixel_values): pixel values must be channel first [B, 3, H, W], got shape " + shape_string(raw) +
                    " (channels last: use pixel_values.transpose(0, 3, 1, 2))");
  }
  if (raw.dtype().kind() != 'f' || raw.ndim() != 4) {
    throw Error(ErrorKind::kArgument,
                "model(pixel_values) takes float pixel values [B, 3, H, W] (what ViTImageProcessor returns), got " +
                    dtype_string(raw) + " " + shape_string(raw) +
                    (raw.ndim() == 3 ? "; one image [3, H, W] goes to extract_features()" : ""));
  }
  const py::array a = pixel_array(raw);
  const int batch = checked_dim(a.shape(0), "batch size");
  const int c = checked_dim(a.shape(1), "channel count"), h = checked_dim(a.shape(2), "height"),
            w = checked_dim(a.shape(3), "width");
  if (batch == 0)
    throw Error(ErrorKind::kArgument, "model(pixel_values): the batch is empty, shape " + shape_string(raw));
  check_input_size(m.model.config(), h, w);
  const float* data = static_cast<const float*>(a.data());
  const std::size_t image = static_cast<std::size_t>(c) * h * w;
  std::vector<PixelValuesView> views;
  for (int b = 0; b < batch; ++b) views.emplace_back(data + b * image, c, h, w);

  if (batch == 1) {  // the library's buffer itself, as [1, N, D]
    Features f;
    {
      WithoutGil no_gil;
      f = m.model.extract_features(views[0]);
    }
    const auto n = static_cast<py::ssize_t>(f.last_hidden_state.rows()),
               d = static_cast<py::ssize_t>(f.last_hidden_state.cols());
    const PyFeatures wrapped = wrap(std::move(f));
    return float_view(wrapped.features().last_hidden_state.data(), {1, n, d}, wrapped.owner);
  }
  // B > 1: one output array for the batch; each image's rows are copied into it (without the GIL).
  const auto n = static_cast<py::ssize_t>(m.model.config().num_tokens(h, w)),
             d = static_cast<py::ssize_t>(m.model.config().hidden_size);
  py::array_t<float> out({static_cast<py::ssize_t>(batch), n, d});
  float* dst = out.mutable_data();
  {
    WithoutGil no_gil;
    const std::vector<Features> fs = m.model.extract_features(views);
    for (std::size_t b = 0; b < fs.size(); ++b)
      std::memcpy(dst + b * n * d, fs[b].last_hidden_state.data(), sizeof(float) * n * d);
  }
  return std::move(out);
}

/// Features computed by another model than `m` must come from the same backbone (checkpoint) as
/// its classifier head: a head's classes do not fit another backbone's features.
void check_same_backbone(const PyModel& m, const PyFeatures& f) {
  if (!f.backbone || f.backbone == m.backbone || !m.model.has_classifier()) return;
  const std::string& theirs = f.backbone->id();
  const std::string& ours = m.backbone->id();
  if (theirs == ours) return;
  throw Error(ErrorKind::kArgument,
              "logits(features): these features come from another model (backbone " + theirs.substr(0, 16) + ", " +
                  f.backbone->path() + ") than this classifier head's (backbone " + ours.substr(0, 16) + ", " +
                  m.backbone->path() +
                  "): its classes would not fit them. Extract the features with this model, or pass the input itself");
}

Vector logits_of(const PyModel& m, const py::handle x) {
  if (py::isinstance<PyFeatures>(x)) {
    const PyFeatures& f = x.cast<const PyFeatures&>();
    check_same_backbone(m, f);
    return m.model.logits(f.features());
  }
  if (!m.model.has_classifier()) return m.model.logits(Features{});  // the library's "no classifier head" error
  const Input in = to_input(x);
  const Preprocessor pre = m.model.preprocessor();
  WithoutGil no_gil;
  if (in.kind == Input::Kind::kPixels) return m.model.logits(m.model.extract_features(in.view()));
  return m.model.classify(pixels_of(in, pre));
}

py::list classify(const PyModel& m, const py::object& x, const py::object& top) {
  int k = std::numeric_limits<int>::max();
  if (!top.is_none()) {
    k = to_int(top, "top");
    if (k < 1) throw Error(ErrorKind::kArgument, "top must be at least 1, got " + std::to_string(k));
  }
  const Vector logits = logits_of(m, x);
  // Softmax in double, as vitmsn-classify prints it.
  std::vector<double> p(static_cast<std::size_t>(logits.size()));
  const double mx = logits.maxCoeff();
  double sum = 0;
  for (Eigen::Index i = 0; i < logits.size(); ++i) sum += p[i] = std::exp(logits[i] - mx);
  std::vector<int> order(p.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
  py::list out;
  const auto& labels = m.model.labels();
  for (std::size_t r = 0; r < order.size() && r < static_cast<std::size_t>(k); ++r)
    out.append(py::make_tuple(labels[order[r]], p[order[r]] / sum));
  return out;
}

/// Model.embed's inner step: the pooled embedding of each input written into out[i] (a batch of
/// images of one size per forward pass).
void embed_into(const PyModel& m, py::array out, const py::sequence& inputs, const std::string& pool,
                const py::object& size) {
  if (pool != "cls" && pool != "mean")
    throw Error(ErrorKind::kArgument, "pool must be 'cls' or 'mean', got '" + pool + "'");
  const int d = m.model.config().hidden_size;
  if (!py::array_t<float, py::array::c_style>::check_(out) || !out.writeable() || out.ndim() != 2 ||
      out.shape(0) != static_cast<py::ssize_t>(py::len(inputs)) || out.shape(1) != d) {
    throw Error(ErrorKind::kArgument, "embed: output must be C-contiguous float32 [" + std::to_string(py::len(inputs)) +
                                          ", " + std::to_string(d) + "]");
  }
  const auto sz = to_size(size);
  std::vector<Input> in;
  for (const py::handle x : inputs) {
    in.push_back(to_input(x));
    check_size_for_pixels(in.back(), sz);
  }
  const Preprocessor pre = sized(m, sz);
  if (in.empty()) return;  // (embed checks its arguments this way before the first input arrives)
  float* dst = static_cast<float*>(out.mutable_data());
  WithoutGil no_gil;
  std::vector<PixelValues> owned(in.size());
  std::vector<PixelValuesView> views;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i].kind == Input::Kind::kPixels) {
      views.push_back(in[i].view());
    } else {
      owned[i] = pixels_of(in[i], pre);
      views.emplace_back(owned[i].data(), owned[i].dimension(0), owned[i].dimension(1), owned[i].dimension(2));
      // Ctrl-C between the images of a batch (the Python loop checks between batches).
      py::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
  }
  const std::vector<Features> fs = m.model.extract_features(views);
  for (std::size_t i = 0; i < fs.size(); ++i) {
    const Vector v = pool == "cls" ? fs[i].cls() : fs[i].mean_patch();
    std::memcpy(dst + i * d, v.data(), sizeof(float) * d);
  }
}

py::dict config_dict(const Config& c) {
  py::dict d;
  d["model_type"] = c.model_type;
  d["hidden_size"] = c.hidden_size;
  d["num_hidden_layers"] = c.num_hidden_layers;
  d["num_attention_heads"] = c.num_attention_heads;
  d["intermediate_size"] = c.intermediate_size;
  d["patch_size"] = c.patch_size;
  d["image_size"] = c.image_size;
  d["num_channels"] = c.num_channels;
  d["layer_norm_eps"] = c.layer_norm_eps;
  d["qkv_bias"] = c.qkv_bias;
  d["hidden_act"] = c.hidden_act;
  if (!c.id2label.empty()) {
    py::dict id2label, label2id;
    for (std::size_t i = 0; i < c.id2label.size(); ++i) {
      id2label[py::int_(i)] = c.id2label[i];
      label2id[py::str(c.id2label[i])] = i;
    }
    d["id2label"] = id2label;
    d["label2id"] = label2id;
  }
  return d;
}

py::dict preprocessor_dict(const PreprocessorConfig& c) {
  return py::module_::import("json").attr("loads")(to_json(c));
}

// --- Preprocessor ------------------------------------------------------------------------------------

PyPreprocessor make_preprocessor(const py::object& source) {
  if (source.is_none()) return {Preprocessor()};
  if (py::isinstance<PyModel>(source)) return {source.cast<const PyModel&>().model.preprocessor()};
  if (is_path_like(source)) {
    const std::string path = to_path(source);
    WithoutGil no_gil;
    return {Preprocessor::from_file(path)};
  }
  throw py::type_error("Preprocessor(source): source must be None, a vitmsn.Model or a preprocessor_config.json path");
}

Input image_input(const py::handle x) {
  Input in = to_input(x);
  if (in.kind == Input::Kind::kPixels) {
    throw Error(ErrorKind::kArgument,
                "the Preprocessor takes images (a path, a PIL image, a uint8 array); float arrays are already "
                "pixel values");
  }
  return in;
}

Preprocessor with_optional_size(const Preprocessor& p, const py::handle size) {
  const auto sz = to_size(size);
  if (!sz) return p;
  if (sz->first < 1 || sz->second < 1) {
    throw Error(ErrorKind::kArgument,
                "size " + std::to_string(sz->first) + "x" + std::to_string(sz->second) + " must be at least 1x1");
  }
  return p.with_size(sz->first, sz->second);
}

py::array preprocess(const PyPreprocessor& p, const py::object& x, const py::object& size) {
  const Input in = image_input(x);
  const Preprocessor pre = with_optional_size(p.preprocessor, size);
  PixelValues px;
  {
    WithoutGil no_gil;
    px = pixels_of(in, pre);
  }
  const std::vector<py::ssize_t> shape = {px.dimension(0), px.dimension(1), px.dimension(2)};
  const py::capsule owner = own(std::move(px), "vitmsn.PixelValues");
  return float_view(static_cast<const PixelValues*>(owner.get_pointer())->data(), shape, owner);
}

py::array resize_only(const PyPreprocessor& p, const py::object& x, const py::object& size) {
  const Input in = image_input(x);
  const Preprocessor pre = with_optional_size(p.preprocessor, size);
  Image image;
  {
    WithoutGil no_gil;
    image = pre.resize_only(in.kind == Input::Kind::kPath ? read_image(in.path) : to_image(in));
  }
  const std::vector<py::ssize_t> shape = {image.height, image.width, 3};
  const py::capsule owner = own(std::move(image), "vitmsn.Image");
  return py::array_t<std::uint8_t>(shape, static_cast<const Image*>(owner.get_pointer())->rgb.data(), owner);
}

// --- Conversion ------------------------------------------------------------------------------------------

/// vitmsn.convert(): convert_checkpoint (a PyTorch or safetensors checkpoint -> one .safetensors model).
py::dict convert(const py::object& input, const py::object& output, const std::string& dtype,
                 const py::object& classifier, bool overwrite, bool allow_other_backbone, const std::string& layout) {
  if (!is_path_like(input)) throw py::type_error("convert(input, ...): input must be a str, bytes or os.PathLike");
  if (!is_path_like(output)) throw py::type_error("convert(..., output): output must be a str, bytes or os.PathLike");
  ConvertOptions o;
  o.dtype = parse_weight_dtype(dtype);
  o.layout = parse_weight_layout(layout);
  if (!classifier.is_none()) {
    if (!is_path_like(classifier))
      throw py::type_error("convert(classifier=...): a str, bytes or os.PathLike (a safetensors head), or None");
    o.classifier = to_path(classifier);
  }
  o.overwrite = overwrite;
  o.allow_other_backbone = allow_other_backbone;
  const std::string in = to_path(input), out = to_path(output);
  ConvertReport r;
  {
    WithoutGil no_gil;
    r = convert_checkpoint(in, out, o);
  }
  static const char* const kHead[] = {"none", "same", "unrecorded", "other"};
  py::dict d;
  d["output"] = fs_str(out);
  d["weights_input"] = fs_str(r.weights_input);
  d["config_source"] = fs_str(r.config_source);
  d["preprocessor_source"] = fs_str(r.preprocessor_source);
  d["tensors"] = r.tensors;
  d["bytes"] = r.bytes;
  d["has_classifier"] = r.has_classifier;
  d["dropped"] = r.dropped;
  d["backbone"] = r.backbone;
  d["head_backbone"] = kHead[static_cast<int>(r.head_backbone)];
  d["replaced_labels"] = r.replaced_labels;
  d["panel_width"] = r.panel_width;
  return d;
}

// --- Benchmark support -------------------------------------------------------------------------------

/// Seconds of each of `runs` calls of Model::extract_features on pixel values [3, H, W], timed in C++
/// with the GIL released: the reference the Python overhead is measured against
/// (examples/python/bench_overhead.py).
std::vector<double> forward_seconds(const PyModel& m, const py::object& x, int runs) {
  const Input in = to_input(x);
  if (in.kind != Input::Kind::kPixels)
    throw Error(ErrorKind::kArgument, "_forward_seconds takes pixel values [3, H, W]");
  std::vector<double> out;
  WithoutGil no_gil;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    { const Features f = m.model.extract_features(in.view()); }  // the result freed too, as a caller's would be
    out.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return out;
}

std::string repr_model(const PyModel& m) {
  const Config& c = m.model.config();
  // repr() of the path as Python shows it (a non-UTF-8 name's bytes as \udcXX escapes).
  return "vitmsn.Model(" + py::repr(fs_str(m.path)).cast<std::string>() + ": hidden " + std::to_string(c.hidden_size) +
         ", " + std::to_string(c.num_hidden_layers) + " layers, " + std::to_string(c.num_attention_heads) +
         " heads, patch " + std::to_string(c.patch_size) + ", " + std::to_string(c.image_size) + "x" +
         std::to_string(c.image_size) +
         (m.model.has_classifier() ? ", " + std::to_string(m.model.labels().size()) + " classes" : "") + ", " +
         std::to_string(m.model.threads()) + " threads, kernels " + kernel_isa() + ")";
}

std::string indices_string(const py::dict& d) {
  std::string s = "[";
  bool first = true;
  for (const auto& kv : d) {
    s += (first ? "" : ", ") + py::str(kv.first).cast<std::string>();
    first = false;
  }
  return s + "]";
}

// --- Errors: one Python class per ErrorKind --------------------------------------------------------------

// vitmsn.Error stays a ValueError (code catching ValueError keeps working); each kind's class also
// derives from the matching builtin, so that `except FileNotFoundError` / `except PermissionError` /
// `except OSError` catch what they would for a plain open(). str(e) is the library's message.
constexpr const char* kErrorClasses = R"(
class Error(ValueError):
    """Raised for bad input: a file, a header, a shape, a dtype, a config, an image, an argument value.
    The message is the library's, naming the culprit and the problem. A subclass of ValueError; the
    subclass raised tells the kind (kind: its name as a string; path: the file it is about, or None)."""
    kind = None
    path = None

    def __str__(self):
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class NotFoundError(Error, FileNotFoundError):
    """A path that does not exist (or a model folder without its weights). Also a FileNotFoundError."""
    kind = "not_found"


class PermissionDeniedError(Error, PermissionError):
    """The operating system refused access to a path. Also a PermissionError."""
    kind = "permission"


class IoError(Error, OSError):
    """Another operating-system error reading, writing or mapping a file, or a model file changed on
    disk while in use. Also an OSError."""
    kind = "io"


class MalformedError(Error):
    """Content that breaks its format: a bad header, a truncated file, invalid JSON, a missing or
    mis-shaped tensor."""
    kind = "malformed"


class UnsupportedError(Error):
    """Well-formed content vitmsn does not read: a dtype, a format or version, a quantization scheme."""
    kind = "unsupported"


class LimitError(Error):
    """A size over a limit (image pixels, header bytes, tensor counts, input tokens)."""
    kind = "limit"


class ArgumentError(Error):
    """A bad argument or option value: a wrong array shape, an index out of range."""
    kind = "argument"
)";

// The class of each ErrorKind, in the enum's order (new references, kept for the process's life).
constexpr const char* kErrorClassNames[] = {"NotFoundError",  "PermissionDeniedError", "IoError",
                                            "MalformedError", "UnsupportedError",      "LimitError",
                                            "ArgumentError"};
PyObject* g_error_classes[std::size(kErrorClassNames)] = {};

// Sets the Python error for `e`: its kind's class, str() the message, .path (and for the OSError
// kinds .filename, .errno, .strerror).
void set_python_error(const Error& e) {
  try {
    const auto index = static_cast<std::size_t>(e.kind());
    PyObject* cls = index < std::size(g_error_classes) ? g_error_classes[index] : nullptr;
    if (cls == nullptr) {
      PyErr_SetString(PyExc_ValueError, e.what());
      return;
    }
    const char* what = e.what();
    auto message = py::reinterpret_steal<py::object>(
        PyUnicode_DecodeUTF8(what, static_cast<Py_ssize_t>(std::strlen(what)), "replace"));
    if (!message) throw py::error_already_set();
    py::object exc = py::reinterpret_borrow<py::object>(cls)(message);
    const bool os_error = PyObject_IsSubclass(cls, PyExc_OSError) == 1;
    if (!e.path().empty()) {
      auto path = py::reinterpret_steal<py::object>(
          PyUnicode_DecodeFSDefaultAndSize(e.path().data(), static_cast<Py_ssize_t>(e.path().size())));
      if (!path) throw py::error_already_set();
      exc.attr("path") = path;
      if (os_error) exc.attr("filename") = path;
    }
    if (os_error && e.os_error() != 0) {
      exc.attr("errno") = e.os_error();
      exc.attr("strerror") = std::strerror(e.os_error());
    }
    PyErr_SetObject(cls, exc.ptr());
  } catch (py::error_already_set& err) {
    err.restore();
  }
}

}  // namespace
}  // namespace vitmsn::python

// --- The module ------------------------------------------------------------------------------------------

PYBIND11_MODULE(_core, m) {
  using namespace vitmsn;
  using namespace vitmsn::python;
  m.doc() = "vitmsn's C++ core (pybind11). Import the package `vitmsn`, not this module.";
  m.attr("__version__") = kVersionString;

  {
    py::dict ns;
    ns["__name__"] = "vitmsn";
    py::exec(kErrorClasses, ns);
    m.attr("Error") = ns["Error"];
    for (std::size_t i = 0; i < std::size(kErrorClassNames); ++i) {
      m.attr(kErrorClassNames[i]) = ns[kErrorClassNames[i]];
      g_error_classes[i] = py::object(ns[kErrorClassNames[i]]).release().ptr();
    }
    py::register_exception_translator([](std::exception_ptr p) {
      if (!p) return;
      try {
        std::rethrow_exception(p);
      } catch (const Error& e) {
        set_python_error(e);
      }
    });
  }

  m.def("kernel_isa", &kernel_isa,
        "The compute kernels in use: 'avx512', 'avx2' or 'portable' (chosen at import from the CPU;\n"
        "the environment variable VITMSN_ISA=portable|avx2|avx512 can force a lower one).");
  m.def("default_threads", &default_threads,
        "The number of CPUs this process may run on: the threads a Model uses when not told.");
  m.def("image_file_extensions", &image_file_extensions,
        "The file extensions (lower case, with the dot) of the formats the decoder reads, for picking\n"
        "images out of folders: .png .jpg .jpeg .jpe .jfif .bmp .gif .tga .psd .ppm .pgm .pnm.");
  m.def("convert", &convert, py::arg("input"), py::arg("output"), py::arg("dtype") = "f32",
        py::arg("classifier") = py::none(), py::arg("overwrite") = false, py::arg("allow_other_backbone") = false,
        py::arg("layout") = "rows",
        "Converts a checkpoint into one .safetensors model file that Model() loads: input is a model folder\n"
        "(model.safetensors, else pytorch_model.bin; config.json; preprocessor_config.json), a PyTorch .bin\n"
        "(read by vitmsn's own restricted reader: no pickle code runs, no torch needed) or a .safetensors\n"
        "file. output: the file to write (atomically; only there: nothing is written beside the input).\n"
        "dtype: 'f32', 'bf16', 'f16' or 'int8' (the stored weight type). classifier: a safetensors file\n"
        "with classifier.weight / classifier.bias to merge as the head. overwrite: replace an existing output.\n"
        "allow_other_backbone: merge a head trained on another backbone. layout: 'rows' (the linear weights\n"
        "[out, in], a file any safetensors reader uses) or 'panels' (f32 only: laid out for this CPU's GEMM and\n"
        "loaded in place, nothing copied at load; a file only vitmsn reads).\n"
        "Returns a dict: output, weights_input, config_source, preprocessor_source, tensors, bytes,\n"
        "has_classifier, dropped (input tensors that are not part of the model), backbone, head_backbone\n"
        "('none', 'same', 'unrecorded', 'other'), replaced_labels, panel_width (0 for rows). Raises\n"
        "vitmsn.Error naming the file and the problem (the output is then not created); an existing output\n"
        "without overwrite is an error.");
  m.def("jpeg_decoder", &jpeg_decoder_name,
        "Which decoder this build uses for JPEG: 'stb_image' (default) or 'libjpeg-turbo' (bit-exact with\n"
        "Pillow).");
  m.def(
      "_stats",
      [](bool reset) {
        Stats& s = stats();
        py::dict d;
        d["live_buffers"] = s.live_buffers.load();
        d["input_copies"] = s.input_copies.load();
        d["in_flight"] = s.in_flight.load();
        d["max_in_flight"] = s.max_in_flight.load();
        d["released_sections"] = s.released_sections.load();
        d["gil_still_held"] = s.gil_still_held.load();
        d["last_result"] = s.last_result.load();
        if (reset) s.max_in_flight = s.in_flight.load();
        return d;
      },
      py::arg("reset") = false,
      "Internal counters for the tests: library buffers held by arrays, pixel-value inputs that had to be\n"
      "converted, calls running without the GIL now and at most at once (reset=True restarts that maximum),\n"
      "the address of the latest result's last_hidden_state as the library returned it.");

  // Classes are declared first and named as the package's (vitmsn.Features, not vitmsn._core.Features)
  // before any method is added: signatures in help() use that name.
  py::class_<PyFeatures> features(m, "Features",
                                  "What a forward pass returns (Model.extract_features). The arrays are views of the\n"
                                  "library's own buffers (no copy); they stay valid as long as any of them is\n"
                                  "referenced, whatever happens to the Features object or the Model.");
  py::class_<PyPreprocessor> preprocessor(m, "Preprocessor",
                                          "Hugging Face's ViTImageProcessor (PIL path), bit for bit: Pillow's resize "
                                          "on 8-bit\nRGB, rescale, normalize -> float32 pixel values [3, H, W]. The "
                                          "same code the Model\nruns on images.");
  for (const char* name : {"Error", "Features", "Preprocessor"}) m.attr(name).attr("__module__") = "vitmsn";

  features
      .def_property_readonly(
          "last_hidden_state", [](const PyFeatures& f) { return f.last_hidden_state; },
          "float32 [N, D]: the final layer norm over all tokens; row 0 is CLS, then the patches row-major\n"
          "(N = (H/P)*(W/P) + 1). Hugging Face's last_hidden_state[0].")
      .def_property_readonly(
          "cls",
          [](const PyFeatures& f) {
            const Matrix& h = f.features().last_hidden_state;
            return float_view(h.data(), {static_cast<py::ssize_t>(h.cols())}, f.owner);
          },
          "float32 [D]: the CLS token's embedding, row 0 of last_hidden_state (a view of it).")
      .def_property_readonly(
          "mean_patch",
          [](PyFeatures& f) {
            if (!f.mean_patch) f.mean_patch = vector_array(f.features().mean_patch());
            return f.mean_patch;
          },
          "float32 [D]: the mean of the patch tokens (rows 1..N-1 of last_hidden_state).")
      .def_property_readonly(
          "hidden_states", [](const PyFeatures& f) { return py::dict(f.hidden_states); },
          "dict {index: float32 [N, D]}: the hidden states asked for, by Hugging Face's index (0 = embeddings,\n"
          "i = output of layer i, before the final layer norm); negative requests appear as their index.")
      .def_property_readonly(
          "cls_attention", [](const PyFeatures& f) { return py::dict(f.cls_attention); },
          "dict {layer: float32 [heads, N]}: the CLS query's attention row of each layer asked for,\n"
          "softmax(q_cls K^T / sqrt(d)) per head.")
      .def_property_readonly(
          "attentions", [](const PyFeatures& f) { return py::dict(f.attentions); },
          "dict {layer: float32 [heads, N, N]}: the whole attention map of each layer asked for,\n"
          "softmax(Q K^T / sqrt(d)) per head (Hugging Face's attentions[layer][0]); [h, 0] is cls_attention's row h.")
      .def("__repr__", [](const PyFeatures& f) {
        const Matrix& h = f.features().last_hidden_state;
        std::string s =
            "vitmsn.Features(last_hidden_state [" + std::to_string(h.rows()) + ", " + std::to_string(h.cols()) + "]";
        if (!f.hidden_states.empty()) s += ", hidden_states " + indices_string(f.hidden_states);
        if (!f.cls_attention.empty()) s += ", cls_attention " + indices_string(f.cls_attention);
        if (!f.attentions.empty()) s += ", attentions " + indices_string(f.attentions);
        return s + ")";
      });

  py::class_<PyModel>(m, "Model",
                      "A ViT-MSN model loaded from a folder (model.safetensors + config.json\n"
                      "[+ preprocessor_config.json]) or a single .safetensors file (its config in the metadata).\n"
                      "float32 weights are used in place from a read-only memory map. Immutable: every method may\n"
                      "be called from several threads at once, and runs without the GIL.\n\n"
                      "Inputs (x) are an image path (str, bytes or os.PathLike, as os.fsencode takes), a "
                      "PIL.Image.Image\n(converted to RGB as "
                      "Hugging Face does), a uint8 numpy array [H, W, 3] (RGB) or [H, W] (gray), or float32 pixel\n"
                      "values [3, H, W] (preprocessed, as ViTImageProcessor returns them; read in place when\n"
                      "C-contiguous, other float layouts and dtypes are converted once).")
      .def(py::init([](const py::object& path, const py::object& threads, bool copy_weights,
                       const std::string& compute) {
             LoadOptions o;
             o.copy_weights = copy_weights;
             o.compute = parse_compute(compute);
             if (!threads.is_none()) {
               o.threads = to_int(threads, "threads");
               if (o.threads < 1)
                 throw Error(ErrorKind::kArgument, "threads must be at least 1 (None: every CPU this process may use)");
             }
             if (!is_path_like(path)) throw py::type_error("Model(path): path must be a str or os.PathLike");
             const std::string p = to_path(path);
             std::unique_ptr<PyModel> out;
             {
               WithoutGil no_gil;
               out.reset(new PyModel{Model::load(p, o), p});
             }
             out->threads = threads;
             out->copy_weights = copy_weights;
             out->compute = compute;
             if (o.threads > default_threads()) {
               const std::string warning = "threads=" + std::to_string(o.threads) + " is more than the " +
                                           std::to_string(default_threads()) +
                                           " CPUs this process may use: the threads share them (slower)";
               if (PyErr_WarnEx(PyExc_RuntimeWarning, warning.c_str(), 1) != 0) throw py::error_already_set();
             }
             return out;
           }),
           py::arg("path"), py::arg("threads") = py::none(), py::arg("copy_weights") = false,
           py::arg("compute") = "auto",
           "Loads a model. path: a folder or a .safetensors file (str, bytes or os.PathLike).\n"
           "threads: threads per forward pass (None: every CPU this process may use).\n"
           "copy_weights: read the weights file into private memory (memory use = its size) instead of\n"
           "  memory-mapping it, so that nothing done to the file later can affect the model. Without it, a\n"
           "  file rewritten in place after loading (cp over it) makes the next call raise vitmsn.Error;\n"
           "  replacing it by rename (mv) is safe.\n"
           "compute: 'auto' (bf16 weights compute in bf16 where the CPU's bf16 dot product pays, all else\n"
           "  in float32), 'f32' (always float32, as Hugging Face), 'bf16' (linear layers in bf16 with float32\n"
           "  accumulation; emulated, slowly, on CPUs without AVX512_BF16).\n"
           "Raises vitmsn.Error naming the file and the problem (missing file or tensor, a shape or config\n"
           "mismatch, a file that is not a safetensors model).")
      .def_property_readonly(
          "config", [](const PyModel& m) { return config_dict(m.model.config()); },
          "The hyper-parameters as a dict with Hugging Face's ViTMSNConfig keys (hidden_size,\n"
          "num_hidden_layers, ..., id2label {int: str} when the model has labels). A fresh copy.")
      .def_property_readonly(
          "labels", [](const PyModel& m) { return m.model.labels(); },
          "Class names of the classifier head (id2label, or 'LABEL_i'); empty without a head.")
      .def_property_readonly(
          "has_classifier", [](const PyModel& m) { return m.model.has_classifier(); },
          "True when the model has a classifier head (classify() and logits() need one).")
      .def_property_readonly(
          "kernel_isa", [](const PyModel&) { return kernel_isa(); },
          "The compute kernels in use: 'avx512', 'avx2' or 'portable'.")
      .def_property_readonly(
          "threads", [](const PyModel& m) { return m.model.threads(); }, "Threads used by each forward pass.")
      .def_property_readonly(
          "compute", [](const PyModel& m) { return std::string(m.model.compute()); },
          "How the linear layers compute: 'f32', 'bf16' or 'int8' (decided at load from compute=).")
      .def_property_readonly(
          "_load_args",
          [](const PyModel& m) { return py::make_tuple(fs_str(m.path), m.threads, m.copy_weights, m.compute); },
          "Model(*_load_args) loads this model again (pickling).")
      .def_property_readonly(
          "source", [](const PyModel& m) { return fs_str(m.model.source()); },
          "The weights file the model was read from.")
      .def_property_readonly(
          "backbone", [](const PyModel& m) { return m.backbone->id(); },
          "The backbone identity (64 hex digits): which checkpoint the encoder weights come from, the same\n"
          "for every conversion of it (vitmsn.convert records it; otherwise computed from the weights on\n"
          "first use). logits(features) refuses features of a model with another backbone.")
      .def_property_readonly(
          "preprocessor", [](const PyModel& m) { return PyPreprocessor{m.model.preprocessor()}; },
          "The model's Preprocessor (from its preprocessor_config.json or metadata, else the defaults).")
      .def("extract_features", &extract_features, py::arg("x"), py::arg("hidden_states") = py::tuple(),
           py::arg("cls_attention") = py::tuple(), py::arg("size") = py::none(), py::arg("attentions") = py::tuple(),
           "Features of one input (see the class doc for what x may be).\n\n"
           "hidden_states: indices to return besides last_hidden_state (0 = embeddings, i = layer i,\n"
           "  negative from the end; True = all). cls_attention: layers whose CLS attention row to return\n"
           "  (True = all). attentions: layers whose whole attention map [heads, N, N] to return (True = all;\n"
           "  heads x N x N floats each: 67 MB a layer on ViT-L/7 at 224x224). size: (height, width) or an int, the "
           "size images are resized to instead of the\n"
           "  preprocessor's (multiples of the patch size; position embeddings are interpolated as HF's\n"
           "  interpolate_pos_encoding=True). Pixel values are used at their own size.\n"
           "Returns a vitmsn.Features. Raises vitmsn.Error for an unreadable image, a bad shape or size, a\n"
           "layer index out of range.")
      .def("__call__", &call, py::arg("pixel_values"),
           "model(pixel_values): float32 [B, 3, H, W] (what ViTImageProcessor returns as numpy) ->\n"
           "last_hidden_state float32 [B, N, D], as Hugging Face's ViTMSNModel(pixel_values).last_hidden_state.\n"
           "C-contiguous float32 input is read in place; B == 1 returns the library's buffer itself, B > 1\n"
           "copies each image's rows into the one output array.")
      .def(
          "logits", [](const PyModel& m, const py::object& x) { return vector_array(logits_of(m, x)); }, py::arg("x"),
          "The classifier head's logits float32 [num_labels] for an input, or for a vitmsn.Features\n"
          "already computed. Raises vitmsn.Error when the model has no classifier head, and\n"
          "vitmsn.ArgumentError, naming both backbone identities, for features of a model with another\n"
          "backbone (see backbone).")
      .def("classify", &classify, py::arg("x"), py::arg("top") = 5,
           "The `top` most likely classes of an input as a list of (label, probability), most likely\n"
           "first (softmax of the logits; top=None: all classes). Raises vitmsn.Error without a head.")
      .def("_embed_into", &embed_into, py::arg("out"), py::arg("inputs"), py::arg("pool"), py::arg("size"),
           "Model.embed's step: the pooled embeddings of `inputs` written into `out` [len(inputs), D].")
      .def("_forward_seconds", &forward_seconds, py::arg("pixel_values"), py::arg("runs"),
           "Benchmark support: seconds of each of `runs` C++ calls of the forward pass on pixel values.")
      .def("__repr__", &repr_model);

  preprocessor
      .def(py::init(&make_preprocessor), py::arg("source") = py::none(),
           "Preprocessor(): the model card's defaults (224x224 bilinear, ImageNet mean/std);\n"
           "Preprocessor(model): a Model's; Preprocessor('preprocessor_config.json'): read from the file\n"
           "(raises vitmsn.Error naming the file and the key on a bad one).")
      .def("__call__", &preprocess, py::arg("image"), py::arg("size") = py::none(),
           "An image (path, PIL image, uint8 array [H, W, 3] / [H, W]) -> float32 pixel values [3, H, W].\n"
           "size: (height, width) or an int to resize to instead of the configured size.")
      .def("resize", &resize_only, py::arg("image"), py::arg("size") = py::none(),
           "The 8-bit RGB image after resize (and crop), before rescale: uint8 [H, W, 3], what Pillow's\n"
           "resize gives.")
      .def(
          "with_size",
          [](const PyPreprocessor& p, const py::object& h, const py::object& w) {
            const int height = to_int(h, "height"), width = to_int(w, "width");
            if (height < 1 || width < 1) {
              throw Error(ErrorKind::kArgument,
                          "size " + std::to_string(height) + "x" + std::to_string(width) + " must be at least 1x1");
            }
            return PyPreprocessor{p.preprocessor.with_size(height, width)};
          },
          py::arg("height"), py::arg("width"),
          "A copy that resizes to exactly height x width (shortest_edge and center crop turned off).")
      .def_property_readonly(
          "config", [](const PyPreprocessor& p) { return preprocessor_dict(p.preprocessor.config()); },
          "The settings as a dict in preprocessor_config.json form.")
      .def(py::pickle(
          // By its settings (preprocessor_config.json text): the same preprocessor on unpickling.
          [](const PyPreprocessor& p) { return py::make_tuple(to_json(p.preprocessor.config())); },
          [](const py::tuple& state) {
            if (state.size() != 1 || !py::isinstance<py::str>(state[0]))
              throw Error(ErrorKind::kArgument, "a pickled vitmsn.Preprocessor is (settings as JSON text,)");
            return PyPreprocessor{
                Preprocessor(parse_preprocessor_config(state[0].cast<std::string>(), "a pickled vitmsn.Preprocessor"))};
          }))
      .def("__repr__", [](const PyPreprocessor& p) {
        const PreprocessorConfig& c = p.preprocessor.config();
        std::string size = c.shortest_edge > 0 ? "shortest edge " + std::to_string(c.shortest_edge)
                                               : std::to_string(c.height) + "x" + std::to_string(c.width);
        if (!c.do_resize) size = "no resize";
        return "vitmsn.Preprocessor(" + size + ", resample " + std::to_string(static_cast<int>(c.resample)) + ")";
      });
}
