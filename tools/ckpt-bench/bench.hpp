// bench — one run of ckpt-bench: the settings, the figures so far, what one section measures for
// another, and the sections themselves (section_*.cpp), called by run() in a fixed order.
//
// A section measures its shmckpt path and that path's baseline in interleaved repetitions
// (stats.hpp: interleave), fills a `reading` per figure and adds it under the figure's
// description (figures.cpp), which decides the target and the status.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "baselines.hpp"
#include "config.hpp"
#include "report.hpp"
#include "state.hpp"

namespace ckpt_bench {

class bench {
 public:
  bench(config c, echo_peer& echo);

  /// Runs every section `config::only` selects, for every size.
  void run();
  const std::vector<figure>& figures() const { return figs_; }

  // ---- for the sections ----
  const config& cfg() const { return c_; }
  int reps() const { return c_.reps; }
  /// Copy threads of the stager and of the memcpy baselines.
  std::size_t threads() const { return threads_; }
  /// The private scratch directory (removed by main on exit).
  const std::filesystem::path& scratch() const { return c_.dir; }
  void progress(const std::string& what) const;
  /// `segment` bytes; `stamp`: this executable as the child, with the bench-stamp writer.
  shmckpt::checkpoint_process_options process_opts(std::size_t segment, bool stamp) const;
  /// `n` raw unix-socket round trips.
  std::vector<double> raw_rtts(int n);

  void add(figure f) { figs_.push_back(std::move(f)); }
  void add(const figure_spec& spec, const reading& r) { add(make_figure(spec, r)); }

  /// What a section leaves for a later one (sections run in run()'s order).
  struct carried_results {
    /// write() return per (size, tensors): handoff → flatness.
    std::map<std::pair<std::uint64_t, std::uint64_t>, stats> write_return;
    /// Median memcpy seconds per size: staging → end-to-end.
    std::map<std::uint64_t, double> memcpy_time;
    /// Median best raw durable write seconds per size: persist → end-to-end.
    std::map<std::uint64_t, double> raw_write_time;
    /// A checkpoint file per size: persist → load.
    std::map<std::uint64_t, std::filesystem::path> persisted;
    /// Whether copy_strategy has been reported (once per run).
    bool strategy_reported = false;
  } carried;

 private:
  config c_;
  echo_peer& echo_;
  std::size_t threads_ = 1;
  std::vector<figure> figs_;
};

// ---- the sections (the name --only selects them by is in brackets) ----

/// [startup] child start-up. (section_latency.cpp)
void run_startup(bench& b);
/// [ping] PING-equivalent round trip against the raw socket round trip.
void run_ping(bench& b);
/// [handoff] write() return and hand-off, few and many tensors, at size `s`.
void run_handoff(bench& b, std::uint64_t s);
/// write() return at the largest size against the smallest (after every handoff).
void run_flatness(bench& b);
/// [staging] steady state, the copy strategy, first checkpoint. (section_staging.cpp)
void run_staging(bench& b, std::uint64_t s, const private_state& priv);
/// [persist] default and buffered writer against raw durable writes; at the largest size the
/// child's peak RSS. Leaves a checkpoint for [load] and the raw time for [e2e].
/// (section_persist.cpp)
void run_persist(bench& b, std::uint64_t s, bool largest);
/// [e2e] async_checkpointer::save against memcpy + raw durable write. (section_save.cpp)
void run_end_to_end(bench& b, std::uint64_t s, const private_state& priv);
/// [memory] the parent's extra memory for one save.
void run_parent_memory(bench& b, std::uint64_t s, const private_state& priv);
/// [load] from page cache, and at the largest size cold. (section_load.cpp)
void run_load(bench& b, std::uint64_t s, bool largest);
/// [open] opening a checkpoint of many tensors.
void run_open_many(bench& b);
/// [interference] the trainer's compute rate and the persist time, each beside the other.
/// (section_interference.cpp)
void run_interference(bench& b, std::uint64_t s);

}  // namespace ckpt_bench
