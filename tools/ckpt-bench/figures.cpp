// figures.cpp — the table: per figure, what is measured, in which unit, against what, and the
// rule that decides its status. The sections (section_*.cpp) supply only the numbers and the
// run-dependent details ("{}" in a name or baseline, a bound left at 0 here).
#include "figures.hpp"

namespace ckpt_bench::figures {

using enum unit;
using enum rule;

// ---- latency (section_latency.cpp) ----

const figure_spec startup{.id = "startup",
                          .name = "child start-up: spawn to ready (shmckpt-worker, 4 MiB segment)",
                          .judge = value_at_most,
                          .bound = 20e-3,
                          .target = "<= 20 ms (reference: 1.2-1.8 s)"};

const figure_spec ping_round_trip{
    .id = "ping_round_trip",
    .name = "PING round trip (empty WRITE to a null writer: caller→child→caller)",
    .baseline = "raw unix-socket round trip, 64 B, two processes",
    .judge = ratio_at_most,
    .bound = 2};

const figure_spec write_return{.id = "write_return",
                               .name = "write() return, state dict already shared",
                               .judge = value_at_most,
                               .bound = 50e-6,
                               .target = "<= 50 µs"};

const figure_spec write_return_unmarked{
    .id = "write_return_unmarked",
    .name = "write() return, already shared but not marked (mark_shared not called)",
    .target = "(no target: the caller walks the tree once)"};

const figure_spec write_return_future{
    .id = "write_return_future",
    .name = "write(shared_future) return, state dict already shared",
    .target = "(same target; alternative overload)"};

// Bound: 3 raw round trips + 1 µs per tensor, from this run's round trips.
const figure_spec handoff{.id = "handoff",
                          .name = "hand-off: write() to child holding a validated descriptor",
                          .baseline = "raw unix-socket round trip",
                          .judge = value_at_most,
                          .target = "<= 3 RTT + 1 µs/tensor = {bound}"};

const figure_spec handoff_future{.id = "handoff_future",
                                 .name = "hand-off via write(shared_future)",
                                 .baseline = "raw unix-socket round trip",
                                 .target = "(same target; alternative overload)"};

// Name "{}": "<largest size> vs <smallest size>"; baseline "{}": the smallest size.
const figure_spec write_return_flatness{.id = "write_return_flatness",
                                        .name = "write() return, {}",
                                        .baseline = "write() return at {}",
                                        .judge = ratio_at_most,
                                        .bound = 1.5,
                                        .target = "<= 1.5x (flat in bytes)"};

// ---- staging (section_staging.cpp); "{}" in a baseline: the copy-thread count ----

const figure_spec staging_steady{
    .id = "staging_steady",
    .name = "staging throughput, steady state (reused buffers), {} threads",
    .u = bytes_per_second,
    .baseline = "plain memcpy, {} threads, into faulted memory",
    .judge = ratio_at_least,
    .bound = 0.9};

// Name "{}": ": streaming" or ": memcpy" once decided.
const figure_spec copy_strategy{
    .id = "copy_strategy",
    .name = "staging copy strategy (automatic, chosen once per process){}",
    .u = bytes_per_second,
    .baseline = "memcpy, same copies",
    .target = "(the faster of the two, streaming only when >= 1.05x)"};

const figure_spec staging_first{
    .id = "staging_first",
    .name = "staging throughput, first checkpoint (new process, new pool)",
    .u = bytes_per_second,
    .baseline = "memcpy, {} threads, into fresh shared memory",
    .judge = ratio_at_least,
    .bound = 0.9};

const figure_spec segment_create{
    .id = "segment_create",
    .name = "checkpoint_process construction incl. prefaulted segment (off the save path)",
    .target = "(where the first-touch cost went)"};

// ---- persist (section_persist.cpp) ----

const figure_spec persist{
    .id = "persist",
    .name = "persist throughput (write() to durable, default writer, checksums on)",
    .u = bytes_per_second,
    .baseline = "raw durable write of the same shared bytes, best of buffered+fsync and O_DIRECT",
    .judge = ratio_at_least,
    .bound = 0.9};

const figure_spec persist_buffered_writer{
    .id = "persist_buffered_writer",
    .name = "persist throughput, default writer with io=buffered (the page-cache path)",
    .u = bytes_per_second,
    .baseline = "raw durable write of the same shared bytes, best of buffered+fsync and O_DIRECT",
    .target = "(the previous default, for comparison)"};

const figure_spec persist_file_only{
    .id = "persist_file_only",
    .name = "persist throughput, the file alone (write_safetensors of the same shared tensors in "
            "this process: no child, no manifest)",
    .u = bytes_per_second,
    .baseline = "raw durable write of the same shared bytes, best of buffered+fsync and O_DIRECT",
    .target = "(the writer's share of a persist)"};

const figure_spec child_peak_rss{
    .id = "child_peak_rss",
    .name = "child peak RSS while writing (own memory: RssAnon + RssFile, sampled 1 ms)",
    .u = bytes,
    .judge = value_at_most,
    .bound = 64.0 * MiB,
    .target = "<= 64 MiB"};

// ---- save through async_checkpointer (section_save.cpp) ----

const figure_spec end_to_end_save{
    .id = "end_to_end_save",
    .name = "end-to-end save, private memory to durable (async_checkpointer)",
    .baseline = "memcpy time + raw durable write time (medians above)",
    .judge = ratio_at_most,
    .bound = 1.15};

// Bound: 5% of the staged bytes + 16 MiB.
const figure_spec parent_extra_memory{
    .id = "parent_extra_memory",
    .name = "parent extra memory beyond the staged bytes (peak RSS growth − staged bytes)",
    .u = bytes,
    .judge = value_at_most,
    .target = "<= 5% + 16 MiB = {bound}"};

// ---- load (section_load.cpp) ----

const figure_spec load_page_cache{.id = "load_page_cache",
                                  .name = "load, full read from page cache (read(copy=true))",
                                  .u = bytes_per_second,
                                  .baseline = "read() of the same file, one new[] per tensor",
                                  .judge = ratio_at_least,
                                  .bound = 0.9};

// Shown beside load_page_cache, under its target but not judged by it.
const figure_spec load_view_touch{
    .id = "load_view_touch",
    .name = "load from page cache, default mapped view, every byte read by the caller",
    .u = bytes_per_second,
    .baseline = "read() of the same file, one new[] per tensor",
    .target = ">= 0.9x"};

const figure_spec load_cold{.id = "load_cold",
                            .name = "load from disk, cold cache (read(copy=true))",
                            .u = bytes_per_second,
                            .baseline = "read() of the same file, one new[] per tensor, cold cache",
                            .judge = ratio_at_least,
                            .bound = 0.9};

const figure_spec open_many_tensors{
    .id = "open_many_tensors",
    .name = "open a checkpoint (header parsed, tree rebuilt, tensors mapped)",
    .judge = value_at_most,
    .bound = 50e-3,
    .target = "<= 50 ms"};

// ---- interference (section_interference.cpp) ----
// Name "{}": "<n> thread(s)", for the compute rate whether a core is left free, and
// " [<variant>]" for a non-default writer set-up (whose ids end in "@<variant>"). The compute
// rate's bound: 0.95 with a core left free, else 0.90. One thread and every core differ only in
// the id.

namespace {

constexpr figure_spec trainer_compute(const char* id) {
  return {.id = id,
          .name = "trainer compute while the child persists, {}",
          .u = flops,
          .baseline = "the same loop with nothing else running",
          .judge = ratio_at_least};
}

constexpr figure_spec persist_under_load(const char* id) {
  return {.id = id,
          .name = "persist time beside that trainer load, {}",
          .baseline = "the same persist with no trainer load",
          .judge = ratio_at_most,
          .bound = 1.5};
}

}  // namespace

const figure_spec interference_one_thread = trainer_compute("interference_one_thread");
const figure_spec interference_all_cores = trainer_compute("interference_all_cores");
const figure_spec persist_under_load_one_thread =
    persist_under_load("persist_under_load_one_thread");
const figure_spec persist_under_load_all_cores = persist_under_load("persist_under_load_all_cores");

const figure_spec interference_control{
    .id = "interference_control",
    .name = "trainer compute in an idle window / in the idle window before it (A/A control), {}",
    .u = ratio,
    .target = "(the spread two equal windows show on this machine: the resolution of the two "
              "rows above)"};

const figure_spec child_cpu_per_persist{
    .id = "child_cpu_per_persist",
    .name = "checkpoint child CPU time (user + system) per lone persist{}",
    .target = "(what the child takes from the trainer's cores; 10 ms ticks)"};

}  // namespace ckpt_bench::figures
