// state.cpp — see state.hpp.
#include "state.hpp"

#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>

#include "baselines.hpp"
#include "stats.hpp"

namespace ckpt_bench {

using namespace shmckpt;

namespace {

// The tree of state.hpp; `make(i, nbytes)` supplies the memory of tensor i.
state_dict make_tree(std::uint64_t bytes, std::uint64_t count,
                     const std::function<tensor(std::size_t, std::size_t)>& make) {
  static const char* leaf[] = {"weight", "bias", "norm", "extra"};
  const std::size_t per = static_cast<std::size_t>(bytes / count);
  if (per < 4 || per % 4 != 0 || count % 4 != 0)
    throw std::invalid_argument("size " + std::to_string(bytes) + " cannot be split into " +
                                std::to_string(count) + " F32 tensors");
  dict model;
  for (std::size_t l = 0; l < count / 4; ++l) {
    dict layer;
    for (std::size_t k = 0; k < 4; ++k) layer.insert_or_assign(leaf[k], make(l * 4 + k, per));
    model.insert_or_assign("layer" + std::to_string(l), std::move(layer));
  }
  state_dict sd;
  sd.insert_or_assign("model", std::move(model));
  sd.insert_or_assign("step", std::int64_t{1000});
  sd.insert_or_assign("lr", 3e-4);
  return sd;
}

}  // namespace

private_state make_private_state(std::uint64_t bytes, std::uint64_t count) {
  private_state s;
  s.mem = private_buffer(bytes, 0x3c);
  std::byte* base = s.mem.get();
  auto owner = s.mem;
  s.sd = make_tree(bytes, count, [&](std::size_t i, std::size_t per) {
    return tensor(dtype::f32, {static_cast<std::int64_t>(per / 4)}, {base + i * per, per}, owner);
  });
  return s;
}

state_dict make_shared_state(checkpoint_process& p, std::uint64_t bytes, std::uint64_t count) {
  return make_tree(bytes, count, [&](std::size_t, std::size_t per) {
    tensor t = p.make_tensor(dtype::f32, {static_cast<std::int64_t>(per / 4)});
    std::memset(t.data(), 0x5a, per);
    return t;
  });
}

std::size_t segment_for(std::uint64_t bytes, std::uint64_t count, std::size_t copies) {
  return static_cast<std::size_t>(copies * (bytes + count * 256) + 16 * MiB);
}

}  // namespace ckpt_bench
