// Versioned SQL migrations.
//
// Each component (the shared bus tables, then the service's own) has an ordered
// list of migrations named NNNN_description. Migrate() applies the ones not yet
// recorded in `schema_migrations`, each in its own transaction, while holding a
// session advisory lock, so several replicas starting at once apply each
// migration exactly once. A migration whose text changed after it was applied
// is refused (FAILED_PRECONDITION): write a new one instead.
#ifndef CONNECTING_LIBS_DB_MIGRATIONS_H_
#define CONNECTING_LIBS_DB_MIGRATIONS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "libs/db/db.h"

namespace connecting::db {

struct Migration {
  std::string name;  // e.g. "0001_init"; applied in the order given
  std::string sql;
};

struct MigrationSet {
  std::string component;  // e.g. "bus", "partners"
  std::vector<Migration> migrations;
};

// Returns "component/name" of each migration applied by this call.
absl::StatusOr<std::vector<std::string>> Migrate(Conn& conn, const std::vector<MigrationSet>& sets);

}  // namespace connecting::db

#endif  // CONNECTING_LIBS_DB_MIGRATIONS_H_
