#pragma once
// A restricted pickle machine: runs the `data.pkl` of a torch.save checkpoint without executing any
// code. It knows only the opcodes and globals a tensor state dict needs (the allow-list is in
// pickle_machine.cpp) and refuses everything else; storages and tensors come out as references
// (key, dtype, element count; offset, size, stride) for the checkpoint reader to resolve.
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "vitmsn/error.hpp"
#include "vitmsn/safetensors.hpp"
#include "vitmsn/torch_checkpoint.hpp"

namespace vitmsn::detail::torch {

enum class Kind : std::uint8_t {
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kTuple,
  kList,
  kDict,
  kGlobal,
  kStorage,
  kTensor
};

/// Python's name of a Kind ("None", "dict", "tensor", ...).
const char* kind_name(Kind k);

/// A pickle value. Scalars live inline; strings, containers, storages and tensors live in the
/// machine's arenas and `i` indexes them, so shared references (memo) behave like Python's and
/// self-referencing containers cannot leak.
struct Value {
  Kind kind = Kind::kNone;
  std::int64_t i = 0;  // int, bool, or arena index
  double f = 0;
};

struct Dict {
  std::vector<std::pair<Value, Value>> items;          // insertion order, as Python keeps it
  std::unordered_map<std::string, std::size_t> index;  // canonical key -> position in items
};

struct StorageRef {
  std::string key;
  DType dtype = DType::kU8;
  std::uint64_t numel = 0;  // elements of dtype
};

struct TensorRef {
  std::size_t storage = 0;
  std::uint64_t offset = 0;  // elements
  std::vector<std::uint64_t> size;
  std::vector<std::uint64_t> stride;  // elements
};

/// Unpickles `data` (the bytes of data.pkl) under `limits`; every failure throws Error starting with
/// `where` and naming the opcode and its offset.
class PickleMachine {
 public:
  PickleMachine(std::string where, const std::uint8_t* data, std::size_t size, const TorchCheckpointLimits& limits)
      : where_(std::move(where)), data_(data), size_(size), limits_(limits) {}

  /// Runs to STOP and returns the unpickled object.
  Value run();

  const std::string& str(const Value& v) const { return strings_[static_cast<std::size_t>(v.i)]; }
  const std::vector<Value>& seq(const Value& v) const { return seqs_[static_cast<std::size_t>(v.i)]; }
  const Dict& dict(const Value& v) const { return dicts_[static_cast<std::size_t>(v.i)]; }
  const std::vector<StorageRef>& storages() const { return storages_; }
  const TensorRef& tensor(const Value& v) const { return tensors_[static_cast<std::size_t>(v.i)]; }
  /// Opcodes executed by run().
  std::size_t ops_executed() const { return ops_; }

  /// A dict key as a tensor-name component: strings as is, integers in decimal.
  std::string key_text(const Value& k) const;

 private:
  // Throws "<where>: <what> (<opcode and offset>)" of `kind` (default: malformed).
  [[noreturn]] void fail(const std::string& what, ErrorKind kind = ErrorKind::kMalformed) const;
  static std::string hex_byte(std::uint8_t b);

  // --- input
  const std::uint8_t* take(std::size_t n);
  std::uint8_t u8() { return *take(1); }
  std::string line();

  // --- stack
  void push(const Value& v);
  Value pop();
  Value& top();
  std::size_t mark_floor() const { return marks_.empty() ? 0 : marks_.back(); }
  /// Values above the topmost MARK, which is removed.
  std::vector<Value> pop_mark();

  // --- values
  Value make(Kind kind, std::size_t index) { return Value{kind, static_cast<std::int64_t>(index), 0}; }
  Value new_string(std::string s);
  Value new_seq(Kind kind, std::vector<Value> items);
  Value new_dict();
  void expect(const Value& v, Kind kind, const char* what);
  std::uint64_t non_negative(const Value& v, const char* what);

  void set_item(std::size_t dict_index, const Value& key, const Value& value);

  void memo_put(std::uint64_t slot);
  void memo_get(std::uint64_t slot);

  Value lookup_global(const std::string& module, const std::string& name);

  std::string global_name(const Value& g) const;

  void step();

  void push_string(std::uint64_t n);

  /// ('storage', storage_type, key, location, numel), as torch.serialization's persistent_id writes.
  Value persistent_load(const Value& pid);

  Value call(const Value& callable, const std::vector<Value>& args);

  void check_no_hooks(const Value& hooks);

  Value rebuild_tensor(const std::vector<Value>& args);

  std::string where_;
  const std::uint8_t* data_;
  std::size_t size_;
  const TorchCheckpointLimits& limits_;
  std::size_t pos_ = 0;
  std::size_t op_pos_ = 0;
  std::size_t ops_ = 0;
  std::uint8_t op_ = 0;

  std::vector<Value> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, Value> memo_;
  std::vector<std::string> strings_;
  std::vector<std::vector<Value>> seqs_;
  std::vector<Dict> dicts_;
  std::vector<StorageRef> storages_;
  std::unordered_map<std::string, std::size_t> storage_by_key_;
  std::vector<TensorRef> tensors_;
};

}  // namespace vitmsn::detail::torch
