// safetensors.cpp — encoding and validating the shmckpt flavour of safetensors.
//
// A file is `u64 N` (little-endian), `N` bytes of JSON padded with spaces so that 8 + N is a
// multiple of 8, then the data section: every tensor's bytes, back to back from offset 0, no
// holes, no trailing bytes (docs/format.md has the full layout). The JSON maps each tensor name
// to {"dtype", "shape", "data_offsets"}; `__metadata__` (string → string only) carries what
// plain safetensors cannot: the state-dict tree ("shmckpt.tree", itself a JSON document stored
// as a string) and per-tensor XXH3-64 checksums ("shmckpt.checksums").
//
// Writing happens in one pass over the tensor bytes, so the header must be final in size before
// any checksum is known: checksums are fixed-width hex fields, laid out as zeros here and filled
// in by the writer once each tensor has been hashed (set_checksum). Tensors are placed in the
// data section in descending order of element alignment (8-byte types first, then 4, 2, 1):
// with the data section itself 8-aligned, every tensor of a mapped file is then naturally
// aligned and can be used in place. The tree, not the header order, carries the user's key
// order.
//
// Reading treats the header as hostile. Boost.JSON keeps only the last of duplicate object keys,
// which would let a file smuggle a second definition of a tensor past validation, so duplicate
// keys are looked for in every object. The header and the checksum table are first read in one
// SAX pass that builds the entries directly ("fast paths"); anything unexpected sends the text
// to the exact path (a duplicate-key pass, then a DOM in an arena) that names the error. The tree
// document is parsed into an arena-backed DOM in one pass that hashes keys as it goes.
#include "format/safetensors.hpp"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstring>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include <xxhash.h>

#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/monotonic_resource.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/value_stack.hpp>

#include "shmckpt/error.hpp"

namespace shmckpt::detail {
namespace json = boost::json;

namespace {

// ---- small text helpers ----------------------------------------------------------------------

constexpr char hex_digits[] = "0123456789abcdef";

// Length of the well-formed UTF-8 sequence starting at s[i] (RFC 3629: no overlongs, no
// surrogates, nothing above U+10FFFF), or 0 when the bytes there are not one.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) noexcept {
  auto at = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = at(i);
  if (c < 0x80) return 1;
  std::size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() - i < n) return 0;
  if (at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k)
    if (at(i + k) < 0x80 || at(i + k) > 0xBF) return 0;
  return n;
}

// Position of the first byte that does not start a well-formed UTF-8 sequence, or npos.
std::size_t first_invalid_utf8(std::string_view s) noexcept {
  for (std::size_t i = 0; i < s.size();) {
    // Headers are almost all ASCII: skip eight such bytes at a time.
    while (s.size() - i >= 8) {
      std::uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080u) break;
      i += 8;
    }
    if (i == s.size()) break;
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    std::size_t n = utf8_sequence_length(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

bool valid_utf8(std::string_view s) noexcept {
  return first_invalid_utf8(s) == std::string_view::npos;
}

// Appends `s` escaped for the inside of a JSON string (no quotes). `s` must be valid UTF-8.
void append_escaped(std::string& out, std::string_view s) {
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += hex_digits[c >> 4];
          out += hex_digits[c & 15];
        } else {
          out += ch;
        }
    }
  }
}

void append_quoted(std::string& out, std::string_view s) {
  out += '"';
  append_escaped(out, s);
  out += '"';
}

std::string hex_bytes(std::string_view s) {
  std::string out;
  out.reserve(s.size() * 2);
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    out += hex_digits[c >> 4];
    out += hex_digits[c & 15];
  }
  return out;
}

int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // uppercase is rejected on purpose: one spelling per value
}

std::optional<std::uint64_t> parse_hex64(std::string_view s) noexcept {
  if (s.size() != 16) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) {
    int d = hex_value(c);
    if (d < 0) return std::nullopt;
    v = (v << 4) | static_cast<std::uint64_t>(d);
  }
  return v;
}

std::optional<std::string> parse_hex_bytes(std::string_view s) {
  if (s.size() % 2) return std::nullopt;
  std::string out;
  out.reserve(s.size() / 2);
  for (std::size_t i = 0; i < s.size(); i += 2) {
    int a = hex_value(s[i]), b = hex_value(s[i + 1]);
    if (a < 0 || b < 0) return std::nullopt;
    out += static_cast<char>((a << 4) | b);
  }
  return out;
}

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

// Same joining rule as shmckpt::for_each_tensor: keys and indexes joined by '.', no leading dot.
void push_path(std::string& path, std::string_view part) {
  if (!path.empty()) path += '.';
  path += part;
}

std::string at_path(const std::string& path) {
  return path.empty() ? std::string("at the root") : "at " + quote_name(path);
}

// ---- writing the tree ------------------------------------------------------------------------

class tree_encoder {
 public:
  explicit tree_encoder(std::vector<planned_tensor>& out) : tensors_(out) {}

  // Whether the tree needs format version 2 (an integer-keyed dict or a tuple): files without
  // them stay version 1, readable by every earlier reader.
  bool uses_v2() const noexcept { return uses_v2_; }

  void encode_dict(std::string& out, const dict& d, std::string& path, std::size_t depth) {
    bool int_keys = d.keys() == key_type::integer;
    uses_v2_ |= int_keys;
    out += int_keys ? "{\"idict\":[" : "{\"dict\":[";
    bool first = true;
    for (const auto& [key, v] : d) {
      if (!first) out += ',';
      first = false;
      out += '[';
      if (int_keys)
        out += key;  // canonical int64 text (dict enforces it) is a JSON integer as it stands
      else
        encode_string(out, key);
      out += ',';
      std::size_t mark = path.size();
      push_path(path, key);
      encode_value(out, v, path, depth);
      path.resize(mark);
      out += ']';
    }
    out += "]}";
  }

 private:
  // `depth` is the depth of the container holding `v`.
  void encode_value(std::string& out, const value& v, std::string& path, std::size_t depth) {
    switch (v.type()) {
      case kind::none: out += "null"; break;
      case kind::boolean: out += v.as_bool() ? "true" : "false"; break;
      case kind::integer: out += std::to_string(v.as_int()); break;
      case kind::real:
        // Bit pattern, not decimal: NaN payloads, -0.0 and infinities survive exactly.
        out += "{\"float\":\"";
        out += hex64(std::bit_cast<std::uint64_t>(v.as_double()));
        out += "\"}";
        break;
      case kind::string: encode_string(out, v.as_string()); break;
      case kind::list:
      case kind::tuple: {
        check_depth(depth + 1, path);
        bool is_tuple = v.type() == kind::tuple;
        uses_v2_ |= is_tuple;
        out += is_tuple ? "{\"tuple\":[" : "[";
        const auto& l = v.as_sequence();
        for (std::size_t i = 0; i < l.size(); ++i) {
          if (i) out += ',';
          std::size_t mark = path.size();
          push_path(path, std::to_string(i));
          encode_value(out, l[i], path, depth + 1);
          path.resize(mark);
        }
        out += is_tuple ? "]}" : "]";
        break;
      }
      case kind::dict:
        check_depth(depth + 1, path);
        encode_dict(out, v.as_dict(), path, depth + 1);
        break;
      case kind::tensor:
        add_tensor(path, v.as_tensor());
        out += "{\"tensor\":";
        append_quoted(out, path);
        out += '}';
        break;
    }
  }

  // Strings that are not UTF-8 cannot appear in JSON; they travel as hex bytes instead.
  static void encode_string(std::string& out, const std::string& s) {
    if (valid_utf8(s)) {
      append_quoted(out, s);
    } else {
      out += "{\"bytes\":\"";
      out += hex_bytes(s);
      out += "\"}";
    }
  }

  static void check_depth(std::size_t depth, const std::string& path) {
    if (depth > max_tree_depth)
      throw_error(errc::invalid_argument,
                  "state dict nests deeper than " + std::to_string(max_tree_depth) + " levels " +
                      at_path(path) + "; checkpoint files cannot represent it");
  }

  void add_tensor(const std::string& name, const tensor& t) {
    if (name == "__metadata__")
      throw_error(errc::invalid_argument,
                  "tensor name '__metadata__' is reserved by the safetensors format");
    if (!valid_utf8(name))
      throw_error(errc::invalid_argument,
                  "tensor name " + quote_name(name) + " is not valid UTF-8");
    if (t.shape().size() > max_tensor_rank)
      throw_error(errc::invalid_argument,
                  "tensor " + quote_name(name) + " has " + std::to_string(t.shape().size()) +
                      " dimensions, more than the " + std::to_string(max_tensor_rank) +
                      " a checkpoint file may hold");
    if (!names_.insert(name).second)
      throw_error(errc::invalid_argument,
                  "two tensors flatten to the same name " + quote_name(name) +
                      " (keys are joined with '.'); rename one so the key paths differ");
    planned_tensor p;
    p.name = name;
    p.source = &t;
    p.nbytes = t.nbytes();
    tensors_.push_back(std::move(p));
  }

  bool uses_v2_ = false;
  std::vector<planned_tensor>& tensors_;
  std::unordered_set<std::string> names_;
};

// ---- strict JSON parsing ---------------------------------------------------------------------

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

// Whether two of the n key hashes at k are equal: pairwise for a few, else an open-addressing
// table (0 marks a free slot, so a hash of 0 is stored as 1: more collisions, never a missed
// repeat). Equal hashes mean a duplicate key or, rarely, a collision; callers then take the
// slow, exact path.
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

// Parses `text` into a value whose memory comes from `sp`, rejecting duplicate keys, invalid
// UTF-8, nesting deeper than `max_depth` and trailing data; errors start with `what`.
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

// ---- validating header entries ---------------------------------------------------------------

std::string kind_of(const json::value& v) { return std::string(json_kind_name(v.kind())); }

// ---- fast paths -------------------------------------------------------------------------------
//
// The files our writer produces (and any well-formed file) are read in one SAX pass that builds
// the result directly, without a DOM. These readers accept only what the DOM-based validation
// below accepts, and give up (return false) at the first thing they do not expect: a syntax
// error, a repeated key hash, a wrong type, an unknown field, a failed check. The caller then
// runs the DOM-based path on the same text, which finds and reports the exact error, so every
// error message and its precedence stay those of the DOM path.

// Shared plumbing: give-up, and strings that may arrive in pieces.
class sax_base {
 public:
  static constexpr std::size_t max_object_size = json::object::max_size();
  static constexpr std::size_t max_array_size = json::array::max_size();
  static constexpr std::size_t max_key_size = json::string::max_size();
  static constexpr std::size_t max_string_size = json::string::max_size();

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    part_.append(s.data(), s.size());
    return true;
  }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    part_.append(s.data(), s.size());
    return true;
  }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_double(double, json::string_view, json::error_code& ec) { return give_up(ec); }
  bool on_bool(bool, json::error_code& ec) { return give_up(ec); }
  bool on_null(json::error_code& ec) { return give_up(ec); }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 protected:
  static bool give_up(json::error_code& ec) {
    ec = make_error_code(json::error::syntax);
    return false;
  }
  // The whole string or key, given its last piece; valid until the next call.
  std::string_view whole(json::string_view last) {
    if (part_.empty()) return {last.data(), last.size()};
    part_.append(last.data(), last.size());
    return part_;
  }
  void done_with_whole() { part_.clear(); }

  std::string part_;
};

// The header: {"__metadata__": {string: string, ...}, name: {"dtype", "shape", "data_offsets"}}.
class header_reader : public sax_base {
 public:
  std::vector<tensor_entry> entries;
  std::vector<std::pair<std::string, std::string>> metadata;

  bool on_object_begin(json::error_code& ec) {
    if (level_ == 0) {
      level_ = 1;
      return true;
    }
    if (level_ != 1) return give_up(ec);
    level_ = 2;
    in_metadata_ = key_ == "__metadata__";
    meta_start_ = metadata.size();
    seen_ = 0;
    offsets_n_ = 0;
    entry_ = {};
    return true;
  }
  bool on_object_end(std::size_t, json::error_code& ec) {
    if (level_ == 1) {
      level_ = 0;
      return !has_repeat(root_keys_.data(), root_keys_.size(), table_) || give_up(ec);
    }
    level_ = 1;
    if (in_metadata_) {
      std::vector<std::uint64_t> keys;
      keys.reserve(metadata.size() - meta_start_);
      for (std::size_t i = meta_start_; i < metadata.size(); ++i)
        keys.push_back(XXH3_64bits(metadata[i].first.data(), metadata[i].first.size()));
      return !has_repeat(keys.data(), keys.size(), table_) || give_up(ec);
    }
    if (seen_ != 7 || offsets_n_ != 2 || end_ < begin_) return give_up(ec);
    auto need = tensor_nbytes(entry_.type, entry_.shape);
    if (!need || end_ - begin_ != *need) return give_up(ec);
    entry_.name = std::move(key_);
    entry_.offset = begin_;
    entry_.nbytes = *need;
    entries.push_back(std::move(entry_));
    return true;
  }
  bool on_array_begin(json::error_code& ec) {
    if (level_ != 2 || in_metadata_ || (field_ != shape && field_ != offsets)) return give_up(ec);
    level_ = 3;
    offsets_n_ = field_ == offsets ? 0 : offsets_n_;
    return true;
  }
  bool on_array_end(std::size_t, json::error_code&) {
    level_ = 2;
    return true;
  }
  bool on_key(json::string_view last, std::size_t, json::error_code& ec) {
    std::string_view k = whole(last);
    if (level_ == 1) {
      root_keys_.push_back(XXH3_64bits(k.data(), k.size()));
      key_.assign(k);
    } else if (in_metadata_) {
      key_.assign(k);
    } else {
      unsigned bit = k == "dtype"          ? unsigned{dtype}
                     : k == "shape"        ? unsigned{shape}
                     : k == "data_offsets" ? unsigned{offsets}
                                           : 0u;
      if (bit == 0 || (seen_ & bit)) return give_up(ec);
      seen_ |= bit;
      field_ = bit;
    }
    done_with_whole();
    return true;
  }
  bool on_string(json::string_view last, std::size_t, json::error_code& ec) {
    if (level_ != 2) return give_up(ec);
    if (in_metadata_) {
      if (part_.empty()) {
        metadata.emplace_back(key_, std::string(last.data(), last.size()));
      } else {  // a long value (the tree) arrives in pieces: keep the buffer it was put in
        part_.append(last.data(), last.size());
        metadata.emplace_back(key_, std::move(part_));
        part_.clear();
      }
      return true;
    }
    if (field_ != dtype) return give_up(ec);
    auto t = dtype_from_name(whole(last));
    done_with_whole();
    if (!t) return give_up(ec);
    entry_.type = *t;
    return true;
  }
  bool on_int64(std::int64_t i, json::string_view, json::error_code& ec) {
    if (level_ != 3 || i < 0) return give_up(ec);
    return add_number(static_cast<std::uint64_t>(i), ec);
  }
  bool on_uint64(std::uint64_t u, json::string_view, json::error_code& ec) {
    if (level_ != 3 || field_ != offsets) return give_up(ec);  // too large for a dimension
    return add_number(u, ec);
  }

 private:
  enum : unsigned { dtype = 1, shape = 2, offsets = 4 };

  bool add_number(std::uint64_t v, json::error_code& ec) {
    if (field_ == shape) {
      if (entry_.shape.size() == max_tensor_rank) return give_up(ec);
      entry_.shape.push_back(static_cast<std::int64_t>(v));
      return true;
    }
    if (offsets_n_ == 2) return give_up(ec);
    (offsets_n_++ == 0 ? begin_ : end_) = v;
    return true;
  }

  int level_ = 0;  // 1: in the root object, 2: in an entry or __metadata__, 3: in an array
  bool in_metadata_ = false;
  std::size_t meta_start_ = 0;
  std::string key_;  // the current root key (the entry's name), or metadata key
  unsigned seen_ = 0, field_ = 0;
  tensor_entry entry_;
  std::size_t offsets_n_ = 0;
  std::uint64_t begin_ = 0, end_ = 0;
  std::vector<std::uint64_t> root_keys_, table_;
};

// "shmckpt.checksums" in the order our writer records it: {entries[i].name: "<16 hex>"} for
// every i, in entry order. Anything else (another order too) goes to the exact path.
class checksums_reader : public sax_base {
 public:
  explicit checksums_reader(const std::vector<tensor_entry>& entries) : entries_(entries) {
    sums.reserve(entries.size());
  }

  std::vector<std::uint64_t> sums;

  bool on_object_begin(json::error_code& ec) { return level_++ == 0 || give_up(ec); }
  bool on_object_end(std::size_t, json::error_code& ec) {
    --level_;
    return sums.size() == entries_.size() || give_up(ec);
  }
  bool on_array_begin(json::error_code& ec) { return give_up(ec); }
  bool on_array_end(std::size_t, json::error_code& ec) { return give_up(ec); }
  bool on_key(json::string_view last, std::size_t, json::error_code& ec) {
    std::string_view k = whole(last);
    bool ok = sums.size() < entries_.size() && entries_[sums.size()].name == k;
    done_with_whole();
    return ok || give_up(ec);
  }
  bool on_string(json::string_view last, std::size_t, json::error_code& ec) {
    auto v = parse_hex64(whole(last));
    done_with_whole();
    if (level_ != 1 || !v) return give_up(ec);
    sums.push_back(*v);
    return true;
  }
  bool on_int64(std::int64_t, json::string_view, json::error_code& ec) { return give_up(ec); }
  bool on_uint64(std::uint64_t, json::string_view, json::error_code& ec) { return give_up(ec); }

 private:
  const std::vector<tensor_entry>& entries_;
  int level_ = 0;
};

json::parse_options depth_limit(std::size_t max_depth) {
  json::parse_options opts;
  opts.max_depth = max_depth;
  return opts;
}

// A Handler run over all of `text`: ok is false when it gave up or the text is not one JSON
// document of at most `max_depth` levels in valid UTF-8.
template <class Handler>
struct sax_pass {
  template <class... Args>
  sax_pass(std::string_view text, std::size_t max_depth, Args&&... args)
      : parser(depth_limit(max_depth), std::forward<Args>(args)...) {
    if (first_invalid_utf8(text) != std::string_view::npos) return;
    json::error_code ec;
    std::size_t n = parser.write_some(false, text.data(), text.size(), ec);
    ok = !ec && n == text.size();
  }
  Handler& handler() { return parser.handler(); }

  json::basic_parser<Handler> parser;
  bool ok = false;
};

// "<label>: tensor '<name>'", built only when an error is about to be thrown.
struct entry_context {
  const std::string& label;
  std::string_view name;
  std::string operator()() const { return label + ": tensor " + quote_name(name); }
};

// A non-negative integer that fits in 63 bits (dimensions) or 64 bits (offsets). `what()` names
// the field; it is called only on failure.
template <class What>
std::uint64_t unsigned_field(const json::value& v, bool allow_above_int64, const What& what) {
  if (v.is_int64()) {
    if (v.get_int64() < 0) [[unlikely]]
      throw_error(errc::corrupt_data, what() + " is " + std::to_string(v.get_int64()) +
                                          ", which is negative");
    return static_cast<std::uint64_t>(v.get_int64());
  }
  if (v.is_uint64()) {
    if (!allow_above_int64) [[unlikely]]
      throw_error(errc::corrupt_data, what() + " is " + std::to_string(v.get_uint64()) +
                                          ", larger than any tensor dimension can be");
    return v.get_uint64();
  }
  throw_error(errc::corrupt_data, what() + " is a JSON " + kind_of(v) + ", not an integer");
}

tensor_entry parse_entry(std::string_view name, const json::value& v, const entry_context& ctx) {
  if (!v.is_object())
    throw_error(errc::corrupt_data, ctx() + ": entry is a JSON " + kind_of(v) + ", not an object");
  const json::object& o = v.get_object();
  const json::value* type = nullptr;
  const json::value* shape = nullptr;
  const json::value* offsets = nullptr;
  for (const auto& kv : o) {
    std::string_view k(kv.key().data(), kv.key().size());
    if (k == "dtype") type = &kv.value();
    else if (k == "shape") shape = &kv.value();
    else if (k == "data_offsets") offsets = &kv.value();
    else throw_error(errc::corrupt_data, ctx() + ": unknown field " + quote_name(k));
  }
  for (auto [field, p] : {std::pair{"dtype", type}, {"shape", shape}, {"data_offsets", offsets}})
    if (!p) throw_error(errc::corrupt_data, ctx() + ": missing field '" + field + "'");

  tensor_entry e;
  if (!type->is_string())
    throw_error(errc::corrupt_data,
                ctx() + ": dtype is a JSON " + kind_of(*type) + ", not a string");
  std::string_view tname(type->get_string().data(), type->get_string().size());
  auto t = dtype_from_name(tname);
  if (!t) throw_error(errc::corrupt_data, ctx() + ": unknown dtype " + quote_name(tname));
  e.type = *t;

  if (!shape->is_array())
    throw_error(errc::corrupt_data,
                ctx() + ": shape is a JSON " + kind_of(*shape) + ", not an array");
  const json::array& dims = shape->get_array();
  if (dims.size() > max_tensor_rank)
    throw_error(errc::corrupt_data, ctx() + ": shape has " + std::to_string(dims.size()) +
                                        " dimensions, more than the limit of " +
                                        std::to_string(max_tensor_rank));
  e.shape.reserve(dims.size());
  for (std::size_t i = 0; i < dims.size(); ++i)
    e.shape.push_back(static_cast<std::int64_t>(unsigned_field(
        dims[i], false, [&] { return ctx() + ": shape dimension " + std::to_string(i); })));

  if (!offsets->is_array() || offsets->get_array().size() != 2)
    throw_error(errc::corrupt_data,
                ctx() + ": data_offsets must be an array of two integers, not a JSON " +
                    (offsets->is_array() ? "array of " +
                                               std::to_string(offsets->get_array().size()) +
                                               " elements"
                                         : kind_of(*offsets)));
  std::uint64_t begin = unsigned_field(offsets->get_array()[0], true,
                                       [&] { return ctx() + ": data_offsets[0]"; });
  std::uint64_t end = unsigned_field(offsets->get_array()[1], true,
                                     [&] { return ctx() + ": data_offsets[1]"; });
  auto range = [&] { return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]"; };
  if (end < begin)
    throw_error(errc::corrupt_data, ctx() + ": data_offsets " + range() + " end before they begin");

  auto need = tensor_nbytes(e.type, e.shape);
  auto what = [&] {
    return "dtype " + std::string(dtype_name(e.type)) + " × shape " + shape_string(e.shape);
  };
  if (!need) {
    bool whole = dtype_bits(e.type) % 8 == 0;
    throw_error(errc::corrupt_data,
                ctx() + ": " + what() +
                    (whole ? " needs more than 2^64 bytes"
                           : " is not a whole number of bytes (or needs more than 2^64)"));
  }
  if (end - begin != *need)
    throw_error(errc::corrupt_data, ctx() + ": data_offsets " + range() + " say " +
                                        std::to_string(end - begin) + " bytes, " + what() +
                                        " needs " + std::to_string(*need));
  e.name = name;
  e.offset = begin;
  e.nbytes = *need;
  return e;
}

void check_layout(std::vector<tensor_entry>& entries, std::uint64_t data_size,
                  const std::string& label) {
  // Ties (empty tensors sharing an offset) sort by end, then name, so the order is canonical.
  auto before = [](const tensor_entry& a, const tensor_entry& b) {
    if (a.offset != b.offset) return a.offset < b.offset;
    if (a.nbytes != b.nbytes) return a.nbytes < b.nbytes;
    return a.name < b.name;
  };
  // Files from our writer list their entries in offset order already.
  if (!std::is_sorted(entries.begin(), entries.end(), before))
    std::sort(entries.begin(), entries.end(), before);
  std::uint64_t expected = 0;
  const tensor_entry* previous = nullptr;
  for (const auto& e : entries) {
    auto ctx = [&] {
      return label + ": tensor " + quote_name(e.name) + ": data_offsets [" +
             std::to_string(e.offset) + ", " + std::to_string(e.offset + e.nbytes) + "]";
    };
    if (e.offset > data_size || e.nbytes > data_size - e.offset)
      throw_error(errc::corrupt_data, ctx() + " pass the end of the data section (" +
                                          std::to_string(data_size) + " bytes)");
    if (e.offset > expected)
      throw_error(errc::corrupt_data, ctx() + " leave a hole of " +
                                          std::to_string(e.offset - expected) +
                                          " bytes after offset " + std::to_string(expected) +
                                          "; the data section must be contiguous");
    if (e.offset < expected)
      throw_error(errc::corrupt_data, ctx() + " overlap tensor " + quote_name(previous->name) +
                                          ", which ends at " + std::to_string(expected));
    expected = e.offset + e.nbytes;
    previous = &e;
  }
  if (expected != data_size)
    throw_error(errc::corrupt_data,
                label + ": data section is " + std::to_string(data_size) +
                    " bytes but the tensors cover " + std::to_string(expected) + "; " +
                    std::to_string(data_size - expected) + " trailing bytes");
}

// ---- reading the tree ------------------------------------------------------------------------

const std::string* find_metadata(const parsed_header& h, std::string_view key);

class tree_decoder {
 public:
  tree_decoder(const parsed_header& h, const std::function<value(std::size_t)>& make_tensor,
               const std::string& label)
      : h_(h), make_tensor_(make_tensor), ctx_(label + ": __metadata__ 'shmckpt.tree'"),
        used_(h.entries.size(), false) {
    if (const std::string* v = find_metadata(h, "shmckpt.version")) version_ = std::atoi(v->c_str());
  }

  state_dict decode_root() {
    std::string path;
    const json::value* payload = tagged(h_.tree->root, "dict");
    if (!payload) fail(path, "not a {\"dict\": ...} node");
    state_dict root = decode_dict(*payload, path, 1);
    for (std::size_t i = 0; i < used_.size(); ++i)
      if (!used_[i])
        throw_error(errc::corrupt_data, ctx_ + ": tensor " + quote_name(h_.entries[i].name) +
                                            " is in the header but nowhere in the tree");
    return root;
  }

 private:
  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    throw_error(errc::corrupt_data, ctx_ + ": " + at_path(path) + ": " + what);
  }

  // The payload of {"<tag>": payload}, or nullptr when `v` is not that one-key object.
  static const json::value* tagged(const json::value& v, std::string_view tag) {
    if (!v.is_object() || v.get_object().size() != 1) return nullptr;
    const auto& kv = *v.get_object().begin();
    if (std::string_view(kv.key().data(), kv.key().size()) != tag) return nullptr;
    return &kv.value();
  }

  std::string decode_string(const json::value& v, const std::string& path, const char* what) {
    if (v.is_string()) return std::string(v.get_string().data(), v.get_string().size());
    if (const json::value* hex = tagged(v, "bytes")) {
      if (hex->is_string()) {
        auto bytes = parse_hex_bytes({hex->get_string().data(), hex->get_string().size()});
        if (bytes) return *bytes;
      }
      fail(path, std::string(what) + " {\"bytes\": ...} does not hold lowercase hex digit pairs");
    }
    fail(path, std::string(what) + " is a JSON " + kind_of(v) + ", not a string");
  }

  dict decode_dict(const json::value& payload, std::string& path, std::size_t depth,
                   key_type keys = key_type::string) {
    if (depth > max_tree_depth)
      fail(path, "nests deeper than " + std::to_string(max_tree_depth) + " levels");
    if (!payload.is_array())
      fail(path, "dict payload is a JSON " + kind_of(payload) + ", not an array");
    dict d;
    d.set_key_type(keys);
    for (const auto& item : payload.get_array()) {
      if (!item.is_array() || item.get_array().size() != 2)
        fail(path, "dict item is not a [key, value] pair");
      std::string key;
      if (keys == key_type::integer) {
        const json::value& k = item.get_array()[0];
        if (!k.is_int64())
          fail(path, "integer-keyed dict has a key that is a JSON " + kind_of(k) +
                         ", not an integer in the int64 range");
        key = std::to_string(k.get_int64());
      } else {
        key = decode_string(item.get_array()[0], path, "dict key");
      }
      if (contains(d, key)) fail(path, "dict has the key " + quote_name(key) + " twice");
      std::size_t mark = path.size();
      push_path(path, key);
      value v = decode_value(item.get_array()[1], path, depth);
      path.resize(mark);
      d.insert_or_assign(std::move(key), std::move(v));
    }
    return d;
  }

  // `depth` is the depth of the container holding `v`.
  value decode_value(const json::value& v, std::string& path, std::size_t depth) {
    switch (v.kind()) {
      case json::kind::null: return none;
      case json::kind::bool_: return v.get_bool();
      case json::kind::int64: return v.get_int64();
      case json::kind::uint64:
        fail(path, "integer " + std::to_string(v.get_uint64()) + " is outside the int64 range");
      case json::kind::double_:
        fail(path, "bare JSON number; floats are written as {\"float\": \"<16 hex digits>\"}");
      case json::kind::string: return std::string(v.get_string().data(), v.get_string().size());
      case json::kind::array: return decode_list(v.get_array(), path, depth);
      case json::kind::object: break;
    }
    const auto& o = v.get_object();
    if (o.size() != 1)
      fail(path, "object with " + std::to_string(o.size()) +
                     " keys; expected one of dict, idict, tuple, float, bytes, tensor");
    std::string_view tag(o.begin()->key().data(), o.begin()->key().size());
    const json::value& payload = o.begin()->value();
    if (tag == "dict") return decode_dict(payload, path, depth + 1);
    if (tag == "idict" || tag == "tuple") {
      if (version_ < 2)
        fail(path, "node type " + quote_name(tag) + " needs 'shmckpt.version' 2 or later");
      if (tag == "idict") return decode_dict(payload, path, depth + 1, key_type::integer);
      if (!payload.is_array())
        fail(path, "tuple payload is a JSON " + kind_of(payload) + ", not an array");
      return tuple(decode_list(payload.get_array(), path, depth));
    }
    if (tag == "bytes") return decode_string(v, path, "string");
    if (tag == "float") {
      std::optional<std::uint64_t> bits;
      if (payload.is_string())
        bits = parse_hex64({payload.get_string().data(), payload.get_string().size()});
      if (!bits) fail(path, "float is not a string of 16 lowercase hex digits");
      return std::bit_cast<double>(*bits);
    }
    if (tag == "tensor") {
      if (!payload.is_string()) fail(path, "tensor reference is not a string");
      std::string_view name(payload.get_string().data(), payload.get_string().size());
      std::size_t i = entry_index(name);
      if (i == npos)
        fail(path, "refers to tensor " + quote_name(name) + ", which is not in the header");
      if (used_[i]) fail(path, "refers to tensor " + quote_name(name) + " a second time");
      if (name != path)
        fail(path, "refers to tensor " + quote_name(name) +
                       "; the tensor at this path must be named " + quote_name(path));
      used_[i] = true;
      return make_tensor_(i);
    }
    fail(path, "unknown node type " + quote_name(tag));
  }

  // `depth` is the depth of the container holding the list.
  list decode_list(const json::array& a, std::string& path, std::size_t depth) {
    if (depth + 1 > max_tree_depth)
      fail(path, "nests deeper than " + std::to_string(max_tree_depth) + " levels");
    list l;
    l.reserve(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      std::size_t mark = path.size();
      push_path(path, std::to_string(i));
      l.push_back(decode_value(a[i], path, depth + 1));
      path.resize(mark);
    }
    return l;
  }

  // Small dicts are scanned; dict::contains builds a std::string for every probe.
  static bool contains(const dict& d, std::string_view key) {
    if (d.size() > 16) return d.contains(key);
    for (const auto& item : d)
      if (item.first == key) return true;
    return false;
  }

  static constexpr std::size_t npos = std::size_t(-1);

  // The entry named `name`, or npos. Our writer lists the tree's tensors in header order (per
  // alignment class), so the entry after the last one found is tried first; the hash index is
  // built only when that guess misses.
  std::size_t entry_index(std::string_view name) {
    const auto& entries = h_.entries;
    if (next_ < entries.size() && entries[next_].name == name) return next_++;
    if (index_.empty()) {
      index_.reserve(entries.size());
      for (std::size_t i = 0; i < entries.size(); ++i) index_.emplace(entries[i].name, i);
    }
    auto it = index_.find(name);
    if (it == index_.end()) return npos;
    next_ = it->second + 1;
    return it->second;
  }

  const parsed_header& h_;
  const std::function<value(std::size_t)>& make_tensor_;
  std::string ctx_;
  std::vector<bool> used_;
  std::size_t next_ = 0;
  int version_ = 1;  // of the file; checked to be a known one before decoding starts
  std::unordered_map<std::string_view, std::size_t> index_;  // views of h_.entries' names
};

const std::string* find_metadata(const parsed_header& h, std::string_view key) {
  for (const auto& [k, v] : h.metadata)
    if (k == key) return &v;
  return nullptr;
}

// "xxh3:<16 hex digits>" for every entry, from h.checksums.
void set_checksum_strings(parsed_header& h) {
  for (std::size_t i = 0; i < h.entries.size(); ++i) {
    std::string& c = h.entries[i].checksum;
    c.assign("xxh3:0000000000000000");
    std::uint64_t v = h.checksums[i];
    for (std::size_t k = c.size(); k-- > 5; v >>= 4) c[k] = hex_digits[v & 15];
  }
}

void parse_checksums(parsed_header& h, const std::string& text, const std::string& label) {
  {
    sax_pass<checksums_reader> fast(text, 2, h.entries);
    if (fast.ok) {
      h.checksums = std::move(fast.handler().sums);
      set_checksum_strings(h);
      return;
    }
  }
  std::string ctx = label + ": __metadata__ 'shmckpt.checksums'";
  json::monotonic_resource mr(text.size() * 2 + 4096);
  json::value doc = parse_strict(text, 2, ctx, &mr);
  if (!doc.is_object())
    throw_error(errc::corrupt_data, ctx + " is a JSON " + kind_of(doc) + ", not an object");
  // Our writer records the checksums in entry order; the index is built only when a name is
  // not where that order puts it.
  std::unordered_map<std::string_view, std::size_t> index;
  auto find = [&](std::size_t position, std::string_view name) -> std::size_t {
    if (position < h.entries.size() && h.entries[position].name == name) return position;
    if (index.empty()) {
      index.reserve(h.entries.size());
      for (std::size_t i = 0; i < h.entries.size(); ++i) index.emplace(h.entries[i].name, i);
    }
    auto it = index.find(name);
    return it == index.end() ? std::size_t(-1) : it->second;
  };
  std::vector<bool> seen(h.entries.size(), false);
  h.checksums.assign(h.entries.size(), 0);
  std::size_t position = 0;
  for (const auto& kv : doc.get_object()) {
    std::string_view name(kv.key().data(), kv.key().size());
    std::size_t i = find(position++, name);
    if (i == std::size_t(-1))
      throw_error(errc::corrupt_data,
                  ctx + " names " + quote_name(name) + ", which is not a tensor in this file");
    std::optional<std::uint64_t> sum;
    if (kv.value().is_string())
      sum = parse_hex64({kv.value().get_string().data(), kv.value().get_string().size()});
    if (!sum)
      throw_error(errc::corrupt_data, ctx + ": the value for " + quote_name(name) +
                                          " is not a string of 16 lowercase hex digits");
    h.checksums[i] = *sum;
    seen[i] = true;
  }
  for (std::size_t i = 0; i < seen.size(); ++i)
    if (!seen[i])
      throw_error(errc::corrupt_data, ctx + " records " + std::to_string(doc.get_object().size()) +
                                          " of " + std::to_string(h.entries.size()) +
                                          " tensors; " + quote_name(h.entries[i].name) +
                                          " has none");
  set_checksum_strings(h);
}

}  // namespace

// ---- public helpers --------------------------------------------------------------------------

std::string hex64(std::uint64_t v) {
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<std::size_t>(i)] = hex_digits[v & 15];
  return s;
}

std::string quote_name(std::string_view name) {
  constexpr std::size_t limit = 200;
  std::string out = "'";
  for (std::size_t i = 0; i < name.size();) {
    if (i >= limit) {
      out += "...";
      break;
    }
    auto c = static_cast<unsigned char>(name[i]);
    std::size_t n = utf8_sequence_length(name, i);
    if (c < 0x20 || c == 0x7f || c == '\'' || c == '\\' || n == 0) {
      out += "\\x";
      out += hex_digits[c >> 4];
      out += hex_digits[c & 15];
      ++i;
    } else {
      out.append(name.substr(i, n));
      i += n;
    }
  }
  return out + "'";
}

std::string shape_string(const std::vector<std::int64_t>& shape) { return format_shape(shape); }

std::size_t element_alignment(dtype t) noexcept {
  std::size_t bits = dtype_bits(t);
  if (bits % 8 != 0) return 1;
  return std::min<std::size_t>(bits / 8, 8);
}

namespace {
// The sort key of the data layout: 8, 4, 2, 1, then 0 for the packed sub-byte types, which go
// after every whole-byte type (docs/format.md, "Order").
std::size_t layout_rank(dtype t) noexcept {
  return dtype_bits(t) % 8 != 0 ? 0 : element_alignment(t);
}
}  // namespace

// ---- writing ---------------------------------------------------------------------------------

encoded_header encode_header(const state_dict& sd, bool checksums, std::size_t data_alignment) {
  encoded_header h;
  h.checksums = checksums;

  std::string tree;
  bool v2 = false;
  {
    tree_encoder enc(h.tensors);
    std::string path;
    enc.encode_dict(tree, sd, path, 1);
    v2 = enc.uses_v2();
  }

  std::stable_sort(h.tensors.begin(), h.tensors.end(),
                   [](const planned_tensor& a, const planned_tensor& b) {
                     return layout_rank(a.source->type()) > layout_rank(b.source->type());
                   });
  for (auto& t : h.tensors) {
    t.offset = h.data_size;
    if (__builtin_add_overflow(h.data_size, t.nbytes, &h.data_size))
      throw_error(errc::invalid_argument, "state dict holds more than 2^64 bytes of tensors");
  }

  // Built after the 8-byte prefix so that recorded checksum positions are file offsets.
  std::string& out = h.bytes;
  out.assign(8, '\0');
  out += "{\"__metadata__\":{\"format\":";
  append_quoted(out, format_name);
  out += ",\"shmckpt.version\":";
  append_quoted(out, v2 ? format_version_2 : format_version_1);
  out += ",\"shmckpt.tree\":";
  append_quoted(out, tree);
  if (checksums) {
    // A JSON object inside a JSON string: escape it piece by piece so the positions of the
    // (never escaped) hex digits are known while building.
    out += ",\"shmckpt.checksums\":\"{";
    for (std::size_t i = 0; i < h.tensors.size(); ++i) {
      std::string piece = i ? "," : "";
      append_quoted(piece, h.tensors[i].name);
      piece += ":\"";
      append_escaped(out, piece);
      h.tensors[i].checksum_at = out.size();
      out.append(16, '0');
      append_escaped(out, "\"");
    }
    out += "}\"";
  }
  out += '}';
  for (const auto& t : h.tensors) {
    out += ',';
    append_quoted(out, t.name);
    out += ":{\"dtype\":\"";
    out += dtype_name(t.source->type());
    out += "\",\"shape\":";
    out += shape_string(t.source->shape());
    out += ",\"data_offsets\":[";
    out += std::to_string(t.offset);
    out += ',';
    out += std::to_string(t.offset + t.nbytes);
    out += "]}";
  }
  out += '}';
  // Spaces after the JSON are part of the header: they place the data section.
  if (data_alignment < 8 || (data_alignment & (data_alignment - 1)) != 0) data_alignment = 8;
  out.append((data_alignment - out.size() % data_alignment) % data_alignment, ' ');

  std::uint64_t n = out.size() - 8;
  if (n > max_header_bytes)
    throw_error(errc::invalid_argument,
                "checkpoint header would be " + std::to_string(n) + " bytes, more than the " +
                    std::to_string(max_header_bytes) +
                    "-byte limit readers accept; the state dict has too many entries");
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * i));
  return h;
}

void set_checksum(encoded_header& h, std::size_t i, std::uint64_t xxh3) {
  std::string digits = hex64(xxh3);
  std::memcpy(h.bytes.data() + h.tensors[i].checksum_at, digits.data(), digits.size());
}

// ---- reading ---------------------------------------------------------------------------------

std::uint64_t parse_header_length(const unsigned char (&prefix)[8], std::uint64_t file_size,
                                  const std::string& label) {
  if (file_size < 8)
    throw_error(errc::corrupt_data, label + ": file is " + std::to_string(file_size) +
                                        " bytes, shorter than the 8-byte header length field");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[i];
  if (n > max_header_bytes)
    throw_error(errc::corrupt_data, label + ": header length field says " + std::to_string(n) +
                                        " bytes, more than the limit of " +
                                        std::to_string(max_header_bytes));
  if (n > file_size - 8)
    throw_error(errc::corrupt_data, label + ": header length field says " + std::to_string(n) +
                                        " bytes but only " + std::to_string(file_size - 8) +
                                        " bytes follow it");
  return n;
}

namespace {

// The exact path for the header (see "fast paths"): a DOM, every error named.
void read_header_dom(std::string_view text, const std::string& label, parsed_header& h) {
  // The DOM lives only in this call: one arena, freed at once.
  json::monotonic_resource mr(text.size() * 2 + 4096);
  json::value doc = parse_strict(text, 8, label + ": header", &mr);
  if (!doc.is_object())
    throw_error(errc::corrupt_data, label + ": header is a JSON " + kind_of(doc) +
                                        ", not an object");
  h.entries.reserve(doc.get_object().size());
  for (const auto& kv : doc.get_object()) {
    std::string_view name(kv.key().data(), kv.key().size());
    if (name == "__metadata__") {
      if (!kv.value().is_object())
        throw_error(errc::corrupt_data, label + ": __metadata__ is a JSON " +
                                            kind_of(kv.value()) + ", not an object");
      for (const auto& m : kv.value().get_object()) {
        std::string key(m.key().data(), m.key().size());
        if (!m.value().is_string())
          throw_error(errc::corrupt_data,
                      label + ": __metadata__ " + quote_name(key) + " is a JSON " +
                          kind_of(m.value()) + "; the format allows only strings");
        h.metadata.emplace_back(std::move(key), std::string(m.value().get_string().data(),
                                                            m.value().get_string().size()));
      }
      continue;
    }
    h.entries.push_back(parse_entry(name, kv.value(), entry_context{label, name}));
  }
}

}  // namespace

parsed_header parse_header(std::string_view text, std::uint64_t data_size,
                           const std::string& label) {
  if (text.empty() || text.front() != '{')
    throw_error(errc::corrupt_data, label + ": header does not start with '{'");
  parsed_header h;
  {
    sax_pass<header_reader> fast(text, 8);
    if (fast.ok) {
      h.entries = std::move(fast.handler().entries);
      h.metadata = std::move(fast.handler().metadata);
    } else {
      read_header_dom(text, label, h);
    }
  }
  check_layout(h.entries, data_size, label);

  bool ours = false;
  for (const auto& [k, v] : h.metadata) ours |= k.starts_with("shmckpt.");
  if (!ours) return h;

  const std::string* version = find_metadata(h, "shmckpt.version");
  if (!version)
    throw_error(errc::corrupt_data, label + ": __metadata__ has shmckpt keys but no " +
                                        "'shmckpt.version'");
  if (*version != format_version_1 && *version != format_version_2)
    throw_error(errc::corrupt_data,
                label + ": __metadata__ 'shmckpt.version' is " + quote_name(*version) +
                    "; this reader understands versions " + std::string(format_version_1) +
                    " and " + std::string(format_version_2) +
                    " (a newer shmckpt wrote it: upgrade the reader)");
  if (const std::string* tree = find_metadata(h, "shmckpt.tree")) {
    // Each dict level costs three JSON levels ({"dict": [[k, v]]}), a leaf object one more.
    auto arena = std::make_unique<json::monotonic_resource>(tree->size() * 2 + 4096);
    json::value root = parse_strict(*tree, 3 * max_tree_depth + 1,
                                    label + ": __metadata__ 'shmckpt.tree'", arena.get());
    if (root.is_null())
      throw_error(errc::corrupt_data, label + ": __metadata__ 'shmckpt.tree' is null");
    // Moved, never assigned: the value keeps pointing into its arena.
    h.tree = std::make_shared<const json_document>(
        json_document{std::move(arena), json::value(std::move(root))});
  }
  if (const std::string* sums = find_metadata(h, "shmckpt.checksums"))
    parse_checksums(h, *sums, label);
  return h;
}

state_dict build_state_dict(const parsed_header& h,
                            const std::function<value(std::size_t)>& make_tensor,
                            const std::string& label) {
  if (!h.tree) {
    state_dict flat;
    for (std::size_t i = 0; i < h.entries.size(); ++i)
      flat.insert_or_assign(h.entries[i].name, make_tensor(i));
    return flat;
  }
  tree_decoder dec(h, make_tensor, label);
  return dec.decode_root();
}

}  // namespace shmckpt::detail
