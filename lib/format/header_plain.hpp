// header_plain.hpp — the header in the form our writer gives it, read by hand (private).
//
// Almost every header a reader meets comes from our writer (or the Python safetensors library),
// which lays it out one way: `__metadata__` first, then one entry per tensor as
// {"dtype":…,"shape":[…],"data_offsets":[…,…]} in that field order, and a checksum table that
// lists the entries in file order. A general JSON parser spends most of its time on this text
// dispatching events; these readers walk exactly that layout in tight loops instead (12.6 MB of
// header for 65 536 tensors), and give up (return false) at anything else: another field order,
// a \u escape, a number with a sign, fraction or exponent, a number of more than 19 digits, a
// repeated key hash, a failed check. The caller then runs the SAX readers of header_fast.hpp,
// which take every well-formed header, and they in turn hand what they do not expect to the
// exact path (header_exact.hpp), which names the error. Whitespace between tokens is taken, as
// JSON allows it (our writer puts a space after each comma of a shape).
//
// Like the SAX readers, these accept only what the exact path accepts, and return what it
// returns: test/header_parsers_test.cpp holds all three to the same result on the fuzz corpus,
// the hostile files and thousands of mutated headers, and counts how often these took a header
// whole, so that a change that makes them give up on our own files fails the suite.
//
// Only read_header_plain checks that the text is valid UTF-8; for the others the caller has.
//
// Thread safety: stateless; safe to call concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shmckpt/tensor_entry.hpp"

namespace shmckpt::detail {

/// The JSON string whose opening quote is at text[i], unescaped and appended to `out`; returns
/// the position after its closing quote, or npos to give up (a \u escape, a control character,
/// no closing quote).
std::size_t scan_json_string(std::string_view text, std::size_t i, std::string& out);

/// When `text` starts with {"__metadata__":{"key":"value",...} (string values, no whitespace,
/// short escapes only), its entries into `metadata` and, in `rest`, the rest of the root object
/// after its "{": either `"name":...` or `}` and what follows.
bool read_leading_metadata(std::string_view text,
                           std::vector<std::pair<std::string, std::string>>& metadata,
                           std::string_view& rest);

/// The whole header when it starts with the leading metadata: read_leading_metadata, then
/// read_entries_plain, after checking that the text is valid UTF-8. Same contract as
/// read_header_fast.
bool read_header_plain(std::string_view text, std::vector<tensor_entry>& entries,
                       std::vector<std::pair<std::string, std::string>>& metadata);

/// The root object's entries after the leading metadata (`rest` from read_leading_metadata),
/// checked as the SAX reader checks them (known dtype, rank cap, non-negative dimensions,
/// dtype × shape = byte range, no repeated root key hash among them and `metadata_key_hash`),
/// into `entries` in file order. Only JSON whitespace may follow the root object.
bool read_entries_plain(std::string_view rest, std::uint64_t metadata_key_hash,
                        std::vector<tensor_entry>& entries);

/// "shmckpt.checksums" exactly as our writer records it: {entries[i].name: "<16 lowercase
/// hex>"} for every i, in entry order, each name spelled without escapes, no whitespace.
bool read_checksums_plain(std::string_view text, const std::vector<tensor_entry>& entries,
                          std::vector<std::uint64_t>& sums);

}  // namespace shmckpt::detail
