// shmckpt/types.hpp — small vocabulary types shared by the parent and child sides.
#pragma once

#include <map>
#include <string>

namespace shmckpt {

/// String key/value arguments: init-function and writer-factory arguments, and the per-write
/// kwargs that travel with each WRITE_CHECKPOINT request. Ordered so encodings are reproducible.
using kwargs = std::map<std::string, std::string, std::less<>>;

/// Which rank of a multi-process job this process is.
struct rank_info {
  int rank = 0;        // 0 .. world_size - 1
  int world_size = 1;  // number of trainer processes that checkpoint together
};

}  // namespace shmckpt
