// shmckpt/child_priority.hpp — how much of the machine the checkpoint child may take.
//
// The trainer sets these in checkpoint_process_options::priority (checkpoint_process.hpp), or in
// Python as the `child_nice`, `child_policy`, `child_io_class`, `child_io_level` and
// `child_cpus` keywords. They default to the trainer's own priority: lowering them was measured
// to slow persists down several times without a clear gain for the trainer (docs/benchmarks.md).
#pragma once

#include <vector>

namespace shmckpt {

/// The checkpoint child's CPU scheduling policy (sched(7)).
enum class child_cpu_policy {
  /// The trainer's own (normally SCHED_OTHER).
  inherit,
  /// SCHED_OTHER.
  normal,
  /// SCHED_BATCH: SCHED_OTHER for a throughput job, never favoured on wake-up, so it does not
  /// preempt the trainer's threads.
  batch,
  /// SCHED_IDLE: runs only on a core that would otherwise idle. A busy trainer on every core can
  /// then starve the write (the progress watchdog still sees it alive: it reports per chunk).
  idle,
};

/// The checkpoint child's I/O scheduling class (ioprio_set(2)); honoured by the bfq and
/// mq-deadline schedulers, ignored by `none`.
enum class child_io_class {
  /// The trainer's own.
  inherit,
  /// IOPRIO_CLASS_BE at `child_priority::io_level`.
  best_effort,
  /// IOPRIO_CLASS_IDLE: the disk serves the child only when nothing else asks.
  idle,
};

/// How much of the machine the checkpoint child may take from the trainer. Applied by the child
/// when it starts, before it serves anything; every one of its threads inherits it. Lowering a
/// priority needs no privilege; raising one (a negative `nice`) needs CAP_SYS_NICE. A setting
/// the child cannot apply fails its start (wait_ready(), and the first write) with
/// error(child_failed) naming the setting and the OS reason.
struct child_priority {
  /// Added to the trainer's nice value (-20..19; the result is clamped to 19 by the kernel).
  int nice = 0;
  /// See child_cpu_policy.
  child_cpu_policy policy = child_cpu_policy::inherit;
  /// See child_io_class.
  child_io_class io_class = child_io_class::inherit;
  /// 0 (first served) to 7, for child_io_class::best_effort.
  int io_level = 4;
  /// CPUs (numbers as in /proc/cpuinfo) the child may run on; empty: the trainer's.
  std::vector<int> cpus;
};

}  // namespace shmckpt
