// shmckpt/layout.hpp — the names of the files in a checkpoint directory.
//
// A checkpoint is a directory. Each rank writes `checkpoint_<rank>.safetensors` (rank in
// decimal, no sign, no leading zeros: one spelling per rank); rank 0 publishes the manifest
// `checkpoint.json` once every rank's file is durable (commit.hpp). While a save is in flight
// the directory also holds writers' temporary files (`.<name>.tmp.<pid>.<n>`) and the barrier's
// arrivals (`.commit/<rank>`). The writer, the reader, the commit and ckpt-inspect all take
// these names from here (the private part, lib/format/layout.hpp, adds the temporary-file and
// arrival patterns), so a directory is read by the same rules it was written by.
//
// Thread safety: pure functions; safe to call concurrently.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace shmckpt {

/// Name of the manifest file inside a checkpoint directory.
inline constexpr const char* manifest_name = "checkpoint.json";

/// `checkpoint_<rank>.safetensors`. Throws error(invalid_argument) for a negative rank.
std::string rank_file_name(int rank);

/// The rank a file name `checkpoint_<rank>.safetensors` names, or nullopt for any other name
/// (other spellings of a rank, such as "checkpoint_01.safetensors", included).
std::optional<int> rank_from_file_name(std::string_view name);

/// `<dir>/checkpoint_<rank>.safetensors`. Throws error(invalid_argument) for a negative rank.
std::filesystem::path checkpoint_file_path(const std::filesystem::path& dir, int rank);

}  // namespace shmckpt
