// Opening a file that must be a regular file, without ever blocking on something that is not.
//
// A plain open() of a FIFO blocks until some writer opens it, forever if none does; a device
// node may have side effects on open. Every path the library reads as a file (rank files,
// manifests) goes through open_regular_file: it looks at the path with O_PATH first (which
// opens nothing), then opens it non-blocking and checks again on the descriptor it got, so a
// path swapped in between cannot make it block either.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "core/util.hpp"

namespace shmckpt::detail {

/// "a FIFO", "a socket", "a directory", ...: the type of `mode` for messages.
std::string_view file_type_name(mode_t mode) noexcept;

struct regular_file {
  unique_fd fd;
  std::uint64_t size = 0;
};

/// Opens `path` read-only. Throws error(not_found) "<label>: no such file" when it does not
/// exist, error(io_error) "<label>: is a FIFO, not a regular file" (or a socket, a device, a
/// directory) and error(io_error) with the OS reason when it cannot be opened or examined.
regular_file open_regular_file(const std::filesystem::path& path, const std::string& label);

/// The whole of the small regular file `path` (through open_regular_file, so never a blocking
/// open), or nullopt when it does not exist. A file larger than `cap` bytes (before reading, or
/// grown while read) is error(corrupt_data) "<what> '<path>' is N bytes, more than ...";
/// `what` names the file's role ("manifest", "arrival").
std::optional<std::string> read_small_regular_file(const std::filesystem::path& path,
                                                   std::uint64_t cap, const char* what);

}  // namespace shmckpt::detail
