#include "store_bridge.hpp"

#include <pybind11/stl.h>

#include "shmckpt/error.hpp"

namespace py = pybind11;
using namespace pybind11::literals;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace shmckpt::python {

namespace {
// How long a set or remove may take the Python thread before the commit gives up on it.
constexpr auto set_bound = 60s;
// How far past a get's deadline its answer may come (the Python thread polls in small steps).
constexpr auto get_grace = 5s;
}  // namespace

void store_bridge::set(const std::string& key, const std::string& value) {
  auto now = clock_type::now();
  call("set", key, value, now, now + set_bound);
}

std::optional<std::string> store_bridge::get(const std::string& key,
                                             clock_type::time_point deadline) {
  auto now = clock_type::now();
  auto d = std::max(deadline, now);
  return call("get", key, {}, d, d + get_grace);
}

void store_bridge::remove(const std::string& key) {
  auto now = clock_type::now();
  call("remove", key, {}, now, now + set_bound);
}

std::optional<std::string> store_bridge::call(std::string op, const std::string& key,
                                              std::string value,
                                              clock_type::time_point deadline,
                                              clock_type::time_point bound) {
  std::unique_lock lk(m_);
  if (closed_)
    throw error(errc::closed, "the commit store's Python thread has stopped (the checkpointer "
                              "was closed); '" + key + "' was not " +
                                  (op == "get" ? "read" : "written"));
  const auto id = next_id_++;
  double timeout_s = std::chrono::duration<double>(deadline - clock_type::now()).count();
  requests_.push_back({id, op, key, std::move(value), std::max(0.0, timeout_s)});
  results_[id];
  cv_.notify_all();
  bool answered = cv_.wait_until(lk, bound, [&] { return closed_ || results_[id].done; });
  result r = std::move(results_[id]);
  results_.erase(id);
  if (!answered || !r.done) {
    // Not handed out yet: take it back, so the Python thread never runs it late.
    for (auto it = requests_.begin(); it != requests_.end(); ++it)
      if (it->id == id) {
        requests_.erase(it);
        break;
      }
    if (closed_)
      throw error(errc::closed, "the commit store's Python thread stopped while '" + key +
                                    "' was being " + (op == "get" ? "read" : "written"));
    throw error(errc::timeout, "the torch.distributed store did not answer a " + op + " of '" +
                                   key + "' in time (is its server alive?)");
  }
  if (!r.error.empty())
    throw error(errc::io_error, "the torch.distributed store failed a " + op + " of '" + key +
                                    "': " + r.error);
  return r.value;
}

py::object store_bridge::next(double timeout_s) {
  std::optional<request> req;
  {
    py::gil_scoped_release nogil;
    std::unique_lock lk(m_);
    cv_.wait_for(lk, std::chrono::duration<double>(std::max(0.0, timeout_s)),
                 [&] { return closed_ || !requests_.empty(); });
    if (!closed_ && !requests_.empty()) {
      req = std::move(requests_.front());
      requests_.pop_front();
    }
  }
  if (!req) return py::none();
  return py::make_tuple(req->id, req->op, req->key, py::bytes(req->value), req->timeout_s);
}

void store_bridge::answer(std::uint64_t id, const py::object& value) {
  std::optional<std::string> v;
  if (!value.is_none()) v = std::string(py::bytes(value));
  std::lock_guard g(m_);
  auto it = results_.find(id);
  if (it == results_.end()) return;  // given up on meanwhile
  it->second.done = true;
  it->second.value = std::move(v);
  cv_.notify_all();
}

void store_bridge::fail(std::uint64_t id, const std::string& message) {
  std::lock_guard g(m_);
  auto it = results_.find(id);
  if (it == results_.end()) return;
  it->second.done = true;
  it->second.error = message.empty() ? "unknown error" : message;
  cv_.notify_all();
}

void store_bridge::close() {
  std::lock_guard g(m_);
  closed_ = true;
  requests_.clear();
  cv_.notify_all();
}

bool store_bridge::closed() {
  std::lock_guard g(m_);
  return closed_;
}

void register_store_bridge(py::module_& m) {
  py::class_<store_bridge, std::shared_ptr<store_bridge>>(
      m, "StoreBridge", "A commit store served by a Python thread (internal; see shmckpt._store)")
      .def(py::init<>())
      .def("next", &store_bridge::next, "timeout"_a)
      .def("answer", &store_bridge::answer)
      .def("fail", &store_bridge::fail)
      .def("close", &store_bridge::close)
      .def_property_readonly("closed", &store_bridge::closed);
}

}  // namespace shmckpt::python
