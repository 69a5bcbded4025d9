#include "parent/request_queue.hpp"

#include <algorithm>
#include <cstring>
#include <thread>

#include "core/placement.hpp"
#include "ipc/segment.hpp"

namespace shmckpt::detail {

using proto_type = protocol::message_type;

namespace {

// A write whose tree holds at most this many values is encoded by the caller of write().
constexpr std::size_t inline_encode_values = 64;

bool all_shared_value(const segment& seg, const value& v, std::size_t level);

bool all_shared_dict(const segment& seg, const dict& d, std::size_t level) {
  if (level > max_nesting_depth) return false;
  for (const auto& [k, v] : d)
    if (!all_shared_value(seg, v, level)) return false;
  return true;
}

bool all_shared_value(const segment& seg, const value& v, std::size_t level) {
  switch (v.type()) {
    case kind::tensor: return seg.contains(v.as_tensor().data(), v.as_tensor().nbytes());
    case kind::dict: return all_shared_dict(seg, v.as_dict(), level + 1);
    case kind::list:
    case kind::tuple:
      if (level + 1 > max_nesting_depth) return false;
      for (const auto& e : v.as_sequence())
        if (!all_shared_value(seg, e, level + 1)) return false;
      return true;
    default: return true;
  }
}

// Whether `d` holds at most `budget` values in all (a bounded walk: it stops at the limit).
bool at_most_values(const dict& d, std::size_t& budget) {
  for (const auto& [k, v] : d) {
    if (budget == 0) return false;
    --budget;
    if (v.type() == kind::dict && !at_most_values(v.as_dict(), budget)) return false;
    if (v.is_sequence())
      for (const auto& e : v.as_sequence()) {
        if (budget == 0) return false;
        --budget;
        if (e.type() == kind::dict && !at_most_values(e.as_dict(), budget)) return false;
        if (e.is_sequence()) return false;  // nested sequences: not worth counting here
      }
  }
  return true;
}

}  // namespace

// ---- preparing ------------------------------------------------------------------------------

bool request_queue::marked_shared(const dict& d) const noexcept {
  return dict_placement::get(d) == segment_number_;
}

bool request_queue::all_shared(const dict& d) const { return all_shared_dict(seg_, d, 1); }

dict request_queue::share(const dict& d) {
  if (marked_shared(d)) return d;
  return map_tensors(d, [this](const tensor& t) {
    return seg_.contains(t.data(), t.nbytes()) ? t : seg_.copy_in(t);
  });
}

bool request_queue::small_tree(const dict& d) {
  std::size_t budget = inline_encode_values;
  return at_most_values(d, budget);
}

const placed_tree* request_queue::placed(const dict& d) const noexcept {
  return marked_shared(d) ? dict_placement::tree(d) : nullptr;
}

protocol::offset_function request_queue::offset_in_segment() const {
  return [this](const tensor& t) { return seg_.offset_of(t.data()); };
}

std::shared_ptr<const placed_tree> request_queue::place_tree(const dict& d) {
  auto bytes = protocol::encode_tree(d, offset_in_segment());
  auto block = seg_.allocate(bytes.size());
  std::memcpy(block.get(), bytes.data(), bytes.size());
  const auto offset = seg_.offset_of(block.get());
  return std::make_shared<const placed_tree>(
      placed_tree{.block = std::move(block), .offset = offset, .bytes = bytes.size()});
}

void request_queue::encode(job& j) const {
  std::vector<std::byte> payload;
  if (j.type == proto_type::write_checkpoint) {
    if (const placed_tree* t = placed(j.prepared))
      payload = protocol::encode_write(j.path.string(), {.offset = t->offset, .bytes = t->bytes},
                                       j.kw);
    else
      payload = protocol::encode_write(j.path.string(), j.prepared, j.kw, offset_in_segment());
  }
  j.frame = protocol::make_frame(j.type, j.id, payload);
  j.at = job::stage::encoded;
}

void request_queue::prepare(job& j, const state_dict& sd) {
  j.prepared = share(sd);
  encode(j);
}

// ---- bookkeeping ----------------------------------------------------------------------------

void request_queue::assign_id(job& j) {
  j.id = take_id();
  if (j.at == job::stage::encoded) protocol::set_request_id(j.frame, j.id);
}

void request_queue::push_back(std::shared_ptr<job> j) { queue_.push_back(std::move(j)); }

std::shared_ptr<job> request_queue::take_for_submit() {
  if (queue_.empty()) return nullptr;
  auto j = std::move(queue_.front());
  queue_.pop_front();
  submitting_ = true;
  return j;
}

void request_queue::requeue(std::shared_ptr<job> j) {
  j->at = job::stage::unencoded;
  j->frame.clear();
  auto at = std::find_if(queue_.begin(), queue_.end(),
                         [&](const auto& q) { return q->id > j->id; });
  queue_.insert(at, std::move(j));
}

void request_queue::mark_in_flight(std::shared_ptr<job> j) {
  auto id = j->id;
  in_flight_.emplace(id, std::move(j));
}

const job* request_queue::head_write() const noexcept {
  for (const auto& [id, j] : in_flight_)
    if (j->type == proto_type::write_checkpoint) return j.get();
  return nullptr;
}

bool request_queue::is_head_write(std::uint64_t id) const noexcept {
  auto it = in_flight_.find(id);
  return it != in_flight_.end() && it->second.get() == head_write();
}

std::shared_ptr<job> request_queue::take_answered(std::uint64_t id) {
  auto it = in_flight_.find(id);
  if (it == in_flight_.end()) return nullptr;
  auto j = std::move(it->second);
  in_flight_.erase(it);
  return j;
}

request_queue::recall_result request_queue::recall(bool requeue) {
  recall_result out;
  std::deque<std::shared_ptr<job>> back;
  for (auto& [id, j] : in_flight_) {
    if (j->type == proto_type::write_checkpoint && !out.served) {
      out.served = std::move(j);
    } else if (requeue) {
      j->at = job::stage::unencoded;
      j->frame.clear();
      back.push_back(std::move(j));
    } else {
      out.others.push_back(std::move(j));
    }
  }
  in_flight_.clear();
  queue_.insert(queue_.begin(), back.begin(), back.end());
  return out;
}

std::vector<std::shared_ptr<job>> request_queue::take_unsent() {
  std::vector<std::shared_ptr<job>> out(std::make_move_iterator(queue_.begin()),
                                        std::make_move_iterator(queue_.end()));
  queue_.clear();
  return out;
}

std::vector<std::shared_ptr<job>> request_queue::take_unanswered() {
  std::vector<std::shared_ptr<job>> out;
  for (auto& [id, j] : in_flight_) out.push_back(std::move(j));
  in_flight_.clear();
  return out;
}

// ---- resolving ------------------------------------------------------------------------------

void request_queue::resolve(std::shared_ptr<job> j, std::exception_ptr e) {
  abandon_pending(*j);
  auto done = std::move(j->done);
  j.reset();
  if (e)
    done.set_exception(e);
  else
    done.set_value();
}

void request_queue::abandon_pending(job& j) {
  if (j.pending) std::thread([f = std::move(*j.pending)] {}).detach();
  j.pending.reset();
}

}  // namespace shmckpt::detail
