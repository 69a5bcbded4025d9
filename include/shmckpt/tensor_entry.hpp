// shmckpt/tensor_entry.hpp — what a checkpoint file's header says about one tensor.
//
// The file format's own vocabulary: the header parsers produce these, `list_entries`
// (reader.hpp) returns them, and `ckpt-inspect list` prints them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "shmckpt/dtype.hpp"

namespace shmckpt {

/// One entry of a checkpoint file's header, for listing without touching tensor bytes.
struct tensor_entry {
  std::string name;                  // flattened key path
  dtype type;                        //
  std::vector<std::int64_t> shape;   //
  std::uint64_t offset = 0;          // start of the bytes within the data section
  std::uint64_t nbytes = 0;          //
  std::string checksum;              // "xxh3:<16 hex digits>", or empty when not recorded
};

}  // namespace shmckpt
