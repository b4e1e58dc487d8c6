// A small key-value store over TCP for rendezvous without a shared filesystem: one process (the coordinator,
// or a rank) hosts TcpStoreServer on host:port; ranks reach it through TcpStore, which is also a
// gloo::rendezvous::Store so Gloo's connectFullMesh can publish and look up pair addresses through it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gloo/rendezvous/store.h"

namespace adore::comm {

// Serves set / get / wait / check on an in-memory map, one thread per client connection. Keys are never
// deleted; values are limited to kMaxValueBytes. Needs no rank: a coordinator hosts it for its workers.
class TcpStoreServer {
 public:
  static constexpr size_t kMaxValueBytes = 64u << 20;

  // Listens on host:port. host "" or "0.0.0.0" listens on every interface; port 0 picks a free port (see
  // port()). UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<TcpStoreServer>> Start(const std::string& host, int port);
  ~TcpStoreServer();  // Stop()
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  int port() const { return port_; }
  // Closes the listener and every connection, wakes pending waits (their clients get an error) and joins
  // the threads. Idempotent.
  void Stop();
  // Number of keys stored (tests, diagnostics).
  size_t num_keys() const;

 private:
  struct Connection {
    int fd = -1;
    std::thread thread;
    bool done = false;  // guarded by mu_
  };

  TcpStoreServer(int listen_fd, int port);
  void AcceptLoop();
  void Serve(Connection* conn);
  // Handles one request; false when the connection must close.
  bool HandleRequest(int fd, uint8_t op, const std::string& payload);
  enum class WaitResult { kReady, kTimedOut, kStopping };
  // Waits until every key exists, until `deadline` or Stop().
  WaitResult WaitForKeys(const std::vector<std::string>& keys, std::chrono::steady_clock::time_point deadline);

  const int listen_fd_;
  const int port_;
  std::thread accept_thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;                                 // guarded by mu_
  std::map<std::string, std::string, std::less<>> data_;  // guarded by mu_
  std::vector<std::unique_ptr<Connection>> connections_;  // guarded by mu_
};

// A client connection to a TcpStoreServer. Thread-safe (requests are serialized on one connection).
// Status-returning methods for the runtime; the gloo::rendezvous::Store overrides throw gloo::IoException
// (what Gloo's rendezvous expects) with the same message.
class TcpStore final : public gloo::rendezvous::Store {
 public:
  // Connects to host:port, retrying refused connections until `connect_timeout` (the server may start
  // after the ranks). `timeout` bounds get/wait when Gloo calls them without one. UNAVAILABLE when the
  // server cannot be reached in time.
  static absl::StatusOr<std::unique_ptr<TcpStore>> Connect(const std::string& host, int port,
                                                           absl::Duration connect_timeout, absl::Duration timeout);
  ~TcpStore() override;

  absl::Status Set(const std::string& key, std::string_view value);
  // Waits up to `timeout` for the key, then returns its value. DEADLINE_EXCEEDED when it never appears;
  // UNAVAILABLE when the server connection fails.
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout);
  // Waits up to `timeout` until every key exists. DEADLINE_EXCEEDED names the keys still missing.
  absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout);
  // The subset of `keys` that does not exist now (no waiting).
  absl::StatusOr<std::vector<std::string>> Missing(const std::vector<std::string>& keys);

  const std::string& address() const { return address_; }  // "host:port", for messages

  // gloo::rendezvous::Store.
  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

 private:
  TcpStore(int fd, std::string address, absl::Duration timeout)
      : fd_(fd), address_(std::move(address)), timeout_(timeout) {}
  // Sends one request and reads the reply (code + payload); `wait` is how long the server may take.
  absl::Status Call(uint8_t op, const std::string& payload, absl::Duration wait, uint8_t* code, std::string* reply);

  std::mutex mu_;
  int fd_;  // -1 once the connection failed; guarded by mu_
  const std::string address_;
  const absl::Duration timeout_;
};

}  // namespace adore::comm
