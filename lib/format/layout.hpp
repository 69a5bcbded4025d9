// layout.hpp — the private half of the checkpoint directory's names (public half:
// include/shmckpt/layout.hpp).
//
// What only the library needs to spell: the prefix every rank file starts with (keep_last
// recognises a directory holding rank files by it), the barrier's arrivals directory
// `.commit/`, and the temporary files every durable write goes through, `.<final
// name>.tmp.<pid>.<n>` beside the target (io/temp_file.hpp creates, locks and removes them;
// this file only names them). Kept apart from the code that acts on them so that the writer,
// the commit, retention and the parent's clean-up agree on one pattern.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "shmckpt/layout.hpp"

namespace shmckpt::detail {

/// What every rank file's name starts and ends with.
inline constexpr std::string_view rank_file_prefix = "checkpoint_";
inline constexpr std::string_view rank_file_suffix = ".safetensors";

/// The directory, inside a checkpoint directory, where ranks announce their arrival at the
/// commit barrier (one file per rank, named by the rank in decimal).
inline constexpr std::string_view commit_dir_name = ".commit";

/// `.<name>.tmp.` — the prefix of every temporary file of `name`.
inline std::string temp_prefix(std::string_view name) {
  return "." + std::string(name) + ".tmp.";
}

/// `.<name>.tmp.<pid>.<n>`: the `n`th temporary file process `pid` made for `name`.
inline std::string temp_file_name(std::string_view name, long pid, std::uint64_t n) {
  return temp_prefix(name) + std::to_string(pid) + "." + std::to_string(n);
}

/// Whether a directory entry is a writer's temporary file: `.<name>.tmp.<...>`.
inline bool is_temp_name(std::string_view name) {
  return name.size() > 6 && name[0] == '.' && name.find(".tmp.", 1) != std::string_view::npos;
}

}  // namespace shmckpt::detail
