// header_cases.hpp — a whole checkpoint file as the differential tests feed it to the header
// parsers: the header text and the size of the data section its length prefix implies.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

#include "format/safetensors.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt_test {

struct header_case {
  std::string name;
  std::string text;
  std::uint64_t data_size = 0;
};

/// `bytes` as a case; nullopt for a file whose length prefix already fails (it reaches neither
/// parser). `label` names the file in the prefix check's errors.
inline std::optional<header_case> header_case_of(std::string name, const std::string& bytes,
                                                 const std::string& label) {
  if (bytes.size() < 8) return std::nullopt;
  unsigned char prefix[8];
  std::memcpy(prefix, bytes.data(), 8);
  std::uint64_t n;
  try {
    n = shmckpt::detail::parse_header_length(prefix, bytes.size(), label);
  } catch (const shmckpt::error&) {
    return std::nullopt;
  }
  return header_case{std::move(name), bytes.substr(8, static_cast<std::size_t>(n)),
                     bytes.size() - 8 - n};
}

}  // namespace shmckpt_test
