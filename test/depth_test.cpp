// depth_test — trees of any depth get a clean invalid_argument, never a stack overflow, and the
// parent and the child draw the line at the same depth.
#define BOOST_TEST_MODULE depth_test
#include <boost/test/unit_test.hpp>

#include <chrono>

#include "shmckpt/checkpoint_process.hpp"
#include "shmckpt/checkpointer.hpp"
#include "shmckpt/error.hpp"
#include "ipc/protocol.hpp"
#include "shmckpt/state_dict.hpp"
#include "shmckpt/writer.hpp"
#include "test_support.hpp"

using namespace shmckpt;
using namespace std::chrono_literals;
using shmckpt::test::expect_error;
using shmckpt::test::temp_dir;

namespace {

// {"d": {"d": ... {"w": tensor}}}: `levels` levels in all, the root counting as 1. Built by
// moves only (no copy, no walk), alternating dicts and lists when `mixed`.
state_dict nested(std::size_t levels, bool mixed = false,
                  tensor leaf = tensor::zeros(dtype::f32, {2})) {
  value inner = dict{{"w", std::move(leaf)}};
  for (std::size_t i = 2; i < levels; ++i) {
    if (mixed && i % 2) {
      list l;
      l.push_back(std::move(inner));
      inner = value(std::move(l));
    } else {
      dict d;
      d.insert_or_assign("d", std::move(inner));
      inner = value(std::move(d));
    }
  }
  state_dict root;
  root.insert_or_assign("d", std::move(inner));
  return root;
}

checkpoint_process_options options() {
  checkpoint_process_options o;
  o.worker = worker_binary::custom;
  o.worker_path = test::test_child();
  o.segment_bytes = 8u << 20;
  o.shutdown_timeout = 30s;
  return o;
}

}  // namespace

BOOST_AUTO_TEST_CASE(very_deep_trees_are_refused_by_copy_and_walks_and_destroyed_safely) {
  for (std::size_t levels : {20'000u, 100'000u}) {
    BOOST_TEST_CONTEXT(levels << " levels") {
      for (bool mixed : {false, true}) {
        state_dict sd = nested(levels, mixed);
        expect_error([&] { state_dict copy = sd; }, errc::invalid_argument,
                     "nests deeper than 64 levels at 'd.");
        expect_error([&] { value v = value(sd); }, errc::invalid_argument, "deeper than 64");
        expect_error([&] { check_nesting_depth(sd); }, errc::invalid_argument, "deeper than 64");
        expect_error([&] { for_each_tensor(sd, [](const std::string&, const tensor&) {}); },
                     errc::invalid_argument, "deeper than 64");
        expect_error([&] { deep_clone(sd); }, errc::invalid_argument, "deeper than 64");
      }  // and each one is destroyed here, iteratively
    }
  }
}

BOOST_AUTO_TEST_CASE(the_limit_is_64_levels_for_copies_the_wire_and_the_file) {
  temp_dir dir;
  state_dict ok = nested(64), deep = nested(65);
  state_dict copy = ok;  // at the limit: fine
  BOOST_TEST((copy == ok));
  expect_error([&] { state_dict c = deep; }, errc::invalid_argument, "deeper than 64");

  // The parent's encoder and the child's decoder agree.
  auto offset = [](const tensor&) -> std::uint64_t { return 0; };
  std::vector<std::byte> backing(64);
  auto resolve = [&](std::uint64_t, std::uint64_t len) {
    return std::span<std::byte>(backing.data(), static_cast<std::size_t>(len));
  };
  auto payload = protocol::encode_write("/x", ok, {}, offset);
  BOOST_TEST(protocol::decode_write(payload, resolve).state.size() == 1u);
  expect_error([&] { protocol::encode_write("/x", deep, {}, offset); }, errc::invalid_argument,
               "deeper than 64");

  // The writer takes 64 and refuses 65, like the protocol.
  write_safetensors(dir / "ok.safetensors", ok);
  expect_error([&] { write_safetensors(dir / "deep.safetensors", deep); },
               errc::invalid_argument, "deeper than 64");
}

BOOST_AUTO_TEST_CASE(write_and_save_refuse_deep_trees_in_the_caller_and_stay_usable) {
  temp_dir dir;
  checkpoint_process ckpt(options());
  for (std::size_t levels : {65u, 20'000u, 100'000u}) {
    BOOST_TEST_CONTEXT(levels << " levels") {
      // A tree whose only tensor is already in the segment takes write()'s zero-copy path.
      state_dict shared = nested(levels, false, ckpt.make_tensor(dtype::f32, {2}));
      expect_error([&] { ckpt.write(std::move(shared), dir / "w").get(); },
                   errc::invalid_argument, "deeper than 64");
      // And one that needs its tensor copied into the segment.
      expect_error([&] { ckpt.write(nested(levels, true), dir / "w").get(); },
                   errc::invalid_argument, "deeper than 64");
    }
  }
  // The process is unharmed: a normal write still succeeds.
  ckpt.write(state_dict{{"step", 1}}, dir / "fine").get();

  checkpointer_config c;
  c.process = options();
  async_checkpointer ck(c);
  for (std::size_t levels : {65u, 20'000u, 100'000u}) {
    BOOST_TEST_CONTEXT(levels << " levels") {
      state_dict sd = nested(levels);
      expect_error([&] { ck.save(dir / "s", std::move(sd)); }, errc::invalid_argument,
                   "deeper than 64");
    }
  }
  auto f = ck.save(dir / "good", state_dict{{"step", 2}});
  f.write.get();
  ck.close();
  sync_checkpointer sync(c);
  state_dict sd = nested(100'000);
  expect_error([&] { sync.save(dir / "sync", sd); }, errc::invalid_argument, "deeper than 64");
}
