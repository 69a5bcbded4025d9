#include "shmckpt/dtype.hpp"

#include <array>

namespace shmckpt {
namespace {

struct dtype_info {
  std::string_view name;
  std::size_t bits;
};

// Indexed by the enum value; the order is the wire order in dtype.hpp.
constexpr std::array<dtype_info, dtype_count> infos{{
    {"BOOL", 8},     {"U8", 8},      {"I8", 8},   {"F8_E5M2", 8}, {"F8_E4M3", 8},
    {"I16", 16},     {"U16", 16},    {"F16", 16}, {"BF16", 16},   {"I32", 32},
    {"U32", 32},     {"F32", 32},    {"F64", 64}, {"I64", 64},    {"U64", 64},
    {"C64", 64},     {"F8_E8M0", 8}, {"F4", 4},   {"F6_E2M3", 6}, {"F6_E3M2", 6},
    {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8},
}};

}  // namespace

std::size_t dtype_bits(dtype t) noexcept {
  auto i = static_cast<std::size_t>(t);
  return i < dtype_count ? infos[i].bits : 0;
}

std::string_view dtype_name(dtype t) noexcept {
  auto i = static_cast<std::size_t>(t);
  return i < dtype_count ? infos[i].name : std::string_view{"?"};
}

std::optional<dtype> dtype_from_name(std::string_view name) noexcept {
  for (std::size_t i = 0; i < dtype_count; ++i)
    if (infos[i].name == name) return static_cast<dtype>(i);
  return std::nullopt;
}

std::optional<std::uint64_t> tensor_nbytes(dtype t, std::span<const std::int64_t> shape) noexcept {
  std::size_t bits = dtype_bits(t);
  if (bits == 0) return std::nullopt;
  std::uint64_t numel = 1;
  for (std::int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(d), &numel)) return std::nullopt;
  }
  std::uint64_t total_bits = 0;
  if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(bits), &total_bits))
    return std::nullopt;
  if (total_bits % 8 != 0) return std::nullopt;
  return total_bits / 8;
}

}  // namespace shmckpt
