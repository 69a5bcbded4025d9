// tree_decode_fast.cpp — the one-pass decoder of the "shmckpt.tree" document (tree.hpp,
// decode_tree_fast): the state dict built straight from the parser's events, without a DOM.
#include "format/tree.hpp"

#include <memory>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/json/basic_parser_impl.hpp>

#include "format/safetensors.hpp"
#include "format/sax_base.hpp"
#include "format/text.hpp"

namespace shmckpt::detail {
namespace json = boost::json;

namespace {

// A basic_parser handler that builds the state dict from the tree document's events. Every
// JSON container is one frame on a stack: a tagged object {"<tag>": payload}, a dict's payload
// (the array of items), one [key, value] item, or a list or tuple. A finished value is handed to
// the frame below it. Whatever decode_tree would reject, and anything else unexpected, makes it
// give up (the caller then runs the exact decoder, which names the error), so it needs no
// messages and checks in whatever order the events come.
class fast_tree_reader : public sax_base {
 public:
  fast_tree_reader(const std::vector<tensor_entry>& entries, int version)
      : entries_(entries), version_(version), used_(entries.size(), false),
        out_(std::make_shared<decoded_tree>()) {
    // One frame per open JSON container, and the parser allows no deeper nesting than this.
    stack_.resize(3 * max_tree_depth + 2);
    out_->tensors.reserve(entries.size());
  }

  // The decoded tree once the whole document has been read and every entry was found in it.
  std::shared_ptr<decoded_tree> result() {
    if (!root_done_) return nullptr;
    for (bool u : used_)
      if (!u) return nullptr;
    return std::move(out_);
  }

  bool on_document_end(json::error_code& ec) { return root_done_ || give_up(ec); }

  bool on_object_begin(json::error_code& ec) {
    if (size_ == stack_.size()) return give_up(ec);
    if (size_ == 0) {
      if (root_done_) return give_up(ec);
      push_tagged(role::root, 0);
      return true;
    }
    frame& f = top();
    if (f.k == fkind::item && f.pos == 0 && f.keys == key_type::string) {
      push_tagged(role::key, 0);  // {"bytes": ...} as a key
      return true;
    }
    std::size_t holder;
    if (!start_value(f, holder)) return give_up(ec);
    push_tagged(role::value, holder);
    return true;
  }

  bool on_object_end(std::size_t, json::error_code& ec) {
    frame& f = top();
    if (f.k != fkind::tagged || !f.has_result) return give_up(ec);
    --size_;  // `f` stays intact below the top: its result is moved from where it lies
    if (f.r == role::root) {
      out_->root = std::move(f.result.as_dict());
      root_done_ = true;
      return true;
    }
    return deliver(std::move(f.result), f.entry, ec);
  }

  bool on_array_begin(json::error_code& ec) {
    if (size_ == 0 || size_ == stack_.size()) return give_up(ec);
    frame& f = top();
    if (f.k == fkind::tagged) {
      if (f.has_result) return give_up(ec);
      std::size_t depth = f.holder + 1;
      if (depth > max_tree_depth) return give_up(ec);
      if (f.t == tag::dict || f.t == tag::idict) {
        push_dict(depth, f.t == tag::idict ? key_type::integer : key_type::string);
        return true;
      }
      if (f.t == tag::tuple) {
        push_list(depth, true);
        return true;
      }
      return give_up(ec);
    }
    if (f.k == fkind::items) {
      frame& item = push(fkind::item);
      item.depth = f.depth;
      item.keys = f.keys;
      return true;
    }
    std::size_t holder;
    if (!start_value(f, holder) || holder + 1 > max_tree_depth) return give_up(ec);
    push_list(holder + 1, false);
    return true;
  }

  bool on_array_end(std::size_t, json::error_code& ec) {
    frame& f = top();
    switch (f.k) {
      case fkind::item:
        if (f.pos != 2) return give_up(ec);
        --size_;
        return true;
      case fkind::items: {
        // The dict is built only now that its size is known: one allocation for its items, and
        // for a large one an index sized once.
        dict d;
        if (f.keys == key_type::integer) d.set_key_type(key_type::integer);
        d.reserve(f.items.size());
        for (auto& [k, v] : f.items) d.insert_or_assign(std::move(k), std::move(v));
        if (d.size() != f.items.size()) return give_up(ec);  // a repeated key
        f.items.clear();
        for (auto [i, entry] : f.pending)
          out_->tensors.emplace_back(&(d.begin() + static_cast<std::ptrdiff_t>(i))->second,
                                     entry);
        --size_;
        return deliver(value(std::move(d)), no_entry, ec);
      }
      case fkind::list: {
        for (auto [i, entry] : f.pending) out_->tensors.emplace_back(&f.l[i], entry);
        --size_;
        return deliver(f.is_tuple ? value(tuple(std::move(f.l))) : value(std::move(f.l)),
                       no_entry, ec);
      }
      case fkind::tagged: break;
    }
    return give_up(ec);
  }

  bool on_key(json::string_view last, std::size_t, json::error_code& ec) {
    std::string_view k = whole(last);
    frame& f = top();
    tag t = k == "dict"     ? tag::dict
            : k == "idict"  ? tag::idict
            : k == "tuple"  ? tag::tuple
            : k == "float"  ? tag::real
            : k == "bytes"  ? tag::bytes
            : k == "tensor" ? tag::tensor
                            : tag::none;
    part_.clear();
    if (f.t != tag::none || t == tag::none) return give_up(ec);  // a second key, or unknown
    if (f.r == role::root && t != tag::dict) return give_up(ec);
    if (f.r == role::key && t != tag::bytes) return give_up(ec);
    if ((t == tag::idict || t == tag::tuple) && version_ < 2) return give_up(ec);
    f.t = t;
    return true;
  }

  bool on_string(json::string_view last, std::size_t, json::error_code& ec) {
    std::string_view s = whole(last);
    bool ok = string_value(s, ec);
    part_.clear();
    return ok;
  }

  bool on_int64(std::int64_t i, json::string_view, json::error_code& ec) {
    if (size_ == 0) return give_up(ec);
    frame& f = top();
    if (f.k == fkind::item && f.pos == 0) {
      if (f.keys != key_type::integer) return give_up(ec);
      f.key = std::to_string(i);
      return key_done(f, ec);
    }
    return scalar(value(i), ec);
  }
  bool on_uint64(std::uint64_t, json::string_view, json::error_code& ec) { return give_up(ec); }
  bool on_double(double, json::string_view, json::error_code& ec) { return give_up(ec); }
  bool on_bool(bool b, json::error_code& ec) { return scalar(value(b), ec); }
  bool on_null(json::error_code& ec) { return scalar(value(none), ec); }

 private:
  enum class fkind : std::uint8_t { tagged, items, item, list };
  enum class role : std::uint8_t { root, value, key };  // where a tagged object stands
  enum class tag : std::uint8_t { none, dict, idict, tuple, real, bytes, tensor };
  static constexpr std::size_t no_entry = entry_finder::npos;

  // Frames are reused (the stack never shrinks), so their strings and vectors keep capacity.
  struct frame {
    fkind k = fkind::tagged;
    // tagged
    role r = role::value;
    tag t = tag::none;
    bool has_result = false;
    std::size_t holder = 0;  // depth of the container holding this node (the root's: 0)
    std::size_t entry = no_entry;
    value result;
    // items, item, list
    std::size_t depth = 0;   // the container's own depth (items and item: the dict's)
    key_type keys = key_type::string;
    std::size_t pos = 0;     // item: 0 before the key, 1 before the value, 2 after; list: count
    std::size_t mark = 0;    // path length before this item's key or list element's index
    bool is_tuple = false;
    std::string key;
    std::vector<dict::item> items;  // items: the dict's items so far
    list l;
    std::vector<std::pair<std::size_t, std::size_t>> pending;  // (child index, entry)
  };


  frame& top() { return stack_[size_ - 1]; }
  frame& push(fkind k) {
    frame& f = stack_[size_++];  // the parser's depth limit keeps size_ within the stack
    f.k = k;
    f.pos = 0;
    f.pending.clear();
    return f;
  }
  void push_tagged(role r, std::size_t holder) {
    frame& f = push(fkind::tagged);
    f.r = r;
    f.t = tag::none;
    f.has_result = false;
    f.holder = holder;
    f.entry = no_entry;
  }
  void push_dict(std::size_t depth, key_type keys) {
    frame& f = push(fkind::items);
    f.depth = depth;
    f.keys = keys;
    f.items.clear();
  }
  void push_list(std::size_t depth, bool is_tuple) {
    frame& f = push(fkind::list);
    f.depth = depth;
    f.is_tuple = is_tuple;
    f.l.clear();
  }

  // A value node begins in `f` (an item's value or a list element): false when none may stand
  // there. `holder` is the depth of the container that holds it.
  bool start_value(frame& f, std::size_t& holder) {
    if (f.k == fkind::item) {
      if (f.pos != 1) return false;
      holder = f.depth;
      return true;
    }
    if (f.k != fkind::list) return false;
    f.mark = path_.size();
    push_path(path_, std::to_string(f.pos));
    holder = f.depth;
    return true;
  }

  bool scalar(value&& v, json::error_code& ec) {
    if (size_ == 0) return give_up(ec);
    std::size_t holder;
    if (!start_value(top(), holder)) return give_up(ec);
    return deliver(std::move(v), no_entry, ec);
  }

  // An item's key is complete: the path goes down into it. (Repeated keys are found when the
  // dict is built, at its end.)
  bool key_done(frame& item, json::error_code&) {
    item.mark = path_.size();
    push_path(path_, item.key);
    item.pos = 1;
    return true;
  }

  // A finished value `v` (entries[entry] when it is a tensor's place) goes to the frame on top.
  bool deliver(value&& v, std::size_t entry, json::error_code& ec) {
    frame& p = top();
    switch (p.k) {
      case fkind::tagged:  // a dict's or tuple's payload
        p.result = std::move(v);
        p.has_result = true;
        return true;
      case fkind::item: {
        if (p.pos == 0) {  // a {"bytes": ...} key
          p.key = std::move(std::get<std::string>(v.raw()));
          return key_done(p, ec);
        }
        path_.resize(p.mark);
        frame& owner = stack_[size_ - 2];
        if (entry != no_entry) owner.pending.emplace_back(owner.items.size(), entry);
        owner.items.emplace_back(std::move(p.key), std::move(v));
        p.key.clear();
        p.pos = 2;
        return true;
      }
      case fkind::list:
        path_.resize(p.mark);
        if (entry != no_entry) p.pending.emplace_back(p.l.size(), entry);
        p.l.push_back(std::move(v));
        ++p.pos;
        return true;
      case fkind::items: break;
    }
    return give_up(ec);
  }

  bool string_value(std::string_view s, json::error_code& ec) {
    if (size_ == 0) return give_up(ec);
    frame& f = top();
    if (f.k == fkind::item && f.pos == 0) {
      if (f.keys != key_type::string) return give_up(ec);
      f.key.assign(s);
      return key_done(f, ec);
    }
    if (f.k != fkind::tagged) return scalar(value(std::string(s)), ec);
    if (f.has_result) return give_up(ec);
    switch (f.t) {
      case tag::real: {
        auto bits = parse_hex64(s);
        if (!bits) return give_up(ec);
        f.result = std::bit_cast<double>(*bits);
        break;
      }
      case tag::bytes: {
        auto bytes = parse_hex_bytes(s);
        if (!bytes) return give_up(ec);
        f.result = std::move(*bytes);
        break;
      }
      case tag::tensor: {
        std::size_t i = finder_.find(s);
        if (i == no_entry || used_[i] || s != path_) return give_up(ec);
        used_[i] = true;
        f.entry = i;
        f.result = none;
        break;
      }
      default: return give_up(ec);
    }
    f.has_result = true;
    return true;
  }

  const std::vector<tensor_entry>& entries_;
  int version_;
  std::vector<bool> used_;
  std::shared_ptr<decoded_tree> out_;
  std::vector<frame> stack_;
  std::size_t size_ = 0;
  bool root_done_ = false;
  std::string path_;
  entry_finder finder_{entries_};
};

}  // namespace

std::shared_ptr<decoded_tree> decode_tree_fast(std::string_view text,
                                               const std::vector<tensor_entry>& entries,
                                               int version) {
  if (auto plain = decode_tree_plain(text, entries, version)) return plain;
  if (first_invalid_utf8(text) != std::string_view::npos) return nullptr;
  json::parse_options opts;
  opts.max_depth = 3 * max_tree_depth + 1;  // what parse_header gives parse_strict
  opts.allow_invalid_utf8 = true;            // checked above, no less strictly
  json::basic_parser<fast_tree_reader> p(opts, entries, version);
  json::error_code ec;
  std::size_t n = p.write_some(false, text.data(), text.size(), ec);
  if (ec || n != text.size()) return nullptr;
  return p.handler().result();
}

}  // namespace shmckpt::detail
