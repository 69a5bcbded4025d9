// reader_fuzz_replay — runs the libFuzzer entry point of reader_fuzz.cpp without libFuzzer: over
// every hostile case, a few valid checkpoints, and any files named on the command line (to
// replay a crash input: `reader_fuzz_replay crash-<hash>`). With `--write-corpus <dir>` it
// writes those hostile and valid files to <dir> instead, as the seed corpus for the fuzzer.
// Any failed property aborts (see reader_fuzz.cpp).
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "fuzz/corpus.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

using namespace shmckpt;
int run(const std::string& name, const std::string& bytes) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  std::printf("ok: %s (%zu bytes)\n", name.c_str(), bytes.size());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::pair<std::string, std::string>> files = shmckpt_test::fuzz_corpus();

  if (argc == 3 && std::string(argv[1]) == "--write-corpus") {
    std::filesystem::create_directories(argv[2]);
    for (const auto& [name, bytes] : files)
      shmckpt_test::write_file(std::filesystem::path(argv[2]) / name, bytes);
    std::printf("wrote %zu seed files to %s\n", files.size(), argv[2]);
    return 0;
  }
  int count = 0;
  if (argc > 1) {
    for (int i = 1; i < argc; ++i) count += run(argv[i], shmckpt_test::read_file(argv[i]));
  } else {
    for (const auto& [name, bytes] : files) count += run(name, bytes);
  }
  std::printf("reader_fuzz_replay: %d inputs, every property held\n", count);
  return 0;
}
