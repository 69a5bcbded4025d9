// strict_json.hpp — JSON as the checkpoint format demands it (private to the library).
//
// Boost.JSON's parser is lenient where a hostile file could exploit it: it keeps only the last
// of duplicate object keys (so a file could smuggle a second definition of a tensor past a
// validator that looks at the first), and it reports bad UTF-8 only as "syntax error". This
// component owns the stricter reading every JSON document of a checkpoint goes through (the
// header's exact path, the checksum table's exact path, the tree document): duplicate keys
// rejected in every object, invalid UTF-8 named by byte, a nesting cap, no trailing data, and
// every failure an error(corrupt_data) that starts with the caller's description.
//
// It also owns the one repeated-key test (`has_repeat`) over 64-bit key hashes that the
// one-pass readers (here and in header_fast.cpp) use to notice a duplicate without building a
// set of strings; equal hashes only send the text to the exact path, never reject it.
//
// Thread safety: stateless; safe to call concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/storage_ptr.hpp>
#include <boost/json/value.hpp>

namespace shmckpt::detail {

/// Parses `text` into a value whose memory comes from `sp`, rejecting duplicate keys, invalid
/// UTF-8, nesting deeper than `max_depth` and trailing data; errors are error(corrupt_data)
/// starting with `what`.
boost::json::value parse_strict(std::string_view text, std::size_t max_depth,
                                const std::string& what, boost::json::storage_ptr sp);

/// Whether two of the n key hashes at k are equal (a duplicate key or, rarely, a collision).
/// `table` is scratch space reused between calls.
bool has_repeat(const std::uint64_t* k, std::size_t n, std::vector<std::uint64_t>& table);

/// "object", "array", "string", "integer", ... for error messages.
std::string_view json_kind_name(boost::json::kind k) noexcept;
inline std::string kind_of(const boost::json::value& v) {
  return std::string(json_kind_name(v.kind()));
}

}  // namespace shmckpt::detail
