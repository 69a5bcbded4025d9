// safetensors.cpp — reading a header: the length prefix, the choice between the fast and the
// exact parser, the data layout, the shmckpt metadata, and the state dict (safetensors.hpp).
//
// A file is `u64 N` (little-endian), `N` bytes of JSON padded with spaces so that 8 + N is a
// multiple of 8, then the data section: every tensor's bytes, back to back from offset 0, no
// holes, no trailing bytes (docs/format.md has the full layout). The JSON maps each tensor name
// to {"dtype", "shape", "data_offsets"}; `__metadata__` (string → string only) carries what
// plain safetensors cannot: the state-dict tree ("shmckpt.tree", itself a JSON document stored
// as a string, tree.hpp) and per-tensor XXH3-64 checksums ("shmckpt.checksums").
//
// Reading treats the header as hostile. The header and the checksum table are first read by
// the one-pass readers of header_fast.hpp; anything unexpected sends the text to the exact path
// of header_exact.hpp, which names the error. The tree document is parsed strictly
// (strict_json.hpp) into an arena-backed DOM that the decoder (tree.hpp) walks.
#include "format/safetensors.hpp"

#include <algorithm>
#include <mutex>

#include "format/header_exact.hpp"
#include "format/header_fast.hpp"
#include "format/strict_json.hpp"
#include "format/text.hpp"
#include "format/tree.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt::detail {
namespace json = boost::json;

std::string shape_string(const std::vector<std::int64_t>& shape) { return format_shape(shape); }

const std::string* find_metadata(const parsed_header& h, std::string_view key) {
  for (const auto& [k, v] : h.metadata)
    if (k == key) return &v;
  return nullptr;
}


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

void parse_checksums(parsed_header& h, const std::string& text, const std::string& label,
                     header_parser how) {
  if (how == header_parser::exact || !read_checksums_fast(text, h.entries, h.checksums))
    h.checksums = read_checksums_exact(text, h.entries, label);
}

}  // namespace

std::string checksum_text(std::uint64_t v) {
  std::string c = "xxh3:0000000000000000";
  for (std::size_t k = c.size(); k-- > 5; v >>= 4) c[k] = hex_digits[v & 15];
  return c;
}

void spell_checksums(parsed_header& h) {
  if (h.checksums.empty()) return;
  for (std::size_t i = 0; i < h.entries.size(); ++i)
    h.entries[i].checksum = checksum_text(h.checksums[i]);
}

parsed_header parse_header(std::string_view text, std::uint64_t data_size,
                           const std::string& label, header_parser how) {
  if (text.empty() || text.front() != '{')
    throw_error(errc::corrupt_data, label + ": header does not start with '{'");
  parsed_header h;
  if (how == header_parser::exact || !read_header_fast(text, h.entries, h.metadata)) {
    h.entries.clear();
    h.metadata.clear();
    read_header_exact(text, label, h.entries, h.metadata);
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
    constexpr std::size_t depth = 3 * max_tree_depth + 1;
    std::string what = label + ": __metadata__ 'shmckpt.tree'";
    // The one-pass decoder builds the state dict now; when it gives up, the strict parse below
    // names any syntax error, and build_state_dict's exact decoder any other.
    if (how == header_parser::fast)
      h.decoded = decode_tree_fast(*tree, h.entries, *version == format_version_2 ? 2 : 1);
    if (h.decoded) {
      h.tree = tree_document(*tree, depth, std::move(what));
    } else {
      auto arena = std::make_unique<json::monotonic_resource>(tree->size() * 2 + 4096);
      json::value root = parse_strict(*tree, depth, what, arena.get());
      if (root.is_null()) throw_error(errc::corrupt_data, what + " is null");
      // Moved, never assigned: the value keeps pointing into its arena.
      h.tree = tree_document(json_document{std::move(arena), json::value(std::move(root))});
    }
  }
  if (const std::string* sums = find_metadata(h, "shmckpt.checksums"))
    parse_checksums(h, *sums, label, how);
  return h;
}

state_dict build_state_dict(const parsed_header& h,
                            const std::function<value(std::size_t)>& make_tensor,
                            const std::string& label) {
  if (!h.tree) {
    state_dict flat;
    flat.reserve(h.entries.size());
    for (std::size_t i = 0; i < h.entries.size(); ++i)
      flat.insert_or_assign(h.entries[i].name, make_tensor(i));
    return flat;
  }
  if (h.decoded && !h.decoded->taken.exchange(true)) {
    for (const auto& [slot, i] : h.decoded->tensors) *slot = make_tensor(i);
    return std::move(h.decoded->root);
  }
  return decode_tree(h, make_tensor, label);
}

// ---- tree_document ---------------------------------------------------------------------------

// json_document is moved around only by pointer: assigning its value would copy the DOM out of
// its arena (see json_document).
struct tree_document::state {
  std::string text;  // until parsed
  std::size_t max_depth = 0;
  std::string what;
  std::once_flag once;
  std::unique_ptr<json_document> doc;
};

tree_document::tree_document(json_document doc) : state_(std::make_shared<state>()) {
  state_->doc = std::make_unique<json_document>(std::move(doc));
  std::call_once(state_->once, [] {});
}

tree_document::tree_document(std::string text, std::size_t max_depth, std::string what)
    : state_(std::make_shared<state>()) {
  state_->text = std::move(text);
  state_->max_depth = max_depth;
  state_->what = std::move(what);
}

const json_document& tree_document::operator*() const {
  state& s = *state_;
  std::call_once(s.once, [&s] {
    auto arena = std::make_unique<json::monotonic_resource>(s.text.size() * 2 + 4096);
    json::value root = parse_strict(s.text, s.max_depth, s.what, arena.get());
    s.doc = std::make_unique<json_document>(
        json_document{std::move(arena), json::value(std::move(root))});
    std::string().swap(s.text);
  });
  return *s.doc;
}

}  // namespace shmckpt::detail
