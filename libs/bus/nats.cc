#include "libs/bus/nats.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "libs/common/log.h"
#include "libs/common/throttle.h"

namespace connecting::bus {
namespace {

// The connection's last error as one string: the status's text, then the
// library's detail when it adds something ("" when there is none).
std::string LastErrorText(natsConnection* nc) {
  const char* text = nullptr;
  natsStatus last = nc != nullptr ? natsConnection_GetLastError(nc, &text) : NATS_OK;
  if (last == NATS_OK) return "";
  std::string out = natsStatus_GetText(last);
  if (text != nullptr && *text != '\0' && out != text) absl::StrAppend(&out, " (", text, ")");
  return out;
}

// What ended each connection, kept until it is up again: the client library
// clears its last error between reconnection attempts, so while it
// reconnects Why() would otherwise say only "reconnecting". Keyed by the
// connection, which the callbacks are given; ~Nats removes its entry.
struct Ended {
  absl::Mutex mu;
  std::map<const natsConnection*, std::pair<std::string, absl::Time>> why ABSL_GUARDED_BY(mu);
  static Ended& Get() {
    static Ended* const e = new Ended;
    return *e;
  }
};

void OnDisconnected(natsConnection* nc, void*) {
  // Also called as the process closes its connection on purpose: not worth a warning.
  if (natsConnection_IsClosed(nc)) return;
  std::string error = LastErrorText(nc);
  // A server that shut down, or a connection the network ended, leaves no error.
  if (error.empty()) error = "the connection was lost";
  {
    Ended& ended = Ended::Get();
    absl::MutexLock lock(&ended.mu);
    ended.why[nc] = {error, absl::Now()};
  }
  log::Warn("nats disconnected", {{"error", error}});
}
void OnReconnected(natsConnection* nc, void*) {
  {
    Ended& ended = Ended::Get();
    absl::MutexLock lock(&ended.mu);
    ended.why.erase(nc);
  }
  log::Info("nats reconnected");
}
void OnConnected(natsConnection*, void*) { log::Info("nats connected"); }
// What the server or the client library reports outside any call: a
// publish or subscription the server's permissions refuse, a slow consumer
// dropping messages. Nothing else would say it. A refusal comes back for
// every publish, so at most one line every 10 s, counting the rest.
void OnAsyncError(natsConnection* nc, natsSubscription* sub, natsStatus err, void*) {
  static log::Throttle* const throttle = new log::Throttle(absl::Seconds(10));
  std::optional<int64_t> held = throttle->Admit();
  if (!held) return;
  const char* subject = sub != nullptr ? natsSubscription_GetSubject(sub) : nullptr;
  log::Warn("nats reported an error", {{"error", natsStatus_GetText(err)},
                                       {"detail", LastErrorText(nc)},
                                       {"subscription", subject != nullptr ? subject : ""},
                                       {"more_since_the_last_line", absl::StrCat(*held)}});
}

}  // namespace

std::string WithoutSecrets(absl::string_view urls) {
  std::vector<std::string> out;
  for (absl::string_view url : absl::StrSplit(urls, ',')) {
    const size_t scheme = url.find("://");
    const size_t start = scheme == absl::string_view::npos ? 0 : scheme + 3;
    const size_t at = url.find('@', start);
    const size_t slash = url.find('/', start);
    if (at == absl::string_view::npos || (slash != absl::string_view::npos && slash < at)) {
      out.emplace_back(url);
      continue;
    }
    absl::string_view userinfo = url.substr(start, at - start);
    const size_t colon = userinfo.find(':');
    // user:password keeps the user; a lone token is all secret.
    out.push_back(absl::StrCat(url.substr(0, start),
                               colon == absl::string_view::npos
                                   ? "REDACTED"
                                   : absl::StrCat(userinfo.substr(0, colon), ":REDACTED"),
                               url.substr(at)));
  }
  return absl::StrJoin(out, ",");
}

absl::Status FromNats(natsStatus s, absl::string_view what, jsErrCode jerr) {
  if (s == NATS_OK) return absl::OkStatus();
  std::string msg = absl::StrCat(what, ": ", natsStatus_GetText(s));
  if (jerr != 0) absl::StrAppend(&msg, " (JetStream error ", static_cast<int>(jerr), ")");
  switch (s) {
    case NATS_TIMEOUT:
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NO_SERVER:
    case NATS_NOT_YET_CONNECTED:
    case NATS_IO_ERROR:
    case NATS_STALE_CONNECTION:
    case NATS_NO_RESPONDERS:
      return absl::UnavailableError(msg);
    case NATS_NOT_FOUND:
      return absl::NotFoundError(msg);
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
      return absl::InvalidArgumentError(msg);
    default:
      return absl::UnavailableError(msg);
  }
}

absl::StatusOr<std::unique_ptr<Nats>> Nats::Connect(const std::string& url,
                                                    const std::string& client_name,
                                                    const NatsSecurity& security) {
  natsOptions* raw_opts = nullptr;
  if (natsStatus s = natsOptions_Create(&raw_opts); s != NATS_OK) {
    return FromNats(s, "nats options");
  }
  NatsPtr<natsOptions> opts(raw_opts);
  natsStatus s = natsOptions_SetURL(opts.get(), url.c_str());
  if (s == NATS_OK) s = natsOptions_SetName(opts.get(), client_name.c_str());
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts.get(), -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts.get(), 250);
  if (s == NATS_OK) s = natsOptions_SetTimeout(opts.get(), 2000);
  if (s == NATS_OK) s = natsOptions_SetPingInterval(opts.get(), 5000);
  if (s == NATS_OK) s = natsOptions_SetMaxPingsOut(opts.get(), 2);
  // Keep publishing into the reconnect buffer short; the outbox holds events.
  if (s == NATS_OK) s = natsOptions_SetReconnectBufSize(opts.get(), 8 * 1024 * 1024);
  if (s == NATS_OK) s = natsOptions_SetRetryOnFailedConnect(opts.get(), true, OnConnected, nullptr);
  if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(opts.get(), OnDisconnected, nullptr);
  if (s == NATS_OK) s = natsOptions_SetReconnectedCB(opts.get(), OnReconnected, nullptr);
  if (s == NATS_OK) s = natsOptions_SetErrorHandler(opts.get(), OnAsyncError, nullptr);
  if (s != NATS_OK) return FromNats(s, absl::StrCat("nats options for ", WithoutSecrets(url)));
  if (security.tls()) {
    s = natsOptions_SetSecure(opts.get(), true);
    if (s != NATS_OK)
      return FromNats(s, absl::StrCat("nats TLS options for ", WithoutSecrets(url)));
  }
  if (!security.ca_file.empty() &&
      natsOptions_LoadCATrustedCertificates(opts.get(), security.ca_file.c_str()) != NATS_OK) {
    return absl::InvalidArgumentError(
        absl::StrCat("NATS_TLS_CA_FILE: cannot load CA certificates from ", security.ca_file, ": ",
                     nats_GetLastError(nullptr)));
  }
  if (!security.cert_file.empty() &&
      natsOptions_LoadCertificatesChain(opts.get(), security.cert_file.c_str(),
                                        security.key_file.c_str()) != NATS_OK) {
    return absl::InvalidArgumentError(absl::StrCat(
        "NATS_TLS_CERT_FILE / NATS_TLS_KEY_FILE: cannot load the client certificate ",
        security.cert_file, " with its key ", security.key_file, ": ", nats_GetLastError(nullptr)));
  }
  if (!security.creds_file.empty() &&
      natsOptions_SetUserCredentialsFromFiles(opts.get(), security.creds_file.c_str(), nullptr) !=
          NATS_OK) {
    return absl::InvalidArgumentError(absl::StrCat(
        "NATS_CREDS_FILE: cannot use ", security.creds_file, ": ", nats_GetLastError(nullptr)));
  }
  std::unique_ptr<Nats> nats(new Nats(std::move(opts), WithoutSecrets(url)));
  absl::StatusOr<std::shared_ptr<natsConnection>> first = nats->Open();
  if (!first.ok()) return first.status();
  {
    absl::MutexLock lock(&nats->conn_mu_);
    nats->conn_ = *std::move(first);
  }
  nats->watcher_ = std::thread([n = nats.get()] { n->Watch(); });
  return nats;
}

Nats::Nats(NatsPtr<natsOptions> opts, std::string url)
    : opts_(std::move(opts)), url_(std::move(url)) {}

absl::StatusOr<std::shared_ptr<natsConnection>> Nats::Open() const {
  natsConnection* raw = nullptr;
  natsStatus s = natsConnection_Connect(&raw, opts_.get());
  if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) {
    return FromNats(s, absl::StrCat("nats connect to ", url_));
  }
  if (s == NATS_OK) log::Info("nats connected", {{"url", url_}});
  // Closed and freed once its last user lets it go (a JetStream context or
  // a subscription made from it holds a reference of the library's own).
  return std::shared_ptr<natsConnection>(raw, [](natsConnection* c) {
    {
      Ended& ended = Ended::Get();
      absl::MutexLock lock(&ended.mu);
      ended.why.erase(c);
    }
    natsConnection_Destroy(c);
  });
}

Nats::~Nats() {
  {
    absl::MutexLock lock(&conn_mu_);
    closing_ = true;
  }
  if (watcher_.joinable()) watcher_.join();
}

std::shared_ptr<natsConnection> Nats::Current() const {
  absl::MutexLock lock(&conn_mu_);
  return conn_;
}

uint64_t Nats::generation() const {
  absl::MutexLock lock(&conn_mu_);
  return generation_;
}

void Nats::Watch() {
  constexpr absl::Duration kFirstWait = absl::Seconds(1);
  constexpr absl::Duration kLongestWait = absl::Seconds(30);
  absl::Duration wait = kFirstWait;
  absl::MutexLock lock(&conn_mu_);
  auto closing = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(conn_mu_) { return closing_; };
  while (!closing_) {
    conn_mu_.AwaitWithTimeout(absl::Condition(&closing), absl::Milliseconds(250));
    if (closing_) break;
    const natsConnStatus status = natsConnection_Status(conn_.get());
    if (status == NATS_CONN_STATUS_CONNECTED) wait = kFirstWait;
    if (status != NATS_CONN_STATUS_CLOSED) continue;
    // Closed, and not by Close: the library gave up on it.
    log::Warn(
        "nats connection closed by the client library; opening a new one",
        {{"error", LastErrorText(conn_.get())}, {"url", url_}, {"in", absl::FormatDuration(wait)}});
    conn_mu_.AwaitWithTimeout(absl::Condition(&closing), wait);
    if (closing_) break;
    wait = std::min(wait * 2, kLongestWait);
    conn_mu_.Unlock();  // connecting may take its timeout
    absl::StatusOr<std::shared_ptr<natsConnection>> next = Open();
    conn_mu_.Lock();
    if (!next.ok()) {
      log::Warn("nats: cannot open a new connection", {{"error", log::Text(next.status())}});
      continue;
    }
    if (closing_) break;  // the new one goes with `next`
    conn_ = *std::move(next);
    ++generation_;
  }
}

bool Nats::connected() const {
  return natsConnection_Status(Current().get()) == NATS_CONN_STATUS_CONNECTED;
}

std::string Nats::Why() const {
  const std::shared_ptr<natsConnection> conn = Current();
  std::string why;
  switch (natsConnection_Status(conn.get())) {
    case NATS_CONN_STATUS_CONNECTED:
      return "";
    case NATS_CONN_STATUS_CONNECTING:
      why = "connecting";
      break;
    case NATS_CONN_STATUS_RECONNECTING:
      why = "reconnecting";
      break;
    case NATS_CONN_STATUS_CLOSED:
      why = "closed";
      break;
    default:
      why = "disconnected";
  }
  if (std::string last = LastErrorText(conn.get()); !last.empty()) {
    absl::StrAppend(&why, ": ", last);
  } else {
    Ended& ended = Ended::Get();
    absl::MutexLock lock(&ended.mu);
    if (auto it = ended.why.find(conn.get()); it != ended.why.end()) {
      absl::StrAppend(&why, " since ",
                      absl::FormatTime("%H:%M:%SZ", it->second.second, absl::UTCTimeZone()), ": ",
                      it->second.first);
    }
  }
  return why;
}

absl::StatusOr<NatsPtr<jsCtx>> Nats::JetStream(jsOptions* options, uint64_t* generation) const {
  std::shared_ptr<natsConnection> conn;
  {
    absl::MutexLock lock(&conn_mu_);
    conn = conn_;
    if (generation != nullptr) *generation = generation_;
  }
  jsCtx* js = nullptr;
  if (natsStatus s = natsConnection_JetStream(&js, conn.get(), options); s != NATS_OK) {
    return FromNats(s, "jetstream context");
  }
  return NatsPtr<jsCtx>(js);
}

absl::Status Nats::EnsureStream(const StreamSpec& spec) const {
  absl::StatusOr<NatsPtr<jsCtx>> js = JetStream();
  if (!js.ok()) return js.status();
  jsStreamInfo* info = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = js_GetStreamInfo(&info, js->get(), spec.name.c_str(), nullptr, &jerr);
  NatsPtr<jsStreamInfo> info_owner(info);
  if (s == NATS_OK) {
    int64_t kept = info->Config != nullptr ? info->Config->MaxAge : 0;
    bool first = false;
    {
      absl::MutexLock lock(&mu_);
      first = retention_checked_.insert(spec.name).second;
    }
    if (first && kept != absl::ToInt64Nanoseconds(spec.max_age)) {
      auto age = [](int64_t ns) {
        return ns == 0 ? std::string("forever") : absl::FormatDuration(absl::Nanoseconds(ns));
      };
      log::Warn("stream keeps events for other than the configured time; left as it is",
                {{"stream", spec.name},
                 {"kept", age(kept)},
                 {"configured", age(absl::ToInt64Nanoseconds(spec.max_age))}});
    }
    return absl::OkStatus();
  }
  if (s != NATS_NOT_FOUND) return FromNats(s, absl::StrCat("stream info ", spec.name), jerr);

  std::vector<const char*> subjects;
  for (const std::string& subj : spec.subjects) subjects.push_back(subj.c_str());
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = spec.name.c_str();
  cfg.Subjects = subjects.data();
  cfg.SubjectsLen = static_cast<int>(subjects.size());
  cfg.Storage = js_FileStorage;
  cfg.Retention = js_LimitsPolicy;
  cfg.Replicas = spec.replicas;
  cfg.MaxAge = absl::ToInt64Nanoseconds(spec.max_age);
  cfg.Duplicates = absl::ToInt64Nanoseconds(spec.duplicate_window);
  jsStreamInfo* created = nullptr;
  s = js_AddStream(&created, js->get(), &cfg, nullptr, &jerr);
  NatsPtr<jsStreamInfo> created_owner(created);
  if (s != NATS_OK) {
    // Another replica may have created it in between.
    jsStreamInfo* again = nullptr;
    if (js_GetStreamInfo(&again, js->get(), spec.name.c_str(), nullptr, nullptr) == NATS_OK) {
      jsStreamInfo_Destroy(again);
      return absl::OkStatus();
    }
    return FromNats(s, absl::StrCat("create stream ", spec.name), jerr);
  }
  log::Info("created stream", {{"stream", spec.name}});
  return absl::OkStatus();
}

void Nats::Close(absl::Duration timeout) {
  std::shared_ptr<natsConnection> conn;
  {
    absl::MutexLock lock(&conn_mu_);
    closing_ = true;
    conn = conn_;
  }
  if (conn == nullptr) return;
  if (natsConnection_Status(conn.get()) == NATS_CONN_STATUS_CONNECTED) {
    (void)natsConnection_FlushTimeout(conn.get(), absl::ToInt64Milliseconds(timeout));
  }
  natsConnection_Close(conn.get());
}

}  // namespace connecting::bus
