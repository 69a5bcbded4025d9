// header_fast.hpp — the one-pass SAX readers of the header and the checksum table (private).
//
// Opening a checkpoint must cost O(header), and the header of a file with tens of thousands of
// tensors is megabytes of JSON. The files our writer produces (and any well-formed file) are
// therefore read in one SAX pass that builds the result directly, without a DOM and without an
// allocation per key. These readers accept only what the exact path (header_exact.hpp, the DOM
// validator) accepts, and give up (return false) at the first thing they do not expect: a
// syntax error, a repeated key hash, a wrong type, an unknown field, a failed check. The caller
// then runs the exact path on the same text, which finds and reports the exact error, so every
// error message and its precedence are those of the exact path, and this file names no error.
//
// Each reader first tries the by-hand reader of our writer's own layout (header_plain.hpp),
// which is faster still, and runs its SAX pass only when that gives up.
//
// The two paths must agree on every input: the fast path accepting something the exact path
// rejects would let a malformed file in; the reverse only costs speed. test/
// header_parsers_test.cpp feeds the fuzz corpus, the hostile files and mutated headers to both.
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

/// Reads the header JSON `text` ({"__metadata__": {string: string}, name: {"dtype", "shape",
/// "data_offsets"}}) into `entries` (in file order, each checked: known dtype, rank cap,
/// dtype × shape = byte range) and `metadata` (file order). False when it gave up; the outputs
/// are then unspecified. Contiguity of the data section is the caller's check.
bool read_header_fast(std::string_view text, std::vector<tensor_entry>& entries,
                      std::vector<std::pair<std::string, std::string>>& metadata);

/// Reads "shmckpt.checksums" when it is in the order our writer records it: {entries[i].name:
/// "<16 lowercase hex>"} for every i, in entry order. False for anything else (another order
/// too).
bool read_checksums_fast(std::string_view text, const std::vector<tensor_entry>& entries,
                         std::vector<std::uint64_t>& sums);

}  // namespace shmckpt::detail
