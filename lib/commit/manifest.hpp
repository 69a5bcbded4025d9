// The manifest and what both barriers share (lib/commit/manifest.cpp): rank entries as JSON,
// a rank file's fingerprint, the check of an arrival against its file on disk, the manifest
// writer and the test "does the manifest list this round's file". The file barrier
// (file_barrier.cpp), the store barrier (store_commit.cpp), the commit sequence (commit.cpp) and
// retention (retention.cpp) are built on these. Private to the library.
#pragma once

#include <filesystem>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "shmckpt/commit.hpp"

namespace shmckpt::detail {

// Polling the shared filesystem: start fast for a local disk, back off to spare NFS servers.
inline constexpr std::chrono::milliseconds commit_poll_first{2};
inline constexpr std::chrono::milliseconds commit_poll_max{200};

/// error(no_space) for ENOSPC/EDQUOT (with what to do), else error(io_error): "<what> '<p>':
/// <OS reason>".
[[noreturn]] void commit_os_fail(const std::string& what, const std::filesystem::path& p,
                                 int err);

/// Writes `text` to `target` atomically and durably (lib/io/durable_file.hpp). With
/// `missing_directory_ok`, a directory that vanished meanwhile (a .commit/ that rank 0 removed)
/// makes it return false instead of throwing.
bool publish_commit_file(const std::filesystem::path& target, const std::string& text,
                         bool missing_directory_ok = false);

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

/// Whether `dir`'s manifest lists `me` (same file, size, checksum and round): the round `me`
/// belongs to is committed. A manifest that cannot be read counts as not listing it.
bool manifest_lists(const std::filesystem::path& dir, const rank_file& me, int world_size);

/// "1, 2, 5" (at most 16 shown, then the count).
std::string rank_list(const std::vector<int>& ranks);

}  // namespace shmckpt::detail
