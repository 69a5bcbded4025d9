// reader_fuzz — libFuzzer target for the checkpoint header and tree parser (lib/safetensors.cpp).
//
// The input is a whole checkpoint file. It goes through exactly what `read` does after mapping
// a file (length prefix, header validation, tree rebuild with tensors viewing the data section),
// and every tensor's bytes are touched so that AddressSanitizer sees any view that escapes the
// input. Properties checked on every input:
//
//  - the parser either accepts it or throws error(corrupt_data); any other exception, crash,
//    leak or sanitizer report is a bug;
//  - an accepted file names every header entry exactly once in the rebuilt tree;
//  - an accepted tree can be written again (encode_header) and the result parses back into an
//    equal state dict: the writer accepts everything the reader accepts, and both agree.
//
// Built only with clang and -DSHMCKPT_BUILD_FUZZERS=ON; docs/format.md, section 10, says how to
// run it. The same entry point also runs without libFuzzer as the CTest replay
// (reader_fuzz_replay.cpp) over the hostile corpus, so it keeps compiling everywhere.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <unordered_set>

#include "format/safetensors.hpp"
#include "shmckpt/error.hpp"

namespace {

using namespace shmckpt;

[[noreturn]] void property_failed(const char* what, const std::string& detail) {
  std::fprintf(stderr, "reader_fuzz: property failed: %s: %s\n", what, detail.c_str());
  std::abort();
}

// Parses `file` as read() would; returns the tree, or throws error(corrupt_data).
state_dict parse_file(const std::byte* file, std::size_t size, detail::parsed_header& h) {
  const std::string label = "checkpoint 'fuzz-input'";
  unsigned char prefix[8] = {};
  if (size >= 8) std::memcpy(prefix, file, 8);
  std::uint64_t n = detail::parse_header_length(prefix, size, label);
  std::string_view text(reinterpret_cast<const char*>(file) + 8, static_cast<std::size_t>(n));
  h = detail::parse_header(text, size - 8 - n, label);
  // The views are read-only in practice; tensor's constructor wants a mutable span.
  auto* data = const_cast<std::byte*>(file) + 8 + n;
  return detail::build_state_dict(
      h,
      [&](std::size_t i) -> value {
        const tensor_entry& e = h.entries[i];
        return tensor(e.type, e.shape, {data + e.offset, static_cast<std::size_t>(e.nbytes)});
      },
      label);
}

void check_accepted(const state_dict& sd, const detail::parsed_header& h) {
  // Every entry exactly once, under its own name; every byte of every view readable.
  std::unordered_set<std::string> names;
  unsigned sum = 0;
  for_each_tensor(sd, [&](const std::string& name, const tensor& t) {
    if (!names.insert(name).second) property_failed("tensor named twice", name);
    for (std::byte b : t.bytes()) sum += static_cast<unsigned>(b);
  });
  if (names.size() != h.entries.size())
    property_failed("tree and header disagree",
                    std::to_string(names.size()) + " vs " + std::to_string(h.entries.size()));
  for (const auto& e : h.entries)
    if (!names.contains(e.name)) property_failed("entry missing from tree", e.name);
  if (sum == 0xffffffffu) std::fputc(' ', stderr);  // keep the reads observable

  // Round trip through the writer's encoder.
  detail::encoded_header enc;
  try {
    enc = detail::encode_header(sd, true);
  } catch (const error& e) {
    property_failed("writer rejects a tree the reader accepted", e.what());
  }
  std::string file = enc.bytes;
  for (const auto& t : enc.tensors)
    file.append(reinterpret_cast<const char*>(t.source->data()), t.source->nbytes());
  detail::parsed_header again_h;
  state_dict again;
  try {
    again = parse_file(reinterpret_cast<const std::byte*>(file.data()), file.size(), again_h);
  } catch (const error& e) {
    property_failed("reader rejects what the writer wrote", e.what());
  }
  if (!(again == sd)) property_failed("round trip changed the state dict", "");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  detail::parsed_header h;
  state_dict sd;
  try {
    sd = parse_file(reinterpret_cast<const std::byte*>(data), size, h);
  } catch (const error& e) {
    if (e.kind() != errc::corrupt_data) property_failed("not corrupt_data", e.what());
    return 0;
  } catch (const std::exception& e) {
    property_failed("unexpected exception", e.what());
  }
  check_accepted(sd, h);
  return 0;
}
