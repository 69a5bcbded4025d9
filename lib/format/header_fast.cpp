// header_fast.cpp — the SAX readers behind header_fast.hpp.
#include "format/header_fast.hpp"

#include <xxhash.h>

#include <bit>
#include <cstring>

#include <boost/json/basic_parser_impl.hpp>

#include "format/header_plain.hpp"
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
    if (read_entries_plain(rest, XXH3_64bits("__metadata__", 12), entries)) {
      metadata = std::move(leading);  // the usual case: our writer's layout (header_plain.hpp)
      return true;
    }
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
  if (read_checksums_plain(text, entries, sums)) return true;
  sax_pass<checksums_reader> fast(text, 2, entries);
  if (!fast.ok) return false;
  sums = std::move(fast.handler().sums);
  return true;
}

}  // namespace shmckpt::detail
