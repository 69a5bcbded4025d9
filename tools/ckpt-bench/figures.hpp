// figures — the description of every figure ckpt-bench reports, in one table (figures.cpp).
// docs/benchmarks.md explains how each is taken; smoke_check.cmake lists the ids it expects.
#pragma once

#include "report.hpp"

namespace ckpt_bench::figures {

// section "startup"
extern const figure_spec startup;
// section "ping"
extern const figure_spec ping_round_trip;
// section "handoff"
extern const figure_spec write_return, write_return_unmarked, write_return_future;
extern const figure_spec handoff, handoff_future, write_return_flatness;
// section "staging"
extern const figure_spec staging_steady, copy_strategy, staging_first, segment_create;
// section "persist"
extern const figure_spec persist, persist_buffered_writer, persist_file_only, child_peak_rss;
// section "e2e"
extern const figure_spec end_to_end_save;
// section "load"
extern const figure_spec load_page_cache, load_view_touch, load_cold;
// section "open"
extern const figure_spec open_many_tensors;
// section "memory"
extern const figure_spec parent_extra_memory;
// section "interference"
extern const figure_spec interference_one_thread, interference_all_cores;
extern const figure_spec persist_under_load_one_thread, persist_under_load_all_cores;
extern const figure_spec interference_control;
extern const figure_spec child_cpu_per_persist;

}  // namespace ckpt_bench::figures
