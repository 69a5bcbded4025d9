#define BOOST_TEST_MODULE protocol_test
#include <boost/test/unit_test.hpp>
#include <cstring>

#include "shmckpt/error.hpp"
#include "ipc/protocol.hpp"

using namespace shmckpt;
namespace p = shmckpt::protocol;

namespace {

// A fake "segment": a byte array whose offsets the encoder and decoder agree on.
struct arena {
  std::vector<std::byte> bytes = std::vector<std::byte>(4096);
  tensor make(dtype t, std::vector<std::int64_t> shape, std::size_t offset) {
    auto n = *tensor_nbytes(t, shape);
    return tensor(t, std::move(shape), {bytes.data() + offset, static_cast<std::size_t>(n)});
  }
  p::offset_function offset_of() {
    return [this](const tensor& t) {
      return static_cast<std::uint64_t>(t.data() - bytes.data());
    };
  }
  p::resolve_function resolve() {
    return [this](std::uint64_t off, std::uint64_t len) -> std::span<std::byte> {
      if (off > bytes.size() || len > bytes.size() - off)
        throw_error(errc::protocol_error, "out of bounds");
      return {bytes.data() + off, static_cast<std::size_t>(len)};
    };
  }
};

template <class F>
void expect_protocol_error(F&& f, const std::string& fragment) {
  try {
    f();
    BOOST_FAIL("expected a protocol error mentioning '" << fragment << "'");
  } catch (const error& e) {
    BOOST_TEST(static_cast<int>(e.kind()) == static_cast<int>(errc::protocol_error));
    BOOST_TEST(std::string(e.what()).find(fragment) != std::string::npos,
               "message '" << e.what() << "' lacks '" << fragment << "'");
  }
}

std::span<const std::byte, p::header_size> header_of(const std::vector<std::byte>& frame) {
  return std::span<const std::byte, p::header_size>(frame.data(), p::header_size);
}

}  // namespace

BOOST_AUTO_TEST_CASE(header_round_trips_with_fixed_little_endian_layout) {
  std::vector<std::byte> payload(5, std::byte{7});
  auto frame = p::make_frame(p::message_type::write_checkpoint, 0x1122334455667788ull, payload);
  BOOST_TEST(frame.size() == p::header_size + 5);
  // "SHCK" magic, the protocol version, type 3, id, length 5, reserved 0 — byte by byte.
  BOOST_TEST(std::memcmp(frame.data(), "SHCK", 4) == 0);
  BOOST_TEST(static_cast<int>(frame[4]) == p::protocol_version);
  BOOST_TEST(static_cast<int>(frame[6]) == 3);
  BOOST_TEST(static_cast<int>(frame[8]) == 0x88);
  BOOST_TEST(static_cast<int>(frame[15]) == 0x11);
  BOOST_TEST(static_cast<int>(frame[16]) == 5);
  auto h = p::decode_header(header_of(frame));
  BOOST_TEST(h.request_id == 0x1122334455667788ull);
  BOOST_TEST(h.payload_bytes == 5u);
  BOOST_TEST(h.type == static_cast<std::uint16_t>(p::message_type::write_checkpoint));
}

BOOST_AUTO_TEST_CASE(set_request_id_changes_only_the_id_of_an_encoded_frame) {
  std::vector<std::byte> payload{std::byte{1}, std::byte{2}, std::byte{3}};
  auto frame = p::make_frame(p::message_type::write_checkpoint, 0, payload);
  const auto before = frame;
  p::set_request_id(frame, 0x1122334455667788ull);
  BOOST_TEST((frame == p::make_frame(p::message_type::write_checkpoint, 0x1122334455667788ull,
                                     payload)));
  for (std::size_t i = 0; i < frame.size(); ++i)
    if (i < 8 || i >= 16)
      BOOST_TEST(static_cast<int>(frame[i]) == static_cast<int>(before[i]), "byte " << i);
  auto h = p::decode_header(header_of(frame));
  BOOST_TEST(h.request_id == 0x1122334455667788ull);
  BOOST_TEST(h.payload_bytes == 3u);
  // A buffer too short to hold a header is refused, not written past.
  std::vector<std::byte> short_frame(p::header_size - 1);
  try {
    p::set_request_id(short_frame, 1);
    BOOST_FAIL("expected invalid_argument");
  } catch (const error& e) {
    BOOST_TEST(static_cast<int>(e.kind()) == static_cast<int>(errc::invalid_argument));
    BOOST_TEST(std::string(e.what()).find("23 bytes") != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(malformed_headers_are_rejected_with_a_reason) {
  auto good = p::make_frame(p::message_type::ping, 9, {});
  auto bad = good;
  bad[0] = std::byte{'X'};
  expect_protocol_error([&] { p::decode_header(header_of(bad)); }, "magic");
  bad = good;
  bad[4] = std::byte{static_cast<unsigned char>(p::protocol_version + 1)};
  expect_protocol_error([&] { p::decode_header(header_of(bad)); },
                        "version " + std::to_string(p::protocol_version + 1));
  bad = good;
  bad[4] = std::byte{1};  // a release before PROGRESS frames
  expect_protocol_error([&] { p::decode_header(header_of(bad)); }, "version 1");
  bad = good;
  bad[6] = std::byte{99};
  expect_protocol_error([&] { p::decode_header(header_of(bad)); }, "unknown message type");
  bad = good;
  bad[20] = std::byte{1};
  expect_protocol_error([&] { p::decode_header(header_of(bad)); }, "reserved");
  bad = good;
  std::uint32_t huge = p::max_payload_bytes + 1;
  std::memcpy(bad.data() + 16, &huge, 4);
  expect_protocol_error([&] { p::decode_header(header_of(bad)); }, "payload");
}

BOOST_AUTO_TEST_CASE(init_request_round_trips) {
  p::init_request r;
  r.init_function = "setup";
  r.init_args = {{"a", "1"}, {"b", ""}};
  r.writer_factory = "default";
  r.writer_args = {{"rank", "3"}, {"world_size", "8"}};
  r.segment_bytes = 1ull << 33;
  auto back = p::decode_init(p::encode_init(r));
  BOOST_TEST(back.init_function == "setup");
  BOOST_TEST((back.init_args == r.init_args));
  BOOST_TEST(back.writer_factory == "default");
  BOOST_TEST((back.writer_args == r.writer_args));
  BOOST_TEST(back.segment_bytes == r.segment_bytes);
}

BOOST_AUTO_TEST_CASE(write_request_round_trips_every_value_kind) {
  arena a;
  state_dict sd{
      {"model", dict{{"w", a.make(dtype::f32, {2, 3}, 64)}, {"b", a.make(dtype::bf16, {3}, 128)}}},
      {"step", 7},
      {"lr", 0.001},
      {"flag", true},
      {"name", "run-1"},
      {"nothing", none},
      {"betas", list{0.9, 0.999, list{}, dict{}}},
      {"scalar", a.make(dtype::i64, {}, 192)},
  };
  auto payload = p::encode_write("/ckpt/step_7", sd, {{"epoch", "2"}}, a.offset_of());
  auto back = p::decode_write(payload, a.resolve());
  BOOST_TEST(back.path == "/ckpt/step_7");
  BOOST_TEST(back.kw.at("epoch") == "2");
  BOOST_TEST((back.state == sd));
  // The decoded tensors are views at the same offsets, not copies.
  BOOST_TEST(back.state.at("model").as_dict().at("w").as_tensor().data() == a.bytes.data() + 64);
  // Key order survives.
  std::vector<std::string> keys;
  for (const auto& [k, v] : back.state) keys.push_back(k);
  BOOST_TEST((keys == std::vector<std::string>{"model", "step", "lr", "flag", "name", "nothing",
                                               "betas", "scalar"}));
}

BOOST_AUTO_TEST_CASE(int_keyed_dicts_and_tuples_cross_the_wire_as_themselves) {
  arena a;
  dict state = dict::with_int_keys();
  state["0"] = dict{{"exp_avg", a.make(dtype::f32, {2}, 64)}, {"step", 3}};
  state["-7"] = dict{};
  state_dict sd{{"optimizer", dict{{"state", state},
                                   {"param_groups", list{dict{{"betas", tuple{0.9, 0.999}},
                                                              {"params", list{0, 1}}}}}}},
                {"empty_tuple", tuple{}},
                {"empty_int_dict", dict::with_int_keys()}};
  auto back = p::decode_write(p::encode_write("/c", sd, {}, a.offset_of()), a.resolve());
  BOOST_TEST((back.state == sd));
  const dict& st = back.state.at("optimizer").as_dict().at("state").as_dict();
  BOOST_TEST((st.keys() == key_type::integer));
  BOOST_TEST((back.state.at("empty_int_dict").as_dict().keys() == key_type::integer));
  const value& betas =
      back.state.at("optimizer").as_dict().at("param_groups").as_list()[0].as_dict().at("betas");
  BOOST_TEST((betas.type() == kind::tuple));
  BOOST_TEST((back.state.at("empty_tuple").type() == kind::tuple));
  // A string-keyed dict and a list with the same contents are different values.
  state_dict as_list = sd;
  as_list.at("empty_tuple") = list{};
  BOOST_TEST(!(as_list == sd));
}

BOOST_AUTO_TEST_CASE(response_round_trips) {
  p::response r;
  r.code = static_cast<std::uint32_t>(errc::child_failed);
  r.message = "writer failed: disk on fire";
  r.payload = {std::byte{1}, std::byte{2}};
  auto back = p::decode_response(p::encode_response(r));
  BOOST_TEST(!back.ok());
  BOOST_TEST(back.code == r.code);
  BOOST_TEST(back.message == r.message);
  BOOST_TEST((back.payload == r.payload));
  BOOST_TEST(p::decode_response(p::encode_response({})).ok());
}

BOOST_AUTO_TEST_CASE(every_truncation_of_a_write_request_is_rejected) {
  arena a;
  state_dict sd{{"t", a.make(dtype::f32, {4}, 0)}, {"l", list{1, "x", dict{{"k", 2.5}}}}};
  auto payload = p::encode_write("/x", sd, {{"k", "v"}}, a.offset_of());
  for (std::size_t n = 0; n < payload.size(); ++n) {
    std::span<const std::byte> cut(payload.data(), n);
    BOOST_CHECK_THROW(p::decode_write(cut, a.resolve()), error);
  }
  // Trailing garbage is rejected too.
  payload.push_back(std::byte{0});
  expect_protocol_error([&] { p::decode_write(payload, a.resolve()); }, "trailing");
}

BOOST_AUTO_TEST_CASE(hostile_descriptors_are_rejected_not_trusted) {
  arena a;
  auto encode_one = [&](const tensor& t) {
    return p::encode_write("/x", state_dict{{"t", t}}, {}, a.offset_of());
  };
  // Locate the tensor record: path(4+2) kwargs(4) form(1) dict size(4) key(4+1) tag(1) dtype(1)
  // rank(1).
  const std::size_t dtype_at = 6 + 4 + 1 + 4 + 5 + 1;
  const std::size_t dims_at = dtype_at + 2;

  auto payload = encode_one(a.make(dtype::f32, {2, 2}, 0));
  auto bad = payload;
  bad[dtype_at] = std::byte{200};
  expect_protocol_error([&] { p::decode_write(bad, a.resolve()); }, "unknown dtype");

  bad = payload;  // a dimension that makes the length disagree with dtype × shape
  std::int64_t d = 3;
  std::memcpy(bad.data() + dims_at, &d, 8);
  expect_protocol_error([&] { p::decode_write(bad, a.resolve()); }, "need 24");

  bad = payload;  // negative dimension
  d = -1;
  std::memcpy(bad.data() + dims_at, &d, 8);
  expect_protocol_error([&] { p::decode_write(bad, a.resolve()); }, "negative");

  bad = payload;  // a product that overflows 64 bits
  d = std::int64_t{1} << 62;
  std::memcpy(bad.data() + dims_at, &d, 8);
  std::memcpy(bad.data() + dims_at + 8, &d, 8);
  expect_protocol_error([&] { p::decode_write(bad, a.resolve()); }, "overflow");

  bad = payload;  // offset outside the segment: the resolver refuses
  std::uint64_t off = 1ull << 40;
  std::memcpy(bad.data() + dims_at + 16, &off, 8);
  BOOST_CHECK_THROW(p::decode_write(bad, a.resolve()), error);

  // A dict claiming four billion entries must fail before allocating anything.
  bad = payload;
  std::uint32_t many = 0xFFFFFFFFu;
  std::memcpy(bad.data() + 11, &many, 4);
  expect_protocol_error([&] { p::decode_write(bad, a.resolve()); }, "claims");

  // Unknown value tag.
  bad = payload;
  bad[dtype_at - 1] = std::byte{42};
  expect_protocol_error([&] { p::decode_write(bad, a.resolve()); }, "unknown value tag");
}

// A descriptor placed in the segment (a tree marked once, written many times): the frame names
// its place, and the child decodes it there with the same bounds checks as in a frame.
BOOST_AUTO_TEST_CASE(a_descriptor_in_the_segment_decodes_like_one_in_the_frame) {
  arena a;
  state_dict sd{{"w", a.make(dtype::f32, {4, 2}, 64)},
                {"opt", dict{{"step", 7}, {"betas", tuple{0.9, 0.999}}}},
                {"names", list{"a", "b"}}};
  const auto tree = p::encode_tree(sd, a.offset_of());
  const std::size_t at = 1024;
  std::memcpy(a.bytes.data() + at, tree.data(), tree.size());
  const p::shared_tree place{.offset = at, .bytes = tree.size()};
  const auto payload = p::encode_write("/ckpt/step7", place, {{"k", "v"}});
  BOOST_TEST(payload.size() == 4 + 11 + 4 + 2 * (4 + 1) + 1 + 16);  // path, kwargs, form, place
  auto back = p::decode_write(payload, a.resolve());
  BOOST_TEST(back.path == "/ckpt/step7");
  BOOST_TEST(back.kw.at("k") == "v");
  BOOST_TEST((back.state == sd));
  BOOST_TEST(back.state.at("w").as_tensor().data() == a.bytes.data() + 64);
  // The same tree in the frame decodes to the same state dict.
  BOOST_TEST((p::decode_write(p::encode_write("/ckpt/step7", sd, {{"k", "v"}}, a.offset_of()),
                              a.resolve())
                  .state == sd));

  // A place outside the segment: the resolver refuses it.
  auto out = p::encode_write("/x", p::shared_tree{.offset = 4000, .bytes = 200}, {});
  expect_protocol_error([&] { p::decode_write(out, a.resolve()); }, "out of bounds");
  // A length over the payload limit is refused before it is resolved.
  auto huge = p::encode_write("/x", p::shared_tree{.offset = 0, .bytes = 1ull << 40}, {});
  expect_protocol_error([&] { p::decode_write(huge, a.resolve()); }, "over the limit");
  // A place one byte short of the tree, or one byte past it: truncated, or trailing bytes.
  auto shorter = p::encode_write("/x", p::shared_tree{.offset = at, .bytes = tree.size() - 1}, {});
  BOOST_CHECK_THROW(p::decode_write(shorter, a.resolve()), error);
  auto longer = p::encode_write("/x", p::shared_tree{.offset = at, .bytes = tree.size() + 1}, {});
  expect_protocol_error([&] { p::decode_write(longer, a.resolve()); }, "trailing");
  // Garbage where the place points: rejected like a hostile frame.
  std::memset(a.bytes.data() + at, 0xFF, tree.size());
  BOOST_CHECK_THROW(p::decode_write(payload, a.resolve()), error);
  // An unknown form byte.
  auto bad = payload;
  bad[4 + 11 + 4 + 2 * (4 + 1)] = std::byte{2};
  expect_protocol_error([&] { p::decode_write(bad, a.resolve()); }, "form 2 is unknown");
  // Every truncation of the short payload is rejected.
  for (std::size_t n = 0; n < payload.size(); ++n)
    BOOST_CHECK_THROW(p::decode_write(std::span(payload.data(), n), a.resolve()), error);
}

BOOST_AUTO_TEST_CASE(deep_nesting_is_capped) {
  arena a;
  dict sd;
  dict* cur = &sd;
  for (std::size_t i = 0; i < p::max_depth + 2; ++i) cur = &cur->operator[]("d").raw().emplace<dict>();
  BOOST_CHECK_THROW(p::encode_write("/x", sd, {}, a.offset_of()), error);
}

BOOST_AUTO_TEST_CASE(random_corruption_never_crashes_the_decoder) {
  arena a;
  state_dict sd{{"t", a.make(dtype::f16, {8}, 0)}, {"n", list{1, 2.0, "three", none}}};
  auto payload = p::encode_write("/p", sd, {{"a", "b"}}, a.offset_of());
  std::uint64_t x = 88172645463325252ull;  // xorshift: deterministic
  int rejected = 0;
  for (int round = 0; round < 20000; ++round) {
    auto bad = payload;
    for (int k = 0; k < 3; ++k) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      bad[x % bad.size()] = static_cast<std::byte>(x >> 32);
    }
    try {
      (void)p::decode_write(bad, a.resolve());
    } catch (const error&) {
      ++rejected;
    }
  }
  BOOST_TEST(rejected > 0);
}

BOOST_AUTO_TEST_CASE(a_descriptor_with_too_many_values_is_rejected) {
  arena a;
  // path "/x", no kwargs, one dict entry "l" holding a list of max_values + 1 nones: every value
  // is one byte on the wire but ~100 in memory, so the count is capped.
  auto payload = p::encode_write("/x", state_dict{{"l", list{}}}, {}, a.offset_of());
  std::uint32_t n = static_cast<std::uint32_t>(p::max_values + 1);
  std::memcpy(payload.data() + payload.size() - 4, &n, 4);
  payload.resize(payload.size() + n, std::byte{0});
  expect_protocol_error([&] { p::decode_write(payload, a.resolve()); }, "more than");
}

BOOST_AUTO_TEST_CASE(progress_frames_round_trip_and_are_bounded) {
  auto frame = p::make_frame(p::message_type::progress, 7, p::encode_progress("writing: 3 of 8"));
  auto h = p::decode_header(header_of(frame));
  BOOST_TEST(h.type == 0x101);
  BOOST_TEST(h.request_id == 7u);
  std::span<const std::byte> payload(frame.data() + p::header_size, h.payload_bytes);
  BOOST_TEST(p::decode_progress(payload) == "writing: 3 of 8");

  // Long descriptions are cut at a character boundary, never inside a UTF-8 sequence.
  std::string longer(p::max_progress_bytes - 1, 'a');
  longer += "\xc3\xa9\xc3\xa9";  // "éé" straddles the limit
  auto cut = p::decode_progress(p::encode_progress(longer));
  BOOST_TEST(cut == std::string(p::max_progress_bytes - 1, 'a'));

  // A hostile peer's oversized description is refused, as is trailing junk.
  std::vector<std::byte> big(4 + p::max_progress_bytes + 1, std::byte{'x'});
  std::uint32_t n = p::max_progress_bytes + 1;
  std::memcpy(big.data(), &n, 4);
  expect_protocol_error([&] { p::decode_progress(big); }, "progress description");
  auto junk = p::encode_progress("ok");
  junk.push_back(std::byte{0});
  expect_protocol_error([&] { p::decode_progress(junk); }, "PROGRESS payload");
}

BOOST_AUTO_TEST_CASE(error_codes_on_the_wire_keep_their_values) {
  // The values are pinned by static_asserts in protocol.hpp; unknown ones degrade safely.
  BOOST_TEST(static_cast<int>(p::errc_from_wire(6)) == static_cast<int>(errc::timeout));
  BOOST_TEST(static_cast<int>(p::errc_from_wire(11)) == static_cast<int>(errc::unsupported));
  BOOST_TEST(static_cast<int>(p::errc_from_wire(12)) == static_cast<int>(errc::child_failed));
  BOOST_TEST(static_cast<int>(p::errc_from_wire(0xFFFFFFFFu)) ==
             static_cast<int>(errc::child_failed));
}
