// stats — the clock, the summary of a series of samples, and the interleaved repetition loop
// every figure is measured with.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <vector>

namespace ckpt_bench {

constexpr std::size_t KiB = 1024, MiB = KiB * 1024, GiB = MiB * 1024;

/// CLOCK_MONOTONIC in nanoseconds (system-wide: the bench-stamp child's stamps compare with it).
std::int64_t mono_ns();
/// Seconds from `t0` (a mono_ns() value) to now.
double seconds_since(std::int64_t t0);
/// Involuntary context switches of the calling thread so far (preemption by other threads).
long involuntary_switches();

/// Bytes per second for `bytes` moved in `seconds`.
inline double rate(std::uint64_t bytes, double seconds) {
  return static_cast<double>(bytes) / seconds;
}

/// median [min–max] of n samples (all zero when n is 0).
struct stats {
  double median = 0, min = 0, max = 0;
  std::size_t n = 0;
};

stats summarize(std::vector<double> v);
/// One sample: median = min = max = v, n = 1.
stats single(double v);

/// One series of an interleaved measurement: what to run, and where its samples go.
struct step {
  std::vector<double>* samples;
  std::function<double(int rep)> run;
};

/// Runs `reps` repetitions of `steps`, in order within each repetition, each result appended to
/// its own series: the measured thing and its baselines alternate, so drift on the shared
/// machine hits all of them alike.
void interleave(int reps, std::initializer_list<step> steps);

}  // namespace ckpt_bench
