// Pieces of the commit that both barriers share (lib/commit/commit.cpp): rank entries as JSON,
// the check of an arrival against its file on disk, and the manifest writer. Private to the
// library.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "shmckpt/commit.hpp"

namespace shmckpt::detail {

/// `me` as the one-line JSON object the manifest and the file barrier's arrivals hold.
std::string rank_file_json(const rank_file& me);
/// Parses what rank_file_json wrote; error(corrupt_data) naming `where` otherwise.
rank_file rank_file_from_json(const std::string& text, const std::string& where);

/// The arrival `a` of rank `r` if it describes rank r's file in `dir` as it is on disk now
/// (name, size, header checksum); else nullopt, with the reason in `why`.
std::optional<rank_file> check_arrival(const std::filesystem::path& dir, int r,
                                       const rank_file& a, std::string& why);

/// Writes the manifest of `all` (one entry per rank) into `dir` atomically and durably, and
/// returns its text. Errors: no_space, io_error.
std::string publish_manifest(const std::filesystem::path& dir, std::vector<rank_file> all,
                             int world_size);

/// Whether manifest text `text` (as publish_manifest returned it) parses, has `world_size`, and
/// lists `me` exactly (file, size, checksum, round token).
bool manifest_text_lists(const std::string& text, const rank_file& me, int world_size);

/// "1, 2, 5" (at most 16 shown, then the count).
std::string rank_list(const std::vector<int>& ranks);

}  // namespace shmckpt::detail
