// The parent side of a commit through a store (shmckpt/commit_store.hpp).
//
// With checkpoint_process_options::store set, the child's default writer stops once its file is
// durable and describes it in the write's response (writer argument "commit" = "parent"). The
// io thread hands that description, with the write's promise, to a `parent_committer`, whose one
// thread runs commit_through_store for each write in order and only then resolves the promise.
// Store calls therefore never run on the trainer's threads nor on the io thread, and a slow
// barrier never holds up the child, which goes on with the next write. The writer hook named by
// writer argument "hook" is built here, in the trainer process.
//
// Thread safety: submit and close may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "shmckpt/commit_store.hpp"

namespace shmckpt::detail {

class parent_committer {
 public:
  struct settings {
    std::shared_ptr<commit_store> store;
    std::string scope;  // empty: next_store_scope()
    rank_info rank;
    std::chrono::milliseconds timeout{std::chrono::seconds(600)};
    kwargs writer_args;  // "hook" names the writer hook, built with these arguments
  };

  /// Throws error(not_found) when the hook is not registered in this process.
  explicit parent_committer(settings s);
  /// close(now).
  ~parent_committer();
  parent_committer(const parent_committer&) = delete;
  parent_committer& operator=(const parent_committer&) = delete;

  /// Commits the `attempt`-th save into `dir` (store_round_key) with the child's `reply`
  /// (rank_file JSON), then resolves `done`. After close, fails `done` with error(closed).
  void submit(std::uint64_t attempt, std::filesystem::path dir, kwargs kw, std::string reply,
              std::promise<void> done);

  /// Lets queued commits finish until `deadline`, then abandons the one running (within about
  /// 100 ms) and fails those left with error(closed). Idempotent.
  void close(std::chrono::steady_clock::time_point deadline) noexcept;

 private:
  struct item {
    std::uint64_t attempt;
    std::filesystem::path dir;
    kwargs kw;
    std::string reply;
    std::promise<void> done;
  };
  void run();
  void commit(item& it);

  settings s_;
  std::unique_ptr<writer_hook> hook_;
  std::string previous_;  // the commit thread's: the key of the round before
  std::atomic<bool> cancel_{false};
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<item> queue_;  // (m_)
  bool busy_ = false;       // (m_) the thread holds an item
  bool closing_ = false;    // (m_)
  std::thread thread_;
};

}  // namespace shmckpt::detail
