// `--republish`: a service's resources as snapshot events, for consumers
// whose stream lost events (its storage lost, or purged) or who start afresh,
// and, with new versions, after the database was restored to an earlier
// point (consumers then replace the changes the restore undid, which carry
// versions above the restored rows'). Shared by every service that has one;
// each lists its kinds (see services/*/…_service.cc, Republish).
#ifndef CONNECTING_LIBS_BUS_REPUBLISH_H_
#define CONNECTING_LIBS_BUS_REPUBLISH_H_

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "libs/bus/outbox.h"
#include "libs/db/db.h"

namespace connecting::bus {

inline constexpr int kRepublishPage = 500;

// The next `limit` rows of `table` in id order after the id `after` (a
// validated UUID, or "" for the first), as `cols` selects them (`alias` is
// the name `cols` gives the table, "" for none); in any order. With
// `new_version`, the page is locked and each row gets its next version first
// (next_version, bus migration 0005; its etag changes, nothing else does).
absl::StatusOr<db::Result> RowsAfter(db::Conn& c, absl::string_view cols, absl::string_view table,
                                     absl::string_view alias, const std::string& after, int limit,
                                     bool new_version);

// Walks one kind of resource a page per transaction, in id order, adding a
// snapshot event (`subject`, e.g. "organisation.snapshot") for each row that
// `page` returns (RowsAfter read into messages with an `id()`); adds to
// `count` what it committed.
template <class Row, class Snapshot>
absl::Status RepublishKind(db::Pool& pool, const Outbox& outbox, absl::string_view subject,
                           absl::StatusOr<std::vector<Row>> (*page)(db::Conn&, const std::string&,
                                                                    int, bool),
                           Row* (Snapshot::*mutable_row)(), bool new_versions, int64_t* count) {
  std::string after;
  for (;;) {
    std::string last;
    size_t rows = 0;
    absl::Status s = db::Transact(pool, [&](db::Conn& c) -> absl::Status {
      auto got = page(c, after, kRepublishPage, new_versions);
      if (!got.ok()) return got.status();
      // Ids are UUIDs in lower-case text: their text order is PostgreSQL's.
      std::sort(got->begin(), got->end(),
                [](const Row& a, const Row& b) { return a.id() < b.id(); });
      for (const Row& r : *got) {
        Snapshot e;
        *(e.*mutable_row)() = r;
        if (absl::Status st = outbox.Emit(c, subject, r.id(), e, ""); !st.ok()) return st;
      }
      rows = got->size();
      last = rows > 0 ? got->back().id() : after;
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    *count += static_cast<int64_t>(rows);
    if (rows < static_cast<size_t>(kRepublishPage)) return absl::OkStatus();
    after = last;
  }
}

}  // namespace connecting::bus

#endif  // CONNECTING_LIBS_BUS_REPUBLISH_H_
