// Recoverable errors at module boundaries: Status and Result<T>.
// Invariant violations use MPS_CHECK (check.h) instead.
#pragma once

#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace mpserve {

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status ok() { return Status(); }
  static Status error(std::string message) { return Status(std::move(message), true); }
  template <typename... Args>
  static Status errorf(fmt::format_string<Args...> f, Args&&... args) {
    return Status(fmt::format(f, std::forward<Args>(args)...), true);
  }

  bool is_ok() const { return !failed_; }
  explicit operator bool() const { return !failed_; }
  const std::string& message() const { return message_; }
  // Prefixes context ("while loading X: ") to an error; a no-op on success.
  Status with_context(const std::string& context) const {
    return failed_ ? Status(context + ": " + message_, true) : *this;
  }

 private:
  Status(std::string message, bool failed) : message_(std::move(message)), failed_(failed) {}
  std::string message_;
  bool failed_ = false;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}            // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}      // NOLINT: implicit by design

  bool is_ok() const { return v_.index() == 0; }
  explicit operator bool() const { return is_ok(); }
  const Status& status() const {
    static const Status kOk;
    return is_ok() ? kOk : std::get<1>(v_);
  }
  const std::string& error() const { return status().message(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& operator*() & { return std::get<0>(v_); }
  const T& operator*() const& { return std::get<0>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace mpserve

#define MPS_CONCAT_INNER(a, b) a##b
#define MPS_CONCAT(a, b) MPS_CONCAT_INNER(a, b)

// Returns the Status from the enclosing function when `expr` failed.
#define MPS_RETURN_IF_ERROR(expr)                 \
  do {                                            \
    ::mpserve::Status mps_status_ = (expr);       \
    if (!mps_status_.is_ok()) return mps_status_; \
  } while (0)

// `lhs = value of expr`, or returns its Status from the enclosing function.
#define MPS_ASSIGN_OR_RETURN(lhs, expr) MPS_ASSIGN_OR_RETURN_IMPL(MPS_CONCAT(mps_result_, __LINE__), lhs, expr)
#define MPS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.is_ok()) return tmp.status();          \
  lhs = std::move(tmp).value()
