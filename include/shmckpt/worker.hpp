// shmckpt/worker.hpp — the child side: the request loop and the registries it draws on.
//
// The checkpoint child is either the installed `shmckpt-worker` or the trainer's own binary. In
// the latter case the trainer registers its init functions and writer factories by name and then
// calls `run_worker_if_requested(argc, argv)` first thing in `main`:
//
//     int main(int argc, char** argv) {
//       shmckpt::register_writer_factory("mine", make_my_writer);
//       shmckpt::run_worker_if_requested(argc, argv);  // never returns in the child
//       ... the trainer ...
//     }
//
// In the child the loop serves requests strictly in order: INIT (run the init function, build
// the writer), PING, WRITE_CHECKPOINT (validate the descriptor against the segment, call the
// writer), TERMINATE. It trusts nothing it receives: every frame and every (offset, length) is
// checked, and a bad request gets an error response, never a crash. It exits when the parent's
// end of the socket closes (the parent died), abandoning an in-flight default write without
// touching the previous checkpoint.
//
// Thread safety: register before run_worker_if_requested / worker_main; the loop is
// single-threaded.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "shmckpt/types.hpp"
#include "shmckpt/writer.hpp"

namespace shmckpt {

/// Runs in the child before the writer is built. Throwing fails initialisation; the message
/// reaches the parent's wait_ready()/write().
using init_function = std::function<void(const kwargs& args)>;

/// Builds the writer in the child. `args` are the writer_args of the options plus "rank" and
/// "world_size". Throwing fails initialisation with the message.
using writer_factory = std::function<std::unique_ptr<checkpoint_writer>(const kwargs& args)>;

/// Registers `fn` under `name` (replacing an earlier one).
void register_init_function(std::string name, init_function fn);
/// Registers `factory` under `name` (replacing an earlier one). "default" is pre-registered.
void register_writer_factory(std::string name, writer_factory factory);

/// For custom writers: tells the parent's progress watchdog
/// (checkpoint_process_options::progress_timeout) that the write being served is alive, and
/// what it is doing ("uploading shard 3 of 8"); a hang is reported with the last such text.
/// Cheap (rate-limited to one message per 100 ms), callable from any thread, never throws;
/// does nothing outside a checkpoint child. The default writer calls it itself.
void report_progress(std::string_view what) noexcept;

/// The first argument that marks a process as a checkpoint child.
inline constexpr const char* worker_flag = "--shmckpt-worker";

/// When argv[1] is `worker_flag`, runs the worker loop and terminates the process with its exit
/// status; otherwise returns at once. Call it first in `main`, after registering.
void run_worker_if_requested(int argc, char** argv);

/// The worker loop itself; returns the process exit status (0 after TERMINATE). Used by the
/// shmckpt-worker executable.
int worker_main(int argc, char** argv);

}  // namespace shmckpt
