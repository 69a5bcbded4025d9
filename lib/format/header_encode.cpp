// header_encode.cpp — planning a file: the data layout and the header bytes (safetensors.hpp,
// "writing").
//
// Writing happens in one pass over the tensor bytes, so the header must be final in size before
// any checksum is known: checksums are fixed-width hex fields, laid out as zeros here and filled
// in by the writer once each tensor has been hashed (set_checksum). Tensors are placed in the
// data section in descending order of element alignment (8-byte types first, then 4, 2, 1, then
// the packed sub-byte types): with the data section itself 8-aligned, every tensor of a mapped
// file is then naturally aligned and can be used in place. The tree, not the header order,
// carries the user's key order.
#include <algorithm>
#include <cstring>

#include "format/safetensors.hpp"
#include "format/text.hpp"
#include "format/tree.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt::detail {

std::size_t element_alignment(dtype t) noexcept {
  std::size_t bits = dtype_bits(t);
  if (bits % 8 != 0) return 1;
  return std::min<std::size_t>(bits / 8, 8);
}

namespace {
// The sort key of the data layout: 8, 4, 2, 1, then 0 for the packed sub-byte types, which go
// after every whole-byte type (docs/format.md, "Order").
std::size_t layout_rank(dtype t) noexcept {
  return dtype_bits(t) % 8 != 0 ? 0 : element_alignment(t);
}
}  // namespace

encoded_header encode_header(const state_dict& sd, bool checksums, std::size_t data_alignment) {
  encoded_header h;
  h.checksums = checksums;

  std::string tree;
  const bool v2 = encode_tree(sd, tree, h.tensors);

  std::stable_sort(h.tensors.begin(), h.tensors.end(),
                   [](const planned_tensor& a, const planned_tensor& b) {
                     return layout_rank(a.source->type()) > layout_rank(b.source->type());
                   });
  for (auto& t : h.tensors) {
    t.offset = h.data_size;
    if (__builtin_add_overflow(h.data_size, t.nbytes, &h.data_size))
      throw_error(errc::invalid_argument, "state dict holds more than 2^64 bytes of tensors");
  }

  // Built after the 8-byte prefix so that recorded checksum positions are file offsets.
  std::string& out = h.bytes;
  out.assign(8, '\0');
  out += "{\"__metadata__\":{\"format\":";
  append_quoted(out, format_name);
  out += ",\"shmckpt.version\":";
  append_quoted(out, v2 ? format_version_2 : format_version_1);
  out += ",\"shmckpt.tree\":";
  append_quoted(out, tree);
  if (checksums) {
    // A JSON object inside a JSON string: escape it piece by piece so the positions of the
    // (never escaped) hex digits are known while building.
    out += ",\"shmckpt.checksums\":\"{";
    for (std::size_t i = 0; i < h.tensors.size(); ++i) {
      std::string piece = i ? "," : "";
      append_quoted(piece, h.tensors[i].name);
      piece += ":\"";
      append_escaped(out, piece);
      h.tensors[i].checksum_at = out.size();
      out.append(16, '0');
      append_escaped(out, "\"");
    }
    out += "}\"";
  }
  out += '}';
  for (const auto& t : h.tensors) {
    out += ',';
    append_quoted(out, t.name);
    out += ":{\"dtype\":\"";
    out += dtype_name(t.source->type());
    out += "\",\"shape\":";
    out += shape_string(t.source->shape());
    out += ",\"data_offsets\":[";
    out += std::to_string(t.offset);
    out += ',';
    out += std::to_string(t.offset + t.nbytes);
    out += "]}";
  }
  out += '}';
  // Spaces after the JSON are part of the header: they place the data section.
  if (data_alignment < 8 || (data_alignment & (data_alignment - 1)) != 0) data_alignment = 8;
  out.append((data_alignment - out.size() % data_alignment) % data_alignment, ' ');

  std::uint64_t n = out.size() - 8;
  if (n > max_header_bytes)
    throw_error(errc::invalid_argument,
                "checkpoint header would be " + std::to_string(n) + " bytes, more than the " +
                    std::to_string(max_header_bytes) +
                    "-byte limit readers accept; the state dict has too many entries");
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * i));
  return h;
}

void set_checksum(encoded_header& h, std::size_t i, std::uint64_t xxh3) {
  std::string digits = hex64(xxh3);
  std::memcpy(h.bytes.data() + h.tensors[i].checksum_at, digits.data(), digits.size());
}

}  // namespace shmckpt::detail
