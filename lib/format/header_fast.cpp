// header_fast.cpp — the SAX readers behind header_fast.hpp.
#include "format/header_fast.hpp"

#include <xxhash.h>

#include <bit>
#include <cstring>

#include <boost/json/basic_parser_impl.hpp>

#include "format/safetensors.hpp"
#include "format/sax_base.hpp"
#include "format/strict_json.hpp"
#include "format/text.hpp"

namespace shmckpt::detail {
namespace json = boost::json;

namespace {

// The header: {"__metadata__": {string: string, ...}, name: {"dtype", "shape", "data_offsets"}}.
class header_reader : public sax_base {
 public:
  std::vector<tensor_entry> entries;
  std::vector<std::pair<std::string, std::string>> metadata;

  // `__metadata__`, read already (read_leading_metadata), as the first key of the root object.
  void preset_metadata(std::vector<std::pair<std::string, std::string>> m) {
    metadata = std::move(m);
    root_keys_.push_back(XXH3_64bits("__metadata__", 12));
  }

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
    std::string_view name = whole(last);
    if (!have_dtype_ || name != last_dtype_name_) {  // files have few dtypes: look up changes
      auto t = dtype_from_name(name);
      if (!t) return give_up(ec);
      last_dtype_name_.assign(name);
      last_dtype_ = *t;
      have_dtype_ = true;
    }
    done_with_whole();
    entry_.type = last_dtype_;
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
  bool have_dtype_ = false;  // last_dtype_name_ names last_dtype_
  std::string last_dtype_name_;
  shmckpt::dtype last_dtype_ = shmckpt::dtype::f32;
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

// ---- the leading __metadata__ by hand -------------------------------------------------------
//
// Our writer puts `__metadata__` first (so does the Python safetensors library), and its values
// (the tree and the checksum table: megabytes of JSON text full of escaped quotes) are what the
// header spends most of its bytes on. Boost.JSON unescapes a string a byte at a time through a
// small buffer once it has seen one escape; this reads that one object, when the header starts
// with it exactly, in a tight loop, and hands the parser "{" and the rest of the header. Only
// the plainest form is taken: no whitespace, string values, the short escapes (\" \\ \/ \b \f
// \n \r \t); anything else (a \u escape, a number, a control character, a repeated key) gives
// up, and the parser reads the whole header as before. The text is valid UTF-8 already
// (checked first, and the parser would check no more strictly).

constexpr std::string_view metadata_prefix = R"({"__metadata__":{)";

// Each byte of `w` that is a quote, a backslash or a control character has its top bit set in
// the result; bytes above the first such byte may be flagged wrongly (borrows), the first never.
inline std::uint64_t special_bytes(std::uint64_t w) noexcept {
  constexpr std::uint64_t ones = 0x0101010101010101u, high = 0x8080808080808080u;
  auto zero = [](std::uint64_t v) { return (v - ones) & ~v & high; };
  return zero(w ^ (ones * '"')) | zero(w ^ (ones * '\\')) | ((w - ones * 0x20) & ~w & high);
}

// What the short escape \<c> stands for, or 0 for the escapes left to the parser (\u) and errors.
constexpr char short_escape(char c) noexcept {
  switch (c) {
    case '"': return '"';
    case '\\': return '\\';
    case '/': return '/';
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    default: return 0;
  }
}

// The JSON string whose opening quote is at text[i], unescaped, appended to `out`; returns the
// position after its closing quote, or npos to give up. Eight bytes at a time between escapes,
// through a buffer on the stack; a string too long for it reserves room for the rest of the
// text once (the unescaped string is no longer), so that a megabyte value is never regrown.
std::size_t scan_string(std::string_view text, std::size_t i, std::string& out) {
  const char* const begin = text.data();
  const char* const end = begin + text.size();
  const char* s = begin + i + 1;
  char buf[16384];
  std::size_t n = 0;  // bytes of buf written
  for (;;) {
    if (sizeof buf - n < 8) {
      if (out.capacity() - out.size() < static_cast<std::size_t>(end - s) + n)
        out.reserve(out.size() + n + static_cast<std::size_t>(end - s));
      out.append(buf, n);
      n = 0;
    }
    if (end - s >= 8) {
      std::uint64_t w;
      std::memcpy(&w, s, 8);
      std::memcpy(buf + n, s, 8);  // the whole word; bytes from the first special one are rewritten
      std::uint64_t m = special_bytes(w);
      if (m == 0) {
        n += 8;
        s += 8;
        continue;
      }
      std::size_t k = static_cast<std::size_t>(std::countr_zero(m)) / 8;
      n += k;
      s += k;
    } else if (s == end) {
      return std::string_view::npos;
    } else if (*s != '"' && *s != '\\' && static_cast<unsigned char>(*s) >= 0x20) {
      buf[n++] = *s++;
      continue;
    }
    // *s is a quote, a backslash or a control character.
    if (*s == '"') {
      out.append(buf, n);
      return static_cast<std::size_t>(s + 1 - begin);
    }
    if (*s != '\\' || end - s < 2) return std::string_view::npos;  // control character
    char c = short_escape(s[1]);
    if (c == 0) return std::string_view::npos;
    buf[n++] = c;
    s += 2;
  }
}

// When `text` starts with {"__metadata__":{...} in the plain form above, its entries into
// `metadata` and, in `rest`, what the parser is to read after a "{": the rest of the root object.
bool read_leading_metadata(std::string_view text,
                           std::vector<std::pair<std::string, std::string>>& metadata,
                           std::string_view& rest) {
  if (!text.starts_with(metadata_prefix)) return false;
  std::size_t i = metadata_prefix.size();
  std::vector<std::uint64_t> keys;
  if (i < text.size() && text[i] != '}') {
    for (;;) {
      if (i >= text.size() || text[i] != '"') return false;
      std::string key, val;
      i = scan_string(text, i, key);
      if (i == std::string_view::npos || i >= text.size() || text[i] != ':') return false;
      if (++i >= text.size() || text[i] != '"') return false;
      i = scan_string(text, i, val);
      if (i == std::string_view::npos || i >= text.size()) return false;
      keys.push_back(XXH3_64bits(key.data(), key.size()));
      metadata.emplace_back(std::move(key), std::move(val));
      if (text[i] == '}') break;
      if (text[i] != ',') return false;
      ++i;
    }
  }
  // text[i] is the metadata's closing brace; then either another key or the root's end.
  if (++i >= text.size()) return false;
  if (text[i] == ',') {
    if (i + 1 >= text.size() || text[i + 1] != '"') return false;
    ++i;
  } else if (text[i] != '}') {
    return false;
  }
  std::vector<std::uint64_t> table;
  if (has_repeat(keys.data(), keys.size(), table)) return false;
  rest = text.substr(i);
  return true;
}

// Every pass checks the whole text with first_invalid_utf8 before parsing, and Boost.JSON's own
// check is no stricter: its second look at every string's bytes is skipped.
json::parse_options depth_limit(std::size_t max_depth) {
  json::parse_options opts;
  opts.max_depth = max_depth;
  opts.allow_invalid_utf8 = true;
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

}  // namespace

bool read_header_fast(std::string_view text, std::vector<tensor_entry>& entries,
                      std::vector<std::pair<std::string, std::string>>& metadata) {
  if (first_invalid_utf8(text) != std::string_view::npos) return false;
  json::basic_parser<header_reader> p(depth_limit(8));
  json::error_code ec;
  std::vector<std::pair<std::string, std::string>> leading;
  std::string_view rest = text;
  if (read_leading_metadata(text, leading, rest)) {
    p.handler().preset_metadata(std::move(leading));
    p.write_some(true, "{", 1, ec);
  } else {
    rest = text;
  }
  std::size_t n = ec ? 0 : p.write_some(false, rest.data(), rest.size(), ec);
  if (ec || n != rest.size()) return false;
  entries = std::move(p.handler().entries);
  metadata = std::move(p.handler().metadata);
  return true;
}

bool read_checksums_fast(std::string_view text, const std::vector<tensor_entry>& entries,
                         std::vector<std::uint64_t>& sums) {
  sax_pass<checksums_reader> fast(text, 2, entries);
  if (!fast.ok) return false;
  sums = std::move(fast.handler().sums);
  return true;
}

}  // namespace shmckpt::detail
