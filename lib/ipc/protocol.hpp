// lib/ipc/protocol.hpp — the wire format of the control channel (docs/protocol.md).
//
// Parent and child talk over a private unix stream socket pair. Only small control messages
// travel on it; tensor bytes never do: a WRITE_CHECKPOINT carries a descriptor of the state dict
// in which every tensor is (dtype, shape, offset, length) inside the shared segment.
//
// Every message is a frame: a fixed 24-byte header (magic "SHCK", version, type, request id,
// payload length, reserved zero), all little-endian, followed by the payload. Each request gets
// exactly one RESPONSE frame echoing its request id.
//
// Trust boundary: decoders treat their input as hostile. Every length is checked against the
// bytes remaining before anything is allocated, nesting depth and string sizes are capped, every
// dtype × shape product is computed with overflow checks and must equal the tensor's length, and
// every (offset, length) is resolved through a caller-supplied bounds-checked function. Anything
// malformed throws error(protocol_error) naming the field; nothing crashes.
//
// Versioning: bump `protocol_version` whenever the header, any payload layout or the set of
// message types changes. A peer with another version is rejected at the first frame with a
// message naming both versions. Numbering is append-only: message types, value tags, dtype codes
// and the `errc` codes of a RESPONSE are never renumbered or reused, only added.
//
// Version history: 1 — INIT, PING, WRITE_CHECKPOINT, TERMINATE, RESPONSE. 2 — adds PROGRESS
// (child → parent), which lets the parent tell a slow child from a hung one, and the int-keyed
// dict and tuple tags. 3 — WRITE_CHECKPOINT says where its state dict descriptor lies: in the
// frame, or in the shared segment (a tree marked once, written many times).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "shmckpt/error.hpp"
#include "shmckpt/state_dict.hpp"
#include "shmckpt/types.hpp"

namespace shmckpt::protocol {

inline constexpr std::uint32_t frame_magic = 0x4B434853u;  // "SHCK" as little-endian bytes
inline constexpr std::uint16_t protocol_version = 3;  // 3: a WRITE's tree may lie in the segment
inline constexpr std::size_t header_size = 24;
/// Largest payload either side accepts (a descriptor of ~10 million tensors).
inline constexpr std::uint32_t max_payload_bytes = 512u << 20;
/// Deepest nesting of dicts, lists and tuples a descriptor may have (the root dict is level 1):
/// the state dict's own limit, so the parent refuses before sending what the child would refuse.
inline constexpr std::size_t max_depth = max_nesting_depth;
/// Longest string (key, value, path, message) a payload may carry.
inline constexpr std::uint32_t max_string_bytes = 16u << 20;
/// Most values (dict entries, list items, leaves) one descriptor may hold: bounds the memory a
/// hostile frame can make the child allocate (a value is ~100 bytes in memory, 1 on the wire).
inline constexpr std::size_t max_values = std::size_t{16} << 20;
/// Most dimensions a tensor may have.
inline constexpr std::size_t max_rank = 64;
/// Longest description a PROGRESS frame may carry (the child truncates longer ones).
inline constexpr std::uint32_t max_progress_bytes = 1024;

enum class message_type : std::uint16_t {
  init = 1,              // parent → child: init function and writer factory to run
  ping = 2,              // parent → child: liveness; answered with the child's pid
  write_checkpoint = 3,  // parent → child: persist a state dict
  terminate = 4,         // parent → child: finish and exit
  response = 0x100,      // child → parent: the outcome of one request
  progress = 0x101,      // child → parent: still working on a request, and on what (version 2)
};

// `errc` values travel on the wire as RESPONSE codes, so, like dtype codes, they are append-only:
// these assertions pin every value. A code this side does not know (above `last_wire_errc`)
// is reported as errc::child_failed. Appending an errc: add its assertion and move
// `last_wire_errc`; no version bump is needed.
static_assert(static_cast<int>(errc::invalid_argument) == 1);
static_assert(static_cast<int>(errc::corrupt_data) == 2);
static_assert(static_cast<int>(errc::not_found) == 3);
static_assert(static_cast<int>(errc::no_space) == 4);
static_assert(static_cast<int>(errc::io_error) == 5);
static_assert(static_cast<int>(errc::timeout) == 6);
static_assert(static_cast<int>(errc::child_failed) == 7);
static_assert(static_cast<int>(errc::child_terminated) == 8);
static_assert(static_cast<int>(errc::protocol_error) == 9);
static_assert(static_cast<int>(errc::closed) == 10);
static_assert(static_cast<int>(errc::unsupported) == 11);
inline constexpr errc last_wire_errc = errc::unsupported;

/// The errc a RESPONSE code stands for: unknown codes (a newer peer) become child_failed.
/// Precondition: `code` is not 0 (success).
constexpr errc errc_from_wire(std::uint32_t code) noexcept {
  return code >= 1 && code <= static_cast<std::uint32_t>(last_wire_errc) ? static_cast<errc>(code)
                                                                         : errc::child_failed;
}

/// The fixed frame header, in host form. On the wire every field is little-endian, in this
/// order, with no padding; `reserved` must be zero.
struct frame_header {
  std::uint32_t magic = frame_magic;
  std::uint16_t version = protocol_version;
  std::uint16_t type = 0;
  std::uint64_t request_id = 0;
  std::uint32_t payload_bytes = 0;
  std::uint32_t reserved = 0;
};
static_assert(std::is_trivially_copyable_v<frame_header>);
static_assert(sizeof(frame_header) == header_size, "frame_header must match the wire layout");

/// Writes `h` in wire form.
void encode_header(const frame_header& h, std::span<std::byte, header_size> out) noexcept;

/// Parses and validates a header: magic, version, known type, zero reserved field, payload
/// length within max_payload_bytes. Throws error(protocol_error) naming what is wrong.
frame_header decode_header(std::span<const std::byte, header_size> in);

/// A complete frame: header followed by `payload`.
std::vector<std::byte> make_frame(message_type type, std::uint64_t request_id,
                                  std::span<const std::byte> payload);

/// Sets the request id of an already encoded frame (its header's bytes 8..15), leaving every
/// other byte as it is: a frame may be encoded before its id is assigned. Throws
/// error(invalid_argument) for a buffer shorter than a header.
void set_request_id(std::span<std::byte> frame, std::uint64_t request_id);

struct init_request {
  std::string init_function;  // empty: no init function
  kwargs init_args;
  std::string writer_factory;
  kwargs writer_args;  // includes "rank" and "world_size"
  std::uint64_t segment_bytes = 0;
};

struct write_request {
  std::string path;
  state_dict state;  // tensors are views obtained from the resolver given to decode_write
  kwargs kw;
};

struct response {
  /// 0 on success, else the errc value describing the failure.
  std::uint32_t code = 0;
  std::string message;
  std::vector<std::byte> payload;
  bool ok() const noexcept { return code == 0; }
};

std::vector<std::byte> encode_init(const init_request& r);
init_request decode_init(std::span<const std::byte> payload);

/// Maps a tensor to its offset inside the segment (must throw for a tensor not in it).
using offset_function = std::function<std::uint64_t(const tensor&)>;
/// Resolves (offset, length) inside the segment to memory, throwing when out of bounds.
using resolve_function = std::function<std::span<std::byte>(std::uint64_t offset,
                                                             std::uint64_t length)>;

/// Where a WRITE_CHECKPOINT's state dict descriptor lies (a `u8` after the kwargs; version 3).
enum class tree_form : std::uint8_t {
  in_frame = 0,    // the descriptor follows in the payload
  in_segment = 1,  // `u64` offset and `u64` length of the descriptor in the shared segment
};

/// A state dict descriptor (encode_tree's bytes) placed in the shared segment.
struct shared_tree {
  std::uint64_t offset = 0;
  std::uint64_t bytes = 0;
};

/// The descriptor of `sd` alone, as a WRITE_CHECKPOINT carries it in the frame: the bytes a
/// `shared_tree` holds. Throws error(invalid_argument) for a tree the codec cannot carry.
std::vector<std::byte> encode_tree(const state_dict& sd, const offset_function& offset_of);
/// A WRITE_CHECKPOINT payload with the descriptor in the frame.
std::vector<std::byte> encode_write(const std::string& path, const state_dict& sd,
                                    const kwargs& kw, const offset_function& offset_of);
/// A WRITE_CHECKPOINT payload that names a descriptor already in the segment: tens of bytes
/// whatever the tensor count. The child decodes it where it lies, with the same bounds checks.
std::vector<std::byte> encode_write(const std::string& path, const shared_tree& tree,
                                    const kwargs& kw);
write_request decode_write(std::span<const std::byte> payload, const resolve_function& resolve);

std::vector<std::byte> encode_response(const response& r);
response decode_response(std::span<const std::byte> payload);

/// PROGRESS payload: one `string`, what the child is doing for the frame's request id. The
/// encoder truncates to max_progress_bytes (at a UTF-8 boundary); the decoder rejects longer.
std::vector<std::byte> encode_progress(std::string_view what);
std::string decode_progress(std::span<const std::byte> payload);

}  // namespace shmckpt::protocol
