// shmckpt/protocol.hpp — the wire format of the control channel (docs/protocol.md).
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
// Versioning: bump `protocol_version` whenever the header or any payload layout changes. A peer
// with another version is rejected at the first frame with a message naming both versions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "shmckpt/error.hpp"
#include "shmckpt/state_dict.hpp"
#include "shmckpt/types.hpp"

namespace shmckpt::protocol {

inline constexpr std::uint32_t frame_magic = 0x4B434853u;  // "SHCK" as little-endian bytes
inline constexpr std::uint16_t protocol_version = 2;  // 2: int-keyed dict and tuple tags
inline constexpr std::size_t header_size = 24;
/// Largest payload either side accepts (a descriptor of ~10 million tensors).
inline constexpr std::uint32_t max_payload_bytes = 512u << 20;
/// Deepest nesting of dicts and lists a descriptor may have.
inline constexpr std::size_t max_depth = 128;
/// Longest string (key, value, path, message) a payload may carry.
inline constexpr std::uint32_t max_string_bytes = 16u << 20;
/// Most values (dict entries, list items, leaves) one descriptor may hold: bounds the memory a
/// hostile frame can make the child allocate (a value is ~100 bytes in memory, 1 on the wire).
inline constexpr std::size_t max_values = std::size_t{16} << 20;
/// Most dimensions a tensor may have.
inline constexpr std::size_t max_rank = 64;

enum class message_type : std::uint16_t {
  init = 1,              // parent → child: init function and writer factory to run
  ping = 2,              // parent → child: liveness; answered with the child's pid
  write_checkpoint = 3,  // parent → child: persist a state dict
  terminate = 4,         // parent → child: finish and exit
  response = 0x100,      // child → parent: the outcome of one request
};

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

std::vector<std::byte> encode_write(const std::string& path, const state_dict& sd,
                                    const kwargs& kw, const offset_function& offset_of);
write_request decode_write(std::span<const std::byte> payload, const resolve_function& resolve);

std::vector<std::byte> encode_response(const response& r);
response decode_response(std::span<const std::byte> payload);

}  // namespace shmckpt::protocol
