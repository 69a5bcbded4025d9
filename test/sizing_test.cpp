// sizing_test — nobody sizes shared memory by hand: with the default configuration the segment
// grows to what the state dicts need, double-buffered, and a state dict may grow between saves.
#define BOOST_TEST_MODULE sizing_test
#include <boost/test/unit_test.hpp>

#include <chrono>

#include "shmckpt/checkpointer.hpp"
#include "shmckpt/commit.hpp"
#include "shmckpt/error.hpp"
#include "test_support.hpp"

using namespace shmckpt;
using namespace std::chrono_literals;
using shmckpt::test::temp_dir;
namespace fs = std::filesystem;

namespace {

// `mib` MiB of float32 in 8 MiB tensors, every element derived from `seed`.
state_dict model(std::size_t mib, float seed) {
  state_dict sd;
  dict layers;
  for (std::size_t i = 0; i < mib / 8; ++i) {
    auto t = tensor::zeros(dtype::f32, {2048, 1024});
    auto v = t.data_as<float>();
    for (std::size_t j = 0; j < v.size(); j += 4096) v[j] = seed + static_cast<float>(i + j);
    layers.insert_or_assign("layer" + std::to_string(i), t);
  }
  sd["model"] = std::move(layers);
  sd["step"] = static_cast<std::int64_t>(seed);
  return sd;
}

checkpointer_config defaults() {
  checkpointer_config c;  // segment_bytes, staging generations: all defaults
  c.process.worker = worker_binary::custom;
  c.process.worker_path = test::test_child();
  return c;
}

}  // namespace

BOOST_AUTO_TEST_CASE(default_config_saves_600_mib_twice_double_buffered) {
  BOOST_TEST(defaults().process.segment_bytes == 0u);  // no size to guess
  temp_dir dir;
  async_checkpointer ck(defaults());
  state_dict a = model(600, 1.0f), b = model(600, 2.0f);
  auto fa = ck.save(dir / "a", a);
  auto fb = ck.save(dir / "b", b);  // staged while the first may still be written
  fa.write.get();
  fb.write.get();
  BOOST_TEST((ck.load(dir / "a").state == a));
  BOOST_TEST((ck.load(dir / "b").state == b));
  ck.close();
}

BOOST_AUTO_TEST_CASE(a_state_dict_that_grows_between_saves_is_saved_each_time) {
  temp_dir dir;
  async_checkpointer ck(defaults());
  // Optimizer state appears after the first step: the second save is three times the first.
  state_dict sd = model(80, 1.0f);
  ck.save(dir / "1", sd).write.get();
  state_dict bigger = model(80, 1.0f);
  bigger["optimizer"] = dict{{"exp_avg", model(80, 3.0f).at("model")},
                             {"exp_avg_sq", model(80, 4.0f).at("model")}};
  ck.save(dir / "2", bigger).write.get();
  // And a tensor made in the segment by the trainer still works after the growth.
  tensor shared = ck.process().make_tensor(dtype::f32, {1024, 1024});
  shared.data_as<float>()[7] = 7.0f;
  ck.process().write(state_dict{{"w", shared}}, dir / "3").get();
  BOOST_TEST((ck.load(dir / "2").state == bigger));
  BOOST_TEST(ck.load(dir / "3").state.at("w").as_tensor().data_as<float>()[7] == 7.0f);
  BOOST_TEST(read_manifest(dir / "1").has_value());
  ck.close();
}
