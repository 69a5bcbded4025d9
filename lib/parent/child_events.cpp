// checkpoint_process::impl (lib/parent/supervisor.hpp): the io thread's handlers. What the
// control channel reports (handshake answers, responses, progress, violations), the progress
// watchdog, and the failure state machine of an incarnation: EOF and exit, each waiting a grace
// period for the other, the kill, and lose(), which resolves what the child was serving.
#include "parent/supervisor.hpp"  // first: it includes what Process v2 needs first

#include <boost/asio/post.hpp>

#include "shmckpt/error.hpp"

namespace shmckpt {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using proto_type = protocol::message_type;
using detail::job;
using detail::request_queue;
using detail::seconds_text;
using clock_type = std::chrono::steady_clock;

namespace {

// After the control channel breaks, how long to wait for the child's exit status so the error
// can say how it died.
constexpr auto exit_status_grace = 1s;
// After SIGKILL, how long to wait for the kernel to report the exit.
constexpr auto kill_grace = 10s;

}  // namespace

// With m held, right after write `j` went in flight to `c`: when it is the one the child serves
// next (no other write ahead of it), its clock starts now; the watchdog is armed unless it is
// (it disarms itself when no write is in flight).
void checkpoint_process::impl::start_clock_locked(const std::shared_ptr<incarnation>& c,
                                                  const job& j) {
  if (j.type != proto_type::write_checkpoint) return;
  if (requests.head_write() == &j) {
    c->last_progress = clock_type::now();
    c->activity.clear();
  }
  if (c->watchdog_armed || opts.progress_timeout == std::chrono::milliseconds::max()) return;
  c->watchdog_armed = true;
  asio::post(io, [this, c, when = c->last_progress + opts.progress_timeout] {
    arm_watchdog(c, when);
  });
}

void checkpoint_process::impl::arm_watchdog(const std::shared_ptr<incarnation>& c,
                                            clock_type::time_point when) {
  c->progress_timer.expires_at(when);
  c->progress_timer.async_wait([this, c](boost::system::error_code e) {
    if (!e) check_progress(c);
  });
}

void checkpoint_process::impl::check_progress(const std::shared_ptr<incarnation>& c) {
  clock_type::time_point next;
  {
    std::lock_guard g(m);
    const job* head = requests.head_write();
    if (c->st == incarnation::state::lost || c->killed || c->exited || c->channel_broken ||
        !head) {  // dying anyway, or idle
      c->watchdog_armed = false;
      return;
    }
    next = c->last_progress + opts.progress_timeout;
    if (clock_type::now() >= next) {
      c->hang = "checkpoint child (pid " + std::to_string(c->pid) + ") made no progress for " +
                seconds_text(opts.progress_timeout) + " while " +
                (c->activity.empty() ? "starting the write to '" + head->path.string() + "'"
                                     : "'" + c->activity + "'") +
                " and was killed";
    }
  }
  if (!c->hang.empty()) return kill_child(c);  // its exit then loses it
  arm_watchdog(c, next);
}

void checkpoint_process::impl::on_progress(const std::shared_ptr<incarnation>& c, std::uint64_t id,
                                           std::string what) {
  std::lock_guard g(m);
  if (c->st == incarnation::state::lost) return;
  // Only reports on the write being served count; anything else (a late report) is ignored.
  if (!requests.is_head_write(id)) return;
  c->last_progress = clock_type::now();
  c->activity = std::move(what);
}

void checkpoint_process::impl::on_response(const std::shared_ptr<incarnation>& c, std::uint64_t id,
                                           protocol::response r) {
  auto child_error = [&](const std::string& prefix) {
    return std::make_exception_ptr(error(protocol::errc_from_wire(r.code), prefix + r.message));
  };
  if (id == c->init_id) {
    if (!r.ok()) {
      c->init_timer.cancel();
      fail_init(c, child_error(c->number == 1 ? "checkpoint subprocess failed to initialize: "
                                              : "the replacement checkpoint subprocess failed to "
                                                "initialize: "));
      kill_child(c);
    }
    return;
  }
  if (id == c->ping_id) {  // the handshake is complete
    std::lock_guard g(m);
    if (!final_error && c->st == incarnation::state::starting) {
      c->st = incarnation::state::serving;
      c->init_timer.cancel();
    }
    cv.notify_all();
    return;
  }
  std::shared_ptr<job> j;
  {
    std::lock_guard g(m);
    j = requests.take_answered(id);
    if (!j) {
      // Not ours: the child is confused; treat it as a broken channel (outside this lock).
      asio::post(io, [this, c, what = "response for unknown request id " + std::to_string(id)] {
        on_protocol_violation(c, what);
      });
      return;
    }
    if (j->type == proto_type::terminate) {
      terminate_acked = true;
    } else {
      c->last_progress = clock_type::now();  // the next write starts now
      c->activity.clear();
    }
  }
  auto failure = r.ok() ? nullptr
                        : child_error("checkpoint child failed to write '" + j->path.string() +
                                      "': ");
  if (!failure && committer && j->type == proto_type::write_checkpoint && !r.payload.empty()) {
    // Durable; the commit through the store resolves the future (parent_commit.hpp). The
    // segment copies go first, as in resolve().
    auto done = std::move(j->done);
    auto attempt = j->commit_attempt;
    auto path = j->path;
    auto kw = j->kw;
    j.reset();
    committer->submit(attempt, std::move(path), std::move(kw),
                      std::string(reinterpret_cast<const char*>(r.payload.data()),
                                  r.payload.size()),
                      std::move(done));
    return;
  }
  request_queue::resolve(std::move(j), failure);
}

void checkpoint_process::impl::on_protocol_violation(const std::shared_ptr<incarnation>& c,
                                                     const std::string& what) {
  // A child that breaks the protocol cannot be trusted with further requests.
  kill_child(c);
  on_channel_broken(c, "protocol violation: " + what);
}

void checkpoint_process::impl::on_init_timeout(const std::shared_ptr<incarnation>& c) {
  {
    // cancel() cannot recall a handler already queued: the PING may have won the race.
    std::lock_guard g(m);
    if (c->st != incarnation::state::starting || final_error) return;
  }
  fail_init(c, std::make_exception_ptr(
                   error(errc::timeout, "Timed out after " + seconds_text(opts.init_timeout) +
                                            " waiting for checkpoint subprocess to initialize" +
                                            (c->number == 1 ? "" : " (a replacement child)"))));
  kill_child(c);
}

// A child that cannot start ends it all: a replacement would fail the same way.
void checkpoint_process::impl::fail_init(const std::shared_ptr<incarnation>& c,
                                         std::exception_ptr e) {
  std::lock_guard g(m);
  if (c->st == incarnation::state::starting && !final_error) final_error = e;
  cv.notify_all();
}

void checkpoint_process::impl::kill_child(const std::shared_ptr<incarnation>& c) {
  {
    std::lock_guard g(m);
    if (c->exited) return;
    c->killed = true;
  }
  c->proc.kill();  // the exit then completes on_exit()
}

// The child's death shows up twice: as EOF on the socket and as its exit. Responses the child
// sent before dying are still buffered in the socket, so its loss waits for EOF (everything
// read); the exit status, if it arrives within the grace period, names how the child died.
// An exit without EOF loses it after the grace period (a grandchild may hold the socket); an
// EOF without exit kills it then (a child that closed its channel is of no use).
void checkpoint_process::impl::on_channel_broken(const std::shared_ptr<incarnation>& c,
                                                 const std::string& why) {
  {
    std::lock_guard g(m);
    if (c->st == incarnation::state::lost || c->channel_broken) return;
    c->channel_broken = true;
    if (c->why.empty()) c->why = why;
    if (!c->exited) return start_grace(c);
  }
  lose(c);
}

void checkpoint_process::impl::on_exit(const std::shared_ptr<incarnation>& c,
                                       boost::system::error_code e) {
  {
    std::lock_guard g(m);
    c->exited = true;
    c->exit_status = c->proc.native_exit_code();
    c->status_known = !e;  // e.g. ECHILD when the trainer reaps children itself
    cv.notify_all();
    if (c->st == incarnation::state::lost) return;
    if (!c->channel_broken) return start_grace(c);
  }
  lose(c);
}

void checkpoint_process::impl::start_grace(const std::shared_ptr<incarnation>& c) {
  c->grace_timer.expires_after(exit_status_grace);
  c->grace_timer.async_wait([this, c](boost::system::error_code e) {
    if (e != asio::error::operation_aborted) on_grace_expired(c);
  });
}

void checkpoint_process::impl::on_grace_expired(const std::shared_ptr<incarnation>& c) {
  bool exited;
  {
    std::lock_guard g(m);
    if (c->st == incarnation::state::lost) return;
    exited = c->exited;
  }
  if (exited) return lose(c);
  kill_child(c);
  c->grace_timer.expires_after(kill_grace);
  c->grace_timer.async_wait([this, c](boost::system::error_code e) {
    if (e != asio::error::operation_aborted) lose(c);  // even unreaped: give up on it
  });
}

// Why `c` died, in the words the futures will carry. With m held.
std::string checkpoint_process::impl::cause_locked(const incarnation& c, errc& code) const {
  code = errc::child_terminated;
  if (closing() && (terminate_acked || killed_by_close)) {
    code = errc::closed;
    return killed_by_close ? "checkpoint process was closed: the child did not finish within "
                             "shutdown_timeout and was killed"
                           : "checkpoint process was closed";
  }
  if (!c.hang.empty()) {
    code = errc::timeout;
    return c.hang;
  }
  std::string cause = "Child process terminated unexpectedly";
  if (c.killed && !c.why.empty()) return cause + " (" + c.why + ")";
  if (c.exited && c.status_known)
    return cause + " (" + detail::describe_status(c.exit_status) + ")";
  if (c.exited) return cause + " (exit status unavailable)";
  if (!c.why.empty()) return cause + " (" + c.why + ")";
  return cause;
}

// The child is gone for good: fail the write it was serving (after removing what it left of
// that write on disk), send the writes behind it back to the queue for a replacement, or fail
// everything when no replacement may come (failed start, close).
void checkpoint_process::impl::lose(const std::shared_ptr<incarnation>& c) {
  std::filesystem::path head_dir;
  bool exited;
  bool served;
  {
    std::lock_guard g(m);
    if (c->st == incarnation::state::lost) return;
    served = c->st == incarnation::state::serving;
    c->st = incarnation::state::lost;
    exited = c->exited;
    if (!exited) unreaped.push_back(c);
    if (const job* h = requests.head_write()) head_dir = h->path;
  }
  c->init_timer.cancel();
  c->grace_timer.cancel();
  c->progress_timer.cancel();
  c->channel->close();
  // A dead writer's temporary file would stay forever (preallocated to the full size); a
  // child that might still live could yet rename it into place, so only when it is reaped.
  if (exited && !head_dir.empty())
    detail::remove_dead_writers_temp_files(head_dir, opts.rank.rank, c->pid);

  std::vector<std::pair<std::shared_ptr<job>, std::exception_ptr>> failed;
  {
    std::lock_guard g(m);
    errc code;
    const std::string cause = cause_locked(*c, code);
    if (!served && !final_error) {
      // It never completed its handshake: a failed start (or restart) is final.
      final_error = std::make_exception_ptr(error(
          code,
          (c->number == 1 ? "" : "the replacement checkpoint child failed to start: ") + cause));
    }
    const bool replaceable = !closing() && !final_error;
    auto lost = requests.recall(replaceable);
    if (lost.served)
      failed.emplace_back(
          lost.served,
          std::make_exception_ptr(error(
              code, cause + "; the checkpoint '" + lost.served->path.string() +
                        "' was not written" +
                        (replaceable ? "; the next write starts a new checkpoint child" : ""))));
    for (auto& j : lost.others)
      failed.emplace_back(j, std::make_exception_ptr(
                                 error(code, cause + "; pending checkpoints were not written")));
    if (replaceable && !requests.empty()) restart_locked();
    cv.notify_all();
  }
  // Outside the lock, copies released first (as on_response does).
  for (auto& [j, e] : failed) request_queue::resolve(std::move(j), e);
}

}  // namespace shmckpt
