// verify.cpp — `ckpt-inspect verify`: every tensor's XXH3-64 recomputed and compared, and for a
// directory its manifest checked against the files.
#include <unistd.h>

#include <iostream>

#include "inspect.hpp"

namespace ckpt_inspect {
namespace {

// A one-line progress bar on stderr, redrawn in place with '\r' when the percentage changes
// (so at most ~100 redraws per file, whatever its size) and erased when done or on unwinding,
// so an error message that follows starts on a clean line. Only used when stderr is a terminal.
class progress_bar {
 public:
  explicit progress_bar(std::string label) : label_(std::move(label)) {}
  progress_bar(const progress_bar&) = delete;
  progress_bar& operator=(const progress_bar&) = delete;
  ~progress_bar() { clear(); }

  void update(std::uint64_t done, std::uint64_t total) {
    int percent = total ? static_cast<int>(done * 100 / total) : 100;
    if (percent == last_percent_) return;
    last_percent_ = percent;
    constexpr int width = 30;
    int filled = percent * width / 100;
    std::string line = "\r" + label_ + " [" + std::string(static_cast<std::size_t>(filled), '#') +
                       std::string(static_cast<std::size_t>(width - filled), '.') + "] " +
                       std::to_string(percent) + "% " + shmckpt::detail::human_bytes(done) + " / " +
                       shmckpt::detail::human_bytes(total);
    std::cerr << line << std::flush;
    drawn_ = true;
  }

  void clear() {
    if (drawn_) std::cerr << "\r\033[K" << std::flush;
    drawn_ = false;
  }

 private:
  std::string label_;
  int last_percent_ = -1;
  bool drawn_ = false;
};


}  // namespace

int run_verify(const std::vector<std::string>& args) {
  po::options_description desc("verify: recompute every tensor's XXH3-64 and compare it");
  auto pc = parse_command("verify", args, desc);
  if (pc.help) return exit_ok;
  // Check every file before printing, so that unreadable input prints nothing on stdout.
  std::vector<std::pair<checkpoint_ref, std::vector<shmckpt::checksum_check>>> results;
  bool terminal = ::isatty(STDERR_FILENO) == 1;
  for (auto& ref : find_checkpoints(pc.vm["path"].as<std::string>())) {
    shmckpt::check_checksums_options options;
    std::optional<progress_bar> bar;
    if (terminal) {
      bar.emplace(printable(ref.path.string()));
      options.progress = [&](std::uint64_t done, std::uint64_t total) { bar->update(done, total); };
    }
    auto checks = shmckpt::check_checksums(ref.path, options);
    results.emplace_back(std::move(ref), std::move(checks));
  }
  bool all_ok = true;
  const fs::path root = pc.vm["path"].as<std::string>();
  if (fs::is_directory(root)) {
    // The rank files must also be the ones the manifest lists (names, sizes, header checksums).
    auto m = check_manifest(root);
    if (m.complete)
      std::cout << root.string() << ": manifest ok, " << m.manifest->world_size
                << " rank file(s) match it\n";
    else if (m.present) {
      std::cout << root.string() << ": manifest does not match the files: "
                << printable(m.problem) << "\n";
      all_ok = false;
    } else {
      std::cout << root.string() << ": no manifest: INCOMPLETE (a save failed or is still in progress)\n";
    }
  }
  for (const auto& [ref, checks] : results) {
    std::size_t recorded = 0, bad = 0;
    for (const auto& c : checks) {
      if (!c.recorded.empty()) ++recorded;
      if (!c.ok()) {
        ++bad;
        std::cout << ref.path.string() << ": tensor '" << printable(c.name)
                  << "': checksum mismatch: recorded " << c.recorded << ", computed " << c.actual
                  << "\n";
      }
    }
    std::cout << ref.path.string() << ": ";
    if (recorded == 0)
      std::cout << "no checksums recorded; " << checks.size() << " tensors not verified\n";
    else if (bad == 0)
      std::cout << "ok, " << recorded << " tensors verified\n";
    else
      std::cout << bad << " of " << recorded << " tensors do not match\n";
    all_ok &= bad == 0;
  }
  return all_ok ? exit_ok : exit_check_failed;
}

}  // namespace ckpt_inspect
