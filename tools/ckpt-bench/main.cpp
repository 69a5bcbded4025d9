// ckpt-bench — every shmckpt performance figure next to the limit it is measured against.
//
// Each figure is measured in the same run as its baseline (a plain memcpy, a raw socket round
// trip, a raw durable write, a plain read()), repetitions interleaved, and reported as
// median [min–max] plus the ratio of the medians. The machine this runs on is shared and noisy;
// ratios taken side by side are what docs/benchmarks.md quotes, not absolute numbers.
//
// The benchmark is its own checkpoint child for the latency figures: main() registers a writer
// factory "bench-stamp" and calls run_worker_if_requested() first. That writer persists nothing;
// it stores CLOCK_MONOTONIC, read the moment it holds a validated descriptor, into a small shared
// tensor "__stamp" that the parent reads back (the clock is system-wide), which gives the
// hand-off time without any disk in the way. Throughput figures use the installed
// shmckpt-worker with the default (durable) writer, as a trainer would.
//
// The figures are described in one table (figures.cpp); each section (section_*.cpp) measures
// its path and baseline and fills in the numbers (bench.hpp); report.cpp prints the table or the
// JSON document.
//
// Everything it creates (segments, children, files under --dir) is removed before it exits.
// Exit status: 0 after a complete run (whatever the figures say), 1 on an error, 2 for usage.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "bench.hpp"
#include "machine.hpp"
#include "shmckpt/worker.hpp"
#include "shmckpt/writer.hpp"
#include "stats.hpp"

namespace fs = std::filesystem;
namespace po = boost::program_options;
using namespace shmckpt;
using namespace ckpt_bench;

namespace {

// The benchmark's own checkpoint writer. Persists nothing: stores the CLOCK_MONOTONIC time at
// which it received the (already validated) descriptor into the I64 tensor "__stamp", when the
// state dict has one.
class stamp_writer final : public checkpoint_writer {
 public:
  void write(const state_dict& sd, const fs::path&, const kwargs&) override {
    std::int64_t now = mono_ns();
    if (const value* v = sd.find("__stamp"); v && v->type() == kind::tensor) {
      const tensor& t = v->as_tensor();
      if (t.nbytes() == sizeof now) std::memcpy(t.data(), &now, sizeof now);
    }
  }
};

// Removes the scratch directory on every exit path.
struct scratch_guard {
  fs::path p;
  ~scratch_guard() {
    std::error_code ec;
    if (!p.empty()) fs::remove_all(p, ec);
  }
};

}  // namespace

int main(int argc, char** argv) {
  register_writer_factory("bench-stamp", [](const kwargs&) -> std::unique_ptr<checkpoint_writer> {
    return std::make_unique<stamp_writer>();
  });
  run_worker_if_requested(argc, argv);

  config c;
  std::string sizes_text, dir_text;
  po::options_description desc(
      "ckpt-bench: every shmckpt performance figure next to its baseline, from one run");
  // clang-format off
  desc.add_options()
      ("help,h", "this help")
      ("sizes", po::value(&sizes_text)->default_value("64M,256M,1G"), "state-dict sizes, comma separated")
      ("reps", po::value(&c.reps)->default_value(5), "repetitions of every heavy measurement")
      ("dir", po::value(&dir_text), "scratch directory (default: the system temp directory)")
      ("threads", po::value(&c.threads)->default_value(0), "stager copy threads (0: library default)")
      ("smoke", po::bool_switch(&c.smoke), "tiny sizes, one repetition (for CTest)")
      ("json", po::bool_switch(&c.json), "print JSON instead of the table")
      ("only", po::value(&c.only)->multitoken(),
       "run only these sections (startup ping open handoff staging persist e2e load memory interference)")
      ("variants", po::value(&c.variants)->multitoken(),
       "writer set-ups the interference section compares (default: buffered default); each is "
       "default, buffered or direct, then +nice<N> +batch +idle +normal +ioidle +iobe<L> +cpu<N> "
       "+nosum (no checksums)");
  // clang-format on
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    po::notify(vm);
    if (vm.count("help")) {
      std::cout << desc << "\n";
      return 0;
    }
    if (c.smoke) {
      if (vm["sizes"].defaulted()) sizes_text = "1M,4M";
      if (vm["reps"].defaulted()) c.reps = 1;
      c.latency_samples = 40;
    }
    for (const auto& v : c.variants) parse_variant(v);  // reject a bad one before running
    std::stringstream ss(sizes_text);
    for (std::string part; std::getline(ss, part, ',');)
      if (!part.empty()) c.sizes.push_back(parse_size(part));
    std::sort(c.sizes.begin(), c.sizes.end());
    if (c.sizes.empty()) throw std::invalid_argument("--sizes is empty");
    if (c.reps < 1) throw std::invalid_argument("--reps must be at least 1");
    for (auto s : c.sizes)
      if (s % (c.many_tensors * 4) != 0)
        throw std::invalid_argument("size " + std::to_string(s) + " is not a multiple of " +
                                    std::to_string(c.many_tensors * 4) +
                                    " bytes (it is split into up to 65536 F32 tensors)");
  } catch (const std::exception& e) {
    std::cerr << "ckpt-bench: " << e.what() << "\n" << desc << "\n";
    return 2;
  }

  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);

  try {
    // Before any thread exists: fork() is only safe now.
    echo_peer echo;
    fs::path root = dir_text.empty() ? fs::temp_directory_path() : fs::path(dir_text);
    scratch_guard guard{root / ("ckpt-bench." + std::to_string(::getpid()))};
    fs::create_directories(guard.p);
    c.dir = guard.p;
    run_summary run{
        .command = command, .machine = machine_summary(root), .reps = c.reps, .sizes = c.sizes};
    auto t0 = mono_ns();
    bench b(c, echo);
    b.run();
    run.wall_seconds = seconds_since(t0);
    if (c.json)
      print_json(b.figures(), run);
    else
      print_table(b.figures(), run);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "ckpt-bench: " << e.what() << "\n";
    return 1;
  }
}
