// layout.cpp — rank file names (see include/shmckpt/layout.hpp).
#include "format/layout.hpp"

#include <charconv>

#include "shmckpt/error.hpp"

namespace shmckpt {

std::string rank_file_name(int rank) {
  if (rank < 0)
    throw_error(errc::invalid_argument, "rank must be non-negative, not " + std::to_string(rank));
  return std::string(detail::rank_file_prefix) + std::to_string(rank) +
         std::string(detail::rank_file_suffix);
}

std::optional<int> rank_from_file_name(std::string_view name) {
  using detail::rank_file_prefix, detail::rank_file_suffix;
  if (name.size() <= rank_file_prefix.size() + rank_file_suffix.size() ||
      !name.starts_with(rank_file_prefix) || !name.ends_with(rank_file_suffix))
    return std::nullopt;
  std::string_view digits = name.substr(rank_file_prefix.size(),
                                        name.size() - rank_file_prefix.size() - rank_file_suffix.size());
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;  // one spelling per rank
  int rank = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), rank);
  if (ec != std::errc() || end != digits.data() + digits.size() || rank < 0) return std::nullopt;
  return rank;
}

std::filesystem::path checkpoint_file_path(const std::filesystem::path& dir, int rank) {
  return dir / rank_file_name(rank);
}

}  // namespace shmckpt
