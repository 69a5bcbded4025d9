#define BOOST_TEST_MODULE stager_test
#include "shmckpt/stager.hpp"

#include <boost/test/unit_test.hpp>

#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"
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

namespace {

// Tensors of sizes around the streaming threshold (256 KiB) and above the parallel one (8 MiB),
// at odd addresses and lengths, so that heads, tails and splits are all exercised.
state_dict odd_state(std::vector<std::byte>& backing) {
  const std::size_t sizes[] = {3, 256 << 10, (256 << 10) + 13, (1 << 20) - 7, (9 << 20) + 5, 64};
  std::size_t total = 0;
  for (auto n : sizes) total += n + 3;
  backing.resize(total + 64);
  for (std::size_t i = 0; i < backing.size(); ++i) backing[i] = std::byte((i * 131 + 7) & 0xFF);
  state_dict sd;
  std::size_t at = 1;  // misaligned on purpose
  int k = 0;
  for (auto n : sizes) {
    sd.insert_or_assign("t" + std::to_string(k++),
                        tensor(dtype::u8, {static_cast<std::int64_t>(n)}, {backing.data() + at, n}));
    at += n + 3;
  }
  return sd;
}

}  // namespace

BOOST_AUTO_TEST_CASE(forced_copy_strategies_produce_identical_snapshots) {
  auto o = options();
  o.segment_bytes = 0;  // no cap: three stagers' generations
  checkpoint_process proc(o);
  std::vector<std::byte> backing;
  auto sd = odd_state(backing);
  stager by_memcpy(proc, {.threads = 2, .generations = 1, .copy = copy_strategy::memcpy});
  stager by_streaming(proc, {.threads = 2, .generations = 1, .copy = copy_strategy::streaming});
  stager single(proc, {.threads = 1, .generations = 1, .copy = copy_strategy::streaming});
  auto a = by_memcpy.stage(sd);
  auto b = by_streaming.stage(sd);
  auto c = single.stage(sd);
  BOOST_TEST((a == sd));
  BOOST_TEST((b == sd));
  BOOST_TEST((c == sd));
  BOOST_TEST((addresses(a) != addresses(b)));  // really two copies
}

BOOST_AUTO_TEST_CASE(automatic_strategy_decides_from_real_copies_and_says_why) {
  if (const char* v = std::getenv("SHMCKPT_COPY_STRATEGY"); v && *v) return;  // forced outside
  auto o = options();
  o.segment_bytes = 0;
  checkpoint_process proc(o);
  stager st(proc, {.threads = 2, .generations = 1});
  // 40 MiB per snapshot: each is copied half with either strategy until both have 64 MiB.
  auto big = tensor::zeros(dtype::u8, {40 << 20});
  for (std::size_t i = 0; i < big.nbytes(); i += 4093) big.data()[i] = std::byte(i & 0xFF);
  state_dict sd{{"big", big}, {"small", tensor::zeros(dtype::f32, {3})}};
  for (int i = 0; i < 4; ++i) {
    auto snap = st.stage(sd);
    BOOST_TEST((snap == sd), "snapshot " << i << " differs from its source");
  }
  auto choice = automatic_copy_strategy();
  BOOST_TEST(choice.decided);
  BOOST_TEST((choice.strategy == copy_strategy::memcpy ||
              choice.strategy == copy_strategy::streaming));
  BOOST_TEST(choice.reason.find("GB/s") != std::string::npos, choice.reason);
  BOOST_TEST(choice.memcpy_bytes_per_second > 0);
  BOOST_TEST(choice.streaming_bytes_per_second > 0);
  // Decided once: later snapshots use the choice and stay identical.
  auto snap = st.stage(sd);
  BOOST_TEST((snap == sd));
}

BOOST_AUTO_TEST_CASE(a_snapshot_changed_after_staging_is_still_written_correctly) {
  // The snapshot is marked "every tensor in the segment" so write() skips its walk; a change
  // must clear that, or the private tensor added below would be sent as a bogus segment offset.
  test::temp_dir dir;
  checkpoint_process proc(options());
  stager st(proc);
  auto snap = st.stage(trainer_state(2.0f));
  auto added = tensor::zeros(dtype::f32, {8});
  added.data_as<float>()[3] = 7.0f;
  auto nested = tensor::zeros(dtype::f32, {2});
  nested.data_as<float>()[1] = -3.0f;
  snap.insert_or_assign("added", added);
  auto copy = snap;  // a copy of a changed tree is not marked either
  copy.at("model").as_dict().insert_or_assign("nested", nested);
  proc.write(snap, dir.path() / "a").get();
  proc.write(copy, dir.path() / "b").get();
  auto a = read(dir.path() / "a");
  auto b = read(dir.path() / "b");
  BOOST_TEST(a.at("added").as_tensor().data_as<float>()[3] == 7.0f);
  BOOST_TEST(b.at("model").as_dict().at("nested").as_tensor().data_as<float>()[1] == -3.0f);
  BOOST_TEST(b.at("model").as_dict().at("w").as_tensor().data_as<float>()[7] == 2.0f);
  // An unchanged snapshot (and a copy of it) goes through the marked path.
  auto fresh = st.stage(trainer_state(4.0f));
  const state_dict& view = fresh;
  BOOST_TEST(view.at("step").as_int() == 5);  // const access keeps the mark
  BOOST_TEST(proc.mark_shared(fresh));
  proc.write(state_dict(fresh), dir.path() / "c").get();
  BOOST_TEST(read(dir.path() / "c").at("model").as_dict().at("w").as_tensor().data_as<float>()[0] ==
             4.0f);
}
