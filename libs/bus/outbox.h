// The transactional outbox: how a service publishes events.
//
// A handler calls Outbox::Emit inside the same database transaction as the
// state change, so the event exists if and only if the change committed. The
// OutboxRelay (one thread per process) publishes pending rows to JetStream with
// `Nats-Msg-Id` = the event id and deletes them only after the PubAck. A
// crash between publish and delete re-sends the row; JetStream's duplicate window
// drops the copy, so each committed change yields exactly one stream message.
// Several replicas can relay at once: rows are claimed FOR UPDATE SKIP LOCKED.
// Each process wakes its own relay when it commits events (TakeEmitted); rows
// another replica left behind are found at the next poll.
//
// Message format (CloudEvents NATS binding, binary mode): the payload is the
// event proto as canonical JSON; headers ce-specversion, ce-id, ce-source,
// ce-type (the proto's full name), ce-time, ce-subject, content-type,
// Nats-Msg-Id and traceparent.
#ifndef CONNECTING_LIBS_BUS_OUTBOX_H_
#define CONNECTING_LIBS_BUS_OUTBOX_H_

#include <google/protobuf/message.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "libs/bus/nats.h"
#include "libs/common/throttle.h"
#include "libs/db/db.h"
#include "libs/db/migrations.h"

namespace connecting::bus {

// The bus tables (outbox, inbox, dead_letters); apply before a service's own.
db::MigrationSet Migrations();

// Writes events into the caller's transaction.
class Outbox {
 public:
  // subject_prefix: e.g. "connecting.partners"; source: e.g. "/connecting/partners".
  Outbox(std::string subject_prefix, std::string source)
      : prefix_(std::move(subject_prefix)), source_(std::move(source)) {}

  // Adds `event` to the outbox within `tx`. subject_suffix: "<entity>.<verb>";
  // ce_subject: the id of the resource it is about. traceparent may be empty.
  absl::Status Emit(db::Conn& tx, absl::string_view subject_suffix, absl::string_view ce_subject,
                    const google::protobuf::Message& event, absl::string_view traceparent) const;

  // The INSERT that Emit runs, for a caller that sends it later in the same
  // transaction (e.g. pipelined with COMMIT by db::GroupCommitter). Fails only
  // if the event cannot be encoded (INTERNAL).
  absl::StatusOr<db::Statement> Prepare(absl::string_view subject_suffix,
                                        absl::string_view ce_subject,
                                        const google::protobuf::Message& event,
                                        absl::string_view traceparent) const;

  const std::string& prefix() const { return prefix_; }

  // True (once) if Emit or Prepare ran on this thread since the last call: the caller's
  // work wrote events, so the relay should be woken once it has committed.
  static bool TakeEmitted();

 private:
  std::string prefix_;
  std::string source_;
};

// Turns each run of two or more adjacent outbox rows in `statements`, as
// Prepare makes them, into one INSERT of those rows, in their order (up to 64
// rows a statement); leaves every other statement as it is. A transaction
// writing many events (a db::GroupCommitter's batch: its Merge) then costs
// the database one statement for them, where each statement costs an
// executor start of its own.
void MergeOutboxRows(std::vector<db::Statement>* statements);

struct RelayOptions {
  std::string database_url;
  StreamSpec stream;
  int batch_size = 256;
  // How often to look for rows written by other replicas (this process's own
  // writes wake the relay at once).
  absl::Duration poll_interval = absl::Milliseconds(250);
  // While the relay is busy (it published less than this long ago), a
  // commit's wake waits until this long after it for more commits before
  // publishing, so a busy service publishes in batches. Counted from the
  // first commit since the relay last looked: an event waits at most this
  // for company, beyond the batch before it. After a quiet spell (nothing
  // published for this long) an event goes out at once, alone.
  absl::Duration linger = absl::Milliseconds(25);
  absl::Duration ack_timeout = absl::Seconds(5);
  // After a pass that failed (PostgreSQL or NATS down, a stream refusing its
  // events), the relay waits before trying again: the poll interval, then
  // twice as long after each further failure, up to this. It does not heed
  // wakes meanwhile: under load every commit wakes it, and would have it
  // claim and send the same batch again hundreds of times a second.
  absl::Duration max_retry_wait = absl::Seconds(2);
  // How long one pass (claim, publish, mark sent) may wait for PostgreSQL's
  // answers. A database that stopped answering without closing the
  // connection (hung, or the network to it gone) would otherwise hold the
  // relay, still reporting healthy, until TCP gives up; past this the relay
  // drops the connection, reports unhealthy and connects again.
  absl::Duration answer_timeout = absl::Seconds(15);
  // How often a running relay looks again for a restore (see
  // CheckForRestore); it also looks each time it connects to PostgreSQL.
  absl::Duration restore_check_interval = absl::Seconds(30);
  // Test hook: exit the process right after the PubAck, before deleting the published rows.
  bool crash_after_publish = false;
};

class OutboxRelay {
 public:
  OutboxRelay(RelayOptions options, const Nats* nats);
  ~OutboxRelay();

  void Start();
  // Stops the relay. Before returning it keeps publishing what is pending
  // until the outbox is empty or `flush_deadline` passes.
  void Stop(absl::Time flush_deadline);
  // Publish now rather than at the next poll.
  void Wake();
  // True once the stream exists and the last round trip to PostgreSQL worked.
  bool healthy() const { return healthy_.load(); }

  // The statement that claims (deletes) up to `batch_size` pending rows,
  // oldest first, returning what each event's message needs.
  static std::string ClaimSql(int batch_size);
  // What the relay sets on its connection when it opens it (how the claim
  // is planned), and a batch's first step: open a transaction on `conn` and
  // claim the batch in it (ClaimSql). Public for the test that checks a batch
  // stays one batch, found by the index, whatever the outbox held when the
  // connection planned it.
  static absl::Status SetUpConnection(db::Conn& conn);
  static absl::StatusOr<db::Result> Claim(db::Conn& conn, int batch_size);
  // The lag gauges' reading (connecting_outbox_pending, _lag_seconds): how
  // many events wait and how long ago the oldest was written. Exact. While
  // the waiting rows' sequence numbers span fewer than kExactSpan, it reads
  // them through the index on seq alone, however much dead space a busy
  // outbox holds (a scan of the table read 75 MB, 20-80 ms, every 2 s under
  // load, on 2026-12-05); beyond, the table whole. Public for its test.
  static constexpr int64_t kExactSpan = 100000;
  struct Backlog {
    int64_t pending = 0;
    double oldest_seconds = 0;
    bool by_index = false;  // read through the index (the span was small)
  };
  static absl::StatusOr<Backlog> ReadBacklog(db::Conn& conn);

 private:
  void Run();
  // Publishes one batch; returns how many rows it published and deleted.
  absl::StatusOr<int> PublishBatch(db::Conn& conn, jsCtx* js);
  // Once the stream is there, before the relay publishes on a new connection
  // and every restore_check_interval: true if the database's outbox sequence
  // is behind an outbox row that the stream holds an event of (its last
  // message says which) or that this relay published, which only a database
  // gone back in time (restored to an earlier point, replaced, a failover
  // that lost commits) explains; or if such a restore is recorded and not
  // yet settled. Records it in outbox_restores (logged once, by the relay
  // that found it) and sets connecting_outbox_database_behind_stream.
  bool CheckForRestore(db::Conn& conn, jsCtx* js);
  // Sleeps until Wake(), Stop() or the poll interval; after a wake, while
  // busy, for the linger too.
  void WaitForWork();
  // Reads the eventfd and lets the next Wake() write it again.
  void TakeWakes();
  // After a failed pass: lengthens `wait` (see RelayOptions::max_retry_wait)
  // and sleeps that long, or until Stop() or the flush deadline.
  void WaitToRetry(absl::Duration& wait);
  static void OnAck(jsCtx* js, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure);

  const RelayOptions options_;
  const Nats* const nats_;
  std::thread thread_;
  int wake_fd_ = -1;  // eventfd: Wake() and Stop() wake the loop
  // When the first Wake() since the relay last took them came (Unix ns; 0:
  // none since). Later ones neither write the eventfd nor move it.
  std::atomic<int64_t> first_wake_ns_{0};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> healthy_{false};
  absl::Time flush_deadline_ = absl::InfinitePast();
  // The relay thread's own: the highest outbox row number it knows the stream
  // holds (published and acknowledged, or read from its last message).
  int64_t highest_in_stream_ = 0;
  bool told_of_recorded_restore_ = false;
  // The relay thread's own: when its last pass that published anything ended.
  absl::Time last_published_ = absl::InfinitePast();

  absl::Mutex mu_;
  uint64_t batch_generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> acked_ ABSL_GUARDED_BY(mu_);
  // Events JetStream refuses are refused again at every try: logged once
  // every 10 s, with a count.
  log::Throttle refused_lines_{absl::Seconds(10)};
};

// `--republish --after-restore`, before its snapshots: sets the database's
// outbox sequence past every outbox row that `stream` holds an event of (its
// last message) or that a relay recorded, so that the events from now on are
// numbered beyond them and no relay finds the database behind its stream
// again. A stream that does not exist holds none. Waits up to `timeout` for
// NATS.
absl::Status AdvanceOutboxPastStream(db::Pool& pool, const Nats& nats, const std::string& stream,
                                     absl::Duration timeout);
// ... and once the snapshots are committed: settles the restores the relays
// recorded (their alert clears at each relay's next check). Returns how many.
absl::StatusOr<int64_t> SettleRestores(db::Pool& pool);

}  // namespace connecting::bus

#endif  // CONNECTING_LIBS_BUS_OUTBOX_H_
