// The commit through a distributed key/value store (shmckpt/commit_store.hpp): the algorithm
// every store shares, and the in-process store.
#include "shmckpt/commit_store.hpp"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <boost/json.hpp>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "commit/manifest.hpp"
#include "core/util.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt {

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

// A store get() waits at most this long at a time, so that a cancel is noticed.
constexpr auto get_slice = 100ms;
// Re-reading a rank file whose arrival does not match it yet (a filesystem client lagging
// behind another host's rename): from fast to gentle.
constexpr auto recheck_first = 2ms;
constexpr auto recheck_max = 200ms;

std::string key_of(const std::string& round, const std::string& tail) { return round + "/" + tail; }

std::string round_name(const store_round& r) { return "store round " + r.key; }

// now + d without overflowing for "forever".
clock_type::time_point deadline_in(std::chrono::milliseconds d) {
  auto now = clock_type::now();
  if (d >= std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::time_point::max() - now))
    return clock_type::time_point::max();
  return now + d;
}

// Runs a store call, turning foreign exceptions into error(io_error).
template <class F>
auto store_call(const char* what, const std::string& key, F&& f) {
  try {
    return f();
  } catch (const error&) {
    throw;
  } catch (const std::exception& e) {
    throw error(errc::io_error, std::string("commit store ") + what + " of '" + key +
                                    "' failed: " + e.what());
  }
}

void check_cancel(const store_commit_options& o, const fs::path& dir) {
  if (o.cancel && o.cancel->load())
    throw error(errc::closed, "the commit of '" + dir.string() +
                                  "' was abandoned: the checkpointer was closed while it waited "
                                  "for the other ranks");
}

// store.get in slices (cancel), never spinning on a store that answers at once.
std::optional<std::string> get_until(commit_store& s, const std::string& key,
                                     clock_type::time_point deadline,
                                     const store_commit_options& o, const fs::path& dir) {
  auto pause = std::chrono::milliseconds(1);
  for (;;) {
    check_cancel(o, dir);
    auto now = clock_type::now();
    auto until = deadline - now > get_slice ? now + get_slice : deadline;
    auto v = store_call("get", key, [&] { return s.get(key, until); });
    if (v) return v;
    now = clock_type::now();
    if (now >= deadline) return std::nullopt;
    if (now < until) {  // answered early: a polling store; do not hammer it
      std::this_thread::sleep_for(std::min<clock_type::duration>(pause, until - now));
      pause = std::min<std::chrono::milliseconds>(pause * 2, 50ms);
    }
  }
}

void remove_quietly(commit_store& s, const std::string& key) noexcept {
  try {
    s.remove(key);
  } catch (...) {
    // Best effort: a key left behind is never read again.
  }
}

std::string arrival_text(const fs::path& dir, const rank_file& me, rank_info rank) {
  json::object o{{"dir", dir.string()},
                 {"world_size", rank.world_size},
                 {"entry", json::parse(detail::rank_file_json(me))}};
  return json::serialize(o);
}

struct arrival {
  std::string dir;
  std::int64_t world_size = 0;
  rank_file entry;
};

arrival parse_arrival(const std::string& text, const std::string& where) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  const json::object* o = !ec ? v.if_object() : nullptr;
  const json::value* d = o ? o->if_contains("dir") : nullptr;
  const json::value* w = o ? o->if_contains("world_size") : nullptr;
  const json::value* e = o ? o->if_contains("entry") : nullptr;
  if (!d || !d->is_string() || !w || !w->is_int64() || !e)
    throw error(errc::corrupt_data, where + " is not an arrival of shmckpt (" +
                                        text.substr(0, 80) + ")");
  arrival a;
  a.dir = std::string(d->get_string());
  a.world_size = w->get_int64();
  a.entry = detail::rank_file_from_json(json::serialize(*e), where);
  return a;
}

std::string barrier_timeout_message(const fs::path& dir, const store_round& round,
                                    std::chrono::milliseconds timeout,
                                    const std::vector<int>& missing, int world) {
  std::string what = "commit barrier in '" + dir.string() + "' (" + round_name(round) +
                     ") timed out after " + std::to_string(timeout.count()) + " ms: ";
  if (!missing.empty())
    what += "rank(s) " + detail::rank_list(missing) + " of " + std::to_string(world) +
            " never arrived (their trainer or checkpoint child failed or is stuck)";
  else
    what += "every rank arrived but rank 0 did not publish the manifest (it failed or is stuck)";
  return what + "; the checkpoint is incomplete and no manifest was published";
}

void rank0(commit_store& s, const store_round& round, const fs::path& dir, const rank_file& me,
           rank_info rank, const store_commit_options& o) {
  const auto outcome = key_of(round.key, "outcome");
  // Whatever fails the round here reaches the other ranks at once, with its reason.
  auto fail = [&](const error& e) {
    try {
      s.set(outcome, "failed\n" + std::to_string(static_cast<int>(e.kind())) + "\n" + e.what());
    } catch (...) {
      // The others then time out on their own.
    }
    throw e;
  };
  try {
    if (o.hook) o.hook->pre_commit(dir, o.kw);
  } catch (const error& e) {
    fail(e);
  } catch (const std::exception& e) {
    fail(error(errc::child_failed, std::string("pre-commit hook failed: ") + e.what()));
  }
  const auto mine = key_of(round.key, "arrive/0");
  store_call("set", mine, [&] {
    s.set(mine, arrival_text(dir, me, rank));
    return 0;
  });
  const auto deadline = deadline_in(o.timeout);
  std::vector<rank_file> all{me};
  std::vector<int> missing;
  try {
    for (int r = 1; r < rank.world_size; ++r) {
      const auto k = key_of(round.key, "arrive/" + std::to_string(r));
      // Past the deadline this only asks, so the message names exactly the ranks not there.
      auto v = get_until(s, k, deadline, o, dir);
      if (!v) {
        missing.push_back(r);
        continue;
      }
      if (!missing.empty()) continue;  // failing anyway: only count who is missing
      // As the file barrier does: count an arrival only for the file that is on disk now. One
      // that does not match is read again (the key may be re-set) until the deadline.
      std::string why;
      auto pause = std::chrono::milliseconds(recheck_first);
      std::optional<rank_file> ok;
      for (;;) {
        auto a = parse_arrival(*v, "the arrival of rank " + std::to_string(r) + " in " +
                                       round_name(round));
        if (a.dir != dir.string() || a.world_size != rank.world_size)
          throw error(errc::invalid_argument,
                      "saves out of step: in " + round_name(round) + " rank " +
                          std::to_string(r) + " saved '" + a.dir + "' with world size " +
                          std::to_string(a.world_size) + ", rank 0 '" + dir.string() +
                          "' with world size " + std::to_string(rank.world_size) +
                          " (every rank must make the same saves in the same order)");
        if ((ok = detail::check_arrival(dir, r, a.entry, why))) break;
        if (clock_type::now() >= deadline)
          throw error(errc::corrupt_data, "commit of '" + dir.string() + "' (" +
                                              round_name(round) + "): rank " + std::to_string(r) +
                                              " was not counted: " + why +
                                              "; no manifest was published");
        check_cancel(o, dir);
        std::this_thread::sleep_for(pause);
        pause = std::min<std::chrono::milliseconds>(pause * 2, recheck_max);
        if (auto again = store_call("get", k, [&] { return s.get(k, clock_type::time_point::min()); }))
          v = std::move(again);
      }
      all.push_back(*ok);
    }
    if (!missing.empty())
      throw error(errc::timeout,
                  barrier_timeout_message(dir, round, o.timeout, missing, rank.world_size));
  } catch (const error& e) {
    // rank 0's arrival stays: ranks timing out on their own then do not name it as missing.
    if (e.kind() == errc::closed) throw;
    fail(e);
  }
  // Every rank has arrived in this round, so every rank is done with the previous one.
  if (!round.previous.empty()) remove_quietly(s, key_of(round.previous, "outcome"));
  std::string text;
  try {
    text = detail::publish_manifest(dir, std::move(all), rank.world_size);
  } catch (const error& e) {
    remove_quietly(s, mine);
    fail(e);
  }
  store_call("set", outcome, [&] {
    s.set(outcome, "ok\n" + text);
    return 0;
  });
  remove_quietly(s, mine);
  if (o.hook) o.hook->post_commit(dir, o.kw);
}

void other_rank(commit_store& s, const store_round& round, const fs::path& dir,
                const rank_file& me, rank_info rank, const store_commit_options& o) {
  if (o.hook) o.hook->pre_commit(dir, o.kw);  // throwing: this rank never arrives
  const auto mine = key_of(round.key, "arrive/" + std::to_string(rank.rank));
  store_call("set", mine, [&] {
    s.set(mine, arrival_text(dir, me, rank));
    return 0;
  });
  struct leave_guard {
    commit_store& s;
    const std::string& k;
    ~leave_guard() { remove_quietly(s, k); }  // rank 0 has read it, or the round is over
  } leave{s, mine};
  const auto outcome = key_of(round.key, "outcome");
  auto v = get_until(s, outcome, deadline_in(o.timeout), o, dir);
  if (!v) {
    // Name who is missing, as rank 0 would: ask for every arrival once, without waiting.
    std::vector<int> missing;
    for (int r = 0; r < rank.world_size; ++r) {
      if (r == rank.rank) continue;
      const auto k = key_of(round.key, "arrive/" + std::to_string(r));
      if (!store_call("get", k, [&] { return s.get(k, clock_type::time_point::min()); }))
        missing.push_back(r);
    }
    throw error(errc::timeout,
                barrier_timeout_message(dir, round, o.timeout, missing, rank.world_size));
  }
  const std::string& t = *v;
  if (t.rfind("failed\n", 0) == 0) {
    auto nl = t.find('\n', 7);
    int code = 0;
    try {
      code = std::stoi(t.substr(7, nl == std::string::npos ? std::string::npos : nl - 7));
    } catch (...) {
    }
    std::string why = nl == std::string::npos ? "" : t.substr(nl + 1);
    errc kind = code > 0 && code <= static_cast<int>(errc::unsupported) ? static_cast<errc>(code)
                                                                        : errc::child_failed;
    throw error(kind, "rank 0 failed the commit of '" + dir.string() + "' (" + round_name(round) +
                          "): " + why);
  }
  if (t.rfind("ok\n", 0) != 0 || !detail::manifest_text_lists(t.substr(3), me, rank.world_size))
    throw error(errc::invalid_argument,
                "the manifest rank 0 published for '" + dir.string() + "' in " +
                    round_name(round) + " does not list rank " + std::to_string(rank.rank) +
                    "'s file of this round (round token " + me.round +
                    "): saves out of step (every rank must make the same saves in the same "
                    "order); the checkpoint does not include this rank's file");
  if (o.hook) o.hook->post_commit(dir, o.kw);
}

class memory_store final : public commit_store {
 public:
  void set(const std::string& key, const std::string& value) override {
    {
      std::lock_guard g(m_);
      map_[key] = value;
    }
    cv_.notify_all();
  }
  std::optional<std::string> get(const std::string& key,
                                 clock_type::time_point deadline) override {
    std::unique_lock lk(m_);
    std::optional<std::string> out;
    cv_.wait_until(lk, deadline, [&] {
      auto it = map_.find(key);
      if (it != map_.end()) out = it->second;
      return out.has_value();
    });
    return out;
  }
  void remove(const std::string& key) override {
    std::lock_guard g(m_);
    map_.erase(key);
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::map<std::string, std::string> map_;
};

}  // namespace

std::shared_ptr<commit_store> make_memory_store() { return std::make_shared<memory_store>(); }

std::string store_round_key(const std::string& scope, const fs::path& dir, std::uint64_t attempt) {
  const std::string d = dir.string();
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(XXH3_64bits(d.data(), d.size())));
  return scope + "/" + hex + "." + std::to_string(attempt);
}

std::string next_store_scope() {
  static std::atomic<std::uint64_t> n{0};
  return "ckpt" + std::to_string(++n);
}

void commit_through_store(commit_store& store, const store_round& round, const fs::path& dir,
                          const rank_file& me, rank_info rank, const store_commit_options& o) {
  if (rank.world_size < 1 || rank.rank < 0 || rank.rank >= rank.world_size)
    throw_error(errc::invalid_argument, "rank " + std::to_string(rank.rank) + " of world size " +
                                            std::to_string(rank.world_size) + " is not valid");
  if (round.key.empty())
    throw_error(errc::invalid_argument, "a store round needs a key (store_round_key)");
  reject_nul(dir, "checkpoint directory");
  if (rank.rank == 0)
    rank0(store, round, dir, me, rank, o);
  else
    other_rank(store, round, dir, me, rank, o);
}

}  // namespace shmckpt
