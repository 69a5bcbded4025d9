// tree.hpp — the state-dict tree inside `__metadata__` (private to the library).
//
// Plain safetensors holds a flat map of name → tensor. A state dict is a tree: ordered dicts
// (string- or integer-keyed), lists, tuples, tensors and scalars (int64, float, bool, string,
// none). The tree travels as its own JSON document in the metadata string "shmckpt.tree"
// (docs/format.md, "The tree"): dicts as {"dict": [[key, value], ...]} (keys in the user's
// order), integer-keyed dicts as {"idict": ...}, tuples as {"tuple": [...]}, floats as their
// bit pattern {"float": "<16 hex>"} (NaN payloads, -0.0 and infinities survive), strings that
// are not UTF-8 as {"bytes": "<hex>"}, and every tensor as {"tensor": "<its header name>"},
// which must be its flattened key path (keys and indexes joined by '.', as for_each_tensor
// names them).
//
// This component owns both directions. Encoding trusts its input but refuses trees the format
// cannot represent (two tensors flattening to one name, "__metadata__" as a name, names that are
// not UTF-8, too many dimensions, nesting deeper than the reader accepts). Decoding trusts
// nothing: every node's shape is checked, every tensor of the header must appear exactly once
// at its own path, and every failure is an error(corrupt_data) naming the path. Decoding has two
// paths, like the header: a one-pass decoder working on the parser's events, which gives up at
// anything unexpected, and the exact decoder over the strict DOM, which names every error.
//
// Thread safety: stateless; safe to call concurrently.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "format/safetensors.hpp"
#include "format/text.hpp"

namespace shmckpt::detail {

/// Appends `part` to the flattened key path `path`: for_each_tensor's rule, keys and indexes
/// joined by '.', no leading dot.
inline void push_path(std::string& path, std::string_view part) {
  if (!path.empty()) path += '.';
  path += part;
}

/// "at the root" or "at '<path>'", for error messages.
inline std::string at_path(const std::string& path) {
  return path.empty() ? std::string("at the root") : "at " + quote_name(path);
}

/// Finds header entries by name for the tree decoders. Our writer lists the tree's tensors in
/// header order (per alignment class), so the entry after the last one found is tried first;
/// a hash index is built only when that guess misses.
class entry_finder {
 public:
  static constexpr std::size_t npos = std::size_t(-1);
  explicit entry_finder(const std::vector<tensor_entry>& entries) : entries_(entries) {}

  /// The index of the entry named `name`, or npos.
  std::size_t find(std::string_view name) {
    if (next_ < entries_.size() && entries_[next_].name == name) return next_++;
    if (index_.empty()) {
      index_.reserve(entries_.size());
      for (std::size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].name, i);
    }
    auto it = index_.find(name);
    if (it == index_.end()) return npos;
    next_ = it->second + 1;
    return it->second;
  }

 private:
  const std::vector<tensor_entry>& entries_;
  std::size_t next_ = 0;
  std::unordered_map<std::string_view, std::size_t> index_;  // views of the entries' names
};

/// Appends the tree document of `sd` to `out` and every tensor of it to `tensors`, in tree
/// order (offsets not yet assigned). Returns whether the tree needs format version 2 (an
/// integer-keyed dict or a tuple). Throws error(invalid_argument) as encode_header documents.
bool encode_tree(const state_dict& sd, std::string& out, std::vector<planned_tensor>& tensors);

/// The one-pass decoder: reads the tree document `text` (the value of "shmckpt.tree", of a file
/// whose 'shmckpt.version' is `version` and whose entries, sorted by offset, are `entries`)
/// straight from the JSON parser's events into a state dict, with no DOM. It accepts exactly
/// what parse_strict and decode_tree together accept, and builds the same tree; like the fast
/// header reader it names no error: at the first thing it does not expect (a syntax error, a
/// node decode_tree would reject, a tensor missing from the tree) it gives up and returns null,
/// and the caller takes the exact path (parse_strict, then decode_tree), which finds and names
/// the error. test/tree_decoders_test.cpp holds the two to the same verdict.
std::shared_ptr<decoded_tree> decode_tree_fast(std::string_view text,
                                               const std::vector<tensor_entry>& entries,
                                               int version);

/// decode_tree_fast's first try: the same decoder by hand, for the layout our encoder writes
/// (no whitespace, int64 integers, short escapes only); null when it gave up,
/// for any reason, and decode_tree_fast then runs its SAX pass. Builds exactly what the SAX
/// pass builds.
std::shared_ptr<decoded_tree> decode_tree_plain(std::string_view text,
                                                const std::vector<tensor_entry>& entries,
                                                int version);

/// Rebuilds the state dict from `h.tree` (which must be set); see build_state_dict.
state_dict decode_tree(const parsed_header& h,
                       const std::function<value(std::size_t)>& make_tensor,
                       const std::string& label);

}  // namespace shmckpt::detail
