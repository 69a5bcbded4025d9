// section_persist — write() of a shared state dict to durable storage, with the default writer
// (O_DIRECT where the filesystem allows it) and with io=buffered (the previous default), against
// raw durable writes of the same bytes, buffered+fsync and O_DIRECT, all interleaved; beside
// them the XXH3 checksum pass alone and the checkpoint file written alone (write_safetensors in
// this process), which tells the writer's share of a persist from the child's and the commit's. At the largest size, the child's peak RSS while writing.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>


#include "bench.hpp"
#include "core/xxh3.hpp"
#include "figures.hpp"
#include "machine.hpp"
#include "shmckpt/layout.hpp"
#include "shmckpt/writer.hpp"

namespace ckpt_bench {

namespace fs = std::filesystem;
using namespace shmckpt;

namespace {

// One more write with the child's /proc status sampled every millisecond.
void child_rss(bench& b, checkpoint_process& p, const state_dict& sd, std::uint64_t s) {
  b.progress("child peak RSS while writing " + size_label(s));
  int pid = p.child_pid();
  std::atomic<bool> stop{false};
  std::uint64_t peak_private = 0;
  std::thread sampler([&] {
    while (!stop.load()) {
      auto st = proc_status(pid);
      peak_private = std::max(peak_private, st["RssAnon"] + st["RssFile"]);
      // A sampling interval, not a synchronisation: the write below is what is waited for.
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  fs::path dir = b.scratch() / "rss";
  p.write(sd, dir).get();
  stop = true;
  sampler.join();
  auto st = proc_status(pid);  // right before close
  fs::remove_all(dir);
  char note[256];
  std::snprintf(note, sizeof note,
                "VmHWM %.1f MiB includes the shared segment pages it reads (RssShmem %.1f MiB "
                "at close); those are the trainer's staged bytes, not extra memory",
                static_cast<double>(st["VmHWM"]) / MiB, static_cast<double>(st["RssShmem"]) / MiB);
  b.add(figures::child_peak_rss, {.value = single(static_cast<double>(peak_private)),
                                  .size = s,
                                  .tensors = b.cfg().few_tensors,
                                  .note = note});
}

}  // namespace

void run_persist(bench& b, std::uint64_t s, bool largest) {
  b.progress("persist: " + size_label(s));
  const std::uint64_t count = b.cfg().few_tensors;
  checkpoint_process p(b.process_opts(segment_for(s, count), false));
  p.wait_ready();
  state_dict sd = make_shared_state(p, s, count);
  auto buffered_opts = b.process_opts(segment_for(s, count), false);
  buffered_opts.writer_args["io"] = "buffered";
  checkpoint_process pb(buffered_opts);
  pb.wait_ready();
  state_dict sdb = make_shared_state(pb, s, count);
  auto src = private_buffer(s, 0x5a);
  const fs::path raw_file = b.scratch() / "raw.bin";
  auto checkpoint_dir = [&](const char* prefix, int r) {
    return b.scratch() / (prefix + std::to_string(r));
  };
  // write() into a fresh directory (never over a complete checkpoint of the previous size).
  auto persist_into = [&](checkpoint_process& proc, const state_dict& tree, const fs::path& dir) {
    fs::remove_all(dir);
    auto t0 = mono_ns();
    proc.write(tree, dir).get();
    return rate(s, seconds_since(t0));
  };
  std::vector<double> shm, shm_buffered, file_only, buffered, direct, hash;
  volatile std::uint64_t sink = 0;
  auto hash_once = [&](int) {
    auto t0 = mono_ns();
    sink = sink + XXH3_64bits(src.get(), s);
    return rate(s, seconds_since(t0));
  };
  // The raw writes send the very bytes the persist sends, from the same shared memory: on a
  // virtual machine the memory a write comes from moves its speed (one 256 MiB region of a
  // segment wrote at 1.8 GB/s, another at 3.1 GB/s, side by side; docs/benchmarks.md). Private
  // memory stands in only where O_DIRECT cannot take the tensors as they lie.
  std::vector<std::span<const std::byte>> pieces;
  for_each_tensor(sd, [&](const std::string&, const tensor& t) {
    pieces.emplace_back(static_cast<const std::byte*>(t.data()), t.nbytes());
  });
  auto raw_once = [&](raw_io io) {
    return [&, io](int) {
      auto t = raw_durable_writev(raw_file, pieces, io);
      return rate(s, t ? *t : raw_durable_write(raw_file, src.get(), s, io));
    };
  };
  auto buffered_writer_once = [&](int r) {
    fs::path dir = checkpoint_dir("persist-buffered-", r);
    double v = persist_into(pb, sdb, dir);
    fs::remove_all(dir);
    return v;
  };
  // The file alone, from the same shared tensors, in this process: no child, no manifest.
  auto file_only_once = [&](int r) {
    fs::path file = b.scratch() / ("persist-file-" + std::to_string(r) + ".safetensors");
    auto t0 = mono_ns();
    write_safetensors(file, sd);
    double v = rate(s, seconds_since(t0));
    fs::remove(file);
    return v;
  };
  auto default_writer_once = [&](int r) {
    fs::path dir = checkpoint_dir("persist-", r);
    double v = persist_into(p, sd, dir);
    if (r + 1 < b.reps()) fs::remove_all(dir);  // the last one is loaded later
    return v;
  };
  interleave(b.reps(), {{&hash, hash_once},
                        {&buffered, raw_once(raw_io::buffered)},
                        {&direct, raw_once(raw_io::direct)},
                        {&shm_buffered, buffered_writer_once},
                        {&file_only, file_only_once},
                        {&shm, default_writer_once}});
  // The better raw write of each repetition.
  std::vector<double> best(buffered.size());
  std::transform(buffered.begin(), buffered.end(), direct.begin(), best.begin(),
                 [](double x, double y) { return std::max(x, y); });
  b.carried.persisted[s] = checkpoint_file_path(checkpoint_dir("persist-", b.reps() - 1), 0);
  b.carried.raw_write_time[s] = static_cast<double>(s) / summarize(best).median;
  sdb = {};
  pb.close();

  if (largest) child_rss(b, p, sd, s);
  sd = {};
  p.close();

  char note[256];
  std::snprintf(note, sizeof note,
                "buffered+fsync %s, O_DIRECT %s; XXH3 checksum pass alone (one thread) %s",
                fmt_stats(summarize(buffered), unit::bytes_per_second).c_str(),
                fmt_stats(summarize(direct), unit::bytes_per_second).c_str(),
                fmt_stats(summarize(hash), unit::bytes_per_second).c_str());
  reading r{.value = summarize(shm),
            .baseline = summarize(best),
            .size = s,
            .tensors = count,
            .note = note};
  b.add(figures::persist, r);
  r.value = summarize(shm_buffered);
  b.add(figures::persist_buffered_writer, r);
  r.value = summarize(file_only);
  b.add(figures::persist_file_only, r);
}

}  // namespace ckpt_bench
