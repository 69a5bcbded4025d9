#include "parent/parent_commit.hpp"

#include "commit/manifest.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt::detail {

parent_committer::parent_committer(settings s) : s_(std::move(s)) {
  if (!s_.store) throw_error(errc::invalid_argument, "a parent commit needs a store");
  if (s_.scope.empty()) s_.scope = next_store_scope();
  if (auto it = s_.writer_args.find("hook"); it != s_.writer_args.end() && !it->second.empty()) {
    try {
      hook_ = make_writer_hook(it->second, s_.writer_args);
    } catch (const error& e) {
      throw error(e.kind(), std::string(e.what()) +
                                " (with a commit store the hook runs in the trainer process: "
                                "register it there)");
    }
  }
  thread_ = std::thread([this] { run(); });
}

parent_committer::~parent_committer() { close(std::chrono::steady_clock::now()); }

void parent_committer::submit(std::uint64_t attempt, std::filesystem::path dir, kwargs kw,
                              std::string reply, std::promise<void> done) {
  {
    std::lock_guard g(m_);
    if (!closing_) {
      queue_.push_back({attempt, std::move(dir), std::move(kw), std::move(reply), std::move(done)});
      cv_.notify_all();
      return;
    }
  }
  done.set_exception(std::make_exception_ptr(
      error(errc::closed, "checkpoint process was closed before '" + dir.string() +
                              "' was committed; no manifest was published for it")));
}

void parent_committer::run() {
  for (;;) {
    item it;
    {
      std::unique_lock lk(m_);
      cv_.wait(lk, [&] { return !queue_.empty() || closing_; });
      if (queue_.empty() || cancel_.load()) return;
      it = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    commit(it);
    std::lock_guard g(m_);
    busy_ = false;
    cv_.notify_all();
  }
}

void parent_committer::commit(item& it) {
  try {
    rank_file me = rank_file_from_json(
        it.reply, "the checkpoint child's description of its file in '" + it.dir.string() + "'");
    store_commit_options o;
    o.timeout = s_.timeout;
    o.hook = hook_.get();
    o.kw = it.kw;
    o.cancel = &cancel_;
    store_round round{store_round_key(s_.scope, it.dir, it.attempt), previous_};
    previous_ = round.key;
    commit_through_store(*s_.store, round, it.dir, me, s_.rank, o);
  } catch (const error&) {
    it.done.set_exception(std::current_exception());
    return;
  } catch (const std::exception& e) {
    it.done.set_exception(std::make_exception_ptr(
        error(errc::child_failed, "commit of '" + it.dir.string() + "' failed: " + e.what())));
    return;
  } catch (...) {
    it.done.set_exception(std::make_exception_ptr(error(
        errc::child_failed, "commit of '" + it.dir.string() + "' failed: unknown exception")));
    return;
  }
  it.done.set_value();
}

void parent_committer::close(std::chrono::steady_clock::time_point deadline) noexcept {
  std::deque<item> left;
  {
    std::unique_lock lk(m_);
    if (!thread_.joinable()) return;  // closed already
    closing_ = true;
    cv_.notify_all();
    cv_.wait_until(lk, deadline, [&] { return queue_.empty() && !busy_; });
    cancel_ = true;
    left.swap(queue_);
  }
  thread_.join();
  for (auto& it : left)
    it.done.set_exception(std::make_exception_ptr(
        error(errc::closed, "checkpoint process was closed before '" + it.dir.string() +
                                "' was committed; no manifest was published for it")));
}

}  // namespace shmckpt::detail
