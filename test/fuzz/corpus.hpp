// corpus.hpp — the inputs every reader-fuzzing check starts from: valid checkpoints of a few
// kinds from our writer, then every hostile case of test/hostile (malformed on purpose). The
// libFuzzer replay (reader_fuzz_replay.cpp) runs them through the fuzz entry point and writes
// them out as the fuzzer's seed corpus; header_parsers_test feeds them to both header parsers.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "hostile/hostile_files.hpp"
#include "shmckpt/writer.hpp"

namespace shmckpt_test {

/// (name, whole file) for every input: "valid_<kind>" first, then "hostile_<case>".
inline std::vector<std::pair<std::string, std::string>> fuzz_corpus() {
  using namespace shmckpt;
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
  scratch_dir dir("fuzz");
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [name, sd] : dicts) {
    auto path = dir / (name + ".safetensors");
    write_safetensors(path, sd);
    out.emplace_back("valid_" + name, read_file(path));
  }
  for (auto& c : hostile_cases()) out.emplace_back("hostile_" + c.name, std::move(c.bytes));
  return out;
}

}  // namespace shmckpt_test
