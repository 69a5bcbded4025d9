// section_latency — the figures of time, not throughput: child start-up, the PING-equivalent
// round trip, write() return and hand-off (through the bench-stamp writer, main.cpp), and how
// flat write() return stays across sizes.
#include <cstring>
#include <future>
#include <string>
#include <vector>

#include "bench.hpp"
#include "figures.hpp"
#include "shmckpt/checkpoint_process.hpp"

namespace ckpt_bench {

using namespace shmckpt;

namespace {

void append(std::vector<double>& to, const std::vector<double>& from) {
  to.insert(to.end(), from.begin(), from.end());
}

std::string preempted_note(int preempted, int n) {
  return std::to_string(preempted) + " of " + std::to_string(n) + " calls preempted";
}

// One timed write() whose child stamps `stamp` when it holds the validated descriptor.
struct timed_write {
  double returned = 0;  // seconds until write() returned
  double handed = 0;    // seconds until the child held the descriptor
  bool preempted = false;
};

template <class Arg>
timed_write write_once(checkpoint_process& p, Arg&& arg, const tensor& stamp) {
  timed_write w;
  long cs = involuntary_switches();
  auto t0 = mono_ns();
  auto fut = p.write(std::forward<Arg>(arg), "unused");
  auto t1 = mono_ns();
  w.preempted = involuntary_switches() != cs;
  fut.get();
  std::int64_t stamped;
  std::memcpy(&stamped, stamp.data(), sizeof stamped);
  w.returned = static_cast<double>(t1 - t0) * 1e-9;
  w.handed = static_cast<double>(stamped - t0) * 1e-9;
  return w;
}

}  // namespace

void run_startup(bench& b) {
  b.progress("child start-up");
  std::vector<double> t;
  interleave(std::max(b.reps(), 3), {{&t, [&](int) {
                                        auto t0 = mono_ns();
                                        checkpoint_process p(b.process_opts(4 * MiB, false));
                                        p.wait_ready();
                                        double ready = seconds_since(t0);
                                        p.close();
                                        return ready;
                                      }}});
  b.add(figures::startup, {.value = summarize(t)});
}

// checkpoint_process has no public ping; an empty WRITE to the bench-stamp writer is the same
// round trip through every thread and the child's request loop.
void run_ping(bench& b) {
  b.progress("PING-equivalent round trip");
  checkpoint_process p(b.process_opts(4 * MiB, true));
  p.wait_ready();
  std::vector<double> shm, raw;
  const int n = b.cfg().latency_samples;
  for (int i = 0; i < 20; ++i) p.write(state_dict{}, "unused").get();  // warm up
  for (int batch = 0; batch < 4; ++batch) {
    append(raw, b.raw_rtts(n / 4));
    for (int i = 0; i < n / 4; ++i) {
      auto t0 = mono_ns();
      p.write(state_dict{}, "unused").get();
      shm.push_back(seconds_since(t0));
    }
  }
  p.close();
  b.add(figures::ping_round_trip, {.value = summarize(shm), .baseline = summarize(raw)});
}

void run_handoff(bench& b, std::uint64_t s) {
  const config& c = b.cfg();
  for (std::uint64_t count : {c.few_tensors, c.many_tensors}) {
    b.progress("write() return and hand-off: " + size_label(s) + " in " + std::to_string(count) +
               " tensors");
    checkpoint_process p(b.process_opts(segment_for(s, count), true));
    p.wait_ready();
    state_dict sd = make_shared_state(p, s, count);
    tensor stamp = p.make_tensor(dtype::i64, {1});
    sd.insert_or_assign("__stamp", stamp);
    // Every tensor is in the segment: one walk records it on the tree (as a stager snapshot
    // carries it), so each write() below hands it over without walking it.
    state_dict unmarked = sd;
    p.mark_shared(sd);
    const int n = c.smoke ? 2 : std::max(b.reps() * 3, 11);
    std::vector<double> ret, hand, ret_future, hand_future, ret_unmarked, raw;
    int preempted = 0, preempted_future = 0;
    for (int i = 0; i < n + 1; ++i) {  // the first is a warm-up
      // write(state_dict): the caller moves a ready copy in (the copy is made before timing).
      state_dict arg = sd;
      timed_write w = write_once(p, std::move(arg), stamp);
      // write(shared_future<state_dict>): returns before the descriptor is even encoded.
      std::promise<state_dict> ready;
      ready.set_value(sd);
      timed_write wf = write_once(p, ready.get_future().share(), stamp);
      // write(state_dict) of the same tree without the mark: walked in the caller.
      arg = unmarked;
      timed_write wu = write_once(p, std::move(arg), stamp);
      append(raw, b.raw_rtts(20));
      if (i == 0) continue;
      ret.push_back(w.returned);
      hand.push_back(w.handed);
      preempted += w.preempted;
      ret_future.push_back(wf.returned);
      hand_future.push_back(wf.handed);
      preempted_future += wf.preempted;
      ret_unmarked.push_back(wu.returned);
    }
    sd = {};
    unmarked = {};
    p.close();
    const stats rtt = summarize(raw);

    reading r{.value = summarize(ret), .size = s, .tensors = count};
    b.carried.write_return[{s, count}] = r.value;
    r.note = preempted_note(preempted, n);
    b.add(figures::write_return, r);
    r.value = summarize(ret_unmarked);
    r.note.clear();
    b.add(figures::write_return_unmarked, r);
    r.value = summarize(ret_future);
    r.note =
        "defers sharing and encoding to the submit thread; " + preempted_note(preempted_future, n);
    b.add(figures::write_return_future, r);

    r = {.value = summarize(hand), .baseline = rtt, .size = s, .tensors = count};
    r.bound = 3 * rtt.median + 1e-6 * static_cast<double>(count);
    b.add(figures::handoff, r);
    r.value = summarize(hand_future);
    b.add(figures::handoff_future, r);
  }
}

void run_flatness(bench& b) {
  const config& c = b.cfg();
  const std::uint64_t lo = c.sizes.front(), hi = c.sizes.back();
  for (std::uint64_t count : {c.few_tensors, c.many_tensors}) {
    auto big = b.carried.write_return.find({hi, count});
    auto small = b.carried.write_return.find({lo, count});
    if (big == b.carried.write_return.end() || small == b.carried.write_return.end()) continue;
    b.add(figures::write_return_flatness, {.value = big->second,
                                           .baseline = small->second,
                                           .size = hi,
                                           .tensors = count,
                                           .detail = size_label(hi) + " vs " + size_label(lo),
                                           .baseline_detail = size_label(lo)});
  }
}

}  // namespace ckpt_bench
