#define BOOST_TEST_MODULE stager_test
#include "shmckpt/stager.hpp"

#include <boost/test/unit_test.hpp>

#include "shmckpt/error.hpp"
#include "test_support.hpp"

using namespace shmckpt;
using namespace std::chrono_literals;

namespace {

checkpoint_process_options options() {
  checkpoint_process_options o;
  o.worker_path = std::filesystem::path(test::arg(1)) / "shmckpt-worker";
  o.segment_bytes = 64u << 20;
  return o;
}

state_dict trainer_state(float fill) {
  auto w = tensor::zeros(dtype::f32, {256, 1024});  // 1 MiB
  for (auto& x : w.data_as<float>()) x = fill;
  auto big = tensor::zeros(dtype::u8, {12 << 20});  // 12 MiB: split across copy threads
  for (std::size_t i = 0; i < big.nbytes(); i += 4096) big.data()[i] = std::byte(i / 4096);
  return state_dict{{"model", dict{{"w", w}, {"big", big}}},
                    {"optim", list{dict{{"m", tensor::zeros(dtype::bf16, {3, 3})}}}},
                    {"step", 5}};
}

std::vector<const std::byte*> addresses(const state_dict& sd) {
  std::vector<const std::byte*> out;
  for_each_tensor(sd, [&](const std::string&, const tensor& t) { out.push_back(t.data()); });
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(staged_copy_equals_the_source_and_does_not_alias_it) {
  checkpoint_process proc(options());
  stager st(proc, {.threads = 2});
  auto sd = trainer_state(1.5f);
  auto staged = st.stage(sd);
  BOOST_TEST((staged == sd));
  for_each_tensor(staged, [&](const std::string& n, const tensor& t) {
    BOOST_TEST(proc.is_shared(t), n << " was not staged into the segment");
  });
  // The trainer goes on: its next step must not reach the snapshot.
  sd.at("model").as_dict().at("w").as_tensor().data_as<float>()[0] = -1.0f;
  sd.at("model").as_dict().at("big").as_tensor().data()[4096] = std::byte{0xEE};
  BOOST_TEST(staged.at("model").as_dict().at("w").as_tensor().data_as<float>()[0] == 1.5f);
  BOOST_TEST(static_cast<int>(staged.at("model").as_dict().at("big").as_tensor().data()[4096]) == 1);
}

BOOST_AUTO_TEST_CASE(tensors_already_shared_are_not_copied) {
  checkpoint_process proc(options());
  stager st(proc);
  auto shared = proc.make_tensor(dtype::f32, {16});
  auto staged = st.stage(state_dict{{"s", shared}});
  BOOST_TEST(staged.at("s").as_tensor().data() == shared.data());
  BOOST_TEST(st.pooled_bytes() == 0u);
}

BOOST_AUTO_TEST_CASE(buffers_are_reused_across_saves) {
  checkpoint_process proc(options());
  stager st(proc, {.generations = 1});
  auto sd = trainer_state(1.0f);
  std::vector<const std::byte*> first;
  {
    auto staged = st.stage(sd);
    first = addresses(staged);
  }
  auto free_after_first = proc.segment_free_bytes();
  auto pooled = st.pooled_bytes();
  for (int i = 0; i < 3; ++i) {
    auto staged = st.stage(trainer_state(2.0f + i));
    BOOST_TEST((addresses(staged) == first), "save " << i << " moved to new buffers");
    BOOST_TEST(staged.at("model").as_dict().at("w").as_tensor().data_as<float>()[7] == 2.0f + i);
  }
  BOOST_TEST(proc.segment_free_bytes() == free_after_first);  // nothing new allocated
  BOOST_TEST(st.pooled_bytes() == pooled);
}

BOOST_AUTO_TEST_CASE(a_busy_generation_is_never_overwritten) {
  checkpoint_process proc(options());
  stager st(proc, {.generations = 2, .acquire_timeout = 200ms});
  auto a = st.stage(trainer_state(1.0f));
  auto b = st.stage(trainer_state(2.0f));
  BOOST_TEST((addresses(a) != addresses(b)));  // double buffering: two sets of buffers
  BOOST_TEST(st.generations_in_use() == 2u);
  try {
    (void)st.stage(trainer_state(3.0f));
    BOOST_FAIL("a third snapshot must wait for a free generation, not overwrite one");
  } catch (const error& e) {
    BOOST_TEST(static_cast<int>(e.kind()) == static_cast<int>(errc::timeout));
    BOOST_TEST(std::string(e.what()).find("still in use") != std::string::npos, e.what());
  }
  BOOST_TEST(a.at("model").as_dict().at("w").as_tensor().data_as<float>()[0] == 1.0f);
  BOOST_TEST(b.at("model").as_dict().at("w").as_tensor().data_as<float>()[0] == 2.0f);
  auto a_addresses = addresses(a);
  a = {};  // snapshot 1 is durable: its generation frees up
  auto c = st.stage(trainer_state(3.0f));
  BOOST_TEST((addresses(c) == a_addresses));
  BOOST_TEST(b.at("model").as_dict().at("w").as_tensor().data_as<float>()[0] == 2.0f);
}

BOOST_AUTO_TEST_CASE(async_staging_signals_done_and_keeps_call_order) {
  checkpoint_process proc(options());
  stager st(proc);
  auto s1 = st.stage_async(trainer_state(1.0f));
  auto s2 = st.stage_async(trainer_state(2.0f));
  s1.done.get();
  s2.done.get();
  BOOST_TEST(s1.snapshot.get().at("model").as_dict().at("w").as_tensor().data_as<float>()[3] == 1.0f);
  BOOST_TEST(s2.snapshot.get().at("model").as_dict().at("w").as_tensor().data_as<float>()[3] == 2.0f);
  st.close();
  BOOST_CHECK_THROW(st.stage(trainer_state(0.0f)), error);
}
