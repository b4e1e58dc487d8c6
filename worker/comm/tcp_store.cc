// TcpStoreServer / TcpStore: a length-prefixed request/reply protocol over one TCP connection per client.
//
// Request: [u8 op][u32 payload length][payload]; reply: [u8 code][u32 payload length][payload]. Integers are
// little-endian; strings are [u32 length][bytes]. Ops: SET key value; GET timeout_ms key (waits for the key);
// WAIT timeout_ms n key*n; CHECK n key*n (replies with the indices of missing keys). Codes: 0 ok, 1 timed
// out, 2 bad request (payload = message).
#include "worker/comm/tcp_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gloo/common/error.h"
#include "worker/comm/communicator.h"

namespace adore::comm {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint8_t kOpSet = 1;
constexpr uint8_t kOpGet = 2;
constexpr uint8_t kOpWait = 3;
constexpr uint8_t kOpCheck = 4;
constexpr uint8_t kCodeOk = 0;
constexpr uint8_t kCodeTimeout = 1;
constexpr uint8_t kCodeBadRequest = 2;
constexpr size_t kMaxFrameBytes = TcpStoreServer::kMaxValueBytes + 4096;
// How long a client waits for a reply beyond the server-side wait, before it declares the server hung.
constexpr absl::Duration kReplyGrace = absl::Seconds(5);

std::string ErrnoString(int err) { return absl::StrCat(std::strerror(err), " (errno ", err, ")"); }

void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutString(std::string* out, std::string_view s) {
  PutU32(out, static_cast<uint32_t>(s.size()));
  out->append(s);
}

// Reads fields of a payload; every read is bounds-checked (ok() turns false on a short payload).
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  bool ok() const { return ok_; }
  bool done() const { return pos_ == data_.size(); }
  uint32_t U32() { return static_cast<uint32_t>(Uint(4)); }
  uint64_t U64() { return Uint(8); }
  std::string String() {
    const uint32_t n = U32();
    if (!ok_ || data_.size() - pos_ < n) {
      ok_ = false;
      return {};
    }
    std::string s(data_.substr(pos_, n));
    pos_ += n;
    return s;
  }

 private:
  uint64_t Uint(int bytes) {
    if (!ok_ || data_.size() - pos_ < static_cast<size_t>(bytes)) {
      ok_ = false;
      return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(data_[pos_ + i])) << (8 * i);
    pos_ += bytes;
    return v;
  }
  std::string_view data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

std::string Frame(uint8_t tag, const std::string& payload) {
  std::string frame;
  frame.reserve(5 + payload.size());
  frame.push_back(static_cast<char>(tag));
  PutU32(&frame, static_cast<uint32_t>(payload.size()));
  frame += payload;
  return frame;
}

// Waits for `events` on fd until `deadline` (nullopt: forever). OK when ready.
absl::Status PollUntil(int fd, short events, const Clock::time_point* deadline, const char* what) {
  while (true) {
    int timeout_ms = -1;
    if (deadline != nullptr) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - Clock::now()).count();
      if (left <= 0) return absl::DeadlineExceededError(absl::StrCat(what, " timed out"));
      timeout_ms = static_cast<int>(std::min<int64_t>(left + 1, 1 << 30));
    }
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, timeout_ms);
    if (r > 0) return absl::OkStatus();  // readable, writable, or an error the next call will report
    if (r < 0 && errno != EINTR) return absl::UnavailableError(absl::StrCat(what, ": poll: ", ErrnoString(errno)));
  }
}

absl::Status SendAll(int fd, std::string_view data, const Clock::time_point* deadline) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (absl::Status s = PollUntil(fd, POLLOUT, deadline, "send"); !s.ok()) return s;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      return absl::UnavailableError(absl::StrCat("send: ", ErrnoString(errno)));
    }
  }
  return absl::OkStatus();
}

// Reads exactly n bytes. UNAVAILABLE when the peer closed the connection.
absl::Status RecvAll(int fd, char* out, size_t n, const Clock::time_point* deadline) {
  size_t got = 0;
  while (got < n) {
    if (absl::Status s = PollUntil(fd, POLLIN, deadline, "receive"); !s.ok()) return s;
    const ssize_t r = ::recv(fd, out + got, n - got, MSG_DONTWAIT);
    if (r > 0) {
      got += static_cast<size_t>(r);
    } else if (r == 0) {
      return absl::UnavailableError("connection closed by peer");
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat("recv: ", ErrnoString(errno)));
    }
  }
  return absl::OkStatus();
}

// Reads one frame: tag and payload.
absl::Status RecvFrame(int fd, const Clock::time_point* deadline, uint8_t* tag, std::string* payload) {
  char header[5];
  if (absl::Status s = RecvAll(fd, header, sizeof(header), deadline); !s.ok()) return s;
  *tag = static_cast<uint8_t>(header[0]);
  Reader r(std::string_view(header + 1, 4));
  const uint32_t len = r.U32();
  if (len > kMaxFrameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("frame of ", len, " bytes exceeds the limit ", kMaxFrameBytes));
  }
  payload->resize(len);
  return RecvAll(fd, payload->data(), len, deadline);
}

void SetNoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

uint64_t ToMillis(absl::Duration d) { return static_cast<uint64_t>(TimeoutMillis(d).count()); }

// One connection attempt with a deadline; returns the fd or an error.
absl::StatusOr<int> ConnectOnce(const addrinfo* ai, Clock::time_point deadline) {
  const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("socket: ", ErrnoString(errno)));
  if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
    const int err = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("connect: ", ErrnoString(err)));
  }
  if (absl::Status s = PollUntil(fd, POLLOUT, &deadline, "connect"); !s.ok()) {
    ::close(fd);
    return s;
  }
  int err = 0;
  socklen_t len = sizeof(err);
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("connect: ", ErrnoString(err)));
  }
  SetNoDelay(fd);
  return fd;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Server

absl::StatusOr<std::unique_ptr<TcpStoreServer>> TcpStoreServer::Start(const std::string& host, int port) {
  if (port < 0 || port > 65535) return absl::InvalidArgumentError(absl::StrCat("store port ", port, " out of range"));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  const bool any = host.empty() || host == "0.0.0.0";
  if (any) hints.ai_family = AF_INET;
  addrinfo* res = nullptr;
  const std::string port_str = std::to_string(port);
  if (const int rc = ::getaddrinfo(any ? nullptr : host.c_str(), port_str.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(absl::StrCat("store server: cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  std::string last_error = "no address";
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last_error = absl::StrCat("socket: ", ErrnoString(errno));
      continue;
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 256) != 0) {
      last_error = absl::StrCat("bind/listen: ", ErrnoString(errno));
      ::close(fd);
      continue;
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof(bound);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
    const int bound_port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                                       : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    ::freeaddrinfo(res);
    auto server = std::unique_ptr<TcpStoreServer>(new TcpStoreServer(fd, bound_port));
    server->accept_thread_ = std::thread([s = server.get()] { s->AcceptLoop(); });
    return server;
  }
  ::freeaddrinfo(res);
  return absl::UnavailableError(absl::StrCat("store server: cannot listen on ", host, ":", port, ": ", last_error));
}

TcpStoreServer::TcpStoreServer(int listen_fd, int port) : listen_fd_(listen_fd), port_(port) {}

TcpStoreServer::~TcpStoreServer() { Stop(); }

void TcpStoreServer::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  // shutdown() wakes the accept() blocked on the listening socket (Linux returns EINVAL from it).
  ::shutdown(listen_fd_, SHUT_RDWR);
  if (accept_thread_.joinable()) accept_thread_.join();
  ::close(listen_fd_);
  std::vector<std::unique_ptr<Connection>> connections;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connections.swap(connections_);
    for (auto& c : connections) ::shutdown(c->fd, SHUT_RDWR);  // wakes the blocked recv()
  }
  cv_.notify_all();
  for (auto& c : connections) {
    if (c->thread.joinable()) c->thread.join();
    ::close(c->fd);
  }
}

size_t TcpStoreServer::num_keys() const {
  std::lock_guard<std::mutex> lock(mu_);
  return data_.size();
}

void TcpStoreServer::AcceptLoop() {
  while (true) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    const int accept_errno = errno;
    std::vector<std::unique_ptr<Connection>> finished;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) {
        if (fd >= 0) ::close(fd);
        return;
      }
      // Reap connections whose client left; their fds are closed here, never by the serving thread, so a
      // concurrent Stop() can not shut down a reused descriptor.
      auto done = std::stable_partition(connections_.begin(), connections_.end(),
                                        [](const std::unique_ptr<Connection>& c) { return !c->done; });
      std::move(done, connections_.end(), std::back_inserter(finished));
      connections_.erase(done, connections_.end());
      if (fd >= 0) {
        SetNoDelay(fd);
        auto conn = std::make_unique<Connection>();
        conn->fd = fd;
        Connection* raw = conn.get();
        connections_.push_back(std::move(conn));
        raw->thread = std::thread([this, raw] { Serve(raw); });
      }
    }
    for (auto& c : finished) {
      c->thread.join();
      ::close(c->fd);
    }
    if (fd < 0 && accept_errno != EINTR && accept_errno != ECONNABORTED) {
      // Out of descriptors or similar: back off instead of spinning.
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

void TcpStoreServer::Serve(Connection* conn) {
  while (true) {
    uint8_t op = 0;
    std::string payload;
    if (!RecvFrame(conn->fd, nullptr, &op, &payload).ok()) break;
    if (!HandleRequest(conn->fd, op, payload)) break;
  }
  std::lock_guard<std::mutex> lock(mu_);
  conn->done = true;
}

TcpStoreServer::WaitResult TcpStoreServer::WaitForKeys(const std::vector<std::string>& keys,
                                                       Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  auto all_present = [&] {
    for (const std::string& k : keys) {
      if (!data_.contains(k)) return false;
    }
    return true;
  };
  cv_.wait_until(lock, deadline, [&] { return stopping_ || all_present(); });
  if (stopping_) return WaitResult::kStopping;
  return all_present() ? WaitResult::kReady : WaitResult::kTimedOut;
}

bool TcpStoreServer::HandleRequest(int fd, uint8_t op, const std::string& payload) {
  Reader r(payload);
  std::string reply;
  uint8_t code = kCodeOk;
  auto bad = [&](const std::string& msg) {
    code = kCodeBadRequest;
    reply = msg;
  };
  switch (op) {
    case kOpSet: {
      std::string key = r.String();
      std::string value = r.String();
      if (!r.ok() || !r.done()) {
        bad("malformed SET");
      } else if (value.size() > kMaxValueBytes) {
        bad(absl::StrCat("value of ", value.size(), " bytes exceeds the limit"));
      } else {
        {
          std::lock_guard<std::mutex> lock(mu_);
          data_.insert_or_assign(std::move(key), std::move(value));
        }
        cv_.notify_all();
      }
      break;
    }
    case kOpGet: {
      const uint64_t timeout_ms = r.U64();
      std::string key = r.String();
      if (!r.ok() || !r.done()) {
        bad("malformed GET");
        break;
      }
      const auto deadline = Clock::now() + std::chrono::milliseconds(std::min<uint64_t>(timeout_ms, 1ull << 40));
      const WaitResult w = WaitForKeys({key}, deadline);
      if (w == WaitResult::kStopping) return false;  // close without a reply: the client sees UNAVAILABLE
      if (w == WaitResult::kTimedOut) {
        code = kCodeTimeout;
        break;
      }
      std::lock_guard<std::mutex> lock(mu_);
      reply = data_.find(key)->second;
      break;
    }
    case kOpWait:
    case kOpCheck: {
      const uint64_t timeout_ms = op == kOpWait ? r.U64() : 0;
      const uint32_t n = r.U32();
      std::vector<std::string> keys;
      for (uint32_t i = 0; i < n && r.ok(); ++i) keys.push_back(r.String());
      if (!r.ok() || !r.done()) {
        bad(op == kOpWait ? "malformed WAIT" : "malformed CHECK");
        break;
      }
      if (op == kOpWait) {
        const auto deadline = Clock::now() + std::chrono::milliseconds(std::min<uint64_t>(timeout_ms, 1ull << 40));
        const WaitResult w = WaitForKeys(keys, deadline);
        if (w == WaitResult::kStopping) return false;
        if (w == WaitResult::kTimedOut) code = kCodeTimeout;
        break;
      }
      std::vector<uint32_t> missing;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (uint32_t i = 0; i < n; ++i) {
          if (!data_.contains(keys[i])) missing.push_back(i);
        }
      }
      PutU32(&reply, static_cast<uint32_t>(missing.size()));
      for (uint32_t i : missing) PutU32(&reply, i);
      break;
    }
    default:
      bad(absl::StrCat("unknown op ", static_cast<int>(op)));
  }
  if (!SendAll(fd, Frame(code, reply), nullptr).ok()) return false;
  return code != kCodeBadRequest;
}

// ---------------------------------------------------------------------------------------------------------
// Client

absl::StatusOr<std::unique_ptr<TcpStore>> TcpStore::Connect(const std::string& host, int port,
                                                            absl::Duration connect_timeout, absl::Duration timeout) {
  const std::string address = absl::StrCat(host, ":", port);
  if (port <= 0 || port > 65535)
    return absl::InvalidArgumentError(absl::StrCat("store address ", address, ": bad port"));
  const auto deadline = Clock::now() + TimeoutMillis(connect_timeout);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  const std::string port_str = std::to_string(port);
  auto backoff = std::chrono::milliseconds(20);
  std::string last_error;
  while (true) {
    addrinfo* res = nullptr;
    if (const int rc = ::getaddrinfo(host.c_str(), port_str.c_str(), &hints, &res); rc != 0) {
      last_error = absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc));  // DNS may not be ready yet
    } else {
      for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
        absl::StatusOr<int> fd = ConnectOnce(ai, deadline);
        if (fd.ok()) {
          ::freeaddrinfo(res);
          return std::unique_ptr<TcpStore>(new TcpStore(*fd, address, timeout));
        }
        // An attempt cut short by the deadline says less than the refusal before it.
        if (last_error.empty() || !absl::IsDeadlineExceeded(fd.status()))
          last_error = std::string(fd.status().message());
      }
      ::freeaddrinfo(res);
    }
    const auto now = Clock::now();
    if (now >= deadline) break;
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, deadline - now));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(500));
  }
  return absl::UnavailableError(absl::StrCat("cannot reach the store at ", address, " within ",
                                             absl::FormatDuration(connect_timeout), ": ", last_error));
}

TcpStore::~TcpStore() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status TcpStore::Call(uint8_t op, const std::string& payload, absl::Duration wait, uint8_t* code,
                            std::string* reply) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0) return absl::UnavailableError(absl::StrCat("store ", address_, ": connection lost earlier"));
  const auto deadline = Clock::now() + TimeoutMillis(wait + kReplyGrace);
  absl::Status s = SendAll(fd_, Frame(op, payload), &deadline);
  if (s.ok()) s = RecvFrame(fd_, &deadline, code, reply);
  if (!s.ok()) {
    // The stream is out of sync after a partial exchange: drop the connection.
    ::close(fd_);
    fd_ = -1;
    const absl::StatusCode c =
        s.code() == absl::StatusCode::kDeadlineExceeded ? s.code() : absl::StatusCode::kUnavailable;
    return absl::Status(c, absl::StrCat("store ", address_, ": ", s.message()));
  }
  if (*code == kCodeBadRequest) {
    return absl::InternalError(absl::StrCat("store ", address_, " refused the request: ", *reply));
  }
  return absl::OkStatus();
}

absl::Status TcpStore::Set(const std::string& key, std::string_view value) {
  if (value.size() > TcpStoreServer::kMaxValueBytes) {
    return absl::InvalidArgumentError(absl::StrCat("store value for '", key, "' is ", value.size(), " bytes"));
  }
  std::string payload;
  PutString(&payload, key);
  PutString(&payload, value);
  uint8_t code;
  std::string reply;
  return Call(kOpSet, payload, absl::ZeroDuration(), &code, &reply);
}

absl::StatusOr<std::string> TcpStore::Get(const std::string& key, absl::Duration timeout) {
  std::string payload;
  PutU64(&payload, ToMillis(timeout));
  PutString(&payload, key);
  uint8_t code;
  std::string reply;
  if (absl::Status s = Call(kOpGet, payload, timeout, &code, &reply); !s.ok()) return s;
  if (code == kCodeTimeout) {
    return absl::DeadlineExceededError(
        absl::StrCat("store ", address_, ": key '", key, "' did not appear within ", absl::FormatDuration(timeout)));
  }
  return reply;
}

absl::Status TcpStore::Wait(const std::vector<std::string>& keys, absl::Duration timeout) {
  std::string payload;
  PutU64(&payload, ToMillis(timeout));
  PutU32(&payload, static_cast<uint32_t>(keys.size()));
  for (const std::string& k : keys) PutString(&payload, k);
  uint8_t code;
  std::string reply;
  if (absl::Status s = Call(kOpWait, payload, timeout, &code, &reply); !s.ok()) return s;
  if (code == kCodeOk) return absl::OkStatus();
  absl::StatusOr<std::vector<std::string>> missing = Missing(keys);
  const std::string which = missing.ok() ? absl::StrJoin(*missing, "', '") : absl::StrJoin(keys, "', '");
  return absl::DeadlineExceededError(absl::StrCat("store ", address_, ": timed out after ",
                                                  absl::FormatDuration(timeout), " waiting for key(s) '", which, "'"));
}

absl::StatusOr<std::vector<std::string>> TcpStore::Missing(const std::vector<std::string>& keys) {
  std::string payload;
  PutU32(&payload, static_cast<uint32_t>(keys.size()));
  for (const std::string& k : keys) PutString(&payload, k);
  uint8_t code;
  std::string reply;
  if (absl::Status s = Call(kOpCheck, payload, absl::ZeroDuration(), &code, &reply); !s.ok()) return s;
  Reader r(reply);
  const uint32_t n = r.U32();
  std::vector<std::string> missing;
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    const uint32_t index = r.U32();
    if (index < keys.size()) missing.push_back(keys[index]);
  }
  if (!r.ok()) return absl::InternalError(absl::StrCat("store ", address_, ": malformed CHECK reply"));
  return missing;
}

void TcpStore::set(const std::string& key, const std::vector<char>& data) {
  if (absl::Status s = Set(key, std::string_view(data.data(), data.size())); !s.ok()) {
    throw ::gloo::IoException(std::string(s.message()));
  }
}

std::vector<char> TcpStore::get(const std::string& key) {
  absl::StatusOr<std::string> value = Get(key, timeout_);
  if (!value.ok()) throw ::gloo::IoException(std::string(value.status().message()));
  return std::vector<char>(value->begin(), value->end());
}

void TcpStore::wait(const std::vector<std::string>& keys) { wait(keys, std::chrono::milliseconds(0)); }

void TcpStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  // Gloo passes 0 (kNoTimeout) for "no timeout of its own": use this store's.
  const absl::Duration t = timeout.count() > 0 ? absl::FromChrono(timeout) : timeout_;
  if (absl::Status s = Wait(keys, t); !s.ok()) throw ::gloo::IoException(std::string(s.message()));
}

}  // namespace adore::comm
