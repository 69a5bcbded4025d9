// section_load — reading a checkpoint back: read(copy=true) from page cache and (as root, with
// the cache dropped) from disk, against plain read() of the same file with one new[] per tensor;
// the default mapped view with every byte read by the caller; and opening a checkpoint of many
// tensors.
#include <algorithm>
#include <string>
#include <vector>

#include "bench.hpp"
#include "figures.hpp"
#include "machine.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/writer.hpp"

namespace ckpt_bench {

namespace fs = std::filesystem;
using namespace shmckpt;

namespace {

// Reads every byte of every tensor (a consumer of a mapped view pays the faults here).
std::uint64_t read_all(const state_dict& sd) {
  std::uint64_t sum = 0;
  for_each_tensor(sd, [&](const std::string&, const tensor& t) {
    const auto* w = reinterpret_cast<const std::uint64_t*>(t.data());
    for (std::size_t i = 0; i < t.nbytes() / 8; ++i) sum ^= w[i];
  });
  return sum;
}

// Bytes per second of one read(file, copy=true).
double copying_read(const fs::path& file, std::uint64_t s) {
  read_options copy;
  copy.copy = true;
  auto t0 = mono_ns();
  auto sd = read(file, copy);
  return rate(s, seconds_since(t0));  // before the tensors are freed
}

void cold(bench& b, std::uint64_t s, const fs::path& file, std::size_t per) {
  const config& c = b.cfg();
  reading r{.size = s, .tensors = c.few_tensors};
  if (!can_drop_caches()) {
    b.add(skipped_figure(figures::load_cold, r, "needs root to drop the page cache"));
    return;
  }
  b.progress("load, cold cache: " + size_label(s));
  std::vector<double> shm, base;
  auto plain_once = [&](int) {
    drop_caches();
    return rate(s, raw_read_tensors(file, per));
  };
  auto shmckpt_once = [&](int) {
    drop_caches();
    return copying_read(file, s);
  };
  interleave(std::max(b.reps() / 2, 1) + (c.smoke ? 0 : 1),
             {{&base, plain_once}, {&shm, shmckpt_once}});
  r.value = summarize(shm);
  r.baseline = summarize(base);
  b.add(figures::load_cold, r);
}

}  // namespace

void run_load(bench& b, std::uint64_t s, bool largest) {
  b.progress("load: " + size_label(s));
  const config& c = b.cfg();
  const fs::path file = b.carried.persisted.at(s);
  const std::size_t per = static_cast<std::size_t>(s / c.few_tensors);
  raw_read_file(file);  // in page cache now
  std::vector<double> shm, view, base, base_one;
  volatile std::uint64_t sink = 0;
  auto view_once = [&](int) {
    auto t0 = mono_ns();
    auto sd = read(file);
    sink = sink + read_all(sd);
    return rate(s, seconds_since(t0));
  };
  interleave(std::max(b.reps(), 3),
             {{&base, [&](int) { return rate(s, raw_read_tensors(file, per)); }},
              {&base_one, [&](int) { return rate(s, raw_read_file(file)); }},
              {&shm, [&](int) { return copying_read(file, s); }},
              {&view, view_once}});
  reading r{.value = summarize(shm),
            .baseline = summarize(base),
            .size = s,
            .tensors = c.few_tensors,
            .note = "read() into one fresh mmap'd buffer: " +
                    fmt_stats(summarize(base_one), unit::bytes_per_second)};
  b.add(figures::load_page_cache, r);
  r.value = summarize(view);
  r.note.clear();
  b.add(figures::load_view_touch, r);
  if (largest) cold(b, s, file, per);
}

void run_open_many(bench& b) {
  const std::uint64_t count = b.cfg().many_tensors;
  b.progress("open a checkpoint of " + std::to_string(count) + " tensors");
  const std::uint64_t bytes = count * 256;
  auto priv = make_private_state(bytes, count);
  fs::path file = b.scratch() / "many.safetensors";
  write_safetensors(file, priv.sd);
  std::vector<double> t;
  interleave(std::max(b.reps(), 5), {{&t, [&](int) {
                                        auto t0 = mono_ns();
                                        auto sd = read(file);
                                        return seconds_since(t0);
                                      }}});
  fs::remove(file);
  b.add(figures::open_many_tensors, {.value = summarize(t), .size = bytes, .tensors = count});
}

}  // namespace ckpt_bench
