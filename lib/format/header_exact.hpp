// header_exact.hpp — the DOM validator of the header and the checksum table (private).
//
// The exact path: the text is parsed strictly (strict_json.hpp) into a DOM in an arena, and
// every field is then checked in a fixed order, so that a malformed file is rejected with an
// error(corrupt_data) naming the tensor, the field and both values ("checkpoint 'x': tensor
// 'w': data_offsets [0, 12] say 12 bytes, dtype F32 × shape [2, 2] needs 16"). It is the
// reference the one-pass readers of header_fast.hpp are held to: they must accept exactly what
// this accepts, and they hand over to it whenever they give up, so every message a reader of a
// checkpoint sees comes from here. It also accepts what the fast readers need not (checksum
// tables in any order).
//
// Thread safety: stateless; safe to call concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shmckpt/tensor_entry.hpp"

namespace shmckpt::detail {

/// Validates the header JSON `text` and appends its entries (file order) and `__metadata__`
/// (file order) to the outputs. Throws error(corrupt_data) starting with `label`. Contiguity
/// of the data section is the caller's check.
void read_header_exact(std::string_view text, const std::string& label,
                       std::vector<tensor_entry>& entries,
                       std::vector<std::pair<std::string, std::string>>& metadata);

/// Validates "shmckpt.checksums" (a JSON object naming every entry exactly once, in any order,
/// with a string of 16 lowercase hex digits) and returns the sums parallel to `entries`.
/// Throws error(corrupt_data) starting with `label`.
std::vector<std::uint64_t> read_checksums_exact(std::string_view text,
                                                const std::vector<tensor_entry>& entries,
                                                const std::string& label);

}  // namespace shmckpt::detail
