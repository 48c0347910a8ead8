// Durable JetStream pull consumers whose handlers take effect exactly once.
//
// For each message the consumer records the event id in the `inbox` table and
// runs the handler in the same transaction; it acks only after COMMIT. The
// messages of one fetch (up to `batch_size`) share one transaction, their
// inbox rows written in one round trip; if any of them fails, that
// transaction is rolled back and each is handled in its own, as described
// below, so a failure never holds back or repeats the others. A redelivered
// event (ack lost, crash before ack, a replica racing) finds its inbox row,
// changes nothing and is acked. Replicas of a service share one durable
// consumer, so each message goes to one of them.
//
// Handler results: OK → commit, ack. INVALID_ARGUMENT (the event cannot be
// understood) → dead-lettered and terminated at once. Any other error → rolled
// back and redelivered after a backoff; after `max_deliver` attempts it is
// dead-lettered. The server itself never gives up on an event (its durable
// has no delivery limit; one made by an earlier release, which let the
// server drop an event after max_deliver + 1 deliveries without a trace, is
// updated when the consumer subscribes). An event delivered again, though,
// may be one whose handling brought the process down (a crash, a kill):
// it is handled on its own, and each start of its handling is counted in a
// commit of its own first (`consumer_unanswered`), the count deleted with
// its outcome. An event whose handling began three times without an answer
// is dead-lettered without running its handler again, so that it cannot
// keep the service down; the events after it go on. Except while the service's own database is
// unreachable or takes no writes: then the consumer holds the events in hand (telling the server
// they are in progress) and tries again once it answers, so an outage of any length neither
// dead-letters events nor spends their deliveries. So too while it answers UNAVAILABLE, its own
// trouble (out of disk, memory or connections; an I/O error): the event is tried again, less and
// less often, up to every 2 s. (A handler's own UNAVAILABLE, a dependency of its down, is retried
// and dead-lettered like any error, so that the events behind it go on.) An event that cannot be
// dead-lettered either is held the same way, handed back only when the consumer stops (a start that
// never answered, if its handling had begun). An event whose id is not UTF-8 text (or is longer
// than 512 bytes) is dead-lettered at once, under its id escaped; a payload
// that is not UTF-8 text goes to the dead letters escaped (\xNN, with
// backslashes doubled), as the error says. Dead letters stay
// in the `dead_letters` table for operators, who replay them once the cause is
// fixed (ReplayDeadLetters; a service's `--replay-dead-letters`).
//
// The database, not the server, says how far the consumer got: each inbox row
// keeps the event's stream sequence, committed before the ack. A database
// restored to an earlier point (or replaced) is behind the durable's ack
// floor; the consumer notices when it subscribes and every few seconds after,
// and starts the durable again from the beginning of the stream, so the
// events the database lost apply again (and those it kept are skipped).
//
// The inbox does not grow for good. Every `prune_every`, once the database
// is known not to be behind, the consumer records the durable's ack floor as
// the mark below which every event has taken effect (`inbox_pruned`), and
// deletes the inbox rows at or below it that are older than `inbox_keep`. A
// replay from the start skips what lies below the mark; the rows kept for
// `inbox_keep` still catch a copy of an event published again later under a
// new stream sequence (a relay that crashed between the PubAck and its
// commit and came back within that time).
#ifndef CONNECTING_LIBS_BUS_CONSUMER_H_
#define CONNECTING_LIBS_BUS_CONSUMER_H_

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "libs/bus/nats.h"
#include "libs/db/db.h"

namespace connecting::bus {

// One event as a handler sees it.
struct Delivery {
  std::string id;       // ce-id (= Nats-Msg-Id)
  std::string subject;  // e.g. connecting.partners.organisation.archived
  std::string type;     // ce-type, the event proto's full name
  std::string payload;  // canonical JSON of the event proto
  std::string traceparent;
  uint64_t deliveries = 1;  // 1 on first delivery
};

struct ConsumerOptions {
  std::string stream;          // e.g. "PARTNERS"
  std::string durable;         // e.g. "scheduling-partners"
  std::string filter_subject;  // e.g. "connecting.partners.>"
  // Durables this one replaces (e.g. one whose filter was narrower): deleted
  // once this one exists, so that the server stops keeping their backlog. A
  // new durable starts from the beginning of the stream, so a handler that
  // now takes more event types is fed every such event still retained.
  std::vector<std::string> retired_durables;
  int batch_size = 64;
  // Failed attempts before an event is dead-lettered (CONSUMER_MAX_DELIVER).
  int max_deliver = 10;
  // How long the server waits for an answer before delivering an event again
  // (CONSUMER_ACK_WAIT); also the longest one transaction applying events
  // may take.
  absl::Duration ack_wait = absl::Seconds(30);
  absl::Duration fetch_wait = absl::Milliseconds(500);
  // How often the consumer looks at its durable on the server: the lag, a
  // durable gone, a database behind it (restored), and whether to prune.
  absl::Duration check_every = absl::Seconds(5);
  absl::Duration prune_every = absl::Minutes(10);
  absl::Duration inbox_keep = absl::Hours(24 * 7);
  // Test hook (CONNECTING_TEST_CRASH_ON_EVENT_WITH): the process exits (code
  // 86) when a handler is about to run on an event whose payload holds this
  // text, as a handler that crashes would.
  std::string crash_on_payload;
};

using Handler = std::function<absl::Status(db::Conn& tx, const Delivery& event)>;

struct ReplayReport {
  int replayed = 0;  // applied now, and gone from dead_letters
  int failing = 0;   // refused again: kept, with the new error
};

class Consumer {
 public:
  Consumer(ConsumerOptions options, db::Pool* pool, const Nats* nats, Handler handler);
  ~Consumer();
  void Start();
  // Finishes the message in hand, then stops fetching and unsubscribes (the
  // durable consumer stays on the server).
  void Stop();
  bool healthy() const { return healthy_.load(); }
  const std::string& durable() const { return options_.durable; }
  // Runs the handler again on each of this consumer's dead letters, oldest
  // first, each in its own transaction: applied → the dead letter is deleted
  // (its inbox row stays, so the event never applies twice); refused → rolled
  // back and kept with the new error and one more delivery. Safe beside
  // running consumers and other replays (rows are taken FOR UPDATE SKIP
  // LOCKED). An error only if the database fails, or does not answer: the
  // listing and each dead letter's transaction get `step_limit` each.
  absl::StatusOr<ReplayReport> ReplayDeadLetters(absl::Duration step_limit = absl::Minutes(1));
  // Called after each commit of events (handlers may have emitted events).
  void SetOnCommit(std::function<void()> f) { on_commit_ = std::move(f); }

 private:
  void Run();
  absl::Status Subscribe(jsCtx* js, NatsPtr<natsSubscription>* sub);
  // Applies every message of a fetch in one transaction and acks them after
  // its commit; false, with nothing applied, if any of them failed or was
  // delivered before (each is then handled on its own by Process).
  bool ApplyTogether(absl::Span<natsMsg* const> fetched);
  // A message as the handler sees it, and its stream sequence (`seq`, NULL
  // if unknown) for the inbox. Its id, subject and type are kept as text
  // PostgreSQL takes (text::StorableText); `*malformed` says why the event
  // cannot be understood (an id that is not text, or too long for the
  // inbox's index), or is left empty.
  Delivery ReadDelivery(natsMsg* msg, db::Param* seq, std::string* malformed) const;
  // The handler, unless the crash test hook applies to `d`.
  absl::Status RunHandler(db::Conn& tx, const Delivery& d) const;
  // Handles in_hand.front(); the rest of its batch waits behind it.
  void Process(absl::Span<natsMsg* const> in_hand);
  // Whether the database lost events the server saw acknowledged: the
  // durable's ack floor (read before) is past the greatest stream sequence
  // the inbox records for this consumer. False if the database cannot say.
  bool DatabaseBehind(uint64_t ack_floor);
  // True if the database answers and takes writes (not a standby, not set
  // read-only).
  bool DatabaseReachable();
  // The options of a transaction applying events: it ends by the events' ack
  // wait, after which JetStream delivers them again anyway, so a database
  // that stopped answering (hung, or the network to it gone) holds the
  // consumer no longer than that.
  db::TxOptions EventTransaction() const;
  // Raises the mark to `ack_floor` and deletes the inbox rows it lets go
  // (see above); logs, and leaves it for next time, if the database fails.
  void PruneInbox(uint64_t ack_floor);
  // Waits until the database answers (true) or the consumer stops (false),
  // keeping `in_hand` (Pause).
  bool HoldWhileDatabaseDown(absl::Span<natsMsg* const> in_hand);
  // Sleeps `*pause` and doubles it for the next time (up to 2 s), telling
  // the server every third of the ack wait that `in_hand` is in progress,
  // so that it neither redelivers them nor counts a delivery; false if the
  // consumer is stopping.
  bool Pause(absl::Span<natsMsg* const> in_hand, absl::Duration* pause, absl::Time* touch);

  const ConsumerOptions options_;
  db::Pool* const pool_;
  const Nats* const nats_;
  const Handler handler_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> healthy_{false};
  // The stream's creation time (ns) when last subscribed: which stream the
  // inbox's mark belongs to.
  std::atomic<int64_t> stream_created_{0};
  std::function<void()> on_commit_;
};

}  // namespace connecting::bus

#endif  // CONNECTING_LIBS_BUS_CONSUMER_H_
