// Shared by the checkpoint_process suites: options that start the test child, and a small state.
#pragma once

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "shmckpt/checkpoint_process.hpp"
#include "test_support.hpp"

namespace shmckpt::test {

inline checkpoint_process_options child_options(std::string writer = "record") {
  checkpoint_process_options o;
  o.worker = worker_binary::custom;
  o.worker_path = test_child();
  o.writer_factory = std::move(writer);
  o.segment_bytes = 16u << 20;
  o.init_timeout = std::chrono::seconds(20);
  o.shutdown_timeout = std::chrono::seconds(20);
  return o;
}

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline state_dict small_state() {
  auto w = tensor::zeros(dtype::f32, {4, 4});
  w.data_as<float>()[5] = 1.5f;
  return state_dict{{"model", dict{{"w", w}}}, {"step", 10}, {"note", "hello"}};
}


}  // namespace shmckpt::test
