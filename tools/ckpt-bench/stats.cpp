// stats.cpp — see stats.hpp.
#include "stats.hpp"

#include <sys/resource.h>
#include <time.h>

#include <algorithm>

namespace ckpt_bench {

std::int64_t mono_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

double seconds_since(std::int64_t t0) {
  return static_cast<double>(mono_ns() - t0) * 1e-9;
}

long involuntary_switches() {
  rusage ru{};
  ::getrusage(RUSAGE_THREAD, &ru);
  return ru.ru_nivcsw;
}

stats summarize(std::vector<double> v) {
  stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.n = v.size();
  s.min = v.front();
  s.max = v.back();
  s.median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  return s;
}

stats single(double v) {
  return {v, v, v, 1};
}

void interleave(int reps, std::initializer_list<step> steps) {
  for (int r = 0; r < reps; ++r)
    for (const step& s : steps) s.samples->push_back(s.run(r));
}

}  // namespace ckpt_bench
