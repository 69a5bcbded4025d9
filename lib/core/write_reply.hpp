// What a writer hands back to the parent with its response (inside the checkpoint child).
//
// A writer that leaves the commit to its parent (the default writer with writer argument
// "commit" = "parent", see lib/parent/parent_commit.hpp) describes the file it made durable
// here; the worker sends it as the payload of the write's RESPONSE. Per thread: the writer runs
// on the thread that serves the request (the child's loop, or the caller of a sync save).
#pragma once

#include <string>

namespace shmckpt::detail {

/// Sets this thread's reply (replacing an earlier one).
void set_write_reply(std::string reply);

/// This thread's reply, cleared.
std::string take_write_reply();

}  // namespace shmckpt::detail
