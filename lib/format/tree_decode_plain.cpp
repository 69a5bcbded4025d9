// tree_decode_plain.cpp — the tree document as our writer writes it, decoded by hand (tree.hpp,
// decode_tree_plain).
//
// The tree of a large state dict is megabytes of JSON of one regular shape, and the SAX decoder
// (tree_decode_fast.cpp) spends most of its time dispatching the parser's events through its
// frame stack. This one reads the same grammar by recursive descent, straight from the text,
// in the layout our encoder (tree_encode.cpp) writes: no whitespace, int64 integers, strings
// with the short escapes only. At anything else it gives up, and the SAX
// decoder reads the tree instead; it builds exactly what that decoder builds (the same dict
// construction, the same checks, the same tensor places), which test/tree_decoders_test.cpp
// checks against the exact decoder on every input it has.
#include "format/tree.hpp"

#include <bit>
#include <cstring>
#include <limits>
#include <memory>
#include <string_view>
#include <vector>

#include "core/dict_build.hpp"
#include "format/header_plain.hpp"
#include "format/safetensors.hpp"
#include "format/text.hpp"

namespace shmckpt::detail {

namespace {

class plain_tree_reader {
 public:
  plain_tree_reader(std::string_view text, const std::vector<tensor_entry>& entries, int version)
      : text_(text), p_(text.data()), end_(text.data() + text.size()), version_(version),
        entries_(entries), used_(entries.size(), false), out_(std::make_shared<decoded_tree>()),
        scratch_(max_tree_depth + 2), item_scratch_(max_tree_depth + 2) {
    out_->tensors.reserve(entries.size());
  }

  std::shared_ptr<decoded_tree> run() {
    if (!take("{\"dict\":")) return nullptr;
    if (!items(out_->root, 1, key_type::string) || !take("}") || p_ != end_) return nullptr;
    for (bool u : used_)
      if (!u) return nullptr;
    return std::move(out_);
  }

 private:
  static constexpr std::size_t no_entry = entry_finder::npos;
  enum class tag { dict, idict, tuple, real, bytes, tensor };

  bool take(std::string_view word) noexcept {
    if (static_cast<std::size_t>(end_ - p_) < word.size() ||
        std::memcmp(p_, word.data(), word.size()) != 0)
      return false;
    p_ += word.size();
    return true;
  }
  bool at(char c) const noexcept { return p_ != end_ && *p_ == c; }

  // A JSON string at p_, unescaped: a view of the text when it has no escape, else `buf`.
  bool string(std::string_view& out, std::string& buf) {
    if (!at('"')) return false;
    const char* s = p_ + 1;
    const char* q = s;
    while (q != end_ && *q != '"' && *q != '\\' && static_cast<unsigned char>(*q) >= 0x20) ++q;
    if (q != end_ && *q == '"') {
      out = std::string_view(s, static_cast<std::size_t>(q - s));
      p_ = q + 1;
      return true;
    }
    buf.clear();
    std::size_t next = scan_json_string(text_, static_cast<std::size_t>(p_ - text_.data()), buf);
    if (next == std::string_view::npos) return false;
    p_ = text_.data() + next;
    out = buf;
    return true;
  }

  // An integer in the int64 range, optionally negative (not "-0"): what on_int64 delivers.
  bool integer(std::int64_t& v) noexcept {
    bool negative = at('-');
    if (negative) ++p_;
    const char* start = p_;
    std::uint64_t n = 0;  // 19 digits cannot overflow it
    while (p_ != end_ && *p_ >= '0' && *p_ <= '9') {
      if (p_ - start == 19) return false;
      n = n * 10 + static_cast<std::uint64_t>(*p_ - '0');
      ++p_;
    }
    if (p_ == start || (*start == '0' && (p_ - start > 1 || negative))) return false;
    if (p_ != end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E')) return false;
    constexpr auto max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    if (n > max + (negative ? 1 : 0)) return false;
    v = negative ? static_cast<std::int64_t>(0 - n) : static_cast<std::int64_t>(n);
    return true;
  }

  // {"<tag>": after the opening brace.
  bool tag_of(tag& t) noexcept {
    if (take("\"dict\":")) t = tag::dict;
    else if (take("\"tensor\":")) t = tag::tensor;
    else if (take("\"float\":")) t = tag::real;
    else if (take("\"idict\":")) t = tag::idict;
    else if (take("\"tuple\":")) t = tag::tuple;
    else if (take("\"bytes\":")) t = tag::bytes;
    else return false;
    return (t != tag::idict && t != tag::tuple) || version_ >= 2;
  }

  // One value into `out`, held by a container of depth `holder`; `entry` is set when it is a
  // tensor's place.
  bool value_of(value& out, std::size_t holder, std::size_t& entry) {
    entry = no_entry;
    if (p_ == end_) return false;
    switch (*p_) {
      case '{': {
        ++p_;
        tag t;
        if (!tag_of(t)) return false;
        switch (t) {
          case tag::dict:
          case tag::idict: {
            if (holder + 1 > max_tree_depth) return false;
            out = dict();  // filled in place: a dict is never moved once built
            if (!items(std::get<dict>(out.raw()), holder + 1,
                       t == tag::idict ? key_type::integer : key_type::string))
              return false;
            break;
          }
          case tag::tuple: {
            if (holder + 1 > max_tree_depth) return false;
            out = tuple();
            if (!elements(std::get<tuple>(out.raw()), holder + 1)) return false;
            break;
          }
          case tag::real: {
            std::string_view s;
            if (!string(s, buf_)) return false;
            auto bits = parse_hex64(s);
            if (!bits) return false;
            out = std::bit_cast<double>(*bits);
            break;
          }
          case tag::bytes: {
            std::string_view s;
            if (!string(s, buf_)) return false;
            auto bytes = parse_hex_bytes(s);
            if (!bytes) return false;
            out = std::move(*bytes);
            break;
          }
          case tag::tensor: {
            std::string_view s;
            if (!string(s, buf_)) return false;
            std::size_t i = finder_.find(s);
            if (i == no_entry || used_[i] || s != path_) return false;
            used_[i] = true;
            entry = i;
            out = none;
            break;
          }
        }
        return take("}");
      }
      case '[': {
        if (holder + 1 > max_tree_depth) return false;
        out = list();
        return elements(std::get<list>(out.raw()), holder + 1);
      }
      case '"': {
        std::string_view s;
        if (!string(s, buf_)) return false;
        out = std::string(s);
        return true;
      }
      case 't': out = true; return take("true");
      case 'f': out = false; return take("false");
      case 'n': out = none; return take("null");
      default: {
        std::int64_t v;
        if (!integer(v)) return false;
        out = v;
        return true;
      }
    }
  }

  // A dict's payload [[key, value], ...] into `d`, a dict of depth `depth`.
  bool items(dict& d, std::size_t depth, key_type keys) {
    if (!take("[")) return false;
    auto& found = scratch_[depth];  // (item index, entry) of the tensors among the items
    auto& list_of = item_scratch_[depth];
    list_of.clear();
    if (!at(']')) {
      for (;;) {
        if (!take("[")) return false;
        // The item is read in place. `list_of` belongs to this depth, so nothing below
        // (deeper containers use deeper scratch) moves it while `item` is in use.
        dict::item& item = list_of.emplace_back();
        std::string& key = item.first;
        if (keys == key_type::integer) {
          std::int64_t k;
          if (!integer(k)) return false;
          key = std::to_string(k);
        } else if (at('"')) {
          std::string_view k;
          if (!string(k, buf_)) return false;
          key.assign(k);
        } else {
          std::string_view hex;
          if (!take("{\"bytes\":") || !string(hex, buf_)) return false;
          auto bytes = parse_hex_bytes(hex);
          if (!bytes || !take("}")) return false;
          key = std::move(*bytes);
        }
        if (!take(",")) return false;
        std::size_t mark = path_.size();
        push_path(path_, key);
        std::size_t entry;
        if (!value_of(item.second, depth, entry) || !take("]")) return false;
        path_.resize(mark);
        if (entry != no_entry) found.emplace_back(list_of.size() - 1, entry);
        if (at(']')) break;
        if (!take(",")) return false;
      }
    }
    ++p_;
    // What the SAX decoder builds, the items handed over whole; repeated keys refused. The
    // next dict at this depth gets a buffer of this one's size.
    if (keys == key_type::integer) d.set_key_type(key_type::integer);
    std::size_t n = list_of.size();
    bool ok = dict_build::adopt(d, list_of);
    list_of.reserve(n);
    if (ok)
      for (auto [i, entry] : found)
        out_->tensors.emplace_back(&(d.begin() + static_cast<std::ptrdiff_t>(i))->second, entry);
    found.clear();
    list_of.clear();  // when adopt refused them
    return ok;
  }

  // A list's or tuple's elements [...] into `l`, a container of depth `depth`.
  bool elements(list& l, std::size_t depth) {
    if (!take("[")) return false;
    auto& found = scratch_[depth];
    if (!at(']')) {
      for (;;) {
        std::size_t mark = path_.size();
        push_path(path_, std::to_string(l.size()));
        std::size_t entry;
        if (!value_of(l.emplace_back(), depth, entry)) return false;  // in place, as in items
        path_.resize(mark);
        if (entry != no_entry) found.emplace_back(l.size() - 1, entry);
        if (at(']')) break;
        if (!take(",")) return false;
      }
    }
    ++p_;
    for (auto [i, entry] : found) out_->tensors.emplace_back(&l[i], entry);
    found.clear();
    return true;
  }

  std::string_view text_;
  const char* p_;
  const char* end_;
  int version_;
  const std::vector<tensor_entry>& entries_;
  std::vector<bool> used_;
  std::shared_ptr<decoded_tree> out_;
  // Per depth, the (child index, entry) pairs of the container being read at that depth.
  std::vector<std::vector<std::pair<std::size_t, std::size_t>>> scratch_;
  std::vector<std::vector<dict::item>> item_scratch_;  // per depth, the items of a dict so far
  std::string path_;
  std::string buf_;  // an escaped string, unescaped
  entry_finder finder_{entries_};
};

}  // namespace

std::shared_ptr<decoded_tree> decode_tree_plain(std::string_view text,
                                                const std::vector<tensor_entry>& entries,
                                                int version) {
  if (first_invalid_utf8(text) != std::string_view::npos) return nullptr;
  return plain_tree_reader(text, entries, version).run();
}

}  // namespace shmckpt::detail
