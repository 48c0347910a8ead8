// Turning statement results into values: at most one row, exactly one row
// (else NOT_FOUND naming the resource), or all rows. `row(result, i)` builds
// the value of row i.
#ifndef CONNECTING_LIBS_DB_ROWS_H_
#define CONNECTING_LIBS_DB_ROWS_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "libs/common/not_found.h"
#include "libs/db/db.h"

namespace connecting::db {

template <class T, class RowFn>
absl::StatusOr<std::optional<T>> MaybeOne(absl::StatusOr<Result> r, RowFn row) {
  if (!r.ok()) return r.status();
  if (r->rows() == 0) return std::optional<T>();
  return std::optional<T>(row(*r, 0));
}

// NOT_FOUND "<what> <id> not found" naming the resource (connecting::NotFound)
// when there is no row.
template <class T, class RowFn>
absl::StatusOr<T> One(absl::StatusOr<Result> r, RowFn row, const char* what,
                      const std::string& id) {
  if (!r.ok()) return r.status();
  if (r->rows() == 0) return NotFound(what, id);
  return row(*r, 0);
}

template <class T, class RowFn>
absl::StatusOr<std::vector<T>> All(absl::StatusOr<Result> r, RowFn row) {
  if (!r.ok()) return r.status();
  std::vector<T> out;
  out.reserve(r->rows());
  for (int i = 0; i < r->rows(); ++i) out.push_back(row(*r, i));
  return out;
}

}  // namespace connecting::db

#endif  // CONNECTING_LIBS_DB_ROWS_H_
