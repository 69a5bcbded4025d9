// The commit sequence (shmckpt/commit.hpp): hook, barrier, rank 0 publishes the manifest, every
// other rank waits for it, hook. Also the writer-hook registry and round tokens.
#include "shmckpt/commit.hpp"

#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "commit/manifest.hpp"
#include "core/progress.hpp"
#include "core/util.hpp"
#include "format/layout.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt {

namespace fs = std::filesystem;

namespace {

struct hook_registry {
  std::mutex m;
  std::map<std::string, std::function<std::unique_ptr<writer_hook>(const kwargs&)>> factories;
};
hook_registry& hooks() {
  static hook_registry r;
  return r;
}

}  // namespace

std::string new_round_token() {
  unsigned char bytes[16];
  std::size_t got = 0;
  while (got < sizeof bytes) {
    ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw_error(errc::unsupported, std::string("getrandom failed: ") + std::strerror(errno) +
                                         "; a commit round needs a random token");
    got += static_cast<std::size_t>(n);
  }
  char hex[33];
  for (std::size_t i = 0; i < sizeof bytes; ++i) std::snprintf(hex + 2 * i, 3, "%02x", bytes[i]);
  return std::string(hex, 32);
}

void register_writer_hook(std::string name,
                          std::function<std::unique_ptr<writer_hook>(const kwargs&)> factory) {
  std::lock_guard g(hooks().m);
  hooks().factories.insert_or_assign(std::move(name), std::move(factory));
}

std::unique_ptr<writer_hook> make_writer_hook(const std::string& name, const kwargs& args) {
  std::function<std::unique_ptr<writer_hook>(const kwargs&)> f;
  {
    std::lock_guard g(hooks().m);
    auto it = hooks().factories.find(name);
    if (it == hooks().factories.end())
      throw_error(errc::not_found, "no writer hook named '" + name +
                                       "' is registered; register it with "
                                       "shmckpt::register_writer_hook before "
                                       "run_worker_if_requested");
    f = it->second;
  }
  return f(args);
}

void commit_checkpoint(const fs::path& dir, const rank_file& me, rank_info rank, barrier& b,
                       writer_hook* hook, const kwargs& kw, std::chrono::milliseconds timeout) {
  if (rank.world_size < 1 || rank.rank < 0 || rank.rank >= rank.world_size)
    throw_error(errc::invalid_argument, "rank " + std::to_string(rank.rank) + " of world size " +
                                            std::to_string(rank.world_size) + " is not valid");
  reject_nul(dir, "checkpoint directory");
  if (hook) hook->pre_commit(dir, kw);
  auto all = b.arrive(dir, me, rank, timeout);
  auto mpath = dir / manifest_name;
  if (rank.rank == 0) {
    detail::publish_manifest(dir, std::move(all), rank.world_size);
    // Best effort: the manifest is what counts. Other ranks remove what they re-create; our own
    // arrival goes first and by name, since remove_all stops at the first entry that vanishes
    // under it (another rank removing its own arrival meanwhile).
    ::unlink((dir / detail::commit_dir_name / "0").c_str());
    for (int attempt = 0; attempt < 3; ++attempt) {
      std::error_code ec;
      fs::remove_all(dir / detail::commit_dir_name, ec);
      if (!ec) break;
    }
  } else {
    // Complete means published: wait for rank 0's manifest of this very round (our token).
    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = detail::commit_poll_first;
    while (!detail::manifest_lists(dir, me, rank.world_size)) {
      if (std::chrono::steady_clock::now() >= deadline)
        throw error(errc::timeout, "rank 0 did not publish the manifest of '" + dir.string() +
                                       "' listing rank " + std::to_string(me.rank) +
                                       "'s file of this round within " +
                                       std::to_string(timeout.count()) +
                                       " ms; the checkpoint is incomplete");
      detail::report_progress("waiting for rank 0 to publish the manifest of " + dir.string());
      std::this_thread::sleep_for(pause);
      pause = std::min<std::chrono::milliseconds>(pause * 2, detail::commit_poll_max);
    }
  }
  if (hook) hook->post_commit(dir, kw);
}

}  // namespace shmckpt
