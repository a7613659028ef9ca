#include "formats/torch/pickle_machine.hpp"

#include <cstring>
#include <iterator>

#include "formats/torch/little_endian.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn::detail::torch {
namespace {

/// Pickle opcodes by pickletools name (protocols 0-5), for error messages: the refused ones too.
struct OpcodeName {
  std::uint8_t op;
  const char* name;
};
// clang-format off
constexpr OpcodeName kOpcodeNames[] = {
    {'(', "MARK"}, {'.', "STOP"}, {'0', "POP"}, {'1', "POP_MARK"}, {'2', "DUP"}, {'F', "FLOAT"}, {'I', "INT"},
    {'J', "BININT"}, {'K', "BININT1"}, {'L', "LONG"}, {'M', "BININT2"}, {'N', "NONE"}, {'P', "PERSID"},
    {'Q', "BINPERSID"}, {'R', "REDUCE"}, {'S', "STRING"}, {'T', "BINSTRING"}, {'U', "SHORT_BINSTRING"},
    {'V', "UNICODE"}, {'X', "BINUNICODE"}, {'a', "APPEND"}, {'b', "BUILD"}, {'c', "GLOBAL"}, {'d', "DICT"},
    {'}', "EMPTY_DICT"}, {'e', "APPENDS"}, {'g', "GET"}, {'h', "BINGET"}, {'i', "INST"}, {'j', "LONG_BINGET"},
    {'l', "LIST"}, {']', "EMPTY_LIST"}, {'o', "OBJ"}, {'p', "PUT"}, {'q', "BINPUT"}, {'r', "LONG_BINPUT"},
    {'s', "SETITEM"}, {'t', "TUPLE"}, {')', "EMPTY_TUPLE"}, {'u', "SETITEMS"}, {'G', "BINFLOAT"}, {'B', "BINBYTES"},
    {'C', "SHORT_BINBYTES"}, {0x80, "PROTO"}, {0x81, "NEWOBJ"}, {0x82, "EXT1"}, {0x83, "EXT2"}, {0x84, "EXT4"},
    {0x85, "TUPLE1"}, {0x86, "TUPLE2"}, {0x87, "TUPLE3"}, {0x88, "NEWTRUE"}, {0x89, "NEWFALSE"}, {0x8a, "LONG1"},
    {0x8b, "LONG4"}, {0x8c, "SHORT_BINUNICODE"}, {0x8d, "BINUNICODE8"}, {0x8e, "BINBYTES8"}, {0x8f, "EMPTY_SET"},
    {0x90, "ADDITEMS"}, {0x91, "FROZENSET"}, {0x92, "NEWOBJ_EX"}, {0x93, "STACK_GLOBAL"}, {0x94, "MEMOIZE"},
    {0x95, "FRAME"}, {0x96, "BYTEARRAY8"}, {0x97, "NEXT_BUFFER"}, {0x98, "READONLY_BUFFER"}};
// clang-format on

const char* opcode_name(std::uint8_t op) {
  for (const OpcodeName& o : kOpcodeNames) {
    if (o.op == op) return o.name;
  }
  return nullptr;
}

/// What an allowed global does when called (REDUCE) or named in a persistent id.
enum class GlobalKind {
  kOrderedDict,
  kRebuildTensor,              // _rebuild_tensor(storage, offset, size, stride)
  kRebuildTensorV2,            // + requires_grad, backward_hooks[, metadata]
  kRebuildParameter,           // (tensor, requires_grad, backward_hooks)
  kRebuildParameterWithState,  // + state
  kStorageType,
};

struct AllowedGlobal {
  const char* module;
  const char* name;
  GlobalKind kind;
  DType dtype;  // storage types only
};

// The whole allow-list. Storage classes are pickled by module 'torch' (torch/__init__.py defines
// them); UntypedStorage lives in torch.storage and is re-exported by torch; its elements are bytes.
constexpr AllowedGlobal kAllowedGlobals[] = {
    {"collections", "OrderedDict", GlobalKind::kOrderedDict, DType::kU8},
    {"torch._utils", "_rebuild_tensor", GlobalKind::kRebuildTensor, DType::kU8},
    {"torch._utils", "_rebuild_tensor_v2", GlobalKind::kRebuildTensorV2, DType::kU8},
    {"torch._utils", "_rebuild_parameter", GlobalKind::kRebuildParameter, DType::kU8},
    {"torch._utils", "_rebuild_parameter_with_state", GlobalKind::kRebuildParameterWithState, DType::kU8},
    {"torch", "FloatStorage", GlobalKind::kStorageType, DType::kF32},
    {"torch", "HalfStorage", GlobalKind::kStorageType, DType::kF16},
    {"torch", "BFloat16Storage", GlobalKind::kStorageType, DType::kBF16},
    {"torch", "DoubleStorage", GlobalKind::kStorageType, DType::kF64},
    {"torch", "LongStorage", GlobalKind::kStorageType, DType::kI64},
    {"torch", "IntStorage", GlobalKind::kStorageType, DType::kI32},
    {"torch", "ShortStorage", GlobalKind::kStorageType, DType::kI16},
    {"torch", "CharStorage", GlobalKind::kStorageType, DType::kI8},
    {"torch", "ByteStorage", GlobalKind::kStorageType, DType::kU8},
    {"torch", "BoolStorage", GlobalKind::kStorageType, DType::kBool},
    {"torch", "UntypedStorage", GlobalKind::kStorageType, DType::kU8},
    {"torch.storage", "UntypedStorage", GlobalKind::kStorageType, DType::kU8},
};

/// Python's name of each Kind, in enum order.
constexpr const char* kKindNames[] = {"None", "bool", "int",    "float",   "str",   "tuple",
                                      "list", "dict", "global", "storage", "tensor"};

}  // namespace

const char* kind_name(Kind k) { return kKindNames[static_cast<std::size_t>(k)]; }

Value PickleMachine::run() {
  while (pos_ < size_) {
    op_pos_ = pos_;
    op_ = data_[pos_++];
    if (++ops_ > limits_.max_pickle_ops) {
      fail("more than " + std::to_string(limits_.max_pickle_ops) + " opcodes (limit)", ErrorKind::kLimit);
    }
    if (op_ == '.') {  // STOP
      return pop();
    }
    step();
  }
  op_pos_ = size_;
  fail("ends without a STOP opcode");
}

std::string PickleMachine::key_text(const Value& k) const {
  if (k.kind == Kind::kString) return str(k);
  if (k.kind == Kind::kInt) return std::to_string(k.i);
  throw Error(ErrorKind::kUnsupported, where_ + ": dict key of type " + kind_name(k.kind) + " cannot name a tensor");
}

void PickleMachine::fail(const std::string& what, ErrorKind kind) const {
  std::string op = "end of data";
  if (op_pos_ < size_) {
    const char* name = opcode_name(op_);
    op = std::string("opcode ") + (name ? name : hex_byte(op_)) + " at offset " + std::to_string(op_pos_);
  }
  throw Error(kind, where_ + ": " + what + " (" + op + ")");
}

std::string PickleMachine::hex_byte(std::uint8_t b) {
  static const char kDigits[] = "0123456789abcdef";
  return std::string("0x") + kDigits[b >> 4] + kDigits[b & 15];
}

const std::uint8_t* PickleMachine::take(std::size_t n) {
  if (size_ - pos_ < n) fail("truncated: needs " + std::to_string(n) + " more bytes");
  const std::uint8_t* p = data_ + pos_;
  pos_ += n;
  return p;
}

std::string PickleMachine::line() {
  const void* nl = std::memchr(data_ + pos_, '\n', size_ - pos_);
  if (nl == nullptr) fail("truncated: line without a newline");
  const std::size_t n = static_cast<const std::uint8_t*>(nl) - (data_ + pos_);
  std::string s(reinterpret_cast<const char*>(take(n)), n);
  ++pos_;
  return s;
}

void PickleMachine::push(const Value& v) {
  if (stack_.size() >= limits_.max_stack_size) {
    fail("stack deeper than " + std::to_string(limits_.max_stack_size) + " values (limit)", ErrorKind::kLimit);
  }
  stack_.push_back(v);
}

Value PickleMachine::pop() {
  if (stack_.size() <= mark_floor()) fail("pops from an empty stack");
  Value v = stack_.back();
  stack_.pop_back();
  return v;
}

Value& PickleMachine::top() {
  if (stack_.size() <= mark_floor()) fail("reads from an empty stack");
  return stack_.back();
}

std::vector<Value> PickleMachine::pop_mark() {
  if (marks_.empty()) fail("no MARK to pop to");
  const std::size_t m = marks_.back();
  marks_.pop_back();
  std::vector<Value> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
  stack_.resize(m);
  return items;
}

Value PickleMachine::new_string(std::string s) {
  strings_.push_back(std::move(s));
  return make(Kind::kString, strings_.size() - 1);
}

Value PickleMachine::new_seq(Kind kind, std::vector<Value> items) {
  seqs_.push_back(std::move(items));
  return make(kind, seqs_.size() - 1);
}

Value PickleMachine::new_dict() {
  dicts_.emplace_back();
  return make(Kind::kDict, dicts_.size() - 1);
}

void PickleMachine::expect(const Value& v, Kind kind, const char* what) {
  if (v.kind != kind) {
    fail(std::string(what) + " must be " + kind_name(kind) + ", got " + kind_name(v.kind));
  }
}

std::uint64_t PickleMachine::non_negative(const Value& v, const char* what) {
  expect(v, Kind::kInt, what);
  if (v.i < 0) fail(std::string(what) + " is negative (" + std::to_string(v.i) + ")");
  return static_cast<std::uint64_t>(v.i);
}

void PickleMachine::set_item(std::size_t dict_index, const Value& key, const Value& value) {
  std::string canonical;
  if (key.kind == Kind::kString) {
    canonical = "s" + str(key);
  } else if (key.kind == Kind::kInt) {
    canonical = "i" + std::to_string(key.i);
  } else {
    fail(std::string("dict key of type ") + kind_name(key.kind) + " is not supported", ErrorKind::kUnsupported);
  }
  Dict& d = dicts_[dict_index];
  const auto [it, inserted] = d.index.emplace(std::move(canonical), d.items.size());
  if (inserted) {
    d.items.emplace_back(key, value);
  } else {
    d.items[it->second].second = value;
  }
}

void PickleMachine::memo_put(std::uint64_t slot) {
  const Value v = top();
  auto it = memo_.find(slot);
  if (it != memo_.end()) {
    it->second = v;
    return;
  }
  if (memo_.size() >= limits_.max_memo_entries) {
    fail("more than " + std::to_string(limits_.max_memo_entries) + " memo entries (limit)", ErrorKind::kLimit);
  }
  memo_.emplace(slot, v);
}

void PickleMachine::memo_get(std::uint64_t slot) {
  const auto it = memo_.find(slot);
  if (it == memo_.end()) fail("memo slot " + std::to_string(slot) + " is empty");
  push(it->second);
}

Value PickleMachine::lookup_global(const std::string& module, const std::string& name) {
  for (std::size_t g = 0; g < std::size(kAllowedGlobals); ++g) {
    if (module == kAllowedGlobals[g].module && name == kAllowedGlobals[g].name) {
      return make(Kind::kGlobal, g);
    }
  }
  std::string shown = module + "." + name;
  if (shown.size() > 200) shown = shown.substr(0, 200) + "...";
  fail("global '" + shown +
           "' is not allowed (a state dict of tensors needs only OrderedDict, "
           "torch._utils._rebuild_* and torch storage types)",
       ErrorKind::kUnsupported);
}

std::string PickleMachine::global_name(const Value& g) const {
  const AllowedGlobal& a = kAllowedGlobals[static_cast<std::size_t>(g.i)];
  return std::string(a.module) + "." + a.name;
}

void PickleMachine::step() {
  switch (op_) {
    case 0x80: {  // PROTO
      const std::uint8_t v = u8();
      if (v > 5) fail("pickle protocol " + std::to_string(v) + " is not supported (2-5)", ErrorKind::kUnsupported);
      return;
    }
    case 0x95: {  // FRAME: a length prefix for buffering; the content is ordinary opcodes
      const std::uint64_t n = rd64(take(8));
      if (n > size_ - pos_) fail("frame of " + std::to_string(n) + " bytes runs past the end");
      return;
    }
    case '(':  // MARK
      if (marks_.size() >= limits_.max_nesting_depth) {
        fail("MARKs nested deeper than " + std::to_string(limits_.max_nesting_depth) + " (limit)", ErrorKind::kLimit);
      }
      marks_.push_back(stack_.size());
      return;
    case '}':  // EMPTY_DICT
      push(new_dict());
      return;
    case ']':  // EMPTY_LIST
      push(new_seq(Kind::kList, {}));
      return;
    case ')':  // EMPTY_TUPLE
      push(new_seq(Kind::kTuple, {}));
      return;
    case 't':  // TUPLE
      push(new_seq(Kind::kTuple, pop_mark()));
      return;
    case 0x85:    // TUPLE1
    case 0x86:    // TUPLE2
    case 0x87: {  // TUPLE3
      const std::size_t n = op_ - 0x84u;
      std::vector<Value> items(n);
      for (std::size_t k = n; k-- > 0;) items[k] = pop();
      push(new_seq(Kind::kTuple, std::move(items)));
      return;
    }
    case 'q':  // BINPUT
      memo_put(u8());
      return;
    case 'r':  // LONG_BINPUT
      memo_put(rd32(take(4)));
      return;
    case 0x94:  // MEMOIZE
      memo_put(memo_.size());
      return;
    case 'h':  // BINGET
      memo_get(u8());
      return;
    case 'j':  // LONG_BINGET
      memo_get(rd32(take(4)));
      return;
    case 's': {  // SETITEM
      const Value value = pop();
      const Value key = pop();
      const Value d = top();
      expect(d, Kind::kDict, "SETITEM target");
      set_item(static_cast<std::size_t>(d.i), key, value);
      return;
    }
    case 'u': {  // SETITEMS
      const std::vector<Value> items = pop_mark();
      if (items.size() % 2 != 0) fail("odd number of values for key/value pairs");
      const Value d = top();
      expect(d, Kind::kDict, "SETITEMS target");
      for (std::size_t k = 0; k < items.size(); k += 2) {
        set_item(static_cast<std::size_t>(d.i), items[k], items[k + 1]);
      }
      return;
    }
    case 'a': {  // APPEND
      const Value v = pop();
      const Value l = top();
      expect(l, Kind::kList, "APPEND target");
      seqs_[static_cast<std::size_t>(l.i)].push_back(v);
      return;
    }
    case 'e': {  // APPENDS
      const std::vector<Value> items = pop_mark();
      const Value l = top();
      expect(l, Kind::kList, "APPENDS target");
      auto& dst = seqs_[static_cast<std::size_t>(l.i)];
      dst.insert(dst.end(), items.begin(), items.end());
      return;
    }
    case 'K':  // BININT1
      push(Value{Kind::kInt, u8(), 0});
      return;
    case 'M':  // BININT2
      push(Value{Kind::kInt, rd16(take(2)), 0});
      return;
    case 'J':  // BININT
      push(Value{Kind::kInt, static_cast<std::int32_t>(rd32(take(4))), 0});
      return;
    case 0x8a: {  // LONG1: little-endian two's complement of n bytes
      const std::size_t n = u8();
      if (n > 8) fail("integer of " + std::to_string(n) + " bytes does not fit in 64 bits");
      const std::uint8_t* p = take(n);
      std::uint64_t u = 0;
      for (std::size_t k = 0; k < n; ++k) u |= std::uint64_t{p[k]} << (8 * k);
      if (n > 0 && n < 8 && (p[n - 1] & 0x80)) u |= ~std::uint64_t{0} << (8 * n);  // sign-extend
      std::int64_t v;
      std::memcpy(&v, &u, sizeof v);
      push(Value{Kind::kInt, v, 0});
      return;
    }
    case 'G': {  // BINFLOAT: big-endian IEEE double
      const std::uint8_t* p = take(8);
      std::uint64_t u = 0;
      for (int k = 0; k < 8; ++k) u = u << 8 | p[k];
      double d;
      std::memcpy(&d, &u, sizeof d);
      push(Value{Kind::kFloat, 0, d});
      return;
    }
    case 0x88:  // NEWTRUE
      push(Value{Kind::kBool, 1, 0});
      return;
    case 0x89:  // NEWFALSE
      push(Value{Kind::kBool, 0, 0});
      return;
    case 'N':  // NONE
      push(Value{});
      return;
    case 'X':  // BINUNICODE
      push_string(rd32(take(4)));
      return;
    case 0x8c:  // SHORT_BINUNICODE
      push_string(u8());
      return;
    case 0x8d:  // BINUNICODE8
      push_string(rd64(take(8)));
      return;
    case 'U':  // SHORT_BINSTRING (Python 2 str)
      push_string(u8());
      return;
    case 'T': {  // BINSTRING: signed 32-bit length
      const auto n = static_cast<std::int32_t>(rd32(take(4)));
      if (n < 0) fail("negative string length");
      push_string(static_cast<std::uint64_t>(n));
      return;
    }
    case 'c': {  // GLOBAL "module\nname\n"
      const std::string module = line();
      const std::string name = line();
      push(lookup_global(module, name));
      return;
    }
    case 0x93: {  // STACK_GLOBAL
      const Value name = pop();
      const Value module = pop();
      expect(name, Kind::kString, "STACK_GLOBAL name");
      expect(module, Kind::kString, "STACK_GLOBAL module");
      push(lookup_global(str(module), str(name)));
      return;
    }
    case 'Q': {  // BINPERSID
      const Value pid = pop();
      push(persistent_load(pid));
      return;
    }
    case 'R': {  // REDUCE
      const Value args = pop();
      const Value callable = pop();
      expect(callable, Kind::kGlobal, "REDUCE callable");
      expect(args, Kind::kTuple, "REDUCE arguments");
      push(call(callable, seq(args)));
      return;
    }
    case 'b': {  // BUILD
      const Value state = pop();
      const Value target = top();
      // An OrderedDict state dict carries its `_metadata` (per-module versions) as instance
      // state; tensors need none of it, so it is checked for type and dropped.
      if (target.kind != Kind::kDict) {
        fail(std::string("BUILD on a ") + kind_name(target.kind) + " is not allowed (only on a dict)",
             ErrorKind::kUnsupported);
      }
      if (state.kind != Kind::kDict && state.kind != Kind::kNone && state.kind != Kind::kTuple) {
        fail(std::string("BUILD state of type ") + kind_name(state.kind) + " is not allowed", ErrorKind::kUnsupported);
      }
      return;
    }
    default: {
      const char* name = opcode_name(op_);
      fail(name ? "opcode is not allowed in a tensor checkpoint" : "unknown opcode", ErrorKind::kUnsupported);
    }
  }
}

void PickleMachine::push_string(std::uint64_t n) {
  if (n > size_ - pos_) fail("string of " + std::to_string(n) + " bytes runs past the end");
  const auto* p = reinterpret_cast<const char*>(take(static_cast<std::size_t>(n)));
  push(new_string(std::string(p, static_cast<std::size_t>(n))));
}

Value PickleMachine::persistent_load(const Value& pid) {
  expect(pid, Kind::kTuple, "persistent id");
  const std::vector<Value>& t = seq(pid);
  if (t.size() != 5 || t[0].kind != Kind::kString || str(t[0]) != "storage") {
    fail("persistent id must be ('storage', type, key, location, numel)");
  }
  expect(t[1], Kind::kGlobal, "storage type");
  const AllowedGlobal& type = kAllowedGlobals[static_cast<std::size_t>(t[1].i)];
  if (type.kind != GlobalKind::kStorageType) fail("'" + global_name(t[1]) + "' is not a storage type");
  expect(t[2], Kind::kString, "storage key");
  expect(t[3], Kind::kString, "storage location");
  const std::uint64_t numel = non_negative(t[4], "storage size");
  const std::string& key = str(t[2]);
  const auto [it, inserted] = storage_by_key_.emplace(key, storages_.size());
  if (inserted) {
    storages_.push_back(StorageRef{key, type.dtype, numel});
  } else {
    const StorageRef& s = storages_[it->second];
    if (s.dtype != type.dtype || s.numel != numel) {
      fail("storage '" + key + "' is referenced with two different types or sizes");
    }
  }
  return make(Kind::kStorage, it->second);
}

Value PickleMachine::call(const Value& callable, const std::vector<Value>& args) {
  const AllowedGlobal& g = kAllowedGlobals[static_cast<std::size_t>(callable.i)];
  const std::string name = global_name(callable);
  auto arity = [&](std::size_t lo, std::size_t hi) {
    if (args.size() < lo || args.size() > hi) {
      fail(name + " takes " + std::to_string(lo) + (lo == hi ? "" : "-" + std::to_string(hi)) + " arguments, got " +
           std::to_string(args.size()));
    }
  };
  switch (g.kind) {
    case GlobalKind::kOrderedDict:
      arity(0, 0);
      return new_dict();
    case GlobalKind::kRebuildTensor:
      arity(4, 4);
      return rebuild_tensor(args);
    case GlobalKind::kRebuildTensorV2:
      arity(6, 7);
      expect(args[4], Kind::kBool, "requires_grad");
      check_no_hooks(args[5]);
      if (args.size() == 7 && args[6].kind != Kind::kDict && args[6].kind != Kind::kNone) {
        fail("tensor metadata must be a dict or None");
      }
      return rebuild_tensor(args);
    case GlobalKind::kRebuildParameter:
    case GlobalKind::kRebuildParameterWithState:
      if (g.kind == GlobalKind::kRebuildParameter) {
        arity(3, 3);
      } else {
        arity(4, 4);
      }
      expect(args[0], Kind::kTensor, "parameter data");
      expect(args[1], Kind::kBool, "requires_grad");
      check_no_hooks(args[2]);
      return args[0];  // a Parameter is its tensor
    case GlobalKind::kStorageType:
      break;
  }
  fail("global '" + name + "' cannot be called");
}

void PickleMachine::check_no_hooks(const Value& hooks) {
  expect(hooks, Kind::kDict, "backward_hooks");
  if (!dict(hooks).items.empty()) fail("backward hooks are not supported");
}

Value PickleMachine::rebuild_tensor(const std::vector<Value>& args) {
  expect(args[0], Kind::kStorage, "tensor storage");
  TensorRef t;
  t.storage = static_cast<std::size_t>(args[0].i);
  t.offset = non_negative(args[1], "storage_offset");
  expect(args[2], Kind::kTuple, "tensor size");
  expect(args[3], Kind::kTuple, "tensor stride");
  const std::vector<Value>& size = seq(args[2]);
  const std::vector<Value>& stride = seq(args[3]);
  if (size.size() != stride.size()) {
    fail("tensor size has " + std::to_string(size.size()) + " dimensions but stride has " +
         std::to_string(stride.size()));
  }
  if (size.size() > limits_.max_tensor_dims) {
    fail("tensor has " + std::to_string(size.size()) + " dimensions, above the limit of " +
         std::to_string(limits_.max_tensor_dims));
  }
  for (std::size_t d = 0; d < size.size(); ++d) {
    t.size.push_back(non_negative(size[d], "tensor size"));
    t.stride.push_back(non_negative(stride[d], "tensor stride"));
  }
  tensors_.push_back(std::move(t));
  return make(Kind::kTensor, tensors_.size() - 1);
}

}  // namespace vitmsn::detail::torch
