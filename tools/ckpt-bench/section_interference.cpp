// section_interference — the trainer's own speed while the child persists.
//
// A compute-bound loop stands in for the trainer (compute_load.hpp): its rate while the child
// persists a state dict already in shared memory (so no staging copy is involved) against its
// rate with nothing else running, on one thread (a core left free for the child) and on every
// core; and the persist's own time with and without that load. Idle windows, lone persists and
// loaded persists alternate within each repetition, and the writer set-ups (--variants) within
// each repetition too, so that drift hits all of them alike.
#include <algorithm>
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
  std::vector<double> idle, busy, alone, loaded, cpu;
};

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

// One repetition of one set-up: a lone persist, an idle window as long, a loaded persist.
void measure_once(bench& b, setup& u, unsigned threads, int r) {
  fs::path dir = b.scratch() / ("interference-" + std::to_string(r));
  double cpu0 = proc_cpu_seconds(u.p->child_pid());
  auto t0 = mono_ns();
  u.p->write(u.sd, dir).get();
  double lone = seconds_since(t0);
  u.alone.push_back(lone);
  u.cpu.push_back(proc_cpu_seconds(u.p->child_pid()) - cpu0);
  fs::remove_all(dir);
  {
    // The idle window lasts as long as a persist, so both rates see the same turbo and thermal
    // state. Sleeping here is the measurement window, not a synchronisation.
    compute_load load(threads);
    std::this_thread::sleep_for(std::chrono::duration<double>(std::max(lone, 0.05)));
    u.idle.push_back(load.stop() * compute_load::flops_per_block);
  }
  {
    compute_load load(threads);
    auto t1 = mono_ns();
    u.p->write(u.sd, dir).get();
    u.loaded.push_back(seconds_since(t1));
    u.busy.push_back(load.stop() * compute_load::flops_per_block);
  }
  fs::remove_all(dir);
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
