#include "libs/bus/republish.h"

#include "absl/strings/str_cat.h"

namespace connecting::bus {

absl::StatusOr<db::Result> RowsAfter(db::Conn& c, absl::string_view cols, absl::string_view table,
                                     absl::string_view alias, const std::string& after, int limit,
                                     bool new_version) {
  std::string named = alias.empty() ? std::string(table) : absl::StrCat(table, " ", alias);
  std::string id = alias.empty() ? "id" : absl::StrCat(alias, ".id");
  std::string page = absl::StrCat("SELECT id FROM ", table,
                                  " WHERE $1::uuid IS NULL OR id > $1::uuid ORDER BY id LIMIT $2");
  std::vector<db::Param> params = {db::NullIfEmpty(after), static_cast<int64_t>(limit)};
  if (new_version) {
    return c.Exec(absl::StrCat("UPDATE ", named, " SET version = next_version(version) WHERE ", id,
                               " IN (", page, " FOR UPDATE) RETURNING ", cols),
                  params);
  }
  return c.Exec(absl::StrCat("SELECT ", cols, " FROM ", named, " WHERE ", id, " IN (", page, ")"),
                params);
}

}  // namespace connecting::bus
