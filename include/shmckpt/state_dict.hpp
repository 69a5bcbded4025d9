// shmckpt/state_dict.hpp — the value tree a trainer checkpoints.
//
// A state dict is a `dict`: keys in insertion order mapping to `value`s. A value is one of none,
// bool, int64, double, string, list, tuple, dict or tensor, nested to any depth.
//
// PyTorch state dicts need two things plain JSON-like trees lack, and both survive the child
// protocol and the checkpoint file: dicts keyed by integers (an optimizer's `state` maps
// parameter ids to their state) and tuples (Adam's `betas`). A dict's keys are either all
// strings or all integers (`key_type`); integer keys are stored as their canonical decimal text
// ("0", "-3"), so lookups, iteration and flattened tensor names are the same for both. A tuple is
// a list that remembers it was a tuple.
//
// A `tensor` is a dtype, a shape and a contiguous, row-major byte range. Like a framework tensor
// it has reference semantics: copying a tensor (or a value or dict holding one) copies the view,
// not the bytes, and both copies see the same memory. Who keeps that memory alive is the
// tensor's `owner` (a type-erased shared_ptr): memory allocated by shmckpt (private buffers,
// shared-segment buffers, mapped checkpoint files) is released when the last tensor referring
// to it goes away; a tensor built over the caller's own memory with no owner is only valid while
// the caller keeps that memory alive.
//
// Where the bytes live decides what a checkpoint costs: bytes inside the checkpoint process's
// shared segment are handed to the child zero-copy; bytes anywhere else are copied into the
// segment first (see checkpoint_process.hpp).
//
// Depth. A tree nests at most `max_nesting_depth` (64) levels of containers, the root dict being
// level 1: the same limit for the file format, the child protocol and every operation here.
// Copying a deeper tree, saving or writing it, or walking it (for_each_tensor, map_tensors)
// throws error(invalid_argument) naming the path where the limit was crossed, before anything
// is sent or written; destroying a tree of any depth is safe (it is dismantled iteratively).
//
// Thread safety: like standard containers — concurrent reads are safe, a write needs exclusive
// access. Tensor bytes are not synchronised at all; the owner of the training loop decides when
// they may change.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "shmckpt/dtype.hpp"

namespace shmckpt {

class value;
class dict;

namespace detail {
// The library's access to a dict's placement mark (see dict::placement_mark_).
struct dict_placement;
// The tree decoders' construction of a dict from all its items at once (lib/core/dict_build.hpp).
struct dict_build;
}  // namespace detail

/// The deepest nesting of dicts, lists and tuples a state dict may have (the root dict is 1).
inline constexpr std::size_t max_nesting_depth = 64;

/// The "no value" value (Python's None).
struct none_t {
  friend bool operator==(none_t, none_t) noexcept { return true; }
};
inline constexpr none_t none{};

using list = std::vector<value>;

/// A fixed sequence (Python's tuple): a list that is a distinct kind, so it comes back as a
/// tuple. Tensors in it are named by index like list elements ("param_groups.0.betas.1").
class tuple : public list {
 public:
  using list::list;
  tuple() = default;
  explicit tuple(list items) : list(std::move(items)) {}
};

/// What a dict's keys are. Integer keys are held as canonical decimal text (no sign on zero, no
/// leading zeros, '-' only for negatives, within int64), so "7" names key 7.
enum class key_type : std::uint8_t { string, integer };

/// Whether `key` is the canonical decimal text of an int64 (what an integer-keyed dict holds).
bool is_canonical_int_key(std::string_view key) noexcept;

class tensor {
 public:
  /// An empty F32 tensor of shape [0].
  tensor();

  /// A view over `data`, which must hold exactly tensor_nbytes(type, shape) bytes. `owner`, if
  /// given, keeps the memory alive for as long as any copy of this tensor exists.
  /// Throws error(invalid_argument) when the size does not match the dtype and shape.
  tensor(dtype type, std::vector<std::int64_t> shape, std::span<std::byte> data,
         std::shared_ptr<const void> owner = {});

  /// A new tensor with its own zero-filled private memory.
  static tensor zeros(dtype type, std::vector<std::int64_t> shape);

  /// A new tensor with its own private memory holding a copy of `src` (same size rule).
  static tensor copy_of(dtype type, std::vector<std::int64_t> shape,
                        std::span<const std::byte> src);

  /// A deep copy into new private memory.
  tensor clone() const;

  dtype type() const noexcept { return type_; }
  const std::vector<std::int64_t>& shape() const noexcept { return shape_; }
  /// Product of the shape (1 for a scalar of shape []).
  std::int64_t numel() const noexcept;
  std::size_t nbytes() const noexcept { return size_; }
  /// The bytes, mutable: tensors share memory like framework tensors do.
  std::span<std::byte> bytes() const noexcept { return {data_, size_}; }
  std::byte* data() const noexcept { return data_; }
  /// The elements as T; throws error(invalid_argument) unless sizeof(T) × 8 equals the dtype's
  /// bit size (e.g. data_as<float>() on F32, data_as<std::uint16_t>() on BF16).
  template <class T>
  std::span<T> data_as() const {
    check_element_size(sizeof(T));
    return {reinterpret_cast<T*>(data_), size_ / sizeof(T)};
  }
  const std::shared_ptr<const void>& owner() const noexcept { return owner_; }

 private:
  void check_element_size(std::size_t bytes) const;

  dtype type_;
  std::vector<std::int64_t> shape_;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::shared_ptr<const void> owner_;
};

/// "[2, 3]": a shape as error messages and tools print it.
std::string format_shape(std::span<const std::int64_t> shape);

/// Same dtype, same shape and identical bytes.
bool operator==(const tensor& a, const tensor& b) noexcept;

/// An ordered map with string keys (or integer keys, see key_type). Iteration follows insertion
/// order; lookups are O(1).
class dict {
 public:
  using item = std::pair<std::string, value>;
  using iterator = std::vector<item>::iterator;
  using const_iterator = std::vector<item>::const_iterator;

  dict();
  dict(std::initializer_list<item> items);
  /// Throws error(invalid_argument) when the dict nests deeper than max_nesting_depth.
  dict(const dict&);
  dict(dict&&) noexcept;
  dict& operator=(const dict&);
  dict& operator=(dict&&) noexcept;
  ~dict();

  /// The value at `key`, inserting none at the end when absent.
  value& operator[](std::string_view key);
  /// Sets `key` to `v`; a new key goes at the end, an existing key keeps its place.
  value& insert_or_assign(std::string key, value v);
  /// nullptr when absent.
  value* find(std::string_view key) noexcept;
  const value* find(std::string_view key) const noexcept;
  /// Throws error(not_found) naming the key when absent.
  value& at(std::string_view key);
  const value& at(std::string_view key) const;
  bool contains(std::string_view key) const noexcept { return find(key) != nullptr; }
  /// Removes `key`; returns whether it was there. O(n).
  bool erase(std::string_view key);
  /// Reserves room for `n` items (avoids rehashing while building large dicts).
  void reserve(std::size_t n);

  /// Whether the keys are strings (the default) or integers.
  key_type keys() const noexcept { return keys_; }
  /// Makes the keys integers (or strings again). Throws error(invalid_argument) naming the key
  /// when switching to integer while a key is not canonical decimal int64 text; afterwards every
  /// insert of such a key throws too.
  void set_key_type(key_type k);
  /// An empty integer-keyed dict.
  static dict with_int_keys();

  std::size_t size() const noexcept;
  bool empty() const noexcept { return size() == 0; }
  iterator begin() noexcept;
  iterator end() noexcept;
  const_iterator begin() const noexcept;
  const_iterator end() const noexcept;

  friend bool operator==(const dict& a, const dict& b) noexcept;

 private:
  friend struct detail::dict_placement;
  friend struct detail::dict_build;

  // Transparent hashing: lookups by string_view allocate nothing.
  struct key_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };
  void check_key(std::string_view key) const;
  const value* find_const(std::string_view key) const noexcept;
  void unmark() noexcept {
    placement_mark_ = 0;
    placement_tree_.reset();
  }

  std::vector<item> items_;
  std::unordered_map<std::string, std::size_t, key_hash, std::equal_to<>> index_;
  key_type keys_ = key_type::string;
  // Non-zero: the library built this tree (or copied one it built) with every tensor inside the
  // shared segment this number names (a stager snapshot, checkpoint_process::mark_shared), so
  // write() need not walk it. Copies keep it; every non-const member clears it, because any
  // change to the tree below starts with a non-const access of this root.
  std::uint64_t placement_mark_ = 0;
  // With a mark from checkpoint_process::mark_shared: the tree's descriptor, encoded once into
  // the same segment (opaque here; lib/core/placement.hpp), so that write() sends only its place.
  std::shared_ptr<const void> placement_tree_;
};

/// What a value holds. (Values are append-only: tools print and compare them.)
enum class kind : std::uint8_t { none, boolean, integer, real, string, list, dict, tensor, tuple };
std::string_view kind_name(kind k) noexcept;

class value {
 public:
  using storage =
      std::variant<none_t, bool, std::int64_t, double, std::string, list, dict, tensor, tuple>;

  value() noexcept = default;
  /// Throws error(invalid_argument) when `o` nests deeper than max_nesting_depth.
  value(const value& o);
  value(value&&) noexcept = default;
  value& operator=(const value& o);
  value& operator=(value&&) noexcept = default;
  /// Iterative: a tree of any depth is destroyed without deep recursion.
  ~value();
  value(none_t) noexcept {}
  value(bool b) noexcept : v_(b) {}
  template <class I>
    requires(std::is_integral_v<I> && !std::is_same_v<I, bool>)
  value(I i) noexcept : v_(static_cast<std::int64_t>(i)) {}
  value(double d) noexcept : v_(d) {}
  value(const char* s) : v_(std::string(s)) {}
  value(std::string s) noexcept : v_(std::move(s)) {}
  value(std::string_view s) : v_(std::string(s)) {}
  value(list l) noexcept : v_(std::move(l)) {}
  value(dict d) noexcept : v_(std::move(d)) {}
  value(tensor t) noexcept : v_(std::move(t)) {}
  value(tuple t) noexcept : v_(std::move(t)) {}

  kind type() const noexcept { return static_cast<kind>(v_.index()); }
  bool is_none() const noexcept { return type() == kind::none; }

  /// Typed access; throws error(invalid_argument) naming both kinds on mismatch.
  bool as_bool() const;
  std::int64_t as_int() const;
  double as_double() const;
  const std::string& as_string() const;
  list& as_list();
  const list& as_list() const;
  dict& as_dict();
  const dict& as_dict() const;
  tensor& as_tensor();
  const tensor& as_tensor() const;
  tuple& as_tuple();
  const tuple& as_tuple() const;

  /// A list or a tuple: the containers whose elements are named by index.
  bool is_sequence() const noexcept { return type() == kind::list || type() == kind::tuple; }
  /// The elements of a list or a tuple; throws error(invalid_argument) for other kinds.
  list& as_sequence();
  const list& as_sequence() const;

  storage& raw() noexcept { return v_; }
  const storage& raw() const noexcept { return v_; }

  /// Deep equality; tensors compare by dtype, shape and bytes; doubles bit-for-bit so NaN
  /// payloads round-trip exactly.
  friend bool operator==(const value& a, const value& b) noexcept;

 private:
  static storage copy_checked(const storage& s);

  storage v_;
};

/// The state dict handed to a checkpoint: the root of the tree.
using state_dict = dict;

/// Calls `fn(name, tensor)` for every tensor in depth-first key order. `name` is the flattened
/// key path: dict keys and list indexes joined by '.', e.g. "optim.state.0.exp_avg".
void for_each_tensor(const dict& root,
                     const std::function<void(const std::string& name, const tensor& t)>& fn);

/// Calls `fn(path, value)` for every node below the root (dicts, lists and tuples too, before
/// their elements) in depth-first key order, `path` flattened as for for_each_tensor. A
/// container's elements are visited only when `fn` returns true for it (the return value is
/// ignored for other nodes).
void for_each_node(const dict& root,
                   const std::function<bool(const std::string& path, const value& v)>& fn);

/// Number of tensors and their total bytes.
struct tensor_totals {
  std::size_t count = 0;
  std::uint64_t bytes = 0;
};
tensor_totals count_tensors(const dict& root);

/// A copy of the tree (same keys, order and non-tensor values) with every tensor replaced by
/// `fn(tensor)`, called in depth-first key order (the order of for_each_tensor).
dict map_tensors(const dict& root, const std::function<tensor(const tensor&)>& fn);

/// A deep copy whose tensors all own private copies of their bytes.
dict deep_clone(const dict& root);

/// Throws error(invalid_argument) naming the path when `root` nests deeper than
/// max_nesting_depth. Iterative: safe at any depth. (Saving, writing, copying and walking a
/// tree check this themselves.)
void check_nesting_depth(const dict& root);

}  // namespace shmckpt
