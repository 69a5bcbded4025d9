// section_staging — stager::stage() of a private state dict against memcpy with as many
// threads: in steady state (both generations exist, buffers reused) against memcpy into faulted
// memory, and for the first checkpoint (new process, new pool) against memcpy into fresh shared
// memory; plus which copy strategy the stager's automatic mode chose.
#include <string>
#include <vector>

#include "bench.hpp"
#include "figures.hpp"
#include "shmckpt/stager.hpp"

namespace ckpt_bench {

using namespace shmckpt;

namespace {

// Which copy strategy the stager's automatic mode chose in this process, and why. Reported
// once: after the first size at which it was decided, or (undecided) after the last.
void report_copy_strategy(bench& b, bool last) {
  auto c = automatic_copy_strategy();
  if (!c.decided && !last) return;  // still measuring: report after a later size
  reading r{.note = c.reason};
  if (!c.decided || c.memcpy_bytes_per_second == 0) {
    figure f = skipped_figure(figures::copy_strategy, r, c.reason);
    f.baseline_label.clear();  // nothing was measured against
    b.add(f);
    return;
  }
  b.carried.strategy_reported = true;
  r.value = single(c.streaming_bytes_per_second);
  r.baseline = single(c.memcpy_bytes_per_second);
  r.detail = c.strategy == copy_strategy::streaming ? ": streaming" : ": memcpy";
  b.add(figures::copy_strategy, r);
}

stager_options staging_opts(const bench& b) {
  stager_options so;
  so.threads = b.cfg().threads;
  return so;
}

void steady(bench& b, std::uint64_t s, const private_state& priv) {
  b.progress("staging, steady state: " + size_label(s));
  const config& c = b.cfg();
  checkpoint_process p(b.process_opts(segment_for(s, c.few_tensors, 2), false));
  stager st(p, staging_opts(b));
  for (int i = 0; i < 2; ++i) st.stage(priv.sd);  // both generations allocated and faulted
  auto dst = private_buffer(s, 0);
  parallel_memcpy(dst.get(), priv.mem.get(), s, b.threads());  // warm
  std::vector<double> shm, base;
  auto copy_once = [&](int) {
    return rate(s, parallel_memcpy(dst.get(), priv.mem.get(), s, b.threads()));
  };
  auto stage_once = [&](int) {
    auto t0 = mono_ns();
    auto snap = st.stage(priv.sd);
    double t = seconds_since(t0);
    snap = {};  // releases the generation
    return rate(s, t);
  };
  interleave(std::max(b.reps(), 3), {{&base, copy_once}, {&shm, stage_once}});
  st.close();
  p.close();
  const std::string threads = std::to_string(b.threads());
  reading r{.value = summarize(shm),
            .baseline = summarize(base),
            .size = s,
            .tensors = c.few_tensors,
            .detail = threads,
            .baseline_detail = threads};
  b.carried.memcpy_time[s] = static_cast<double>(s) / r.baseline.median;
  b.add(figures::staging_steady, r);
  if (!b.carried.strategy_reported) report_copy_strategy(b, s == c.sizes.back());
}

void first(bench& b, std::uint64_t s, const private_state& priv) {
  b.progress("staging, first checkpoint: " + size_label(s));
  const config& c = b.cfg();
  std::vector<double> shm, base, create;
  auto copy_once = [&](int) {
    fresh_shm fresh(s);
    return rate(s, parallel_memcpy(fresh.data(), priv.mem.get(), s, b.threads()));
  };
  auto stage_once = [&](int) {
    auto t0 = mono_ns();
    checkpoint_process p(b.process_opts(segment_for(s, c.few_tensors), false));
    create.push_back(seconds_since(t0));
    stager st(p, staging_opts(b));
    t0 = mono_ns();
    auto snap = st.stage(priv.sd);
    double t = seconds_since(t0);
    snap = {};
    st.close();
    p.close();
    return rate(s, t);
  };
  interleave(b.reps(), {{&base, copy_once}, {&shm, stage_once}});
  const std::string threads = std::to_string(b.threads());
  b.add(figures::staging_first, {.value = summarize(shm),
                                 .baseline = summarize(base),
                                 .size = s,
                                 .tensors = c.few_tensors,
                                 .baseline_detail = threads});
  b.add(figures::segment_create, {.value = summarize(create), .size = s});
}

}  // namespace

void run_staging(bench& b, std::uint64_t s, const private_state& priv) {
  steady(b, s, priv);
  first(b, s, priv);
}

}  // namespace ckpt_bench
