#include "engine/engine_loop.h"

#include <algorithm>
#include <utility>

#include "common/check.h"

namespace mpserve::engine {

EngineLoop::EngineLoop(std::unique_ptr<Engine> engine) : engine_(std::move(engine)) {
  MPS_CHECK(engine_ != nullptr);
  stats_ = engine_->stats();
  thread_ = std::thread([this] { run(); });
}

EngineLoop::~EngineLoop() { drain_and_stop(Clock::now()); }

Result<uint64_t> EngineLoop::submit(GenerationRequest request, Callback on_output) {
  auto sub = std::make_unique<Submission>();
  sub->request = std::move(request);
  sub->on_output = std::move(on_output);
  std::future<Result<uint64_t>> result = sub->result.get_future();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (draining_) return Status::error("engine is shutting down");
    inbox_.push_back(std::move(sub));
  }
  cv_.notify_one();
  return result.get();
}

void EngineLoop::abort(uint64_t request_id) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    aborts_.push_back(request_id);
  }
  cv_.notify_one();
}

EngineStats EngineLoop::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void EngineLoop::drain_and_stop(Clock::time_point deadline) {
  std::lock_guard<std::mutex> join_lk(join_mu_);
  {
    std::lock_guard<std::mutex> lk(mu_);
    draining_ = true;
    deadline_ = std::min(deadline_, deadline);
  }
  cv_.notify_one();
  if (thread_.joinable()) {
    MPS_CHECK_MSG(thread_.get_id() != std::this_thread::get_id(), "drain_and_stop called from the engine thread");
    thread_.join();
  }
}

void EngineLoop::deliver(std::vector<RequestOutput> outputs) {
  for (const RequestOutput& out : outputs) {
    auto it = callbacks_.find(out.request_id);
    MPS_CHECK_MSG(it != callbacks_.end(), "output for unknown request {}", out.request_id);
    it->second(out);
    if (out.finished) callbacks_.erase(it);
  }
}

void EngineLoop::run() {
  for (;;) {
    std::vector<std::unique_ptr<Submission>> subs;
    std::vector<uint64_t> aborts;
    bool draining = false;
    Clock::time_point deadline;
    {
      std::unique_lock<std::mutex> lk(mu_);
      // Sleep while idle; wake for new work, aborts or shutdown. Draining needs no timed wait:
      // either the engine has work (we step) or it has none (we exit).
      cv_.wait(lk, [&] { return !inbox_.empty() || !aborts_.empty() || draining_ || engine_->has_unfinished(); });
      subs.swap(inbox_);
      aborts.swap(aborts_);
      draining = draining_;
      deadline = deadline_;
    }

    for (auto& sub : subs) {
      Result<uint64_t> id = engine_->add_request(std::move(sub->request));
      if (id.is_ok()) callbacks_.emplace(*id, std::move(sub->on_output));
      sub->result.set_value(std::move(id));
    }
    for (uint64_t id : aborts) engine_->abort_request(id);
    if (draining && Clock::now() >= deadline) {
      for (const auto& [id, cb] : callbacks_) engine_->abort_request(id);
    }
    if (draining && !engine_->has_unfinished()) break;

    std::vector<RequestOutput> outputs;
    if (engine_->has_unfinished()) outputs = engine_->step();
    // The snapshot goes out before the outputs, so a caller that has seen an output never reads
    // stats from before the step that produced it.
    EngineStats s = engine_->stats();
    {
      std::lock_guard<std::mutex> lk(mu_);
      stats_ = s;
    }
    deliver(std::move(outputs));
  }
  std::lock_guard<std::mutex> lk(mu_);
  stats_ = engine_->stats();
}

}  // namespace mpserve::engine
