// checkpoint_process::impl (lib/parent/supervisor.hpp): start-up, the restart of a lost child,
// the submit thread, the public operations and close; and checkpoint_process itself. The io
// thread's handlers — handshake answers, the progress watchdog, the failure state machine — are
// in child_events.cpp.
#include "parent/supervisor.hpp"  // first: it includes what Process v2 needs first

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cstdio>

#include "child/priority.hpp"
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

// The part of shutdown_timeout close() keeps for killing and reaping a child that did not exit
// by itself (at most a quarter of it), so that close() as a whole never takes longer.
constexpr std::chrono::milliseconds kill_reserve = 1s;
// The progress watchdog cannot be finer than the child's reporting interval (100 ms).
constexpr std::chrono::milliseconds min_progress_timeout = 1s;

// now + a + b, saturating instead of overflowing for "wait forever" durations.
clock_type::time_point deadline_after(std::chrono::milliseconds a,
                                      std::chrono::milliseconds b = {}) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::time_point::max() -
                                                                    clock_type::now());
  if (a >= left || b >= left - a) return clock_type::time_point::max();
  return clock_type::now() + a + b;
}

}  // namespace

std::string detail::seconds_text(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3gs", static_cast<double>(d.count()) / 1000.0);
  return buf;
}

checkpoint_process::impl::impl(checkpoint_process_options o) : opts(std::move(o)) {
  detail::validate_priority(opts.priority);
  if (opts.progress_timeout < min_progress_timeout)
    throw_error(errc::invalid_argument, "checkpoint_process_options::progress_timeout is " +
                                            seconds_text(opts.progress_timeout) +
                                            ", below the minimum of " +
                                            seconds_text(min_progress_timeout) +
                                            " (the child reports progress every 100 ms at most)");
}

// The n-th write() into `dir`: its round in the commit store (counted even if the write
// fails later, so that ranks stay in step).
std::uint64_t checkpoint_process::impl::next_attempt(const std::filesystem::path& dir) {
  if (!committer) return 0;
  std::lock_guard g(attempts_m);
  return ++attempts[dir.lexically_normal().string()];
}

// ---- start-up and restart --------------------------------------------------------------------

void checkpoint_process::impl::start() {
  if (opts.store) {
    kwargs hook_args = opts.writer_args;
    hook_args["rank"] = std::to_string(opts.rank.rank);
    hook_args["world_size"] = std::to_string(opts.rank.world_size);
    committer = std::make_unique<detail::parent_committer>(detail::parent_committer::settings{
        opts.store, opts.store_scope, opts.rank, opts.commit_timeout, std::move(hook_args)});
  }
  detail::probe_pidfd();
  exe = detail::locate_worker(opts);
  std::promise<void> spawned;
  auto spawned_f = spawned.get_future();
  // The promise moves into the thread: start() may return while set_value() is still running.
  io_thread = std::thread([this, spawned = std::move(spawned)]() mutable {
    try {
      spawn_child();
      spawned.set_value();
    } catch (...) {
      spawned.set_exception(std::current_exception());
      return;
    }
    io.run();
  });
  try {
    spawned_f.get();
  } catch (...) {
    io_thread.join();
    throw;
  }
  submit_thread = std::thread([this] { submit_loop(); });
}

// On the io thread: the first child before io.run() (nothing is registered with the reactor
// yet), replacements from a handler (the reactor's fork hooks re-create its descriptors in
// the forked copy, which then execs at once).
void checkpoint_process::impl::spawn_child() {
  const auto number = ++children_started;
  std::vector<std::string> args{"--segment-bytes", std::to_string(seg.size())};
  for (auto& a : detail::priority_args(opts.priority)) args.push_back(std::move(a));
  auto spawned = detail::child_process::spawn(io, exe, std::move(args), seg.fd());
  auto c = std::make_shared<incarnation>(io, number, std::move(spawned.process));
  // Weak: the channel belongs to the incarnation, and must not keep it alive.
  std::weak_ptr<incarnation> w = c;
  detail::control_channel::handlers on;
  on.response = [this, w](std::uint64_t id, protocol::response r) {
    if (auto c = w.lock()) on_response(c, id, std::move(r));
  };
  on.progress = [this, w](std::uint64_t id, std::string what) {
    if (auto c = w.lock()) on_progress(c, id, std::move(what));
  };
  on.broken = [this, w](std::string why) {
    if (auto c = w.lock()) on_channel_broken(c, why);
  };
  on.violation = [this, w](std::string what) {
    if (auto c = w.lock()) on_protocol_violation(c, what);
  };
  c->channel = detail::control_channel::open(io, std::move(spawned.control), std::move(on));
  {
    std::lock_guard g(m);
    // The first child's handshake is ids 1 and 2 (writes start at 3); a replacement's takes
    // the next two ids, so request ids stay unique for the life of this object.
    c->init_id = requests.take_id();
    c->ping_id = requests.take_id();
    cur = c;
    restarting = false;
    cv.notify_all();
  }
  c->proc.async_wait([this, c](boost::system::error_code e) { on_exit(c, e); });
  c->channel->start();

  c->init_timer.expires_after(opts.init_timeout);
  c->init_timer.async_wait([this, c](boost::system::error_code e) {
    if (!e) on_init_timeout(c);
  });
  protocol::init_request init;
  init.init_function = opts.init_function;
  init.init_args = opts.init_args;
  init.writer_factory = opts.writer_factory;
  init.writer_args = opts.writer_args;
  init.writer_args["rank"] = std::to_string(opts.rank.rank);
  init.writer_args["world_size"] = std::to_string(opts.rank.world_size);
  if (committer) init.writer_args["commit"] = "parent";
  init.segment_bytes = seg.size();
  c->channel->send(protocol::make_frame(proto_type::init, c->init_id, protocol::encode_init(init)));
  c->channel->send(protocol::make_frame(proto_type::ping, c->ping_id, {}));
}

// Starts a replacement for a lost child, unless one is starting or none may be started.
void checkpoint_process::impl::restart_locked() {
  if (restarting || closing() || final_error || !cur || cur->st != incarnation::state::lost)
    return;
  restarting = true;
  asio::post(io, [this] { restart(); });
}

void checkpoint_process::impl::restart() {
  std::exception_ptr failure;
  try {
    spawn_child();
    return;
  } catch (const error& e) {
    failure = std::make_exception_ptr(
        error(e.kind(), std::string("cannot start a replacement checkpoint child: ") + e.what()));
  } catch (const std::exception& e) {
    failure = std::make_exception_ptr(error(
        errc::io_error, std::string("cannot start a replacement checkpoint child: ") + e.what()));
  }
  std::lock_guard g(m);
  restarting = false;
  if (!final_error) final_error = failure;
  cv.notify_all();
}

// ---- the submit thread ----------------------------------------------------------------------

void checkpoint_process::impl::submit_loop() {
  for (;;) {
    std::shared_ptr<job> j;
    {
      std::unique_lock lk(m);
      cv.wait(lk, [&] {
        return stopping() || (!requests.empty() && (usable_locked() || final_error));
      });
      if (stopping() && requests.empty()) return;
      j = requests.take_for_submit();
      if (!j) continue;
    }
    submit(j);
    std::lock_guard g(m);
    requests.release_submit();
  }
}

void checkpoint_process::impl::submit(const std::shared_ptr<job>& j) {
  try {
    if (j->at == job::stage::awaiting_state_dict) {
      // Wait for the producer, but notice close() and a failed child meanwhile.
      // `timeout` only: a deferred future reports `deferred` at once and runs in get() below.
      while (j->pending->wait_for(50ms) == std::future_status::timeout) {
        std::lock_guard g(m);
        if (stopping() || final_error) break;
      }
      {
        std::lock_guard g(m);
        if (final_error) std::rethrow_exception(final_error);
        if (stopping())
          throw error(errc::closed,
                      "checkpoint process was closed before the state dict for '" +
                          j->path.string() + "' was ready");
      }
      requests.prepare(*j, j->pending->get());
      j->pending.reset();
    } else if (j->at == job::stage::unencoded) {
      requests.encode(*j);
    }
    std::lock_guard g(m);
    if (final_error) std::rethrow_exception(final_error);
    if (stopping())
      throw error(errc::closed, "checkpoint process was closed before the write was sent");
    if (!usable_locked()) {
      // The child was lost meanwhile: wait for its replacement, in order.
      requests.requeue(j);
      restart_locked();
      return;
    }
    send_locked(j);  // from this thread, in queue order (the io thread is not woken for it)
  } catch (...) {
    j->done.set_exception(std::current_exception());
    request_queue::abandon_pending(*j);
  }
}

// With m held and a serving child: `j` (encoded) goes in flight and onto the socket, under
// the one lock, so in-flight order is send order.
void checkpoint_process::impl::send_locked(const std::shared_ptr<job>& j) {
  requests.mark_in_flight(j);
  start_clock_locked(cur, *j);
  cur->channel->send(std::move(j->frame));
}

// ---- public operations ----------------------------------------------------------------------

// Returns once a child serves writes, starting a replacement for a lost one first.
void checkpoint_process::impl::wait_ready() {
  std::unique_lock lk(m);
  for (;;) {
    if (final_error) std::rethrow_exception(final_error);
    if (closing() || usable_locked()) return;  // after close, write() reports it
    restart_locked();
    auto c = cur;
    // The init timer bounds this wait; the extra margin only guards against a stuck io thread.
    if (!cv.wait_until(lk, deadline_after(opts.init_timeout, 5s), [&] {
          return final_error || closing() || usable_locked() || cur != c ||
                 (cur->st == incarnation::state::lost && !restarting);
        }))
      throw error(errc::timeout, "Timed out after " + seconds_text(opts.init_timeout) +
                                     " waiting for checkpoint subprocess to initialize");
  }
}

// Queues `j` (its frame already encoded by the caller, or not), or, with send_if_idle, sends it
// at once when its frame is ready and nothing is ahead of it.
void checkpoint_process::impl::enqueue(std::shared_ptr<job> j, enqueue_mode mode) {
  std::lock_guard g(m);
  if (closing()) {
    j->done.set_exception(std::make_exception_ptr(
        error(errc::closed, "write to '" + j->path.string() +
                                "' after the checkpoint process was closed")));
    return;
  }
  if (final_error) {
    j->done.set_exception(final_error);
    return;
  }
  requests.assign_id(*j);
  if (mode == enqueue_mode::send_if_idle && j->at == job::stage::encoded && requests.idle() &&
      usable_locked()) {
    // Nothing is ahead of it on the submit thread: send it from this thread, saving two
    // thread hops (to the submit thread and to the io thread) per request.
    send_locked(j);
    return;
  }
  requests.push_back(std::move(j));
  restart_locked();  // no-op unless the child was lost
  cv.notify_all();
}

// Bounded by shutdown_timeout as a whole: queued writes and TERMINATE get all of it but the
// kill reserve; a child still there then is killed, and waited for until the end.
void checkpoint_process::impl::close() noexcept {
  {
    std::unique_lock lk(m);
    if (closing()) {
      // A concurrent close: wait until the first one has finished entirely.
      cv.wait(lk, [&] { return ph == phase::closed; });
      return;
    }
    ph = phase::closing;
  }
  const auto end = deadline_after(opts.shutdown_timeout);
  const auto reserve = std::min(kill_reserve, opts.shutdown_timeout / 4);
  const auto kill_at = end == clock_type::time_point::max() ? end : end - reserve;
  std::shared_ptr<incarnation> c;
  auto gone = [&] { return c->st == incarnation::state::lost; };
  {
    std::unique_lock lk(m);
    // A child still starting (the first one, or a replacement for writes sent back) may
    // finish its handshake first.
    cv.wait_until(lk, kill_at, [&] {
      return final_error || (!restarting && cur && cur->st != incarnation::state::starting);
    });
    c = cur;
    if (usable_locked() && !final_error) {
      // enqueue() refuses after `closing`: TERMINATE goes straight into the queue, behind
      // pending writes.
      auto t = std::make_shared<job>();
      t->type = proto_type::terminate;
      t->path = "<terminate>";
      requests.assign_id(*t);
      requests.encode(*t);
      requests.push_back(t);
      cv.notify_all();
      cv.wait_until(lk, kill_at, gone);
    }
  }
  std::vector<std::shared_ptr<job>> unsent;
  {
    std::unique_lock lk(m);
    if (c && !gone()) {
      if (!c->exited) {
        killed_by_close = true;
        lk.unlock();
        asio::post(io, [this, c] { kill_child(c); });
        lk.lock();
      }
      // Let the io thread read what the child sent before exiting and record how it ended,
      // so a crash during close is reported as such rather than as a plain close.
      cv.wait_until(lk, end, gone);
    }
    ph = phase::stopping;
    unsent = requests.take_unsent();
    cv.notify_all();
  }
  // Outside the lock: destroying a job may block (the last reference to a std::async state).
  auto not_sent = std::make_exception_ptr(
      error(errc::closed, "checkpoint process was closed before the write was sent"));
  for (auto& j : unsent) request_queue::resolve(std::move(j), not_sent);
  unsent.clear();
  if (submit_thread.joinable()) submit_thread.join();
  std::vector<std::shared_ptr<job>> unanswered;
  {
    std::lock_guard g(m);
    unanswered = requests.take_unanswered();
    if (!final_error)
      final_error = std::make_exception_ptr(
          error(errc::closed, "checkpoint process was closed before the write completed"));
  }
  auto not_answered = std::make_exception_ptr(error(
      errc::closed, killed_by_close
                        ? "checkpoint process was closed: the child did not finish within "
                          "shutdown_timeout and was killed"
                        : "checkpoint process was closed before the write completed"));
  for (auto& j : unanswered) request_queue::resolve(std::move(j), not_answered);
  unanswered.clear();
  work.reset();
  asio::post(io, [this, c] {
    if (c) {
      c->channel->close();
      c->init_timer.cancel();
      c->grace_timer.cancel();
      c->progress_timer.cancel();
    }
    io.stop();
  });
  if (io_thread.joinable()) io_thread.join();
  if (committer) committer->close(end);  // commits of writes the child finished
  std::lock_guard g(m);
  // Children that could not be reaped even after SIGKILL: detach, so ~process does not block.
  if (c && !c->exited) c->proc.detach();
  for (auto& u : unreaped)
    if (!u->exited) u->proc.detach();
  ph = phase::closed;
  cv.notify_all();
}

checkpoint_process::checkpoint_process(checkpoint_process_options options)
    : impl_(std::make_unique<impl>(std::move(options))) {
  impl_->start();
}

checkpoint_process::~checkpoint_process() {
  if (impl_) impl_->close();
}

void checkpoint_process::wait_ready() { impl_->wait_ready(); }

std::future<void> checkpoint_process::write(state_dict sd, std::filesystem::path path,
                                            kwargs kw) {
  const auto attempt = impl_->next_attempt(path);  // counted even if it fails: ranks stay in step
  wait_ready();
  auto j = std::make_shared<job>();
  j->commit_attempt = attempt;
  j->path = std::move(path);
  j->kw = std::move(kw);
  auto f = j->done.get_future();
  auto mode = impl::enqueue_mode::send_if_idle;
  try {
    auto& q = impl_->requests;  // its preparation members need no lock
    if (q.marked_shared(sd) || q.all_shared(sd)) {
      // Zero-copy hand-off: nothing to copy, so the tree moves into the job; with the placement
      // mark (a stager snapshot, mark_shared) not even walked here, so the caller returns in
      // microseconds whatever the tensor count. A small tree encodes in a microsecond, and its
      // frame leaves from this thread. A tree marked by mark_shared carries its descriptor in the
      // segment: its frame (tens of bytes) is made here too, but leaves from the submit thread,
      // because waking that thread costs this caller less than waking the child
      // (docs/benchmarks.md). Any other tree is encoded on the submit thread.
      j->prepared = std::move(sd);
      if (q.placed(j->prepared)) {
        q.encode(*j);
        mode = impl::enqueue_mode::via_submit_thread;
      } else if (request_queue::small_tree(j->prepared)) {
        q.encode(*j);
      }
    } else {
      j->prepared = q.share(sd);  // the copy of private tensors happens here, in the caller
      q.encode(*j);
    }
  } catch (...) {  // no room, or unrepresentable (too deep, strings too long): fail this write
    j->done.set_exception(std::current_exception());
    return f;
  }
  impl_->enqueue(std::move(j), mode);
  return f;
}

std::future<void> checkpoint_process::write(std::shared_future<state_dict> sd,
                                            std::filesystem::path path, kwargs kw) {
  const auto attempt = impl_->next_attempt(path);
  wait_ready();
  auto j = std::make_shared<job>();
  j->commit_attempt = attempt;
  j->path = std::move(path);
  j->kw = std::move(kw);
  j->pending = std::move(sd);
  j->at = job::stage::awaiting_state_dict;
  auto f = j->done.get_future();
  impl_->enqueue(std::move(j));
  return f;
}

tensor checkpoint_process::make_tensor(dtype type, std::vector<std::int64_t> shape) {
  return impl_->seg.make_tensor(type, std::move(shape));
}

std::shared_ptr<std::byte> checkpoint_process::allocate(std::size_t n) {
  return impl_->seg.allocate(n);
}

bool checkpoint_process::is_shared(const tensor& t) const noexcept {
  return impl_->seg.contains(t.data(), t.nbytes());
}

bool checkpoint_process::mark_shared(state_dict& sd) const {
  if (impl_->requests.marked_shared(sd)) return true;
  if (!impl_->requests.all_shared(sd)) return false;  // also false for a tree nested too deeply
  if (request_queue::small_tree(sd)) {
    detail::dict_placement::set(sd, impl_->segment_number);
    return true;
  }
  // A larger tree's descriptor goes into the segment once, so that every write() of it sends
  // tens of bytes instead of the whole tree. Without room for it (or for a tree the codec will
  // refuse, which write() then reports), the mark alone still spares write() the walk.
  try {
    detail::dict_placement::set(sd, impl_->segment_number, impl_->requests.place_tree(sd));
  } catch (const error&) {
    detail::dict_placement::set(sd, impl_->segment_number);
  }
  return true;
}

std::uint64_t detail::process_placement::segment_number(const checkpoint_process& p) noexcept {
  return p.impl_->segment_number;
}

std::size_t checkpoint_process::segment_free_bytes() const { return impl_->seg.free_bytes(); }

int checkpoint_process::child_pid() const noexcept {
  std::lock_guard g(impl_->m);
  return impl_->cur ? impl_->cur->pid : -1;
}

bool checkpoint_process::child_running() const {
  std::lock_guard g(impl_->m);
  return impl_->cur && !impl_->cur->exited;
}

void checkpoint_process::close() noexcept { impl_->close(); }

}  // namespace shmckpt
