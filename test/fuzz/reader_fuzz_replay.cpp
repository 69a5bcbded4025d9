// reader_fuzz_replay — runs the libFuzzer entry point of reader_fuzz.cpp without libFuzzer: over
// every hostile case, a few valid checkpoints, and any files named on the command line (to
// replay a crash input: `reader_fuzz_replay crash-<hash>`). With `--write-corpus <dir>` it
// writes those hostile and valid files to <dir> instead, as the seed corpus for the fuzzer.
// Any failed property aborts (see reader_fuzz.cpp).
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "hostile/hostile_files.hpp"
#include "shmckpt/writer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

using namespace shmckpt;
using shmckpt_test::random_tensor;

// Valid files from our writer, as (name, bytes).
std::vector<std::pair<std::string, std::string>> valid_files() {
  std::vector<std::pair<std::string, state_dict>> dicts = {
      {"empty", {}},
      {"scalars", {{"step", 7}, {"lr", 0.001}, {"name", "run"}, {"flag", false}, {"n", none}}},
      {"nested",
       {{"model", dict{{"w", random_tensor(dtype::f32, {4, 4}, 1)},
                       {"layers", list{dict{{"b", random_tensor(dtype::bf16, {4}, 2)}}}}}},
        {"optim", dict{{"betas", list{0.9, 0.999}}, {"bytes", std::string("\xff\x00", 2)}}}}},
      {"all_dtypes",
       {{"b", random_tensor(dtype::boolean, {3}, 3)}, {"f64", random_tensor(dtype::f64, {2}, 4)},
        {"f4", random_tensor(dtype::f4, {4}, 5)}, {"f6", random_tensor(dtype::f6_e2m3, {4}, 6)},
        {"c64", random_tensor(dtype::c64, {1}, 7)}, {"e", tensor::zeros(dtype::f32, {0, 3})},
        {"s", random_tensor(dtype::i64, {}, 8)}}},
  };
  shmckpt_test::scratch_dir dir("fuzz");
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [name, sd] : dicts) {
    auto path = dir / (name + ".safetensors");
    write_safetensors(path, sd);
    out.emplace_back("valid_" + name, shmckpt_test::read_file(path));
  }
  return out;
}

int run(const std::string& name, const std::string& bytes) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  std::printf("ok: %s (%zu bytes)\n", name.c_str(), bytes.size());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::pair<std::string, std::string>> files = valid_files();
  for (auto& c : shmckpt_test::hostile_cases()) files.emplace_back("hostile_" + c.name, c.bytes);

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
