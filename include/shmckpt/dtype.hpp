// shmckpt/dtype.hpp — element types of tensors: the full safetensors dtype set.
//
// A dtype knows its safetensors name ("F32", "BF16", ...) and its size in bits. Most types are
// whole bytes; F4 and the F6 variants are packed sub-byte types whose tensors must hold a whole
// number of bytes (numel × bits divisible by 8). Values of the enum are part of the wire format
// (protocol.hpp): never renumber them, only append.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace shmckpt {

enum class dtype : std::uint8_t {
  boolean = 0,  // BOOL, one byte per element (0 or 1)
  u8 = 1,
  i8 = 2,
  f8_e5m2 = 3,
  f8_e4m3 = 4,
  i16 = 5,
  u16 = 6,
  f16 = 7,
  bf16 = 8,
  i32 = 9,
  u32 = 10,
  f32 = 11,
  f64 = 12,
  i64 = 13,
  u64 = 14,
  c64 = 15,      // complex64: two F32
  f8_e8m0 = 16,  // scale type of the OCP MX formats
  f4 = 17,       // 4-bit float (E2M1), two per byte
  f6_e2m3 = 18,  // 6-bit floats, four per three bytes
  f6_e3m2 = 19,
  f8_e4m3fnuz = 20,  // 8-bit floats without infinities or negative zero (AMD, Graphcore)
  f8_e5m2fnuz = 21,
};

/// Number of dtype values; valid values are 0 .. dtype_count - 1.
inline constexpr std::size_t dtype_count = 22;

/// Size of one element in bits (8 × bytes for whole-byte types).
std::size_t dtype_bits(dtype t) noexcept;

/// The safetensors name, e.g. "F32". Never empty for a valid dtype.
std::string_view dtype_name(dtype t) noexcept;

/// Parses a safetensors name; nullopt when the name is unknown.
std::optional<dtype> dtype_from_name(std::string_view name) noexcept;

/// True when `raw` is one of the enum's values (for decoding untrusted bytes).
constexpr bool dtype_valid(std::uint8_t raw) noexcept { return raw < dtype_count; }

/// Bytes needed by a tensor of `t` with `shape`, or nullopt when a dimension is negative, the
/// product overflows 64 bits, or a sub-byte type does not fill whole bytes.
std::optional<std::uint64_t> tensor_nbytes(dtype t, std::span<const std::int64_t> shape) noexcept;

}  // namespace shmckpt
