// section_save — the user's path through async_checkpointer: an end-to-end save of private
// memory until the write is durable, against the memcpy and raw-write times measured earlier in
// the run; and the parent's memory beyond the staged bytes for one save.
#include <string>
#include <vector>

#include "bench.hpp"
#include "figures.hpp"
#include "machine.hpp"
#include "shmckpt/checkpointer.hpp"

namespace ckpt_bench {

namespace fs = std::filesystem;
using namespace shmckpt;

void run_end_to_end(bench& b, std::uint64_t s, const private_state& priv) {
  b.progress("end-to-end save: " + size_label(s));
  const config& c = b.cfg();
  checkpointer_config cfg;
  cfg.process.segment_bytes = segment_for(s, c.few_tensors, 2);
  cfg.staging.threads = c.threads;
  auto ck = make_async_checkpointer(cfg, rank_info{});
  ck->save(b.scratch() / "e2e-warm", priv.sd).write.get();  // first save: child and pool warm
  fs::remove_all(b.scratch() / "e2e-warm");
  std::vector<double> shm;
  interleave(b.reps(), {{&shm, [&](int r) {
                           fs::path dir = b.scratch() / ("e2e-" + std::to_string(r));
                           auto t0 = mono_ns();
                           ck->save(dir, priv.sd).write.get();
                           double t = seconds_since(t0);
                           fs::remove_all(dir);
                           return t;
                         }}});
  ck->close();
  const auto& memcpy_time = b.carried.memcpy_time;
  double base = memcpy_time.count(s) ? memcpy_time.at(s) + b.carried.raw_write_time[s] : 0;
  reading r{.value = summarize(shm), .baseline = single(base), .size = s, .tensors = c.few_tensors};
  if (base > 0)
    b.add(figures::end_to_end_save, r);
  else
    b.add(
        skipped_figure(figures::end_to_end_save, r, "needs the staging section for its baseline"));
}

void run_parent_memory(bench& b, std::uint64_t s, const private_state& priv) {
  b.progress("parent extra memory: " + size_label(s));
  // One generation in a segment sized to it: the smallest configuration for one save.
  const std::size_t seg = static_cast<std::size_t>(s + 4 * MiB);
  auto before = proc_status(0)["VmRSS"];
  bool reset = reset_own_peak_rss();
  std::uint64_t hwm = 0;
  {
    checkpointer_config cfg;
    cfg.process.segment_bytes = seg;
    cfg.staging.threads = b.cfg().threads;
    cfg.staging.generations = 1;
    auto ck = make_async_checkpointer(cfg, rank_info{});
    ck->save(b.scratch() / "mem", priv.sd).write.get();
    hwm = proc_status(0)["VmHWM"];
    ck->close();
  }
  fs::remove_all(b.scratch() / "mem");
  double extra = static_cast<double>(hwm) - static_cast<double>(before) - static_cast<double>(s);
  reading r{.value = single(extra),
            .size = s,
            .tensors = b.cfg().few_tensors,
            .bound = 0.05 * static_cast<double>(s) + 16.0 * MiB,
            .note =
                "segment_bytes = staged + 4 MiB, one generation; double buffering doubles "
                "the staged bytes by design"};
  if (reset)
    b.add(figures::parent_extra_memory, r);
  else
    b.add(skipped_figure(figures::parent_extra_memory, r,
                         "cannot reset the peak RSS (/proc/self/clear_refs)"));
}

}  // namespace ckpt_bench
