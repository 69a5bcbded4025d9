// lib/parent/child_process.hpp — one checkpoint child as an operating-system process.
//
// What it owns. A `child_process` owns one spawned child: its Boost.Process v2 `process` object
// (whose destructor SIGKILLs a child that is neither reaped nor detached) and a pidfd of our own
// (Boost 1.81 does not expose its own), through which every signal is sent, so a signal can never
// reach a recycled pid. It knows nothing of the protocol: `spawn` hands the caller the parent's
// end of the control socket, and the supervisor (checkpoint_process.cpp) decides when to kill.
//
// Spawning. `spawn` creates a close-on-exec socket pair and starts the worker with the child's end
// at descriptor 3 and the shared segment at descriptor 4 (`pass_fds`, our launcher initializer:
// Boost 1.81's bind_fd is broken), the parent-death signal armed between fork and exec, and the
// worker flags before the caller's arguments. A failed exec is killed and reaped at once, so no
// zombie remains. Call it on the thread that runs the io_context the process is registered with,
// before `run()` or from one of its handlers (see docs/design.md, "Boost 1.81 traps").
//
// Threads. Not thread-safe: the supervisor calls every member on its io thread (`detach` once that
// thread has ended, in close), except `pid()`, which is fixed at spawn.
//
// Also here, because they are about a child's end: `describe_status` (a wait status in words)
// and `remove_dead_writers_temp_files` (what a dead writer left in the checkpoint directory).
#pragma once

#include <boost/optional.hpp>     // Process v2 with BOOST_PROCESS_USE_STD_FS needs these first
#include <boost/type_traits.hpp>  // (Boost 1.81 trap, see docs/design.md)

#include <boost/asio/io_context.hpp>
#include <boost/process/v2/process.hpp>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "core/util.hpp"
#include "shmckpt/checkpoint_process.hpp"

namespace shmckpt::detail {

/// Fails with error(unsupported) when the kernel lacks pidfd_open (probed once per process).
void probe_pidfd();

/// The worker executable `o` asks for. Throws error(not_found) when it is missing or not
/// executable, error(invalid_argument) for worker_binary::custom without a worker_path.
std::filesystem::path locate_worker(const checkpoint_process_options& o);

/// "killed by signal 9 (SIGKILL)", "exited with status 3".
std::string describe_status(int wait_status);

/// Removes, in `dir`, the temporary files of rank `rank`'s checkpoint file that the dead process
/// `pid` left behind: only names `.<final>.tmp.<pid>.<n>` for that pid, so the file of a live
/// writer, or of another rank, is never touched. The removal runs on a thread of its own, waited
/// for at most 2 s (a directory on a hung file server must not stall the caller); a file not
/// removed meanwhile is left for the next save's sweep of stale temporary files.
void remove_dead_writers_temp_files(const std::filesystem::path& dir, int rank, int pid) noexcept;

class child_process {
 public:
  struct spawned;

  /// Starts `exe` as a checkpoint child: `worker_flag --control-fd 3 --segment-fd 4` followed by
  /// `args`, with `segment_fd` at descriptor 4. Returns the process and the parent's end of the
  /// control socket. Throws error(not_found) when the executable cannot be executed,
  /// error(io_error) for any other failure.
  static spawned spawn(boost::asio::io_context& io, const std::filesystem::path& exe,
                       std::vector<std::string> args, int segment_fd);

  child_process(child_process&&) noexcept = default;
  child_process& operator=(child_process&&) = delete;
  /// A child neither reaped nor detached is SIGKILLed (Boost's `~process`).
  ~child_process() = default;

  int pid() const noexcept { return pid_; }

  /// SIGKILL through the pidfd (by pid when there is none); the exit then completes `async_wait`.
  void kill() noexcept;

  /// Calls `h(error_code)` on the io thread once the child has exited and been reaped (an error
  /// such as ECHILD when the trainer reaps children itself). Call once.
  template <class Handler>
  void async_wait(Handler h) {
    proc_.async_wait([h = std::move(h)](boost::process::v2::error_code e, int) mutable { h(e); });
  }

  /// The raw wait status, after `async_wait` completed without error.
  int native_exit_code() const { return proc_.native_exit_code(); }

  /// Gives up on a child that outlived SIGKILL, so destruction does not block or signal.
  void detach() { proc_.detach(); }

 private:
  child_process(boost::process::v2::process p, unique_fd pidfd) noexcept;

  boost::process::v2::process proc_;
  unique_fd pidfd_;
  int pid_;
};

struct child_process::spawned {
  child_process process;
  unique_fd control;  // the parent's end of the control socket (close-on-exec)
};

}  // namespace shmckpt::detail
