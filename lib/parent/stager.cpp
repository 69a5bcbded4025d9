// The stager: generation pools of shared buffers, leases, and a parallel copy pool.
//
// Locking: `m` guards the generations and the async queue. Copies run without it. A generation's
// lease is a shared_ptr whose deleter marks the generation free; every staged tensor holds the
// lease as its owner, so the generation is reused only after the last snapshot tensor is gone.
#include "shmckpt/stager.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "shmckpt/error.hpp"
#include "core/placement.hpp"
#include "core/util.hpp"

namespace shmckpt {

namespace {

struct copy_job {
  std::byte* dst;
  const std::byte* src;
  std::size_t n;
};

// Copies below this size always go to memcpy: they stay in the cache either way, and the
// strategy decides nothing there.
constexpr std::size_t streaming_threshold = std::size_t{256} << 10;

// Non-temporal (streaming) stores: the destination bypasses the cache and is not read first.
// Whether that beats memcpy depends on the CPU (on one Intel Xeon by 1.1-1.5x; on an AMD EPYC a
// simpler streaming loop lost by 2x), which is why automatic mode measures it. Four pages are
// copied at a time, line by line across them, so that the loads and the write-combined stores
// keep four DRAM pages open instead of one: 1.3x faster than one page at a time on that Xeon.
void stream_copy(std::byte* dst, const std::byte* src, std::size_t n) noexcept {
#if defined(__SSE2__)
  constexpr std::size_t line = 64, page = 4096, group = 4 * page;
  auto stream_line = [](std::byte* to, const std::byte* from) {  // `to` 16-byte aligned
    auto* d = reinterpret_cast<__m128i*>(to);
    const auto* q = reinterpret_cast<const __m128i*>(from);
    __m128i a = _mm_loadu_si128(q), b = _mm_loadu_si128(q + 1), c = _mm_loadu_si128(q + 2),
            e = _mm_loadu_si128(q + 3);
    _mm_stream_si128(d, a);
    _mm_stream_si128(d + 1, b);
    _mm_stream_si128(d + 2, c);
    _mm_stream_si128(d + 3, e);
  };
  std::size_t head = std::min(n, (line - reinterpret_cast<std::uintptr_t>(dst) % line) % line);
  std::memcpy(dst, src, head);  // dst now on a cache-line boundary
  dst += head;
  src += head;
  n -= head;
  for (; n >= group; n -= group, dst += group, src += group)
    for (std::size_t l = 0; l < page; l += line)
      for (std::size_t p = 0; p < group; p += page) stream_line(dst + p + l, src + p + l);
  for (; n >= line; n -= line, dst += line, src += line) stream_line(dst, src);
  std::memcpy(dst, src, n);
  _mm_sfence();  // streaming stores are weakly ordered: publish before the batch completes
#else
  std::memcpy(dst, src, n);
#endif
}

void copy_bytes(std::byte* dst, const std::byte* src, std::size_t n, bool streaming) noexcept {
  if (streaming && n >= streaming_threshold)
    stream_copy(dst, src, n);
  else
    std::memcpy(dst, src, n);
}

// ---- the automatic choice, made once per process -------------------------------------------
//
// The first staging batches of at least `calibration_min_batch` bytes are copied half with
// memcpy and half with streaming stores (which half goes first alternates), each half timed as
// a whole across all copy threads. These are the trainer's real copies, into the real
// destination, at the real sizes and alignments, so the comparison costs nothing extra and
// measures exactly what staging will do. Once each strategy has `calibration_bytes` behind it,
// streaming is chosen only when it was at least `streaming_margin` faster; memcpy otherwise
// (it is the baseline staging is held against, so it can never lose to it by much). Until
// then, smaller batches use memcpy.
constexpr std::size_t calibration_min_batch = std::size_t{16} << 20;
constexpr std::uint64_t calibration_bytes = std::uint64_t{64} << 20;
constexpr int calibration_max_batches = 8;
constexpr double streaming_margin = 1.05;

const char* strategy_name(copy_strategy s) noexcept {
  switch (s) {
    case copy_strategy::automatic: return "automatic";
    case copy_strategy::memcpy: return "memcpy";
    case copy_strategy::streaming: return "streaming";
  }
  return "?";
}

std::string gbps_text(std::uint64_t bytes, std::uint64_t ns) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GB/s",
                ns ? static_cast<double>(bytes) / static_cast<double>(ns) : 0.0);
  return buf;
}

// SHMCKPT_COPY_STRATEGY, read once: memcpy, streaming, or auto (also when unset or empty).
std::optional<copy_strategy> forced_by_environment() {
  static const std::optional<copy_strategy> forced = []() -> std::optional<copy_strategy> {
    const char* v = std::getenv("SHMCKPT_COPY_STRATEGY");
    if (!v || !*v || std::strcmp(v, "auto") == 0) return std::nullopt;
    if (std::strcmp(v, "memcpy") == 0) return copy_strategy::memcpy;
    if (std::strcmp(v, "streaming") == 0) return copy_strategy::streaming;
    return copy_strategy::automatic;  // invalid: reported by check_environment()
  }();
  return forced;
}

void check_environment() {
  if (forced_by_environment() == copy_strategy::automatic)
    throw_error(errc::invalid_argument,
                std::string("SHMCKPT_COPY_STRATEGY is '") + std::getenv("SHMCKPT_COPY_STRATEGY") +
                    "'; set it to memcpy, streaming or auto (or unset it)");
}

struct calibration {
  std::mutex m;
  bool decided = false;
  bool streaming = false;
  std::uint64_t bytes[2] = {0, 0};  // [0]: memcpy, [1]: streaming
  std::uint64_t ns[2] = {0, 0};
  int batches = 0;
  std::string reason = "not decided yet: no staging batch of 16 MiB or more has been copied";

  void record(std::uint64_t b_mem, std::uint64_t ns_mem, std::uint64_t b_str,
              std::uint64_t ns_str) {
    std::lock_guard g(m);
    if (decided) return;
    bytes[0] += b_mem;
    ns[0] += ns_mem;
    bytes[1] += b_str;
    ns[1] += ns_str;
    ++batches;
    if ((bytes[0] < calibration_bytes || bytes[1] < calibration_bytes) &&
        batches < calibration_max_batches)
      return;
    double mem = ns[0] ? static_cast<double>(bytes[0]) / static_cast<double>(ns[0]) : 0;
    double str = ns[1] ? static_cast<double>(bytes[1]) / static_cast<double>(ns[1]) : 0;
    decided = true;
    streaming = mem > 0 && str >= streaming_margin * mem;
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "%.2fx", mem > 0 ? str / mem : 0.0);
    reason = std::string(streaming ? "streaming" : "memcpy") + ": streaming stores measured " +
             gbps_text(bytes[1], ns[1]) + " against memcpy " + gbps_text(bytes[0], ns[0]) +
             " (" + ratio + ") on " + std::to_string((bytes[0] + bytes[1]) >> 20) +
             " MiB of this process's first staging copies; streaming is used only when at "
             "least 1.05x faster";
  }
};

calibration& process_calibration() {
  static calibration c;
  return c;
}

std::uint64_t now_ns() noexcept {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

// Below this total a single thread is faster than waking others.
constexpr std::size_t parallel_threshold = std::size_t{8} << 20;

// A fixed set of threads that copy one batch at a time, together with the caller. The batch is
// cut into one contiguous range per participant (not small chunks): memcpy switches to
// non-temporal stores only for large calls, which roughly doubles the bandwidth of big copies.
class copy_pool {
 public:
  explicit copy_pool(std::size_t helpers) {
    for (std::size_t i = 0; i < helpers; ++i) threads_.emplace_back([this] { loop(); });
  }
  ~copy_pool() {
    {
      std::lock_guard g(m_);
      stop_ = true;
    }
    work_.notify_all();
    for (auto& t : threads_) t.join();
  }

  // Copies every job with `mode` (automatic: the process's calibrated choice).
  void run(const std::vector<copy_job>& jobs, copy_strategy mode) {
    if (mode == copy_strategy::automatic) {
      if (auto forced = forced_by_environment()) mode = *forced;
    }
    if (mode != copy_strategy::automatic) return run_with(jobs, mode == copy_strategy::streaming);
    auto& cal = process_calibration();
    bool calibrating;
    bool streaming;
    int round;
    {
      std::lock_guard g(cal.m);
      calibrating = !cal.decided;
      streaming = cal.decided && cal.streaming;
      round = cal.batches;
    }
    std::size_t total = 0;
    for (const auto& j : jobs) total += j.n;
    if (!calibrating || total < calibration_min_batch) return run_with(jobs, streaming);
    // Two halves by bytes, each copied (by all threads) with one strategy and timed.
    std::vector<copy_job> first, second;
    std::size_t half = total / 2, seen = 0;
    for (const auto& j : jobs) {
      if (seen >= half) {
        second.push_back(j);
      } else if (seen + j.n <= half) {
        first.push_back(j);
      } else {
        std::size_t k = half - seen;
        first.push_back({j.dst, j.src, k});
        second.push_back({j.dst + k, j.src + k, j.n - k});
      }
      seen += j.n;
    }
    const bool streaming_first = round % 2 == 1;
    std::uint64_t t0 = now_ns();
    run_with(first, streaming_first);
    std::uint64_t t1 = now_ns();
    run_with(second, !streaming_first);
    std::uint64_t t2 = now_ns();
    std::uint64_t b1 = half, b2 = total - half;
    if (streaming_first)
      cal.record(b2, t2 - t1, b1, t1 - t0);
    else
      cal.record(b1, t1 - t0, b2, t2 - t1);
  }

 private:
  using batch = std::vector<std::vector<copy_job>>;

  void run_with(const std::vector<copy_job>& jobs, bool streaming) {
    std::size_t total = 0;
    for (const auto& j : jobs) total += j.n;
    if (threads_.empty() || total < parallel_threshold) {
      for (const auto& j : jobs) copy_bytes(j.dst, j.src, j.n, streaming);
      return;
    }
    // Equal shares of the bytes, each a list of (pieces of) jobs, in order.
    const std::size_t parts_n = threads_.size() + 1;
    std::vector<std::vector<copy_job>> parts(parts_n);
    const std::size_t share = (total + parts_n - 1) / parts_n;
    std::size_t part = 0, room = share;
    for (const auto& j : jobs) {
      std::size_t off = 0;
      while (off < j.n) {
        std::size_t n = std::min(room, j.n - off);
        parts[part].push_back({j.dst + off, j.src + off, n});
        off += n;
        room -= n;
        if (room == 0 && part + 1 < parts_n) {
          ++part;
          room = share;
        }
      }
    }
    std::lock_guard serial(run_lock_);  // one batch at a time
    {
      std::lock_guard g(m_);
      batch_ = &parts;
      streaming_ = streaming;
      next_ = 0;
      remaining_ = parts.size();
      ++epoch_;
    }
    work_.notify_all();
    work(parts, streaming);
    std::unique_lock lk(m_);
    // Wait until every part is copied and no helper still looks at this batch.
    done_.wait(lk, [&] { return remaining_ == 0 && active_ == 0; });
    batch_ = nullptr;
  }

  void work(const batch& parts, bool streaming) {
    std::size_t finished = 0;
    for (;;) {
      std::size_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= parts.size()) break;
      for (const auto& j : parts[i]) copy_bytes(j.dst, j.src, j.n, streaming);
      ++finished;
    }
    if (finished) {
      std::lock_guard g(m_);
      remaining_ -= finished;
      if (remaining_ == 0) done_.notify_all();
    }
  }

  void loop() {
    std::uint64_t seen = 0;
    for (;;) {
      const batch* b;
      bool streaming;
      {
        std::unique_lock lk(m_);
        work_.wait(lk, [&] { return stop_ || (batch_ && epoch_ != seen); });
        if (stop_) return;
        seen = epoch_;
        b = batch_;
        streaming = streaming_;
        ++active_;
      }
      work(*b, streaming);
      std::lock_guard g(m_);
      --active_;
      if (active_ == 0) done_.notify_all();
    }
  }

  std::mutex run_lock_;
  std::mutex m_;
  std::condition_variable work_, done_;
  const batch* batch_ = nullptr;
  bool streaming_ = false;
  std::atomic<std::size_t> next_{0};
  std::size_t remaining_ = 0;
  std::size_t active_ = 0;
  std::uint64_t epoch_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace

std::size_t default_copy_threads() noexcept {
  unsigned hw = std::thread::hardware_concurrency();
  return std::clamp<std::size_t>(hw == 0 ? 1 : hw, 1, 4);
}

copy_strategy_choice automatic_copy_strategy() {
  copy_strategy_choice c;
  if (auto forced = forced_by_environment(); forced && *forced != copy_strategy::automatic) {
    c.strategy = *forced;
    c.decided = true;
    c.reason = std::string(strategy_name(*forced)) + ": forced by SHMCKPT_COPY_STRATEGY";
    return c;
  }
  auto& cal = process_calibration();
  std::lock_guard g(cal.m);
  c.decided = cal.decided;
  c.strategy = cal.decided && cal.streaming ? copy_strategy::streaming : copy_strategy::memcpy;
  c.reason = cal.reason;
  if (cal.ns[0]) c.memcpy_bytes_per_second = 1e9 * double(cal.bytes[0]) / double(cal.ns[0]);
  if (cal.ns[1]) c.streaming_bytes_per_second = 1e9 * double(cal.bytes[1]) / double(cal.ns[1]);
  return c;
}

// One generation's buffers: a single arena in the segment holding every private tensor of the
// snapshot at a fixed offset, in tree order. One arena (not one block per tensor) keeps the
// destination contiguous, so copies of tensors that are also contiguous in the trainer's memory
// (a flat parameter buffer) merge into a few large copies, which run faster.
struct generation {
  std::shared_ptr<std::byte> arena;
  std::size_t arena_bytes = 0;
  std::vector<std::pair<std::string, std::size_t>> layout;  // (name, bytes) in tree order
  std::vector<std::size_t> offsets;                         // of each layout entry in the arena
  bool leased = false;
};

struct stager::impl : std::enable_shared_from_this<impl> {
  impl(checkpoint_process& p, stager_options o)
      : proc(p),
        opts(o),
        pool((opts.threads ? opts.threads : default_copy_threads()) - 1) {
    if (opts.generations == 0)
      throw_error(errc::invalid_argument, "stager_options::generations must be at least 1");
    check_environment();
    for (std::size_t i = 0; i < opts.generations; ++i)
      gens.push_back(std::make_shared<generation>());
  }

  checkpoint_process& proc;
  stager_options opts;
  copy_pool pool;

  mutable std::mutex m;
  std::condition_variable cv;
  std::vector<std::shared_ptr<generation>> gens;
  std::size_t next_gen = 0;
  bool closed = false;

  struct async_request {
    state_dict sd;
    std::promise<state_dict> snapshot;
    std::promise<void> done;
  };
  std::deque<async_request> queue;
  std::thread async_thread;

  // Leases the next free generation (round robin), waiting up to acquire_timeout.
  std::shared_ptr<generation> acquire() {
    std::unique_lock lk(m);
    auto free_index = [&]() -> std::optional<std::size_t> {
      for (std::size_t k = 0; k < gens.size(); ++k) {
        std::size_t i = (next_gen + k) % gens.size();
        if (!gens[i]->leased) return i;
      }
      return std::nullopt;
    };
    std::optional<std::size_t> i;
    // Not woken by close(): requests queued before close() are still served.
    bool ok = cv.wait_for(lk, opts.acquire_timeout, [&] { return (i = free_index()).has_value(); });
    if (!ok)
      throw error(errc::timeout,
                  "all " + std::to_string(gens.size()) +
                      " staging generations are still in use after waiting " +
                      std::to_string(opts.acquire_timeout.count()) +
                      " ms: earlier checkpoints have not become durable (slow storage?); wait "
                      "for their futures, raise acquire_timeout, or add generations");
    next_gen = (*i + 1) % gens.size();
    gens[*i]->leased = true;
    return gens[*i];
  }

  state_dict stage(const state_dict& sd) {
    auto gen = acquire();
    // The lease: when the last snapshot tensor drops it, the generation is free again. It also
    // keeps the generation's buffers alive should the stager close first.
    std::weak_ptr<impl> self = shared_from_this();
    std::shared_ptr<const void> lease(gen.get(), [self, gen](const generation*) {
      if (auto s = self.lock()) {
        std::lock_guard g(s->m);
        gen->leased = false;
        s->cv.notify_all();
      }
    });
    // Pass 1: the private tensors, by name and size, in tree order.
    std::vector<const tensor*> privs;
    std::vector<std::pair<std::string, std::size_t>> layout;
    for (const auto& [k, v] : sd) collect(v, k, privs, layout);
    if (layout != gen->layout) {
      // New or reshaped tensors: lay the arena out afresh (64-byte aligned entries).
      gen->arena.reset();  // return the old arena first so its room can be reused
      gen->offsets.clear();
      std::size_t total = 0;
      for (const auto& [name, n] : layout) {
        gen->offsets.push_back(total);
        total += (n + 63) / 64 * 64;
      }
      gen->layout.clear();
      gen->arena = proc.allocate(total);
      gen->arena_bytes = total;
      gen->layout = std::move(layout);
    }
    // Copy plan, merging neighbours that are contiguous on both sides.
    std::vector<copy_job> jobs;
    for (std::size_t i = 0; i < privs.size(); ++i) {
      std::byte* dst = gen->arena.get() + gen->offsets[i];
      const std::byte* src = privs[i]->data();
      std::size_t n = privs[i]->nbytes();
      if (n == 0) continue;
      if (!jobs.empty() && jobs.back().dst + jobs.back().n == dst &&
          jobs.back().src + jobs.back().n == src)
        jobs.back().n += n;
      else
        jobs.push_back({dst, src, n});
    }
    // Pass 2: the snapshot tree, private tensors replaced by their arena views, same order.
    std::size_t next = 0;
    state_dict out = map_tensors(sd, [&](const tensor& t) {
      if (proc.is_shared(t)) return t;
      std::byte* at = gen->arena.get() + gen->offsets[next++];
      return tensor(t.type(), t.shape(), {at, t.nbytes()}, lease);
    });
    // Every tensor of the snapshot is in the segment now: write() need not walk it again.
    detail::dict_placement::set(out, detail::process_placement::segment_number(proc));
    pool.run(jobs, opts.copy);
    return out;
  }

  void collect(const value& v, const std::string& name, std::vector<const tensor*>& privs,
               std::vector<std::pair<std::string, std::size_t>>& layout) {
    switch (v.type()) {
      case kind::tensor:
        if (!proc.is_shared(v.as_tensor())) {  // tensors already in the segment: zero-copy
          privs.push_back(&v.as_tensor());
          layout.emplace_back(name, v.as_tensor().nbytes());
        }
        break;
      case kind::dict:
        for (const auto& [k, e] : v.as_dict()) collect(e, name + "." + k, privs, layout);
        break;
      case kind::list:
      case kind::tuple: {
        const auto& l = v.as_sequence();
        for (std::size_t i = 0; i < l.size(); ++i)
          collect(l[i], name + "." + std::to_string(i), privs, layout);
        break;
      }
      default: break;
    }
  }

  void async_loop() {
    for (;;) {
      async_request r;
      {
        std::unique_lock lk(m);
        cv.wait(lk, [&] { return !queue.empty() || closed; });
        if (queue.empty()) return;
        r = std::move(queue.front());
        queue.pop_front();
      }
      try {
        auto staged = stage(r.sd);
        r.sd = {};
        r.snapshot.set_value(std::move(staged));
        r.done.set_value();
      } catch (...) {
        r.snapshot.set_exception(std::current_exception());
        r.done.set_exception(std::current_exception());
      }
    }
  }
};

stager::stager(checkpoint_process& process, stager_options options)
    : impl_(std::make_shared<impl>(process, options)) {}

stager::~stager() { close(); }

state_dict stager::stage(const state_dict& sd) {
  check_nesting_depth(sd);  // before a generation is leased; the walks below recurse per level
  {
    std::lock_guard g(impl_->m);
    if (impl_->closed) throw error(errc::closed, "stager was closed");
  }
  return impl_->stage(sd);
}

stager::staging stager::stage_async(state_dict sd) {
  check_nesting_depth(sd);  // in the caller, not on the copy thread
  impl::async_request r;
  r.sd = std::move(sd);
  staging out{r.snapshot.get_future().share(), r.done.get_future().share()};
  std::lock_guard g(impl_->m);
  if (impl_->closed) throw error(errc::closed, "stager was closed");
  if (!impl_->async_thread.joinable())
    impl_->async_thread = std::thread([i = impl_.get()] { i->async_loop(); });
  impl_->queue.push_back(std::move(r));
  impl_->cv.notify_all();
  return out;
}

std::size_t stager::generations_in_use() const {
  std::lock_guard g(impl_->m);
  std::size_t n = 0;
  for (const auto& gen : impl_->gens) n += gen->leased;
  return n;
}

std::size_t stager::pooled_bytes() const {
  std::lock_guard g(impl_->m);
  std::size_t n = 0;
  for (const auto& gen : impl_->gens)
    n += gen->arena_bytes;
  return n;
}

void stager::close() noexcept {
  if (!impl_) return;
  std::thread t;
  {
    std::lock_guard g(impl_->m);
    if (impl_->closed && !impl_->async_thread.joinable()) return;
    impl_->closed = true;  // the async thread drains the queue, then exits
    impl_->cv.notify_all();
    t = std::move(impl_->async_thread);
  }
  if (t.joinable()) t.join();
  std::lock_guard g(impl_->m);
  // Leased generations stay alive through their leases until their snapshots are gone.
  for (auto& gen : impl_->gens)
    if (!gen->leased) {
      gen->arena.reset();
      gen->arena_bytes = 0;
      gen->layout.clear();
      gen->offsets.clear();
    }
}

}  // namespace shmckpt
