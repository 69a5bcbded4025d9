// safetensors.hpp — the shmckpt file format, without any I/O (private to the library).
//
// This is the one place that knows the byte layout of a checkpoint file (docs/format.md is its
// prose twin; change both together). writer.cpp asks it to plan a file for a state dict and then
// moves the bytes; reader.cpp hands it the bytes of a header and gets back validated entries and
// the state-dict tree. Keeping the format here, away from file descriptors and mappings, lets the
// writer and the reader share one definition of every name, limit and encoding, and lets the
// validation run the same way whether a caller lists, reads or verifies a file.
//
// Trust boundary: the `encode_*` side trusts its input (a state dict built in this process) but
// still rejects trees the format cannot represent (duplicate tensor names, invalid UTF-8 in a
// tensor name, nesting deeper than the reader accepts), so that every file we write can be read
// back. The `parse_*` side trusts nothing: every length is capped before anything is allocated,
// every field's JSON type is checked, arithmetic is checked, and every failure is an
// error(corrupt_data) whose message starts with the caller's label (e.g. "checkpoint 'x'") and
// names the field.
//
// The component's files, one job each: text.hpp (UTF-8, escaping, hex), strict_json.hpp (JSON
// without duplicate keys), header_fast.hpp (the one-pass header reader) and header_exact.hpp
// (the DOM validator it must agree with), tree.hpp (the state-dict tree in `__metadata__`),
// header_encode.cpp (planning a file), safetensors.cpp (reading one: prefix, layout, metadata),
// layout.hpp (the names of the files in a checkpoint directory).
//
// Thread safety: stateless; all functions are safe to call concurrently.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/json/monotonic_resource.hpp>
#include <boost/json/value.hpp>

#include "format/text.hpp"
#include "shmckpt/tensor_entry.hpp"
#include "shmckpt/state_dict.hpp"

namespace shmckpt::detail {

// ---- limits: what a reader accepts, and therefore what a writer may produce -----------------

/// Largest JSON header accepted (bytes), checked before allocating or parsing.
inline constexpr std::uint64_t max_header_bytes = 100'000'000;
/// Deepest state-dict nesting (dicts and lists, the root dict counting as 1).
inline constexpr std::size_t max_tree_depth = max_nesting_depth;
/// Most dimensions a tensor may have.
inline constexpr std::size_t max_tensor_rank = 1024;

/// Values of the `__metadata__` keys this format defines.
/// `format` is what the safetensors ecosystem expects of PyTorch files ("pt": transformers'
/// loader accepts only pt, tf, flax and mlx); files are recognised as ours by their `shmckpt.*`
/// keys. Files written before carried "shmckpt" there and still load.
inline constexpr std::string_view format_name = "pt";
/// `shmckpt.version`: 1 for trees of dicts, lists and scalars; 2 when the tree holds an
/// integer-keyed dict or a tuple (the writer uses 1 whenever it can, so older readers still
/// read those files).
inline constexpr std::string_view format_version_1 = "1";
inline constexpr std::string_view format_version_2 = "2";

/// "[2, 3]".
std::string shape_string(const std::vector<std::int64_t>& shape);

/// The natural alignment of `t`'s elements in bytes (1 for the packed sub-byte types, 8 at most).
/// The reader copies tensors that miss it; the writer orders the data section by element size,
/// packed sub-byte types last.
std::size_t element_alignment(dtype t) noexcept;

// ---- writing ---------------------------------------------------------------------------------

/// One tensor's place in a planned file.
struct planned_tensor {
  std::string name;             // flattened key path, the header key
  const tensor* source;         // the caller's tensor; its bytes are written as they are
  std::uint64_t offset = 0;     // start within the data section
  std::uint64_t nbytes = 0;     //
  std::size_t checksum_at = 0;  // where its 16 hex digits sit in `encoded_header::bytes`
};

/// A file laid out before any byte of tensor data is touched.
struct encoded_header {
  /// The first bytes of the file: the u64 length prefix and the space-padded JSON header, with
  /// checksum digits still zero (see set_checksum). Its size is a multiple of the
  /// `data_alignment` asked of encode_header.
  std::string bytes;
  /// Every tensor in data-section order (which is also the header's order).
  std::vector<planned_tensor> tensors;
  /// Whether `bytes` holds checksum digits to fill in.
  bool checksums = false;
  std::uint64_t data_size = 0;
  std::uint64_t file_size() const noexcept { return bytes.size() + data_size; }
};

/// Plans the file for `sd`. Throws error(invalid_argument) when two tensors flatten to the same
/// name, a name is "__metadata__" or not valid UTF-8, a tensor has more than max_tensor_rank
/// dimensions, or the tree is deeper than max_tree_depth; error(invalid_argument) also when the
/// header would exceed max_header_bytes. `data_alignment` (a power of two, at least 8; other
/// values mean 8) is what the header is padded to with trailing spaces, so that the data section
/// starts at a multiple of it (the writer asks for 4096, for O_DIRECT).
encoded_header encode_header(const state_dict& sd, bool checksums,
                             std::size_t data_alignment = 8);

/// Writes tensor `i`'s checksum digits into `h.bytes`. Requires h.checksums.
void set_checksum(encoded_header& h, std::size_t i, std::uint64_t xxh3);

// ---- reading ---------------------------------------------------------------------------------

/// A parsed JSON document and the arena its memory comes from. Held by pointer: assigning a
/// boost::json::value across memory resources copies it node by node, and freeing an arena is
/// one step where destroying a DOM is one per node.
struct json_document {
  std::unique_ptr<boost::json::monotonic_resource> arena;  // declared first: outlives `root`
  boost::json::value root;
};

/// The "shmckpt.tree" document as a DOM: either parsed already, or held as text that has been
/// validated and is parsed on first access (the one-pass decoder needs no DOM; only the exact
/// decoder and the tests look at it). Copies share one document. Access is thread-safe.
class tree_document {
 public:
  tree_document() = default;
  /// A document parsed already.
  explicit tree_document(json_document doc);
  /// A document parsed from `text` on first access, with parse_strict's `max_depth`; `text` must
  /// be one parse_strict accepts (errors would be reported as `what`).
  tree_document(std::string text, std::size_t max_depth, std::string what);

  /// Whether there is a document.
  explicit operator bool() const noexcept { return state_ != nullptr; }
  const json_document& operator*() const;
  const json_document* operator->() const { return &**this; }

 private:
  struct state;
  std::shared_ptr<state> state_;
};

/// The state dict the one-pass tree decoder (tree.hpp, decode_tree_fast) built while the header
/// was read, with a none where every tensor goes: build_state_dict fills them in and hands the
/// tree out, once.
struct decoded_tree {
  state_dict root;
  /// Where each tensor goes, and which entry it is.
  std::vector<std::pair<value*, std::size_t>> tensors;
  /// Set by the build_state_dict that took `root`; later ones decode `parsed_header::tree`.
  std::atomic<bool> taken{false};
};

/// The header of a file after validation.
struct parsed_header {
  /// Every tensor, sorted by offset: contiguous from 0 to the end of the data section.
  std::vector<tensor_entry> entries;
  /// `__metadata__` in file order (all values are strings; the format demands it).
  std::vector<std::pair<std::string, std::string>> metadata;
  /// The "shmckpt.tree" document, or none when the file has none.
  tree_document tree;
  /// The tree as decoded in one pass while the header was read (fast parser only); null when
  /// the file has no tree, the exact parser was asked for, or the one-pass decoder gave up on
  /// it (build_state_dict then decodes `tree`, which names the error).
  std::shared_ptr<decoded_tree> decoded;
  /// The recorded XXH3-64 per entry (parallel to `entries`), when the file records checksums.
  /// parse_header leaves each entry's `checksum` string empty (opening a file needs none of
  /// them: 65 536 small allocations); spell_checksums fills them in where entries are shown.
  std::vector<std::uint64_t> checksums;
};

/// "xxh3:<16 lowercase hex digits>", as tensor_entry::checksum spells a recorded checksum.
std::string checksum_text(std::uint64_t v);

/// Sets every entry's `checksum` from h.checksums (none when the file records none).
void spell_checksums(parsed_header& h);

/// Reads the little-endian u64 header length from the first 8 bytes of a file of `file_size`
/// bytes and checks it against max_header_bytes and the file size.
std::uint64_t parse_header_length(const unsigned char (&prefix)[8], std::uint64_t file_size,
                                  const std::string& label);

/// Which parser reads the header and the checksum table. `fast`, what every reader uses, runs
/// the one-pass readers (header_fast.hpp) and hands over to the exact path whenever they give
/// up; `exact` runs only the DOM validator (header_exact.hpp). Both give the same result, or
/// the same error, for every input (test/header_parsers_test.cpp holds them to it).
enum class header_parser { fast, exact };

/// Validates the JSON header `json` of a file whose data section holds `data_size` bytes: every
/// entry, contiguity, metadata types, the tree document's syntax and the checksum table.
parsed_header parse_header(std::string_view json, std::uint64_t data_size,
                           const std::string& label, header_parser how = header_parser::fast);

/// The value of the `__metadata__` key `key`, or nullptr.
const std::string* find_metadata(const parsed_header& h, std::string_view key);

/// Rebuilds the state dict. With a tree, checks its structure and that it names every entry
/// exactly once, at its own flattened path; without one, returns name → tensor in file order.
/// `make_tensor(i)` yields the value for entries[i] (a tensor, or none when only validating).
/// The first call on a header the one-pass decoder read takes its tree (h.decoded) and only
/// fills in the tensors; later calls decode h.tree again. Not to be called concurrently on one
/// header.
state_dict build_state_dict(const parsed_header& h,
                            const std::function<value(std::size_t)>& make_tensor,
                            const std::string& label);

}  // namespace shmckpt::detail
