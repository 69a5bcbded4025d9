#define BOOST_TEST_MODULE state_dict_test
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <limits>

#include "core/dict_build.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/state_dict.hpp"
#include "test_support.hpp"

using namespace shmckpt;
using shmckpt::test::expect_error;

BOOST_AUTO_TEST_CASE(dtype_names_and_sizes_cover_the_safetensors_set) {
  for (std::size_t i = 0; i < dtype_count; ++i) {
    auto t = static_cast<dtype>(i);
    BOOST_TEST(!dtype_name(t).empty());
    BOOST_TEST((dtype_from_name(dtype_name(t)) == std::optional<dtype>(t)));
    BOOST_TEST(dtype_bits(t) > 0u);
  }
  BOOST_TEST(dtype_bits(dtype::bf16) == 16u);
  BOOST_TEST(dtype_bits(dtype::c64) == 64u);
  BOOST_TEST(!dtype_from_name("F128").has_value());
  // The whole safetensors 0.8 list, FNUZ floats included.
  for (std::string_view n : {"BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3",
                             "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16",
                             "I32", "U32", "F32", "C64", "F64", "I64", "U64"})
    BOOST_TEST(dtype_from_name(n).has_value(), n);
  BOOST_TEST(dtype_bits(dtype::f8_e4m3fnuz) == 8u);
  std::vector<std::int64_t> s{3};
  BOOST_TEST(!tensor_nbytes(dtype::f4, s).has_value());  // 12 bits: not whole bytes
  s = {4};
  BOOST_TEST(*tensor_nbytes(dtype::f6_e2m3, s) == 3u);
  s = {-1};
  BOOST_TEST(!tensor_nbytes(dtype::f32, s).has_value());
  s = {std::int64_t{1} << 40, std::int64_t{1} << 40};
  BOOST_TEST(!tensor_nbytes(dtype::f32, s).has_value());
}

BOOST_AUTO_TEST_CASE(tensor_checks_its_size_and_shares_memory_on_copy) {
  std::vector<float> mem(6);
  std::span<std::byte> bytes{reinterpret_cast<std::byte*>(mem.data()), 24};
  tensor t(dtype::f32, {2, 3}, bytes);
  tensor u = t;
  u.data_as<float>()[4] = 5.0f;
  BOOST_TEST(mem[4] == 5.0f);
  BOOST_TEST(t.numel() == 6);
  BOOST_CHECK_THROW(tensor(dtype::f32, {2, 2}, bytes), error);
  BOOST_CHECK_THROW(t.data_as<double>(), error);
  auto c = t.clone();
  c.data_as<float>()[0] = 1.0f;
  BOOST_TEST(mem[0] == 0.0f);
  BOOST_TEST(!(c == t));
}

BOOST_AUTO_TEST_CASE(dict_keeps_insertion_order_and_finds_keys) {
  dict d;
  d["z"] = 1;
  d["a"] = 2;
  d["m"] = list{1, 2.5, "s", none, true};
  d.insert_or_assign("a", 3);
  std::vector<std::string> keys;
  for (auto& [k, v] : d) keys.push_back(k);
  BOOST_TEST((keys == std::vector<std::string>{"z", "a", "m"}));
  BOOST_TEST(d.at("a").as_int() == 3);
  BOOST_TEST(d.erase("z"));
  BOOST_TEST(d.at("m").as_list().size() == 5u);
  BOOST_TEST(d.find("z") == nullptr);
  BOOST_CHECK_THROW(d.at("nope"), error);
  BOOST_CHECK_THROW(d.at("a").as_string(), error);
}

BOOST_AUTO_TEST_CASE(value_equality_is_deep_and_bitwise_for_doubles) {
  double nan = std::numeric_limits<double>::quiet_NaN();
  BOOST_TEST((value(nan) == value(nan)));
  BOOST_TEST(!(value(0.0) == value(-0.0)));
  BOOST_TEST(!(value(1) == value(1.0)));
  dict a{{"t", tensor::zeros(dtype::i16, {2})}, {"x", dict{{"y", list{1}}}}};
  dict b = deep_clone(a);
  BOOST_TEST((a == b));
  b.at("t").as_tensor().data_as<std::int16_t>()[1] = 7;
  BOOST_TEST(!(a == b));
}

BOOST_AUTO_TEST_CASE(flattened_names_join_keys_and_indexes) {
  dict d{{"model", dict{{"w", tensor::zeros(dtype::f32, {1})}}},
         {"opt", dict{{"state", list{dict{{"m", tensor::zeros(dtype::f32, {2})}}}}}}};
  std::vector<std::string> names;
  for_each_tensor(d, [&](const std::string& n, const tensor&) { names.push_back(n); });
  BOOST_TEST((names == std::vector<std::string>{"model.w", "opt.state.0.m"}));
  auto tot = count_tensors(d);
  BOOST_TEST(tot.count == 2u);
  BOOST_TEST(tot.bytes == 12u);
}

BOOST_AUTO_TEST_CASE(map_tensors_replaces_tensors_in_order_and_keeps_everything_else) {
  dict d{{"a", tensor::zeros(dtype::f32, {1})},
         {"n", list{1, "x", dict{{"b", tensor::zeros(dtype::i8, {2})}}}},
         {"s", 2.5}};
  std::vector<std::int64_t> seen;
  auto out = map_tensors(d, [&](const tensor& t) {
    seen.push_back(t.numel());
    return tensor::zeros(dtype::u8, {static_cast<std::int64_t>(seen.size())});
  });
  BOOST_TEST((seen == std::vector<std::int64_t>{1, 2}));
  BOOST_TEST((out.at("a").as_tensor().type() == dtype::u8));
  BOOST_TEST(out.at("n").as_list()[2].as_dict().at("b").as_tensor().numel() == 2);
  BOOST_TEST(out.at("n").as_list()[1].as_string() == "x");
  BOOST_TEST(out.at("s").as_double() == 2.5);
  BOOST_TEST((d.at("a").as_tensor().type() == dtype::f32));  // the source is untouched
}

BOOST_AUTO_TEST_CASE(integer_keyed_dicts_hold_canonical_int64_text_only) {
  for (std::string_view ok : {"0", "7", "-3", "9223372036854775807", "-9223372036854775808"})
    BOOST_TEST(is_canonical_int_key(ok), ok);
  for (std::string_view bad : {"", "-", "-0", "007", "+1", "1.0", " 1", "9223372036854775808",
                               "-9223372036854775809", "12345678901234567890", "x"})
    BOOST_TEST(!is_canonical_int_key(bad), bad);

  dict d = dict::with_int_keys();
  d["1"] = 10;
  d.insert_or_assign("-2", 20);
  BOOST_TEST((d.keys() == key_type::integer));
  expect_error([&] { d["01"]; }, errc::invalid_argument, "canonical decimal");
  expect_error([&] { d.insert_or_assign("w", 1); }, errc::invalid_argument, "integer-keyed dict");
  BOOST_TEST(d.size() == 2u);  // a refused key changes nothing

  dict s{{"a", 1}};
  expect_error([&] { s.set_key_type(key_type::integer); }, errc::invalid_argument, "key 'a'");
  BOOST_TEST((s.keys() == key_type::string));
  dict n{{"3", 1}};
  n.set_key_type(key_type::integer);
  BOOST_TEST((n.keys() == key_type::integer));
  // The key type is part of the value: {3: 1} is not {"3": 1}.
  BOOST_TEST(!(n == dict{{"3", 1}}));
  // Copies, moves and map_tensors keep it.
  dict copy = n;
  BOOST_TEST((copy.keys() == key_type::integer));
  BOOST_TEST((map_tensors(dict{{"x", n}}, [](const tensor& t) { return t; })
                  .at("x").as_dict().keys() == key_type::integer));
}

BOOST_AUTO_TEST_CASE(tuples_are_their_own_kind_and_flatten_like_lists) {
  tensor t = tensor::zeros(dtype::f32, {2});
  state_dict sd{{"g", tuple{t, 1, tuple{t}}}};
  BOOST_TEST((sd.at("g").type() == kind::tuple));
  BOOST_TEST(kind_name(kind::tuple) == "tuple");
  BOOST_TEST(sd.at("g").is_sequence());
  BOOST_TEST(sd.at("g").as_sequence().size() == 3u);
  expect_error([&] { sd.at("g").as_list(); }, errc::invalid_argument,
               "value is a tuple, not a list");
  std::vector<std::string> names;
  for_each_tensor(sd, [&](const std::string& n, const tensor&) { names.push_back(n); });
  BOOST_TEST((names == std::vector<std::string>{"g.0", "g.2.0"}));
  dict cloned = deep_clone(sd);
  BOOST_TEST((cloned.at("g").type() == kind::tuple));
  BOOST_TEST((cloned.at("g").as_tuple()[2].type() == kind::tuple));
  BOOST_TEST((cloned == sd));
  BOOST_TEST(!(value(tuple{1, 2}) == value(list{1, 2})));
}

BOOST_AUTO_TEST_CASE(for_each_node_visits_every_node_in_key_order_and_descends_on_request) {
  state_dict sd{{"model", dict{{"w", tensor::zeros(dtype::f32, {2})}, {"empty", dict{}}}},
                {"betas", tuple(list{0.9, 0.999})},
                {"step", 3}};
  std::vector<std::string> all, top;
  for_each_node(sd, [&](const std::string& path, const value&) {
    all.push_back(path);
    return true;
  });
  for_each_node(sd, [&](const std::string& path, const value&) {
    top.push_back(path);
    return false;
  });
  BOOST_TEST(all == (std::vector<std::string>{"model", "model.w", "model.empty", "betas", "betas.0",
                                               "betas.1", "step"}),
             boost::test_tools::per_element());
  BOOST_TEST(top == (std::vector<std::string>{"model", "betas", "step"}),
             boost::test_tools::per_element());
}

// The placement mark (lib/core/placement.hpp) lets write() skip walking a tree the library
// built in the segment; it must survive copies and const access and vanish on any change.
#include "core/placement.hpp"

BOOST_AUTO_TEST_CASE(placement_mark_survives_copies_and_reads_and_clears_on_any_change) {
  using detail::dict_placement;
  auto marked = [] {
    state_dict sd{{"a", dict{{"t", tensor::zeros(dtype::f32, {2})}}}, {"b", 1}};
    dict_placement::set(sd, 7);
    return sd;
  };
  {
    auto sd = marked();
    state_dict copy = sd;
    BOOST_TEST(dict_placement::get(copy) == 7u);
    state_dict moved = std::move(copy);
    BOOST_TEST(dict_placement::get(moved) == 7u);
    const state_dict& c = sd;
    (void)c.at("a");
    (void)c.find("b");
    for (const auto& kv : c) (void)kv;
    BOOST_TEST(c.contains("a"));
    BOOST_TEST(dict_placement::get(sd) == 7u);
  }
  std::vector<std::pair<const char*, std::function<void(state_dict&)>>> changes = {
      {"operator[]", [](state_dict& d) { d["c"] = 2; }},
      {"insert_or_assign", [](state_dict& d) { d.insert_or_assign("c", 2); }},
      {"find", [](state_dict& d) { (void)d.find("a"); }},
      {"at", [](state_dict& d) { (void)d.at("a"); }},
      {"erase", [](state_dict& d) { d.erase("b"); }},
      {"begin", [](state_dict& d) { (void)d.begin(); }},
      {"end", [](state_dict& d) { (void)d.end(); }},
  };
  for (auto& [name, change] : changes) {
    auto sd = marked();
    change(sd);
    BOOST_TEST(dict_placement::get(sd) == 0u, name << " left the mark in place");
  }
}

// Small dicts keep no hash index (lookups scan) and large ones do; a dict growing or shrinking
// across that size must find, keep order and erase exactly the same.
BOOST_AUTO_TEST_CASE(dict_lookups_order_and_erase_agree_below_and_above_the_index_size) {
  for (std::size_t n : {0u, 1u, 7u, 8u, 9u, 16u, 40u}) {
    dict d;
    if (n > 20) d.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      d.insert_or_assign("k" + std::to_string(i), static_cast<std::int64_t>(i));
      for (std::size_t j = 0; j <= i; ++j) BOOST_TEST(d.at("k" + std::to_string(j)).as_int() == j);
      BOOST_TEST(!d.contains("k" + std::to_string(i + 1)));
    }
    BOOST_TEST(d.size() == n);
    if (n) {  // reassigning keeps the place
      d.insert_or_assign("k0", std::int64_t{-1});
      BOOST_TEST(d.begin()->first == "k0");
      BOOST_TEST(d.begin()->second.as_int() == -1);
      BOOST_TEST(d.size() == n);
    }
    dict copy = d;
    // Erase every other key, then check what is left, in order, in the dict and its copy.
    for (std::size_t i = 0; i < n; i += 2) BOOST_TEST(d.erase("k" + std::to_string(i)));
    BOOST_TEST(!d.erase("absent"));
    std::size_t expect = 1;
    for (const auto& [k, v] : d) {
      BOOST_TEST(k == "k" + std::to_string(expect));
      BOOST_TEST(d.find(k) == &v);
      expect += 2;
    }
    BOOST_TEST(d.size() == n / 2);
    for (std::size_t i = 0; i < n; ++i) BOOST_TEST(d.contains("k" + std::to_string(i)) == (i % 2 == 1));
    BOOST_TEST(copy.size() == n);
    for (std::size_t i = 1; i < n; ++i) BOOST_TEST(copy.at("k" + std::to_string(i)).as_int() == i);
    // Grow the shrunk dict again past the index size.
    for (std::size_t i = 0; i < 20; ++i) d.insert_or_assign("z" + std::to_string(i), none);
    for (std::size_t i = 0; i < 20; ++i) BOOST_TEST(d.contains("z" + std::to_string(i)));
    for (std::size_t i = 1; i < n; i += 2) BOOST_TEST(d.contains("k" + std::to_string(i)));
    BOOST_TEST(d.size() == n / 2 + 20);
  }
}

// The tree decoders build each dict from all its items at once (dict_build::adopt). The result
// must be the dict insert_or_assign would have built: same order, working lookups (by scan up to
// eight keys, by the hash index above), repeated keys and refused keys caught.
BOOST_AUTO_TEST_CASE(a_dict_adopted_whole_behaves_like_one_built_by_inserts) {
  using shmckpt::detail::dict_build;
  auto items_of = [](std::size_t n, const std::string& prefix) {
    std::vector<dict::item> items;
    for (std::size_t i = 0; i < n; ++i)
      items.emplace_back(prefix + std::to_string(i), static_cast<std::int64_t>(i));
    return items;
  };
  for (std::size_t n : {0u, 1u, 3u, 8u, 9u, 40u}) {
    BOOST_TEST_CONTEXT("items: " << n) {
      auto items = items_of(n, "k");
      dict adopted;
      BOOST_TEST(dict_build::adopt(adopted, items));
      BOOST_TEST(items.empty());
      dict inserted;
      for (auto& [k, v] : items_of(n, "k")) inserted.insert_or_assign(k, v);
      BOOST_TEST((adopted == inserted));
      for (std::size_t i = 0; i < n; ++i) {
        const value* v = adopted.find("k" + std::to_string(i));
        BOOST_TEST_REQUIRE(v != nullptr);
        BOOST_TEST(v->as_int() == static_cast<std::int64_t>(i));
      }
      BOOST_TEST(adopted.find("absent") == nullptr);
      // Later changes keep the lookups right, across the switch to the hash index too.
      adopted.insert_or_assign("k0", std::int64_t{-1});
      BOOST_TEST(adopted.size() == std::max<std::size_t>(n, 1));
      BOOST_TEST(adopted.at("k0").as_int() == -1);
      for (std::size_t i = 0; i < 12; ++i) adopted.insert_or_assign("z" + std::to_string(i), none);
      for (std::size_t i = 0; i < n; ++i) BOOST_TEST(adopted.contains("k" + std::to_string(i)));
      if (n > 2) {
        BOOST_TEST(adopted.erase("k1"));
        BOOST_TEST(!adopted.contains("k1"));
        BOOST_TEST(adopted.at("k2").as_int() == 2);
      }
    }
  }
  for (std::size_t n : {2u, 5u, 30u}) {  // a repeated key, among few and among many
    BOOST_TEST_CONTEXT("repeat among " << n) {
      auto items = items_of(n, "k");
      items.emplace_back("k" + std::to_string(n - 1), none);
      dict d;
      BOOST_TEST(!dict_build::adopt(d, items));
      BOOST_TEST(d.empty());
      BOOST_TEST(d.find("k0") == nullptr);
      d.insert_or_assign("k0", true);  // still a working, empty dict
      BOOST_TEST(d.size() == 1u);
    }
  }
  dict ints = dict::with_int_keys();
  std::vector<dict::item> bad;
  bad.emplace_back("01", none);
  BOOST_CHECK_THROW(dict_build::adopt(ints, bad), error);
}
