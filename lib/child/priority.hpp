// Private: the checkpoint child's CPU and I/O priority (checkpoint_process_options::priority).
//
// The parent validates the options and turns them into command-line arguments of the child
// (`priority_args`); the child parses them back (`parse_priority_arg`, one flag at a time, from
// its argument loop) and applies them to itself before it starts any thread (`apply_priority`),
// so that every thread it creates later inherits them (on Linux, nice, policy, I/O class and
// affinity are per thread, copied at thread creation).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "shmckpt/child_priority.hpp"

namespace shmckpt::detail {

/// Throws error(invalid_argument) naming the field for a nice outside -20..19, an io_level
/// outside 0..7 or a CPU number outside 0..CPU_SETSIZE-1.
void validate_priority(const child_priority& p);

/// The child's arguments for `p`; none for settings left at "inherit".
std::vector<std::string> priority_args(const child_priority& p);

/// When argv[i] is one of the flags priority_args writes, reads it (and its value, advancing
/// `i`) into `p` and returns true. Throws std::invalid_argument for a malformed value.
bool parse_priority_arg(int argc, char** argv, int& i, child_priority& p);

/// Applies `p` to the calling thread. Returns an empty string, or what failed and why
/// ("cannot set the checkpoint child's CPU affinity to 0,9: Invalid argument").
std::string apply_priority(const child_priority& p);

}  // namespace shmckpt::detail
