#include "libs/db/group_commit.h"

#include <algorithm>

namespace connecting::db {

absl::Status GroupCommitter::Run(const std::string& key, absl::Time deadline,
                                 std::function<absl::Status(Conn&)> work) {
  Item item;
  item.work = std::move(work);
  std::vector<Item*> batch;
  {
    absl::MutexLock lock(&mu_);
    Queue* q = &queues_[key];
    q->pending.push_back(&item);
    struct Arg {
      Item* item;
      Queue* q;
    } arg{&item, q};
    // Either a leader finished our work, or nobody is leading: we lead.
    mu_.Await(absl::Condition(
        +[](Arg* a) { return a->item->done || !a->q->busy; }, &arg));
    if (item.done) return item.result;
    q->busy = true;
    // Take ourselves and those queued behind us, up to max_batch_.
    size_t n = std::min(q->pending.size(), static_cast<size_t>(max_batch_));
    auto mine = std::find(q->pending.begin(), q->pending.end(), &item);
    if (mine - q->pending.begin() >= static_cast<long>(n)) {
      // Keep our own item in the batch even when it is beyond max_batch_.
      std::iter_swap(q->pending.begin() + (n - 1), mine);
    }
    batch.assign(q->pending.begin(), q->pending.begin() + n);
    q->pending.erase(q->pending.begin(), q->pending.begin() + n);
  }

  TxOptions opts;
  opts.deadline = deadline;
  absl::Status s = Transact(pool_, opts, [&](Conn& c) -> absl::Status {
    for (Item* it : batch) {
      if (absl::Status sp = c.ExecScript("SAVEPOINT item"); !sp.ok()) return sp;
      it->result = it->work(c);
      if (it->result.ok()) {
        if (absl::Status r = c.ExecScript("RELEASE SAVEPOINT item"); !r.ok()) return r;
        continue;
      }
      if (IsRetryable(it->result) || absl::IsUnavailable(it->result) ||
          absl::IsDeadlineExceeded(it->result)) {
        return it->result;  // serialization failure, deadlock, lost connection: whole batch
      }
      if (absl::Status r = c.ExecScript("ROLLBACK TO SAVEPOINT item"); !r.ok()) return r;
    }
    return absl::OkStatus();
  });

  absl::MutexLock lock(&mu_);
  for (Item* it : batch) {
    if (!s.ok()) it->result = s;  // nothing committed for anyone
    it->done = true;
  }
  Queue& q = queues_[key];
  q.busy = false;
  if (q.pending.empty()) queues_.erase(key);
  return item.result;
}

}  // namespace connecting::db
