// header_fast.cpp — the SAX readers behind header_fast.hpp.
#include "format/header_fast.hpp"

#include <xxhash.h>

#include <boost/json/basic_parser_impl.hpp>

#include "format/safetensors.hpp"
#include "format/strict_json.hpp"
#include "format/text.hpp"

namespace shmckpt::detail {
namespace json = boost::json;

namespace {

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

}  // namespace

bool read_header_fast(std::string_view text, std::vector<tensor_entry>& entries,
                      std::vector<std::pair<std::string, std::string>>& metadata) {
  sax_pass<header_reader> fast(text, 8);
  if (!fast.ok) return false;
  entries = std::move(fast.handler().entries);
  metadata = std::move(fast.handler().metadata);
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
