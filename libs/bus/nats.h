// The NATS JetStream connection a service shares between its outbox relay and
// its consumers.
//
// The connection retries forever, also at start-up, so a service starts while
// NATS is down and reports NOT_SERVING until it connects. The client library
// itself gives up on a connection whose credentials the server refuses (twice
// in a row, or once on its first connection) and closes it for good; a
// closed connection is then replaced by a new one, 1 s later and then twice
// as long each time up to 30 s, so that a refusal that passes (an account
// the server learns of later, credentials rotated under it, a glitch of the
// library's signature) does not leave the service without NATS until it is
// restarted. natsStatus becomes absl::Status here: timeouts and lost
// connections are UNAVAILABLE.
#ifndef CONNECTING_LIBS_BUS_NATS_H_
#define CONNECTING_LIBS_BUS_NATS_H_

#include <nats/nats.h>

#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace connecting::bus {

struct NatsDeleter {
  void operator()(natsConnection* c) const { natsConnection_Destroy(c); }
  void operator()(natsOptions* o) const { natsOptions_Destroy(o); }
  void operator()(jsCtx* j) const { jsCtx_Destroy(j); }
  void operator()(natsMsg* m) const { natsMsg_Destroy(m); }
  void operator()(natsSubscription* s) const { natsSubscription_Destroy(s); }
  void operator()(jsStreamInfo* s) const { jsStreamInfo_Destroy(s); }
  void operator()(jsConsumerInfo* c) const { jsConsumerInfo_Destroy(c); }
  void operator()(jsMsgMetaData* m) const { jsMsgMetaData_Destroy(m); }
};
template <class T>
using NatsPtr = std::unique_ptr<T, NatsDeleter>;

// `what` names the operation in the message. jerr is the JetStream API error, if any.
absl::Status FromNats(natsStatus s, absl::string_view what,
                      jsErrCode jerr = static_cast<jsErrCode>(0));

struct StreamSpec {
  std::string name;                   // e.g. "PARTNERS"
  std::vector<std::string> subjects;  // e.g. {"connecting.partners.>"}
  int replicas = 1;
  // How long events are kept; zero keeps them until the stream is removed.
  absl::Duration max_age = absl::Hours(24 * 365);
  // JetStream drops a re-sent Nats-Msg-Id within this window.
  absl::Duration duplicate_window = absl::Minutes(10);
};

// How a service proves itself to NATS beyond its URL (which may carry a user
// and password, or a token). TLS: the CA that signed the server's certificate
// and, for a server that verifies its clients, this client's certificate and
// key (PEM files); empty, the system's CAs and no client certificate. A
// `tls://` URL or a CA or certificate file turns TLS on. Credentials: a NATS
// user's JWT and nkey seed (a .creds file, as `nsc` writes it), for a server
// in operator mode.
struct NatsSecurity {
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  std::string creds_file;
  bool tls() const { return !ca_file.empty() || !cert_file.empty(); }
};

// `urls` (NATS_URL: one or more, comma-separated) as it may be logged: a
// password or token in a URL's user part replaced by REDACTED
// ("nats://svc:REDACTED@host:4222").
std::string WithoutSecrets(absl::string_view urls);

class Nats {
 public:
  // Returns at once; connection happens (and is retried) in the background.
  // INVALID_ARGUMENT if the TLS or credentials files cannot be loaded.
  static absl::StatusOr<std::unique_ptr<Nats>> Connect(const std::string& url,
                                                       const std::string& client_name,
                                                       const NatsSecurity& security = {});
  ~Nats();

  bool connected() const;
  // "" while connected; otherwise the connection's state and the last error
  // the client library recorded (e.g. "reconnecting: Authentication
  // Violation"), or, when it recorded none (it forgets between reconnection
  // attempts), what ended the connection and when ("reconnecting since
  // 14:02:07Z: Connection Closed"), for the log.
  std::string Why() const;
  // Which connection is in use: raised each time a closed one is replaced.
  // A JetStream context or subscription made before belongs to the closed
  // one: its owner makes it again when this number changes.
  uint64_t generation() const;
  // A fresh JetStream context with the given options (each component owns
  // one); `generation`, if given, is set to that of the connection it was
  // made from.
  absl::StatusOr<NatsPtr<jsCtx>> JetStream(jsOptions* options = nullptr,
                                           uint64_t* generation = nullptr) const;
  // Creates the stream if it does not exist. An existing stream is left as the
  // operator configured it (replicas, limits), only checked to exist; a
  // retention other than spec.max_age is logged as a warning (once per stream).
  absl::Status EnsureStream(const StreamSpec& spec) const;
  // Flushes and closes the connection (bounded by `timeout`); it is not
  // replaced after.
  void Close(absl::Duration timeout);

 private:
  Nats(NatsPtr<natsOptions> opts, std::string url);
  // Opens a connection with opts_ (retried by the library in the background).
  absl::StatusOr<std::shared_ptr<natsConnection>> Open() const;
  std::shared_ptr<natsConnection> Current() const;
  // Replaces the connection whenever the library has closed it (watcher_).
  void Watch();

  const NatsPtr<natsOptions> opts_;
  const std::string url_;  // as it may be logged
  mutable absl::Mutex conn_mu_;
  std::shared_ptr<natsConnection> conn_ ABSL_GUARDED_BY(conn_mu_);
  uint64_t generation_ ABSL_GUARDED_BY(conn_mu_) = 0;
  bool closing_ ABSL_GUARDED_BY(conn_mu_) = false;  // Close or the destructor: no replacing
  std::thread watcher_;
  mutable absl::Mutex mu_;
  // Streams whose retention was compared once already (the warning is logged once).
  mutable std::set<std::string> retention_checked_ ABSL_GUARDED_BY(mu_);
};

}  // namespace connecting::bus

#endif  // CONNECTING_LIBS_BUS_NATS_H_
