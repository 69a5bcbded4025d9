// Progress reporting from inside the checkpoint child.
//
// Long operations in the child (writing a rank file chunk by chunk, waiting at the commit
// barrier) call report_progress() with a short description of what they are doing. The worker
// forwards the latest description to the parent as a PROGRESS frame (rate-limited), so the
// parent can tell a slow child from a hung one (checkpoint_process_options::progress_timeout)
// and name what the child was doing when it stopped making progress.
//
// Outside a checkpoint child (the sync checkpointer, tests, tools) no reporter is installed and
// report_progress() does nothing. Thread safety: callable from any thread; never throws.
#pragma once

#include <functional>
#include <string_view>

namespace shmckpt::detail {

/// Tells the installed reporter (if any) that the caller is alive and doing `what`.
void report_progress(std::string_view what) noexcept;

/// Installs `fn` as the reporter for this process (empty to remove it). Returns the previous one.
/// The worker installs one for the lifetime of its request loop.
std::function<void(std::string_view)> set_progress_reporter(
    std::function<void(std::string_view)> fn);

}  // namespace shmckpt::detail
