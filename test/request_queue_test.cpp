// The checkpoint process's request bookkeeping on its own (lib/parent/request_queue.hpp): ids,
// order, the one encoder of a job, what a lost child's in-flight jobs become, futures.
#define BOOST_TEST_MODULE request_queue_test
#include <boost/test/unit_test.hpp>

#include <span>

#include "core/placement.hpp"
#include "ipc/protocol.hpp"
#include "ipc/segment.hpp"
#include "parent/request_queue.hpp"
#include "shmckpt/error.hpp"

using namespace shmckpt;
using detail::job;
using detail::request_queue;
namespace p = shmckpt::protocol;

namespace {

struct fixture {
  segment seg = segment::create(segment_options{.initial_bytes = 1u << 20, .prefault = false});
  request_queue q{seg, 12345};

  std::shared_ptr<job> write_job(const std::string& path) {
    auto j = std::make_shared<job>();
    j->path = path;
    j->prepared["x"] = value(std::int64_t{7});
    return j;
  }
  std::shared_ptr<job> queued(const std::string& path) {
    auto j = write_job(path);
    q.assign_id(*j);
    q.push_back(j);
    return j;
  }
};

std::uint64_t frame_id(const std::vector<std::byte>& frame) {
  return p::decode_header(std::span<const std::byte, p::header_size>(frame.data(), p::header_size))
      .request_id;
}

std::vector<std::uint64_t> ids(const std::vector<std::shared_ptr<job>>& jobs) {
  std::vector<std::uint64_t> out;
  for (const auto& j : jobs) out.push_back(j ? j->id : 0);
  return out;
}

}  // namespace

BOOST_FIXTURE_TEST_CASE(ids_are_shared_with_the_handshake_and_increase, fixture) {
  BOOST_TEST(q.take_id() == 1u);  // a child's INIT
  BOOST_TEST(q.take_id() == 2u);  // and PING
  auto j = write_job("/a");
  q.assign_id(*j);
  BOOST_TEST(j->id == 3u);
  BOOST_TEST(q.take_id() == 4u);
}

BOOST_FIXTURE_TEST_CASE(a_frame_encoded_before_its_id_gets_the_id_through_the_codec, fixture) {
  auto early = write_job("/dir");
  q.encode(*early);  // in the caller of write(), before the id is known
  BOOST_TEST((early->at == job::stage::encoded));
  BOOST_TEST(frame_id(early->frame) == 0u);
  q.assign_id(*early);
  BOOST_TEST(frame_id(early->frame) == early->id);
  // The same bytes as a job encoded once its id was known.
  auto late = write_job("/dir");
  late->id = early->id;
  q.encode(*late);
  BOOST_TEST((early->frame == late->frame));
  // An unencoded job just takes the id; encoding later uses it.
  auto unencoded = write_job("/dir");
  q.assign_id(*unencoded);
  BOOST_TEST(unencoded->frame.empty());
  q.encode(*unencoded);
  BOOST_TEST(frame_id(unencoded->frame) == unencoded->id);
}

BOOST_FIXTURE_TEST_CASE(a_tree_with_a_placed_descriptor_is_sent_as_its_place, fixture) {
  dict tree;
  for (int i = 0; i < 300; ++i)
    tree.insert_or_assign("layer" + std::to_string(i), seg.make_tensor(dtype::f32, {4}));
  const dict tensors = tree;  // keeps the tensors' room taken to the end, unmarked
  const auto free_before = seg.free_bytes();
  auto placed = q.place_tree(tree);
  BOOST_TEST(seg.free_bytes() < free_before);  // the descriptor took room in the segment
  detail::dict_placement::set(tree, 12345, placed);
  BOOST_TEST(q.placed(tree) == placed.get());
  placed.reset();  // the tree holds it now

  auto j = write_job("/ckpt/a");
  j->prepared = tree;  // a copy shares the descriptor
  q.encode(*j);
  const auto header = p::decode_header(
      std::span<const std::byte, p::header_size>(j->frame.data(), p::header_size));
  BOOST_TEST(header.payload_bytes < 64u);  // path, kwargs and the place: not 300 tensors
  auto resolve = [this](std::uint64_t off, std::uint64_t len) { return seg.resolve(off, len); };
  auto back = p::decode_write(std::span(j->frame).subspan(p::header_size), resolve);
  BOOST_TEST(back.path == "/ckpt/a");
  BOOST_TEST((back.state == tree));

  // A change clears the mark and the descriptor with it: the tree then travels in the frame.
  auto changed = write_job("/ckpt/b");
  changed->prepared = tree;
  changed->prepared.insert_or_assign("extra", value(std::int64_t{1}));
  BOOST_TEST(q.placed(changed->prepared) == nullptr);
  q.encode(*changed);
  back = p::decode_write(std::span(changed->frame).subspan(p::header_size), resolve);
  BOOST_TEST(back.state.size() == 301u);
  BOOST_TEST(back.state.at("extra").as_int() == 1);

  // A mark of another segment is not this queue's: no descriptor is used.
  dict other = tree;
  detail::dict_placement::set(other, 999, q.place_tree(tree));
  BOOST_TEST(q.placed(other) == nullptr);

  // The room comes back when the last copy of the marked tree is gone.
  other = {};
  tree = {};
  j.reset();
  BOOST_TEST(seg.free_bytes() == free_before);
}

BOOST_FIXTURE_TEST_CASE(a_terminate_job_encodes_as_a_bodiless_terminate_frame, fixture) {
  auto t = std::make_shared<job>();
  t->type = p::message_type::terminate;
  q.assign_id(*t);
  q.encode(*t);
  auto h = p::decode_header(
      std::span<const std::byte, p::header_size>(t->frame.data(), p::header_size));
  BOOST_TEST(h.type == static_cast<std::uint16_t>(p::message_type::terminate));
  BOOST_TEST(h.payload_bytes == 0u);
  BOOST_TEST(h.request_id == t->id);
}

BOOST_FIXTURE_TEST_CASE(the_submit_thread_takes_jobs_in_order_and_requeues_in_id_order, fixture) {
  auto a = queued("/a");
  auto b = queued("/b");
  auto c = queued("/c");
  BOOST_TEST(q.idle() == false);
  auto taken = q.take_for_submit();
  BOOST_TEST(taken == a);
  BOOST_TEST(q.idle() == false);  // queued jobs remain, and the submit thread holds one
  q.encode(*taken);
  // Its child was lost before it was sent: back in front of b, unencoded.
  q.requeue(taken);
  BOOST_TEST((taken->at == job::stage::unencoded));
  BOOST_TEST(taken->frame.empty());
  q.release_submit();
  BOOST_TEST((ids(q.take_unsent()) == std::vector<std::uint64_t>{a->id, b->id, c->id}));
  BOOST_TEST(q.idle());
}

BOOST_FIXTURE_TEST_CASE(the_head_write_is_the_oldest_write_in_flight, fixture) {
  BOOST_TEST(q.head_write() == nullptr);
  auto a = queued("/a");
  auto b = queued("/b");
  q.take_for_submit();
  q.mark_in_flight(a);
  q.take_for_submit();
  q.mark_in_flight(b);
  q.release_submit();
  BOOST_TEST(q.head_write() == a.get());
  BOOST_TEST(q.is_head_write(a->id));
  BOOST_TEST(!q.is_head_write(b->id));
  BOOST_TEST(!q.is_head_write(999));
  BOOST_TEST(q.take_answered(999) == nullptr);
  BOOST_TEST(q.take_answered(a->id) == a);
  BOOST_TEST(q.head_write() == b.get());
}

BOOST_FIXTURE_TEST_CASE(a_lost_childs_writes_behind_the_served_one_go_back_in_front, fixture) {
  auto a = queued("/a");
  auto b = queued("/b");
  auto c = queued("/c");
  auto d = queued("/d");  // still queued: never sent
  for (auto& j : {a, b, c}) {
    BOOST_TEST(q.take_for_submit() == j);
    q.encode(*j);
    q.mark_in_flight(j);
    q.release_submit();
  }
  auto r = q.recall(/*requeue=*/true);
  BOOST_TEST(r.served == a);  // the one the child was serving: it fails
  BOOST_TEST(r.others.empty());
  BOOST_TEST(q.head_write() == nullptr);  // nothing in flight any more
  BOOST_TEST((b->at == job::stage::unencoded && c->at == job::stage::unencoded));
  BOOST_TEST((ids(q.take_unsent()) == std::vector<std::uint64_t>{b->id, c->id, d->id}));
}

BOOST_FIXTURE_TEST_CASE(without_a_replacement_a_lost_childs_writes_are_all_returned, fixture) {
  auto a = queued("/a");
  auto b = queued("/b");
  for (auto& j : {a, b}) {
    q.take_for_submit();
    q.mark_in_flight(j);
    q.release_submit();
  }
  auto r = q.recall(/*requeue=*/false);
  BOOST_TEST(r.served == a);
  BOOST_TEST((ids(r.others) == std::vector<std::uint64_t>{b->id}));
  BOOST_TEST(q.empty());
  BOOST_TEST(q.take_unanswered().empty());
}

BOOST_FIXTURE_TEST_CASE(resolving_releases_the_jobs_segment_copies_and_sets_the_future, fixture) {
  const auto free_before = seg.free_bytes();
  auto j = write_job("/a");
  dict sd;
  sd["w"] = tensor::zeros(dtype::f32, {1024});  // private: share() copies it into the segment
  j->prepared = q.share(sd);
  BOOST_TEST(seg.contains(j->prepared["w"].as_tensor().data(), 4096));
  BOOST_TEST(seg.free_bytes() < free_before);
  auto ok = j->done.get_future();
  request_queue::resolve(std::move(j));
  BOOST_TEST((ok.wait_for(std::chrono::seconds(0)) == std::future_status::ready));
  BOOST_TEST(seg.free_bytes() == free_before);
  ok.get();

  auto failing = write_job("/b");
  auto bad = failing->done.get_future();
  request_queue::resolve(std::move(failing),
                         std::make_exception_ptr(error(errc::closed, "closed for the test")));
  BOOST_CHECK_THROW(bad.get(), error);
}
