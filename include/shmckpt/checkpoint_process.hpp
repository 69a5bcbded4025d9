// shmckpt/checkpoint_process.hpp — the parent side: one long-lived checkpoint child.
//
// A `checkpoint_process` starts a checkpoint child (Boost.Process v2), gives it an anonymous
// shared-memory segment (a memfd, inherited at spawn: nothing appears in /dev/shm and nothing can
// leak there) and one end of a private socket pair (no filesystem endpoint), and completes an
// INIT + PING handshake within `init_timeout`. `write()` hands a state dict to the child and
// returns a future at once; the child persists it durably while the trainer goes on.
//
// Ownership. The parent alone allocates, frees and names memory in the segment; the child only
// resolves bounds-checked (offset, length) pairs. Tensors whose bytes already lie in the segment
// (see `make_tensor`) cross zero-copy: the child sees the very same pages. Any other tensor is
// copied into the segment inside `write()` (for a ready state dict) or when its future resolves
// (for a future state dict); that copy is released when the child answers. A shared tensor must
// not be modified until the future of every write that includes it has resolved.
//
// Lifetime. Requests are served strictly in order. The child reports progress while it writes
// (every chunk of data, and while it waits at the commit barrier); a write that makes no
// progress for `progress_timeout` fails with error(timeout) naming what the child was last
// doing, and the child is killed. If the child dies at any moment (crash, OOM kill, SIGKILL, or
// killed for hanging), the write it was serving fails within about a second with a message
// containing "Child process terminated unexpectedly" and the reason ("killed by signal 9",
// "exited with status 3"), and the temporary file that write left is removed. Writes queued
// behind it had not started: they stay queued. The next write (or those queued ones at once)
// starts a new child on the same segment — tensors from `make_tensor` stay valid — with a fresh
// handshake bounded by `init_timeout`. Only a child that fails to start (the first one or a
// replacement) is final: every later write then fails with that error. `close()` (also run by
// the destructor) lets queued writes finish, sends TERMINATE and kills and reaps the child if it
// has not exited when `shutdown_timeout` is nearly over; it never takes longer than
// `shutdown_timeout` in total. If the parent dies, the child notices the closed socket and
// exits.
//
// Thread safety: all public members may be called concurrently from any thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "shmckpt/child_priority.hpp"
#include "shmckpt/state_dict.hpp"
#include "shmckpt/types.hpp"

namespace shmckpt {

class commit_store;  // commit_store.hpp
namespace detail {
struct process_placement;  // the library's access to the segment's number (lib/core/placement.hpp)
}

/// Which executable becomes the checkpoint child.
enum class worker_binary {
  /// The installed `shmckpt-worker` (found beside libshmckpt, or at $SHMCKPT_WORKER). Only the
  /// built-in writer ("default") and no init functions are available in it.
  shmckpt_worker,
  /// This process's own executable (/proc/self/exe), re-entered through
  /// `shmckpt::run_worker_if_requested(argc, argv)` at the top of `main` (worker.hpp). Init
  /// functions and writer factories registered by name in the trainer are available.
  this_executable,
  /// The executable at `checkpoint_process_options::worker_path`; it must call
  /// `run_worker_if_requested` (or be a `shmckpt-worker`).
  custom,
};

struct checkpoint_process_options {
  /// Which executable to start as the child.
  worker_binary worker = worker_binary::shmckpt_worker;
  /// Path of the child executable for `worker_binary::custom`; also overrides the lookup of
  /// `shmckpt-worker` when set.
  std::filesystem::path worker_path;
  /// Bound on spawn + init function + writer factory + PING. Reference default: 30 s.
  std::chrono::milliseconds init_timeout{std::chrono::seconds(30)};
  /// Bound on close() (and the destructor) as a whole: queued writes and TERMINATE may take all
  /// of it but the last second (a quarter when it is shorter than 4 s), in which a child still
  /// running is killed and reaped. Reference default: 60 s.
  std::chrono::milliseconds shutdown_timeout{std::chrono::seconds(60)};
  /// A write during which the child reports no progress for this long fails with
  /// error(timeout) naming what the child was last doing; the child is killed and the next write
  /// starts a new one. The default writer reports every 8 MiB written and every poll of the
  /// commit barrier (so a slow disk or a long barrier wait is not a hang); a custom writer that
  /// can go quiet for longer must call `shmckpt::report_progress` (worker.hpp) or raise this.
  /// At least 1 s; `milliseconds::max()` disables the watchdog.
  std::chrono::milliseconds progress_timeout{std::chrono::seconds(300)};
  /// Name of an init function registered in the child (empty: none), run before the writer is
  /// built, with `init_args`.
  std::string init_function;
  kwargs init_args;
  /// Name of the writer factory registered in the child. "default" writes
  /// `<path>/checkpoint_<rank>.safetensors`. `writer_args` gain "rank" and "world_size".
  std::string writer_factory = "default";
  kwargs writer_args;
  /// This trainer's rank; passed to the writer factory.
  rank_info rank;
  /// The most the shared segment may grow to; 0 (the default): no cap but the memory available.
  /// The segment sizes itself: it starts at initial_segment_bytes and grows by what a write, a
  /// staging generation or make_tensor() needs (no copy, no address moves; see segment.hpp).
  /// Running out of memory is error(no_space) naming the bytes asked and available.
  std::size_t segment_bytes = 0;
  /// What the segment holds from the start (reserved and prefaulted at creation, so the first
  /// checkpoint of a state dict this small pays no growth). Clipped to segment_bytes when set.
  std::size_t initial_segment_bytes = std::size_t{64} << 20;
  /// Fault every page of the segment in when it is created or grows, so copies into it run at
  /// memcpy speed instead of page-fault speed (about 7× slower on first touch).
  bool prefault = true;
  /// The child's CPU and I/O priority (see child_priority; docs/benchmarks.md has the
  /// measurements behind the defaults).
  child_priority priority;
  /// Commit through this store, in this process, instead of the file barrier in the child
  /// (commit_store.hpp): the default writer stops once its file is durable, and the write's
  /// future resolves once the commit round through the store is over. Null: the file barrier.
  std::shared_ptr<commit_store> store;
  /// With a store: names this object's rounds (store_round_key: the scope, the directory, the
  /// n-th write() into it); the same on every rank. Empty: next_store_scope() at construction.
  std::string store_scope;
  /// With a store: how long a rank waits for the others (async_checkpointer sets it from
  /// checkpointer_config::commit_timeout).
  std::chrono::milliseconds commit_timeout{std::chrono::seconds(600)};
};

class checkpoint_process {
 public:
  /// Creates the segment, starts the child and begins the handshake; returns without waiting
  /// for it. Throws error(no_space) when the segment cannot be reserved (naming the size asked
  /// and the room available), error(not_found) when the worker executable is missing,
  /// error(unsupported) when the kernel lacks memfd or pidfd support, error(invalid_argument)
  /// for a progress_timeout under 1 s.
  explicit checkpoint_process(checkpoint_process_options options = {});
  /// Runs close(); never throws.
  ~checkpoint_process();
  checkpoint_process(const checkpoint_process&) = delete;
  checkpoint_process& operator=(const checkpoint_process&) = delete;

  /// Blocks until the child answered PING (at most init_timeout after construction). When the
  /// child has died since, starts its replacement and waits for that one. Throws
  /// error(timeout) "Timed out after Ns waiting for checkpoint subprocess to initialize",
  /// error(child_failed) carrying the child's message when the init function or the writer
  /// factory failed, error(child_terminated) when the child died before completing the
  /// handshake. These are final: every later call throws the same.
  void wait_ready();

  /// Queues a write of `sd` to `path` and returns its future. Waits for initialisation first
  /// (throwing as wait_ready does). Tensors outside the segment are copied into it before
  /// returning; shared tensors are not copied. The future becomes ready when the checkpoint is
  /// durable, or holds an error(child_failed) with the writer's message, error(no_space) when
  /// the segment cannot hold the copies, error(child_terminated) when the child died while
  /// serving it, or error(timeout) when the child made no progress on it for progress_timeout.
  std::future<void> write(state_dict sd, std::filesystem::path path, kwargs kw = {});

  /// As above for a state dict still being produced (e.g. staged on another thread). Returns at
  /// once; the write is queued in order and sent when `sd` is ready. An exception in `sd`
  /// fails this write's future.
  std::future<void> write(std::shared_future<state_dict> sd, std::filesystem::path path,
                          kwargs kw = {});

  /// A zero-filled tensor whose bytes live in the shared segment: writes that include it cost
  /// no copy. Its memory returns to the segment when the last copy of the tensor is destroyed
  /// (it stays valid after close()). Throws error(no_space) naming the bytes asked and free.
  tensor make_tensor(dtype type, std::vector<std::int64_t> shape);

  /// `n` bytes of uninitialised segment memory, 64-byte aligned (4096-byte from 64 KiB up),
  /// returned to the segment when the last copy of the pointer goes away (for stagers and custom
  /// pools). Throws error(no_space).
  std::shared_ptr<std::byte> allocate(std::size_t n);

  /// Whether `t`'s bytes lie inside this process's shared segment.
  bool is_shared(const tensor& t) const noexcept;

  /// Walks `sd` once and, when every tensor in it lies inside this segment (and it nests no
  /// deeper than max_nesting_depth), marks it as such: write() of it, or of a copy of it, then
  /// hands it over without walking it again, in constant time whatever its tensor count, until
  /// it is changed (any non-const access of `sd` clears the mark). Returns whether it marked
  /// `sd`. A tree of more than 64 values also gets its descriptor encoded once into the segment
  /// (about 70 bytes per tensor, as long as a copy of the marked tree lives; about 1.5 ms for
  /// 65 536 tensors), so that each write() of it sends only the descriptor's place, whatever
  /// its tensor count; without room for it, the tree is marked all the same and write() encodes
  /// it as for an unmarked one, on the submit thread. A stager snapshot carries the mark from
  /// the start, without a descriptor. Precondition: no reference or
  /// iterator into `sd` obtained before this call is used to change it afterwards (such a change
  /// bypasses the root and cannot clear the mark; re-take references after marking). Thread
  /// safety: as for any non-const access of `sd`.
  bool mark_shared(state_dict& sd) const;

  /// Bytes of the segment not currently allocated (before any further growth).
  std::size_t segment_free_bytes() const;

  /// The current child's pid (for diagnostics and tests); a replacement has a new one.
  int child_pid() const noexcept;

  /// True while the current child runs (false from its exit until a replacement starts).
  bool child_running() const;

  /// Lets queued writes finish, sends TERMINATE, and kills and reaps the child if it has not
  /// exited near the end of shutdown_timeout; returns within shutdown_timeout. Futures still
  /// pending afterwards fail with error(closed). Idempotent; starts no replacement child.
  void close() noexcept;

 private:
  friend struct detail::process_placement;
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace shmckpt
