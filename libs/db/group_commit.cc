#include "libs/db/group_commit.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "libs/common/metrics.h"

namespace connecting::db {
namespace {

constexpr int kMaxRetries = 8;  // serialization failures and deadlocks, per batch

}  // namespace

GroupCommitter::GroupCommitter(Pool& pool, const std::string& name, Schedule schedule,
                               int max_batch, int max_pending, LockFirst lock_first,
                               absl::Duration lock_wait, Combine combine, Merge merge)
    : pool_(pool),
      schedule_(std::move(schedule)),
      max_batch_(max_batch),
      max_pending_(max_pending),
      lock_first_(std::move(lock_first)),
      lock_wait_(lock_wait),
      combine_(std::move(combine)),
      merge_(std::move(merge)) {
  static auto& lock_waits =
      prometheus::BuildCounter()
          .Name("connecting_group_commit_lock_waits_total")
          .Help("Callers that left their batch to wait for a row lock another transaction held")
          .Register(*metrics::Registry());
  lock_waits_ = &lock_waits.Add({{"committer", name}});
  static auto& family = prometheus::BuildHistogram()
                            .Name("connecting_group_commit_batch_size")
                            .Help("Callers whose work one group-committed transaction carried")
                            .Register(*metrics::Registry());
  batch_sizes_ = &family.Add({{"committer", name}},
                             prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64});
  // From a tenth of a millisecond (a batch's share of a fast disk's flush)
  // to 10 s (a lock waited for).
  const prometheus::Histogram::BucketBoundaries seconds{
      0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01,
      0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5,   10};
  static auto& queued = prometheus::BuildHistogram()
                            .Name("connecting_group_commit_queued_seconds")
                            .Help(
                                "A caller's wait, from its submission to the first round trip "
                                "of the first transaction to carry it")
                            .Register(*metrics::Registry());
  queued_ = &queued.Add({{"committer", name}}, seconds);
  static auto& transactions =
      prometheus::BuildHistogram()
          .Name("connecting_group_commit_transaction_seconds")
          .Help(
              "A committed group transaction's time, from its first round trip to its "
              "COMMIT's answer, over all its tries")
          .Register(*metrics::Registry());
  transactions_ = &transactions.Add({{"committer", name}}, seconds);
  static auto& waiting = prometheus::BuildGauge()
                             .Name("connecting_group_commit_waiting")
                             .Help("Callers queued for a group-committed transaction or in one")
                             .Register(*metrics::Registry());
  waiting_ = &waiting.Add({{"committer", name}});
}

GroupCommitter::~GroupCommitter() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(this, &GroupCommitter::Idle));
}

bool GroupCommitter::IsPatient(const std::string& key) { return absl::EndsWith(key, Patient("")); }

bool GroupCommitter::Combinable(const Item& a, const Item& b) {
  return !a.alone && !b.alone && !a.work.args.empty() && !b.work.args.empty();
}

void GroupCommitter::Submit(const std::string& key, absl::Time deadline, Work work, Done done) {
  auto* item = new Item{std::move(work), deadline, std::move(done), absl::OkStatus(), absl::Now()};
  bool full = false;
  {
    absl::MutexLock lock(&mu_);
    full = pending_ >= max_pending_;
    if (!full) waiting_->Set(++pending_);
  }
  if (full) {
    item->done(absl::ResourceExhaustedError("too many callers waiting; retry with backoff"));
    delete item;
    return;
  }
  Enqueue(key, {item});
}

void GroupCommitter::Enqueue(const std::string& key, std::vector<Item*> items) {
  const bool patient = IsPatient(key);
  bool start = false;
  {
    absl::MutexLock lock(&mu_);
    auto [it, fresh] = queues_.try_emplace(key);
    for (Item* item : items) {
      it->second.pending.push_back(item);
      if (patient) ++it->second.rows[item->work.lock_order];
    }
    start = fresh;  // otherwise the running Drain for this key takes them
  }
  if (start && !schedule_([this, key] { Drain(key); })) {
    // No thread: fail what queued for this key since (at least ours).
    std::vector<Item*> orphans;
    {
      absl::MutexLock lock(&mu_);
      auto it = queues_.find(key);
      orphans.swap(it->second.pending);
      queues_.erase(it);
      pending_ -= static_cast<int>(orphans.size());
      waiting_->Set(pending_);
    }
    for (Item* it : orphans) {
      it->done(absl::ResourceExhaustedError("server is at capacity; retry with backoff"));
      delete it;
    }
  }
}

void GroupCommitter::Drain(const std::string& key) {
  const bool patient = IsPatient(key);
  const std::string waiting_key = Patient(key);  // where its callers wait for a lock
  std::vector<Item*> unanswered;  // the batch that ended last
  auto answer = [&unanswered] {
    for (Item* it : unanswered) {
      it->done(it->result);
      delete it;
    }
    unanswered.clear();
  };
  for (;;) {
    std::vector<Item*> batch;
    {
      absl::MutexLock lock(&mu_);
      auto it = queues_.find(key);
      std::vector<Item*>& q = it->second.pending;
      // The key is let go only once every caller is answered: the committer's
      // destructor waits for that, and `done` may use what outlives it.
      if (q.empty() && unanswered.empty()) {
        queues_.erase(it);
        return;
      }
      size_t n = std::min(q.size(), static_cast<size_t>(max_batch_));
      batch.assign(q.begin(), q.begin() + n);
      q.erase(q.begin(), q.begin() + n);
      // Whoever locks a row that callers before them wait for joins them.
      if (auto w = patient ? queues_.end() : queues_.find(waiting_key); w != queues_.end()) {
        Queue& waiting = w->second;
        auto behind = std::stable_partition(batch.begin(), batch.end(), [&waiting](Item* i) {
          return waiting.rows.count(i->work.lock_order) == 0;
        });
        for (auto i = behind; i != batch.end(); ++i) {
          waiting.pending.push_back(*i);
          ++waiting.rows[(*i)->work.lock_order];
        }
        batch.erase(behind, batch.end());
      }
    }
    if (batch.empty()) {
      answer();
      continue;
    }
    // Whoever waited past their deadline is told so and left out; the batch
    // runs until the latest deadline of the rest.
    std::vector<Item*> run;
    absl::Time deadline = absl::InfinitePast();
    absl::Time now = absl::Now();
    for (Item* it : batch) {
      if (it->deadline <= now) {
        it->result = absl::DeadlineExceededError("deadline passed while the request waited");
      } else {
        run.push_back(it);
        deadline = std::max(deadline, it->deadline);
      }
    }
    std::stable_sort(run.begin(), run.end(), [](const Item* a, const Item* b) {
      return a->work.lock_order < b->work.lock_order;
    });
    if (!run.empty()) RunBatch(run, deadline, patient, answer);
    answer();  // if RunBatch did not
    auto left = std::stable_partition(batch.begin(), batch.end(),
                                      [](const Item* i) { return !i->waits_for_lock; });
    std::vector<Item*> to_wait(left, batch.end());
    batch.erase(left, batch.end());
    for (Item* i : to_wait) i->waits_for_lock = false;  // until its next batch says so
    {
      absl::MutexLock lock(&mu_);
      pending_ -= static_cast<int>(batch.size());
      waiting_->Set(pending_);
      if (patient) {
        auto& rows = queues_.find(key)->second.rows;
        for (const Item* i : batch) {
          if (auto r = rows.find(i->work.lock_order); r != rows.end() && --r->second <= 0) {
            rows.erase(r);
          }
        }
      }
    }
    if (!to_wait.empty()) {
      lock_waits_->Increment(static_cast<double>(to_wait.size()));
      Enqueue(waiting_key, std::move(to_wait));
    }
    unanswered = std::move(batch);
  }
}

void GroupCommitter::RunBatch(std::vector<Item*> batch, absl::Time deadline, bool patient,
                              const std::function<void()>& answer) {
  auto fail = [&](const absl::Status& s) {
    for (Item* it : batch) it->result = s;
  };
  int retries = 0;
  bool fresh = false, tried_on_fresh = false, tried_after_loss = false;  // as Transact (db.h)
  absl::Time began = absl::InfiniteFuture();  // the first try's first round trip
  bool reconnect = false;
  while (!batch.empty()) {
    absl::StatusOr<Pool::Lease> lease = reconnect ? AcquireAfterLoss(pool_, deadline, answer)
                                                  : pool_.Acquire(deadline, fresh, answer);
    fresh = reconnect = false;
    if (!lease.ok()) return fail(lease.status());
    Conn& c = **lease;
    auto rollback = [&c] {
      if (c.healthy()) (void)c.ExecScript("ROLLBACK");
    };

    // Round trip 1: BEGIN, the transaction's settings (the statement
    // timeout, the lock wait) in one statement, the rows to lock first,
    // every item's first statement.
    std::vector<Statement> first = {{"BEGIN ISOLATION LEVEL READ COMMITTED", {}}};
    absl::StatusOr<std::optional<int64_t>> timeout = StatementTimeout(deadline);
    if (!timeout.ok()) return fail(timeout.status());
    Statement settings;
    auto set = [&settings](absl::string_view name, std::string value) {
      absl::StrAppend(&settings.sql, settings.sql.empty() ? "SELECT " : ", ", "set_config('", name,
                      "', $", settings.params.size() + 1, ", true)");
      settings.params.emplace_back(std::move(value));
    };
    if (*timeout) set("statement_timeout", absl::StrCat(**timeout));
    if (!patient && lock_wait_ < absl::InfiniteDuration()) {
      set("lock_timeout",
          absl::StrCat(std::max<int64_t>(1, absl::ToInt64Milliseconds(lock_wait_))));
    }
    if (!settings.sql.empty()) first.push_back(std::move(settings));
    if (lock_first_) {
      std::vector<std::string> keys;
      for (const Item* it : batch) {
        if (!it->work.lock_first.empty()) keys.push_back(it->work.lock_first);
      }
      std::sort(keys.begin(), keys.end());
      keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
      if (!keys.empty()) first.push_back(lock_first_(keys));
    }
    const size_t lead = first.size();
    // The items' first statements: a run that may be combined shares one.
    std::vector<size_t> begins;  // each statement's first item
    for (size_t i = 0; i < batch.size();) {
      size_t end = i + 1;
      while (combine_ && end < batch.size() && Combinable(*batch[i], *batch[end])) ++end;
      begins.push_back(i);
      if (end - i == 1) {
        first.push_back(batch[i]->work.first);
      } else {
        std::vector<const Work*> run;
        for (size_t j = i; j < end; ++j) run.push_back(&batch[j]->work);
        first.push_back(combine_(run));
      }
      i = end;
    }
    begins.push_back(batch.size());
    const absl::Time now = absl::Now();
    began = std::min(began, now);
    for (Item* it : batch) {
      if (!it->carried) queued_->Observe(absl::ToDoubleSeconds(now - it->submitted));
      it->carried = true;
    }
    std::vector<absl::StatusOr<Result>> rows = c.Pipeline(first, answer);
    absl::Status shared;  // an error of the transaction rather than of one item
    for (size_t i = 0; i < lead && shared.ok(); ++i) shared = rows[i].status();
    int raised = -1;  // the statement that raised
    int locked = -1;  // the item that waited too long for a row lock
    for (size_t k = 0; shared.ok() && k + 1 < begins.size(); ++k) {
      const absl::Status& s = rows[lead + k].status();
      if (s.ok()) continue;
      if (!patient && IsLockNotAvailable(s)) {
        locked = static_cast<int>(begins[k]);
      } else if (IsRetryable(s) || absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) ||
                 absl::IsResourceExhausted(s)) {
        shared = s;
      } else {
        raised = static_cast<int>(k);
      }
      break;  // the rest were skipped
    }
    if (locked >= 0) {
      rollback();
      const size_t from = static_cast<size_t>(locked);
      const size_t to = *std::upper_bound(begins.begin(), begins.end(), from);
      if (batch[from]->work.lock_order != batch[to - 1]->work.lock_order) {
        // A combined statement of several rows: which one is held? Again,
        // each alone, to find out.
        for (size_t i = from; i < to; ++i) batch[i]->alone = true;
        continue;
      }
      // It, and whoever in the batch locks the same row, wait elsewhere.
      const std::string row = batch[locked]->work.lock_order;
      for (Item* it : batch) it->waits_for_lock = it->work.lock_order == row;
      batch.erase(std::remove_if(batch.begin(), batch.end(),
                                 [](const Item* it) { return it->waits_for_lock; }),
                  batch.end());
      continue;  // again without them
    }
    if (raised >= 0) {
      rollback();
      const size_t from = begins[raised], to = begins[raised + 1];
      if (to - from > 1) {  // one of them raised: again, each alone
        for (size_t i = from; i < to; ++i) batch[i]->alone = true;
        continue;
      }
      batch[from]->result = rows[lead + raised].status();
      batch.erase(batch.begin() + static_cast<std::ptrdiff_t>(from));
      continue;  // again without it
    }
    if (!shared.ok()) {
      rollback();
      if (!patient && IsLockNotAvailable(shared)) {
        patient = true;  // a row the whole batch locks first: it waits, as one
        continue;
      }
      if (RefusedForReadOnly(shared) && !tried_on_fresh) {
        tried_on_fresh = true;  // once, on a connection made now
        fresh = true;
        continue;
      }
      if (LostBeforeCommit(c, shared) && !tried_after_loss && absl::Now() < deadline) {
        tried_after_loss = true;  // no COMMIT was sent: once more, on a connection made now
        reconnect = true;
        continue;
      }
      if (IsRetryable(shared) && ++retries < kMaxRetries) {
        BackoffBeforeRetry(retries);
        continue;
      }
      return fail(shared);
    }

    // Round trip 2: what each item adds given its rows, then COMMIT.
    std::vector<Statement> second;
    std::vector<bool> going(batch.size(), false);
    int undo = -1;
    for (size_t k = 0, i = 0; i < batch.size(); ++i) {
      if (i == begins[k + 1]) ++k;
      absl::StatusOr<std::vector<Statement>> more =
          batch[i]->work.then(*rows[lead + k], static_cast<int>(i - begins[k]));
      if (!more.ok()) {
        batch[i]->result = more.status();
        if (absl::IsInternal(more.status())) {
          undo = static_cast<int>(i);
          break;
        }
        continue;  // refused: its first statement wrote nothing
      }
      going[i] = true;
      for (Statement& s : *more) second.push_back(std::move(s));
    }
    if (undo >= 0) {
      rollback();
      batch.erase(batch.begin() + undo);
      continue;
    }
    if (merge_) merge_(&second);
    second.push_back({"COMMIT", {}});
    std::vector<absl::StatusOr<Result>> done = c.Pipeline(second);
    absl::Status commit;
    for (const auto& r : done) {
      if (!r.ok()) {
        commit = r.status();
        break;
      }
    }
    if (!commit.ok() && !c.healthy() && !RefusedForReadOnly(commit)) {
      // Lost with its COMMIT sent (whichever answer was the first not to
      // come): it may or may not have landed.
      commit = LostAtCommit(commit);
    } else if (!commit.ok()) {
      rollback();
      if (IsRetryable(commit) && ++retries < kMaxRetries) {
        BackoffBeforeRetry(retries);
        continue;
      }
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      if (going[i]) batch[i]->result = commit;
    }
    if (commit.ok()) {
      batch_sizes_->Observe(static_cast<double>(batch.size()));
      transactions_->Observe(absl::ToDoubleSeconds(absl::Now() - began));
    }
    return;
  }
}

}  // namespace connecting::db
