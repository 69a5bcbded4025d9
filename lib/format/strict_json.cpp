// strict_json.cpp — duplicate-free, UTF-8-checked JSON parsing (see strict_json.hpp).
//
// parse_strict reads a document in one pass that builds the DOM and hashes keys as it goes
// (checked_builder); only when that pass fails or sees two equal key hashes does it redo the
// text the slow, exact way (duplicate_key_finder, then boost::json::parse) to name the error.
#include "format/strict_json.hpp"

#include <algorithm>
#include <bit>
#include <optional>
#include <unordered_set>

#include <xxhash.h>

#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/value_stack.hpp>

#include "format/text.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt::detail {
namespace json = boost::json;

std::string_view json_kind_name(json::kind k) noexcept {
  switch (k) {
    case json::kind::null: return "null";
    case json::kind::bool_: return "boolean";
    case json::kind::int64:
    case json::kind::uint64: return "integer";
    case json::kind::double_: return "number";
    case json::kind::string: return "string";
    case json::kind::array: return "array";
    case json::kind::object: return "object";
  }
  return "?";
}

// Pairwise for a few keys, else an open-addressing table (0 marks a free slot, so a hash of 0 is
// stored as 1: more collisions, never a missed repeat).
bool has_repeat(const std::uint64_t* k, std::size_t n, std::vector<std::uint64_t>& table) {
  if (n <= 16) {
    for (std::size_t i = 1; i < n; ++i)
      for (std::size_t j = 0; j < i; ++j)
        if (k[i] == k[j]) return true;
    return false;
  }
  std::size_t size = std::bit_ceil(2 * n);
  table.assign(size, 0);
  std::size_t mask = size - 1;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t h = k[i] ? k[i] : 1;
    for (std::size_t at = static_cast<std::size_t>(h) & mask;; at = (at + 1) & mask) {
      if (table[at] == 0) {
        table[at] = h;
        break;
      }
      if (table[at] == h) return true;
    }
  }
  return false;
}

namespace {

// A basic_parser handler that builds nothing and fails on the first repeated key of an object.
class duplicate_key_finder {
 public:
  static constexpr std::size_t max_object_size = std::size_t(-1);
  static constexpr std::size_t max_array_size = std::size_t(-1);
  static constexpr std::size_t max_key_size = std::size_t(-1);
  static constexpr std::size_t max_string_size = std::size_t(-1);

  const std::optional<std::string>& duplicate() const noexcept { return duplicate_; }

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_array_begin(json::error_code&) { return true; }
  bool on_array_end(std::size_t, json::error_code&) { return true; }
  bool on_object_begin(json::error_code&) {
    objects_.emplace_back();
    return true;
  }
  bool on_object_end(std::size_t, json::error_code&) {
    objects_.pop_back();
    return true;
  }
  bool on_string_part(json::string_view, std::size_t, json::error_code&) { return true; }
  bool on_string(json::string_view, std::size_t, json::error_code&) { return true; }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    key_.append(s.data(), s.size());
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
    key_.append(s.data(), s.size());
    if (!objects_.back().insert(key_)) {
      duplicate_ = key_;
      ec = make_error_code(json::error::syntax);
      return false;
    }
    key_.clear();
    return true;
  }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_int64(std::int64_t, json::string_view, json::error_code&) { return true; }
  bool on_uint64(std::uint64_t, json::string_view, json::error_code&) { return true; }
  bool on_double(double, json::string_view, json::error_code&) { return true; }
  bool on_bool(bool, json::error_code&) { return true; }
  bool on_null(json::error_code&) { return true; }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  // Most objects have a handful of keys: scan a vector until it grows, then switch to a set.
  struct key_set {
    std::vector<std::string> few;
    std::unordered_set<std::string> many;
    bool insert(const std::string& k) {
      if (many.empty() && few.size() < 16) {
        if (std::find(few.begin(), few.end(), k) != few.end()) return false;
        few.push_back(k);
        return true;
      }
      if (many.empty()) many.insert(few.begin(), few.end());
      return many.insert(k).second;
    }
  };

  std::vector<key_set> objects_;
  std::string key_;
  std::optional<std::string> duplicate_;
};

// A basic_parser handler that builds the DOM exactly as boost::json::parser does (same limits,
// same value_stack) and, on the side, keeps a 64-bit hash of every key of every open object. An
// object in which two keys hash alike is flagged and the parse stops: that is a duplicate key
// or, very rarely, a hash collision, and parse_strict then redoes the document the slow, exact
// way. This is one pass over the text with no allocation per key.
class checked_builder {
 public:
  static constexpr std::size_t max_object_size = json::object::max_size();
  static constexpr std::size_t max_array_size = json::array::max_size();
  static constexpr std::size_t max_key_size = json::string::max_size();
  static constexpr std::size_t max_string_size = json::string::max_size();

  checked_builder(unsigned char* temp, std::size_t temp_size) : st(json::storage_ptr(), temp, temp_size) {}

  json::value_stack st;
  bool repeated_key = false;

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_array_begin(json::error_code&) { return true; }
  bool on_array_end(std::size_t n, json::error_code&) {
    st.push_array(n);
    return true;
  }
  bool on_object_begin(json::error_code&) {
    starts_.push_back(keys_.size());
    return true;
  }
  bool on_object_end(std::size_t n, json::error_code& ec) {
    std::size_t start = starts_.back();
    starts_.pop_back();
    if (has_repeat(keys_.data() + start, keys_.size() - start, table_)) {
      repeated_key = true;
      ec = make_error_code(json::error::syntax);
      return false;
    }
    keys_.resize(start);
    st.push_object(n);
    return true;
  }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    st.push_chars(s);
    part_.append(s.data(), s.size());
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code&) {
    if (part_.empty()) {
      keys_.push_back(XXH3_64bits(s.data(), s.size()));
    } else {
      part_.append(s.data(), s.size());
      keys_.push_back(XXH3_64bits(part_.data(), part_.size()));
      part_.clear();
    }
    st.push_key(s);
    return true;
  }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    st.push_chars(s);
    return true;
  }
  bool on_string(json::string_view s, std::size_t, json::error_code&) {
    st.push_string(s);
    return true;
  }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_int64(std::int64_t i, json::string_view, json::error_code&) {
    st.push_int64(i);
    return true;
  }
  bool on_uint64(std::uint64_t u, json::string_view, json::error_code&) {
    st.push_uint64(u);
    return true;
  }
  bool on_double(double d, json::string_view, json::error_code&) {
    st.push_double(d);
    return true;
  }
  bool on_bool(bool b, json::error_code&) {
    st.push_bool(b);
    return true;
  }
  bool on_null(json::error_code&) {
    st.push_null();
    return true;
  }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  std::vector<std::uint64_t> keys_;    // hashes of the keys of every open object, in order
  std::vector<std::size_t> starts_;    // where each open object's keys begin in keys_
  std::vector<std::uint64_t> table_;   // scratch for has_repeat
  std::string part_;                   // a key that arrives in pieces
};

}  // namespace

json::value parse_strict(std::string_view text, std::size_t max_depth, const std::string& what,
                         json::storage_ptr sp) {
  // Boost.JSON rejects bad UTF-8 too, but only as "syntax error"; say what is wrong.
  if (std::size_t bad = first_invalid_utf8(text); bad != std::string_view::npos)
    throw_error(errc::corrupt_data,
                what + " is not valid UTF-8 (byte " + std::to_string(bad) + " is 0x" +
                    hex_bytes(text.substr(bad, 1)) + ")");
  json::parse_options opts;
  opts.max_depth = max_depth;
  json::error_code ec;
  {
    // The fast path: one pass that builds the value and checks keys by hash.
    unsigned char temp[4096];
    json::basic_parser<checked_builder> p(opts, temp, sizeof temp);
    p.handler().st.reset(sp);
    std::size_t n = p.write_some(false, text.data(), text.size(), ec);
    if (!ec && n == text.size() && !p.handler().repeated_key) return p.handler().st.release();
  }
  // Something is wrong (or two keys only share a hash): find out exactly what, the slow way.
  ec = {};
  {
    json::basic_parser<duplicate_key_finder> finder(opts);
    std::size_t n = finder.write_some(false, text.data(), text.size(), ec);
    if (const auto& dup = finder.handler().duplicate())
      throw_error(errc::corrupt_data, what + " has the key " + quote_name(*dup) + " twice");
    if (ec)
      throw_error(errc::corrupt_data, what + " is not valid JSON: " + ec.message() +
                                          " (near byte " + std::to_string(n) + ")");
    if (n != text.size())
      throw_error(errc::corrupt_data, what + " is not valid JSON: extra data at byte " +
                                          std::to_string(n));
  }
  json::value v = json::parse(json::string_view(text.data(), text.size()), ec, std::move(sp), opts);
  if (ec) throw_error(errc::corrupt_data, what + " is not valid JSON: " + ec.message());
  return v;
}

}  // namespace shmckpt::detail
