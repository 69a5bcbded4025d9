// bench.cpp — see bench.hpp.
#include "bench.hpp"

#include <iostream>

#include "shmckpt/stager.hpp"
#include "stats.hpp"

namespace ckpt_bench {

using namespace shmckpt;

bench::bench(config c, echo_peer& echo) : c_(std::move(c)), echo_(echo) {
  threads_ = c_.threads ? c_.threads : shmckpt::default_copy_threads();  // as the stager
}

void bench::run() {
  if (c_.wants("startup")) run_startup(*this);
  if (c_.wants("ping")) run_ping(*this);
  if (c_.wants("open")) run_open_many(*this);
  for (std::uint64_t s : c_.sizes) {
    bool largest = s == c_.sizes.back();
    if (c_.wants("handoff")) run_handoff(*this, s);
    auto priv = make_private_state(s, c_.few_tensors);
    if (c_.wants("staging")) run_staging(*this, s, priv);
    if (c_.wants("persist") || c_.wants("e2e") || c_.wants("load")) run_persist(*this, s, largest);
    if (c_.wants("e2e")) run_end_to_end(*this, s, priv);
    if (c_.wants("load")) run_load(*this, s, largest);
    if (largest && c_.wants("memory")) run_parent_memory(*this, s, priv);
    if (c_.wants("interference") && (c_.smoke || s >= 256 * MiB)) run_interference(*this, s);
  }
  run_flatness(*this);
}

void bench::progress(const std::string& what) const {
  std::cerr << "[ckpt-bench] " << what << std::endl;
}

checkpoint_process_options bench::process_opts(std::size_t segment, bool stamp) const {
  checkpoint_process_options o;
  o.segment_bytes = segment;
  if (stamp) {
    o.worker = worker_binary::this_executable;
    o.writer_factory = "bench-stamp";
  }
  return o;
}

std::vector<double> bench::raw_rtts(int n) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i) v.push_back(echo_.round_trip());
  return v;
}

}  // namespace ckpt_bench
