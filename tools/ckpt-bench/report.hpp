// report — what a figure is, how it is judged against its target, and how the run is printed
// (a Markdown table, or one JSON document; docs/benchmarks.md quotes both, and the smoke test
// reads the JSON field names).
//
// A figure's fixed parts (id, what is measured, unit, baseline, target, status rule) are a
// figure_spec in the table of figures.cpp; a section measures, fills a `reading` and calls
// make_figure, which derives the ratio, the target text and the status the same way for all.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "stats.hpp"

namespace ckpt_bench {

enum class unit { seconds, bytes_per_second, bytes, ratio, flops };
enum class status { met, missed, info, skipped };

const char* unit_name(unit u);
const char* status_name(status s);

/// How a figure's status follows from its numbers.
enum class rule {
  info,            ///< no target: shown for information
  value_at_most,   ///< met when the value's median is at most the bound (in the figure's unit)
  ratio_at_least,  ///< met when value median / baseline median is at least the bound
  ratio_at_most,   ///< met when value median / baseline median is at most the bound
};

/// One figure's description: everything about it that does not come from the measurement.
struct figure_spec {
  const char* id;    ///< stable identifier (the smoke test checks every one appears)
  const char* name;  ///< what is measured; "{}" stands for the reading's detail
  unit u = unit::seconds;
  const char* baseline = nullptr;  ///< what it is measured against ("{}": baseline_detail)
  rule judge = rule::info;
  double bound = 0;              ///< the rule's limit; 0: given by the reading (depends on the run)
  const char* target = nullptr;  ///< as shown, "{bound}" replaced; nullptr: "<= 2x" from the rule
};

/// What a section measured for one figure.
struct reading {
  stats value;
  stats baseline;
  std::uint64_t size = 0;       ///< state-dict bytes (0: not size-dependent)
  std::uint64_t tensors = 0;    ///< tensor count (0: not applicable)
  std::string detail;           ///< replaces "{}" in the spec's name
  std::string baseline_detail;  ///< replaces "{}" in the spec's baseline
  std::string id_suffix;        ///< appended to the id ("@<variant>")
  double bound = 0;             ///< the bound where the spec leaves it to the run
  std::string note;
};

struct figure {
  std::string id;
  std::string name;
  std::uint64_t size = 0;
  std::uint64_t tensors = 0;
  unit u = unit::seconds;
  stats value;
  std::string baseline_label;  // empty: no baseline
  stats baseline;
  double ratio = 0;  // value / baseline medians
  bool has_ratio = false;
  std::string target;
  status st = status::info;
  std::string note;
};

/// The figure of `spec` from `r`: the ratio wherever both value and baseline were measured, the
/// target text, and the status by the spec's rule.
figure make_figure(const figure_spec& spec, const reading& r);
/// As make_figure, but not judged: status skipped, no ratio, `why` as the note.
figure skipped_figure(const figure_spec& spec, const reading& r, std::string why);

/// "12.3 µs", "1.05 GB/s", "64.0 MiB", "0.93x", "2.10 GFLOP/s".
std::string fmt(double v, unit u);
/// "median [min–max]", the median alone for one sample, "—" for none.
std::string fmt_stats(const stats& s, unit u);
/// "64 MiB", "1 GiB", "4096 B".
std::string size_label(std::uint64_t bytes);

/// The run as a whole, for either output.
struct run_summary {
  std::string command;
  std::string machine;
  int reps = 0;
  std::vector<std::uint64_t> sizes;
  double wall_seconds = 0;
};

void print_table(const std::vector<figure>& figs, const run_summary& run);
void print_json(const std::vector<figure>& figs, const run_summary& run);

}  // namespace ckpt_bench
