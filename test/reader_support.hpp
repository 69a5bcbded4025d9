// Shared by the reader suites: raw tensor bytes, an error predicate with several phrases, and
// where a tensor's bytes lie in a file.
#pragma once

#include <boost/test/unit_test.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

#include "hostile/hostile_files.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"

namespace shmckpt_test {

inline std::string floats(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.begin(), s.size());
  return s;
}

inline std::string int64s(std::initializer_list<std::int64_t> v) {
  std::string s(v.size() * 8, '\0');
  std::memcpy(s.data(), v.begin(), s.size());
  return s;
}

inline auto expect_error(shmckpt::errc want, std::vector<std::string> phrases) {
  return [want, phrases](const shmckpt::error& e) {
    std::string m = e.what();
    BOOST_TEST_INFO("message: " << m);
    bool ok = e.kind() == want;
    for (const auto& p : phrases) ok = ok && m.find(p) != std::string::npos;
    return ok;
  };
}

// Byte offset where tensor `name`'s bytes start in `file`.
inline std::uint64_t file_offset_of(const std::filesystem::path& file, const std::string& name) {
  std::string bytes = read_file(file);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  for (const auto& e : shmckpt::list_entries(file))
    if (e.name == name) return 8 + n + e.offset;
  throw std::runtime_error("no tensor " + name);
}

}  // namespace shmckpt_test
