#include "shmckpt/state_dict.hpp"

#include <algorithm>
#include <cstring>

#include "core/dict_build.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt {

std::string format_shape(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

namespace {

std::string shape_string(const std::vector<std::int64_t>& shape) { return format_shape(shape); }

std::uint64_t checked_nbytes(dtype type, const std::vector<std::int64_t>& shape) {
  auto n = tensor_nbytes(type, shape);
  if (!n)
    throw_error(errc::invalid_argument,
                "tensor of dtype " + std::string(dtype_name(type)) + " and shape " +
                    shape_string(shape) +
                    " has no valid byte size (negative dimension, overflow, or a sub-byte dtype "
                    "that does not fill whole bytes)");
  return *n;
}

// ---- depth -----------------------------------------------------------------------------------

[[noreturn]] void too_deep(const std::string& path) {
  // A path 20 000 levels deep is no use in a message: its start says where.
  std::string shown = path.size() <= 160 ? path : path.substr(0, 160) + "...";
  throw_error(errc::invalid_argument,
              "state dict nests deeper than " + std::to_string(max_nesting_depth) +
                  " levels at '" + shown +
                  "'; checkpoints hold at most that many levels of dicts, lists and tuples (the "
                  "root dict is level 1)");
}

const dict* as_dict_ptr(const value& v) noexcept {
  return v.type() == kind::dict ? &v.as_dict() : nullptr;
}
const list* as_seq_ptr(const value& v) noexcept {
  return v.is_sequence() ? &v.as_sequence() : nullptr;
}

// Walks the containers below (d or l), which is at `level`, with an explicit stack.
void check_nesting(const dict* d, const list* l, std::size_t level, std::string& path) {
  if (level > max_nesting_depth) too_deep(path);
  struct frame {
    const dict* d;
    const list* l;
    std::size_t next;
    std::size_t level;
    std::size_t mark;  // path length before this container's key
  };
  std::vector<frame> stack{{d, l, 0, level, path.size()}};
  while (!stack.empty()) {
    frame& f = stack.back();
    std::size_t n = f.d ? f.d->size() : f.l->size();
    if (f.next == n) {
      path.resize(f.mark);
      stack.pop_back();
      continue;
    }
    std::size_t i = f.next++;
    const value& child = f.d ? (f.d->begin() + static_cast<std::ptrdiff_t>(i))->second : (*f.l)[i];
    const dict* cd = as_dict_ptr(child);
    const list* cl = as_seq_ptr(child);
    if (!cd && !cl) continue;
    std::size_t mark = path.size();
    std::size_t child_level = f.level + 1;
    if (mark) path += '.';
    if (f.d)
      path += (f.d->begin() + static_cast<std::ptrdiff_t>(i))->first;
    else
      path += std::to_string(i);
    if (child_level > max_nesting_depth) too_deep(path);
    stack.push_back({cd, cl, 0, child_level, mark});  // `f` may dangle from here on
  }
}

// Copies check the depth once, in the outermost copy; the copies it makes of the children
// (through the containers' own copy constructors) see that they are nested and skip it.
thread_local int t_copy_nesting = 0;
struct copy_scope {
  bool outermost = t_copy_nesting++ == 0;
  copy_scope() = default;
  copy_scope(const copy_scope&) = delete;
  copy_scope& operator=(const copy_scope&) = delete;
  ~copy_scope() { --t_copy_nesting; }
};

bool is_container(const value& v) noexcept { return v.type() == kind::dict || v.is_sequence(); }

std::shared_ptr<std::byte[]> private_buffer(std::size_t n) {
  // make_shared_for_overwrite would skip zeroing, but zeroing is what zeros() promises.
  return std::shared_ptr<std::byte[]>(new std::byte[n == 0 ? 1 : n]());
}

}  // namespace

// ---- tensor ----------------------------------------------------------------------------------

tensor::tensor() : type_(dtype::f32), shape_{0} {}

tensor::tensor(dtype type, std::vector<std::int64_t> shape, std::span<std::byte> data,
               std::shared_ptr<const void> owner)
    : type_(type), shape_(std::move(shape)), owner_(std::move(owner)) {
  std::uint64_t need = checked_nbytes(type_, shape_);
  if (need != data.size())
    throw_error(errc::invalid_argument,
                "tensor of dtype " + std::string(dtype_name(type_)) + " and shape " +
                    shape_string(shape_) + " needs " + std::to_string(need) +
                    " bytes but was given " + std::to_string(data.size()));
  data_ = data.data();
  size_ = data.size();
}

tensor tensor::zeros(dtype type, std::vector<std::int64_t> shape) {
  auto n = checked_nbytes(type, shape);
  auto buf = private_buffer(n);
  std::span<std::byte> bytes{buf.get(), static_cast<std::size_t>(n)};
  return tensor(type, std::move(shape), bytes, std::move(buf));
}

tensor tensor::copy_of(dtype type, std::vector<std::int64_t> shape,
                       std::span<const std::byte> src) {
  auto n = checked_nbytes(type, shape);
  if (n != src.size())
    throw_error(errc::invalid_argument, "tensor::copy_of: shape " + shape_string(shape) + " of " +
                                            std::string(dtype_name(type)) + " needs " +
                                            std::to_string(n) + " bytes, source has " +
                                            std::to_string(src.size()));
  auto buf = std::shared_ptr<std::byte[]>(new std::byte[n == 0 ? 1 : n]);
  if (n) std::memcpy(buf.get(), src.data(), n);
  std::span<std::byte> bytes{buf.get(), static_cast<std::size_t>(n)};
  return tensor(type, std::move(shape), bytes, std::move(buf));
}

tensor tensor::clone() const { return copy_of(type_, shape_, bytes()); }

std::int64_t tensor::numel() const noexcept {
  std::int64_t n = 1;
  for (auto d : shape_) n *= d;
  return n;
}

void tensor::check_element_size(std::size_t bytes) const {
  if (bytes * 8 != dtype_bits(type_))
    throw_error(errc::invalid_argument, "tensor of dtype " + std::string(dtype_name(type_)) +
                                            " has " + std::to_string(dtype_bits(type_)) +
                                            "-bit elements, not " + std::to_string(bytes * 8) +
                                            "-bit ones");
}

bool operator==(const tensor& a, const tensor& b) noexcept {
  if (a.type() != b.type() || a.shape() != b.shape() || a.nbytes() != b.nbytes()) return false;
  return a.nbytes() == 0 || a.data() == b.data() ||
         std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

// ---- dict ------------------------------------------------------------------------------------

bool is_canonical_int_key(std::string_view key) noexcept {
  std::string_view digits = key;
  bool negative = !digits.empty() && digits.front() == '-';
  if (negative) digits.remove_prefix(1);
  if (digits.empty() || digits.size() > 19) return false;
  for (char c : digits)
    if (c < '0' || c > '9') return false;
  if (digits.front() == '0') return digits.size() == 1 && !negative;  // "0", never "-0" or "007"
  if (digits.size() < 19) return true;
  // 19 digits: compare with the int64 limits as text (same length, so lexicographic works).
  return digits <= (negative ? std::string_view("9223372036854775808")
                             : std::string_view("9223372036854775807"));
}

void dict::check_key(std::string_view key) const {
  if (keys_ == key_type::integer && !is_canonical_int_key(key))
    throw_error(errc::invalid_argument,
                "key '" + std::string(key) +
                    "' cannot go into an integer-keyed dict: integer keys are held as canonical "
                    "decimal int64 text such as \"0\" or \"-3\"");
}

void dict::set_key_type(key_type k) {
  if (k == key_type::integer)
    for (const auto& it : items_)
      if (!is_canonical_int_key(it.first))
        throw_error(errc::invalid_argument,
                    "cannot make a dict with the key '" + it.first +
                        "' integer-keyed: integer keys are held as canonical decimal int64 text "
                        "such as \"0\" or \"-3\"");
  keys_ = k;
}

dict dict::with_int_keys() {
  dict d;
  d.keys_ = key_type::integer;
  return d;
}

dict::dict() = default;
dict::dict(const dict& o) {
  copy_scope scope;
  if (scope.outermost) {
    std::string path;
    check_nesting(&o, nullptr, 1, path);
  }
  items_ = o.items_;
  index_ = o.index_;
  keys_ = o.keys_;
  placement_mark_ = o.placement_mark_;  // the copy's tensors are the same views
  placement_tree_ = o.placement_tree_;
}
dict::dict(dict&&) noexcept = default;
dict& dict::operator=(const dict& o) {
  if (this != &o) {
    dict copy(o);
    *this = std::move(copy);
  }
  return *this;
}
dict& dict::operator=(dict&&) noexcept = default;
dict::~dict() = default;

dict::dict(std::initializer_list<item> items) {
  for (const auto& it : items) insert_or_assign(it.first, it.second);
}

value& dict::operator[](std::string_view key) {
  unmark();
  if (value* v = find(key)) return *v;
  return insert_or_assign(std::string(key), value{});
}

// Small dicts (most of a model's: one per layer, a few keys each) have no hash index: a lookup
// scans their items, which is faster than hashing and saves a node allocation per key. index_
// is either empty, and then items_ holds at most small_dict_items keys, or it indexes every key.
namespace {
constexpr std::size_t small_dict_items = 8;
}  // namespace

value& dict::insert_or_assign(std::string key, value v) {
  unmark();
  if (value* existing = const_cast<value*>(find_const(key))) {
    *existing = std::move(v);
    return *existing;
  }
  check_key(key);
  if (!index_.empty()) index_.emplace(key, items_.size());
  items_.emplace_back(std::move(key), std::move(v));
  if (index_.empty() && items_.size() > small_dict_items) {
    index_.reserve(std::max(items_.capacity(), 2 * small_dict_items));
    for (std::size_t i = 0; i < items_.size(); ++i) index_.emplace(items_[i].first, i);
  }
  return items_.back().second;
}

bool detail::dict_build::adopt(dict& d, std::vector<dict::item>& items) {
  d.unmark();
  for (const auto& it : items) d.check_key(it.first);
  if (items.size() <= small_dict_items) {
    for (std::size_t i = 1; i < items.size(); ++i)
      for (std::size_t j = 0; j < i; ++j)
        if (items[i].first == items[j].first) return false;
  } else {
    d.index_.reserve(items.size());
    for (std::size_t i = 0; i < items.size(); ++i)
      if (!d.index_.emplace(items[i].first, i).second) {
        d.index_.clear();
        return false;
      }
  }
  d.items_ = std::move(items);
  items.clear();
  return true;
}

const value* dict::find_const(std::string_view key) const noexcept {
  if (index_.empty()) {
    for (const auto& it : items_)
      if (it.first == key) return &it.second;
    return nullptr;
  }
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &items_[it->second].second;
}

value* dict::find(std::string_view key) noexcept {
  unmark();
  return const_cast<value*>(find_const(key));
}

const value* dict::find(std::string_view key) const noexcept { return find_const(key); }

value& dict::at(std::string_view key) {
  unmark();
  if (value* v = find(key)) return *v;
  throw_error(errc::not_found, "no key '" + std::string(key) + "' in dict");
}

const value& dict::at(std::string_view key) const {
  if (const value* v = find_const(key)) return *v;
  throw_error(errc::not_found, "no key '" + std::string(key) + "' in dict");
}

void dict::reserve(std::size_t n) {
  items_.reserve(n);
  if (n > small_dict_items) index_.reserve(n);
}

bool dict::erase(std::string_view key) {
  unmark();
  if (index_.empty()) {
    auto it = std::find_if(items_.begin(), items_.end(),
                           [&](const item& i) { return i.first == key; });
    if (it == items_.end()) return false;
    items_.erase(it);
    return true;
  }
  auto it = index_.find(key);
  if (it == index_.end()) return false;
  std::size_t pos = it->second;
  items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(pos));
  index_.erase(it);
  for (auto& [k, i] : index_)
    if (i > pos) --i;
  return true;
}

std::size_t dict::size() const noexcept { return items_.size(); }
dict::iterator dict::begin() noexcept {
  unmark();
  return items_.begin();
}
dict::iterator dict::end() noexcept {
  unmark();
  return items_.end();
}
dict::const_iterator dict::begin() const noexcept { return items_.begin(); }
dict::const_iterator dict::end() const noexcept { return items_.end(); }

bool operator==(const dict& a, const dict& b) noexcept {
  return a.keys_ == b.keys_ && a.items_ == b.items_;
}

// ---- value -----------------------------------------------------------------------------------

void check_nesting_depth(const dict& root) {
  std::string path;
  check_nesting(&root, nullptr, 1, path);
}

value::storage value::copy_checked(const storage& s) {
  copy_scope scope;
  if (scope.outermost) {
    if (auto* d = std::get_if<dict>(&s)) {
      std::string path;
      check_nesting(d, nullptr, 1, path);
    } else if (auto* l = std::get_if<list>(&s)) {
      std::string path;
      check_nesting(nullptr, l, 1, path);
    } else if (auto* t = std::get_if<tuple>(&s)) {
      std::string path;
      check_nesting(nullptr, t, 1, path);
    }
  }
  return s;
}

value::value(const value& o) : v_(copy_checked(o.v_)) {}

value& value::operator=(const value& o) {
  if (this != &o) {
    storage copy = copy_checked(o.v_);
    v_ = std::move(copy);
  }
  return *this;
}

namespace {
// Moves the children of `s` that are containers themselves into `out`, leaving `s` shallow.
void detach_nested(value::storage& s, std::vector<value>& out) {
  auto take = [&](value& child) {
    if (is_container(child)) out.push_back(std::move(child));
  };
  if (auto* d = std::get_if<dict>(&s)) {
    for (auto& item : *d) take(item.second);
  } else if (auto* l = std::get_if<list>(&s)) {
    for (auto& e : *l) take(e);
  } else if (auto* t = std::get_if<tuple>(&s)) {
    for (auto& e : *t) take(e);
  }
}

bool has_nested(const value::storage& s) noexcept {
  auto any = [](const auto& range) {
    for (const auto& e : range)
      if (is_container(e)) return true;
    return false;
  };
  if (auto* d = std::get_if<dict>(&s)) {
    for (const auto& item : *d)
      if (is_container(item.second)) return true;
    return false;
  }
  if (auto* l = std::get_if<list>(&s)) return any(*l);
  if (auto* t = std::get_if<tuple>(&s)) return any(*t);
  return false;
}
}  // namespace

value::~value() {
  // The variant's own destructor would recurse once per level; a tree built 100 000 levels deep
  // would overflow the stack. Nested containers are moved to a worklist and dismantled there,
  // each one shallow by the time it is destroyed.
  if (!has_nested(v_)) return;
  std::vector<value> pending;
  detach_nested(v_, pending);
  while (!pending.empty()) {
    value v = std::move(pending.back());
    pending.pop_back();
    detach_nested(v.v_, pending);
  }
}

std::string_view kind_name(kind k) noexcept {
  switch (k) {
    case kind::none: return "none";
    case kind::boolean: return "bool";
    case kind::integer: return "int";
    case kind::real: return "float";
    case kind::string: return "string";
    case kind::list: return "list";
    case kind::dict: return "dict";
    case kind::tensor: return "tensor";
    case kind::tuple: return "tuple";
  }
  return "?";
}

namespace {
template <class T>
T& checked_get(value::storage& v, kind want) {
  if (auto* p = std::get_if<T>(&v)) return *p;
  throw_error(errc::invalid_argument, "value is a " +
                                          std::string(kind_name(static_cast<kind>(v.index()))) +
                                          ", not a " + std::string(kind_name(want)));
}
}  // namespace

bool value::as_bool() const { return checked_get<bool>(const_cast<storage&>(v_), kind::boolean); }
std::int64_t value::as_int() const {
  return checked_get<std::int64_t>(const_cast<storage&>(v_), kind::integer);
}
double value::as_double() const {
  return checked_get<double>(const_cast<storage&>(v_), kind::real);
}
const std::string& value::as_string() const {
  return checked_get<std::string>(const_cast<storage&>(v_), kind::string);
}
list& value::as_list() { return checked_get<list>(v_, kind::list); }
const list& value::as_list() const { return checked_get<list>(const_cast<storage&>(v_), kind::list); }
dict& value::as_dict() { return checked_get<dict>(v_, kind::dict); }
const dict& value::as_dict() const { return checked_get<dict>(const_cast<storage&>(v_), kind::dict); }
tensor& value::as_tensor() { return checked_get<tensor>(v_, kind::tensor); }
const tensor& value::as_tensor() const {
  return checked_get<tensor>(const_cast<storage&>(v_), kind::tensor);
}
tuple& value::as_tuple() { return checked_get<tuple>(v_, kind::tuple); }
const tuple& value::as_tuple() const {
  return checked_get<tuple>(const_cast<storage&>(v_), kind::tuple);
}
list& value::as_sequence() {
  if (auto* t = std::get_if<tuple>(&v_)) return *t;
  return checked_get<list>(v_, kind::list);
}
const list& value::as_sequence() const { return const_cast<value*>(this)->as_sequence(); }

bool operator==(const value& a, const value& b) noexcept {
  if (a.v_.index() != b.v_.index()) return false;
  if (auto* d = std::get_if<double>(&a.v_)) {
    double e = std::get<double>(b.v_);
    return std::memcmp(d, &e, sizeof e) == 0;
  }
  return a.v_ == b.v_;
}

// ---- traversal -------------------------------------------------------------------------------

namespace {

void visit_tensors(const value& v, std::string& name,
                   const std::function<void(const std::string&, const tensor&)>& fn);

void visit_dict(const dict& d, std::string& name,
                const std::function<void(const std::string&, const tensor&)>& fn) {
  for (const auto& [k, v] : d) {
    std::size_t mark = name.size();
    if (mark) name += '.';
    name += k;
    visit_tensors(v, name, fn);
    name.resize(mark);
  }
}

void visit_tensors(const value& v, std::string& name,
                   const std::function<void(const std::string&, const tensor&)>& fn) {
  switch (v.type()) {
    case kind::tensor: fn(name, v.as_tensor()); break;
    case kind::dict: visit_dict(v.as_dict(), name, fn); break;
    case kind::list:
    case kind::tuple: {
      const auto& l = v.as_sequence();
      for (std::size_t i = 0; i < l.size(); ++i) {
        std::size_t mark = name.size();
        if (mark) name += '.';
        name += std::to_string(i);
        visit_tensors(l[i], name, fn);
        name.resize(mark);
      }
      break;
    }
    default: break;
  }
}

using node_visitor = std::function<bool(const std::string&, const value&)>;

void visit_children(const value& v, std::string& path, const node_visitor& fn);

void visit_node(const value& v, std::string& path, std::string_view part, const node_visitor& fn) {
  std::size_t mark = path.size();
  if (mark) path += '.';
  path += part;
  if (fn(path, v)) visit_children(v, path, fn);
  path.resize(mark);
}

void visit_children(const value& v, std::string& path, const node_visitor& fn) {
  if (v.type() == kind::dict) {
    for (const auto& [k, child] : v.as_dict()) visit_node(child, path, k, fn);
  } else if (v.is_sequence()) {
    const auto& l = v.as_sequence();
    for (std::size_t i = 0; i < l.size(); ++i) visit_node(l[i], path, std::to_string(i), fn);
  }
}

value map_value(const value& v, const std::function<tensor(const tensor&)>& fn) {
  switch (v.type()) {
    case kind::tensor: return fn(v.as_tensor());
    case kind::dict: return map_tensors(v.as_dict(), fn);
    case kind::list:
    case kind::tuple: {
      list out;
      out.reserve(v.as_sequence().size());
      for (const auto& e : v.as_sequence()) out.push_back(map_value(e, fn));
      if (v.type() == kind::tuple) return tuple(std::move(out));
      return out;
    }
    default: return v;
  }
}

}  // namespace

void for_each_tensor(const dict& root,
                     const std::function<void(const std::string&, const tensor&)>& fn) {
  check_nesting_depth(root);  // the walk below recurses once per level
  std::string name;
  visit_dict(root, name, fn);
}

void for_each_node(const dict& root, const node_visitor& fn) {
  check_nesting_depth(root);  // the walk below recurses once per level
  std::string path;
  for (const auto& [k, v] : root) visit_node(v, path, k, fn);
}

tensor_totals count_tensors(const dict& root) {
  tensor_totals t;
  for_each_tensor(root, [&](const std::string&, const tensor& x) {
    ++t.count;
    t.bytes += x.nbytes();
  });
  return t;
}

dict map_tensors(const dict& root, const std::function<tensor(const tensor&)>& fn) {
  copy_scope scope;  // the copies of scalars below need no depth check of their own
  if (scope.outermost) check_nesting_depth(root);  // map_value recurses once per level
  dict out;
  out.reserve(root.size());
  out.set_key_type(root.keys());
  for (const auto& [k, v] : root) out.insert_or_assign(k, map_value(v, fn));
  return out;
}

dict deep_clone(const dict& root) {
  return map_tensors(root, [](const tensor& t) { return t.clone(); });
}

}  // namespace shmckpt
