// section_interference — the trainer's own speed while the child persists.
//
// A compute-bound loop stands in for the trainer (compute_load.hpp): its rate while the child
// persists a state dict already in shared memory (so no staging copy is involved) against its
// rate with nothing else running, on one thread (a core left free for the child) and on every
// core; and the persist's own time with and without that load. Windows of lone persists, of
// persists beside the load and of the load alone alternate within each repetition, and the
// writer set-ups (--variants) within each repetition too, so that drift hits all of them alike.
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench.hpp"
#include "compute_load.hpp"
#include "figures.hpp"
#include "machine.hpp"

namespace ckpt_bench {

namespace fs = std::filesystem;
using namespace shmckpt;

namespace {

// One writer set-up with its child, its state dict and its samples.
struct setup {
  writer_variant v;
  std::unique_ptr<checkpoint_process> p;
  state_dict sd;
  int per_window = 1;  // persists back to back in one window
  std::vector<double> idle, busy, alone, loaded, cpu;
  std::vector<double> control;  // a second idle window against the first, per repetition
};

// Each window holds whole persists back to back and lasts at least this long: a window of one
// 256 MiB persist (about 0.1 s) let the trainer's own rate, which the host moves by tens of per
// cent from one tenth of a second to the next, decide the figure.
constexpr double min_window_s = 0.5;

setup start_setup(bench& b, const std::string& name, std::uint64_t s) {
  setup u;
  u.v = parse_variant(name);
  auto o = b.process_opts(segment_for(s, b.cfg().few_tensors), false);
  for (const auto& [k, val] : u.v.writer_args) o.writer_args[k] = val;
  if (name != "default") o.priority = u.v.priority;
  u.p = std::make_unique<checkpoint_process>(o);
  u.p->wait_ready();
  u.sd = make_shared_state(*u.p, s, b.cfg().few_tensors);
  return u;
}

// Persists `u.sd` `n` times back to back into fresh directories; the time of each goes to `out`.
void persist_window(bench& b, setup& u, int n, const std::string& tag, std::vector<double>& out) {
  for (int k = 0; k < n; ++k) {
    fs::path dir = b.scratch() / ("interference-" + tag + "-" + std::to_string(k));
    auto t0 = mono_ns();
    u.p->write(u.sd, dir).get();
    out.push_back(seconds_since(t0));
  }
  for (int k = 0; k < n; ++k)
    fs::remove_all(b.scratch() / ("interference-" + tag + "-" + std::to_string(k)));
}

// Sizes the windows of `u` from one warm-up persist (not recorded).
void size_windows(bench& b, setup& u) {
  std::vector<double> warm;
  persist_window(b, u, 1, "warm-up", warm);
  u.per_window =
      b.cfg().smoke ? 1 : std::clamp(static_cast<int>(std::ceil(min_window_s / warm[0])), 1, 16);
}

// One repetition of one set-up: a window of lone persists, a window of persists beside the
// trainer load, and an idle window of the trainer load as long as the loaded one.
void measure_once(bench& b, setup& u, unsigned threads, int r) {
  const std::string tag = std::to_string(r);
  double cpu0 = proc_cpu_seconds(u.p->child_pid());
  persist_window(b, u, u.per_window, tag, u.alone);
  u.cpu.push_back((proc_cpu_seconds(u.p->child_pid()) - cpu0) / u.per_window);
  double window;
  {
    compute_load load(threads);
    auto t1 = mono_ns();
    persist_window(b, u, u.per_window, tag, u.loaded);
    window = seconds_since(t1);
    u.busy.push_back(load.stop() * compute_load::flops_per_block);
  }
  {
    // The idle window lasts as long as the loaded one, right after it, so both rates see the
    // same host and the same turbo and thermal state. Sleeping here is the measurement window,
    // not a synchronisation.
    compute_load load(threads);
    std::this_thread::sleep_for(std::chrono::duration<double>(window));
    u.idle.push_back(load.stop() * compute_load::flops_per_block);
  }
  if (u.v.name != "default") return;
  {
    // The A/A control: one more idle window as long, against the one just before it.
    compute_load load(threads);
    std::this_thread::sleep_for(std::chrono::duration<double>(window));
    const double rate = load.stop() * compute_load::flops_per_block;
    // A window too short for the loop to run at all (a smoke run on a busy machine) has no rate.
    if (u.idle.back() > 0) u.control.push_back(rate / u.idle.back());
  }
}

void report(bench& b, const setup& u, unsigned threads, unsigned cores, bool first_load,
            std::uint64_t s) {
  const bool main_variant = u.v.name == "default";
  const std::string label = main_variant ? "" : " [" + u.v.name + "]";
  const std::string thread_text = std::to_string(threads) + (threads == 1 ? " thread" : " threads");
  const bool core_free = threads < cores;
  reading r{
      .size = s, .tensors = b.cfg().few_tensors, .id_suffix = main_variant ? "" : "@" + u.v.name};

  r.value = summarize(u.busy);
  r.baseline = summarize(u.idle);
  r.detail = thread_text + (core_free ? " (a core left free)" : " (every core busy)") + label;
  r.bound = core_free ? 0.95 : 0.90;
  b.add(threads == 1 ? figures::interference_one_thread : figures::interference_all_cores, r);

  r.value = summarize(u.loaded);
  r.baseline = summarize(u.alone);
  r.detail = thread_text + label;
  b.add(
      threads == 1 ? figures::persist_under_load_one_thread : figures::persist_under_load_all_cores,
      r);

  if (!u.control.empty())
    b.add(figures::interference_control, {.value = summarize(u.control),
                                          .size = s,
                                          .tensors = b.cfg().few_tensors,
                                          .detail = thread_text,
                                          .id_suffix = threads == 1 ? "" : "@all_cores"});

  if (!first_load) return;
  char note[128];
  std::snprintf(note, sizeof note, "%.0f%% of the lone persist's wall time",
                100.0 * summarize(u.cpu).median / summarize(u.alone).median);
  b.add(figures::child_cpu_per_persist, {.value = summarize(u.cpu),
                                         .size = s,
                                         .tensors = b.cfg().few_tensors,
                                         .detail = label,
                                         .id_suffix = r.id_suffix,
                                         .note = note});
}

}  // namespace

void run_interference(bench& b, std::uint64_t s) {
  b.progress("interference: " + size_label(s));
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  std::vector<unsigned> loads{1};
  if (cores > 1) loads.push_back(cores);
  for (unsigned threads : loads) {
    std::vector<setup> setups;
    for (const auto& name : b.cfg().variants) setups.push_back(start_setup(b, name, s));
    for (auto& u : setups) size_windows(b, u);
    for (int r = 0; r < b.reps(); ++r)
      for (auto& u : setups) measure_once(b, u, threads, r);
    for (const auto& u : setups) report(b, u, threads, cores, threads == loads.front(), s);
    for (auto& u : setups) {
      u.sd = {};
      u.p->close();
    }
  }
}

}  // namespace ckpt_bench
