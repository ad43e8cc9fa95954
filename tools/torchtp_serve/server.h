#pragma once

// The HTTP front of torchtp-serve, on rank 0: OpenAI's completions and chat
// completions (whole or streamed as server-sent events), models, health and
// metrics. HTTP threads parse and check requests and hand them to the
// engine; the thread that calls run() steps the engine and routes each
// step's tokens to the requests' channels. The other ranks never see HTTP:
// they follow the engine's steps.

#include "completion_request.h"
#include "metrics.h"

#include <torchtp/engine.h>
#include <torchtp/tokenizer.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace httplib {
class Server;
class Request;
class Response;
} // namespace httplib

namespace torchtp::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  /// 0: any free port.
  int port = 8000;
  /// Where to write the port listened on (for scripts), if set.
  std::string port_file;
  /// Required as "Authorization: Bearer KEY" on every request, if set.
  std::string api_key;
  size_t max_body_bytes = 16 << 20;
  int http_threads = 128;
  /// After SIGTERM: requests still running then are cancelled.
  double shutdown_seconds = 3;
};

class Channel;

class Server {
 public:
  Server(
      Engine& engine,
      ModelLimits model,
      std::optional<Tokenizer> tokenizer,
      ServerOptions options);
  ~Server();

  /// Listens, then steps the engine until `stop` is set (then drains:
  /// stops accepting, lets running requests finish within
  /// `shutdown_seconds`, cancels the rest) and shuts the engine down.
  /// A failed step (a rank died) answers 503 from then on and raises.
  void run(const std::atomic<bool>& stop);

 private:
  void routes();
  void completion(const httplib::Request& req, httplib::Response& res, bool chat);
  void check_key(const httplib::Request& req) const;
  void dispatch(const std::vector<RequestUpdate>& updates);
  void fail_all(const std::string& why);
  void wait_for_responses(std::chrono::milliseconds limit);

  Engine& engine_;
  ModelLimits model_;
  std::optional<Tokenizer> tokenizer_;
  ServerOptions options_;
  std::unique_ptr<httplib::Server> http_;
  int listen_socket_ = -1;
  Metrics metrics_;
  const int64_t created_;

  std::mutex channels_mutex_;
  std::unordered_map<int64_t, std::shared_ptr<Channel>> channels_;
  std::atomic<int64_t> next_response_{0};
  std::atomic<int> in_flight_{0};
  std::atomic<bool> draining_{false};
  // The engine was shut down (under channels_mutex_).
  bool stopped_ = false;
  std::mutex failure_mutex_;
  std::string failure_;
};

} // namespace torchtp::serve
