// Status helpers shared by every module: early-return macros over absl::Status / absl::StatusOr.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ADORE_STATUS_CONCAT_INNER_(a, b) a##b
#define ADORE_STATUS_CONCAT_(a, b) ADORE_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define ADORE_RETURN_IF_ERROR(expr)                 \
  do {                                              \
    ::absl::Status adore_status_ = (expr);          \
    if (!adore_status_.ok()) return adore_status_;  \
  } while (0)

// `lhs = value of expr` where expr is an absl::StatusOr<T>; returns its status on error.
#define ADORE_ASSIGN_OR_RETURN(lhs, expr) \
  ADORE_ASSIGN_OR_RETURN_IMPL_(ADORE_STATUS_CONCAT_(adore_statusor_, __LINE__), lhs, expr)
#define ADORE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
