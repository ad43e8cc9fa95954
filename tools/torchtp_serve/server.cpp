#include "server.h"

#include "api_error.h"
#include "text_stream.h"

#include <c10/util/Exception.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <condition_variable>
#include <cstring>
#include <cstdio>
#include <deque>
#include <fstream>
#include <thread>

#include <sys/socket.h>

namespace torchtp::serve {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

/// One request's updates, from the engine's thread to its HTTP thread.
class Channel {
 public:
  explicit Channel(Clock::time_point arrival) : arrival_(arrival) {}

  void push(const RequestUpdate& u, Metrics& metrics) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (u.token >= 0) {
      const auto now = Clock::now();
      const double since =
          std::chrono::duration<double>(now - (tokens_ ? last_ : arrival_))
              .count();
      tokens_ ? metrics.inter_token(since) : metrics.time_to_first_token(since);
      last_ = now;
      ++tokens_;
    }
    updates_.push_back(u);
    ready_.notify_one();
  }

  void fail(const std::string& why) {
    std::lock_guard<std::mutex> lock(mutex_);
    failure_ = why;
    ready_.notify_one();
  }

  /// The updates that came, waiting up to `timeout` for one; throws 503
  /// when the engine failed.
  std::vector<RequestUpdate> take(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait_for(
        lock, timeout, [&] { return !updates_.empty() || !failure_.empty(); });
    if (!failure_.empty()) {
      throw ApiError(503, "the server failed: " + failure_);
    }
    std::vector<RequestUpdate> out(updates_.begin(), updates_.end());
    updates_.clear();
    return out;
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<RequestUpdate> updates_;
  std::string failure_;
  Clock::time_point arrival_, last_;
  int64_t tokens_ = 0;
};

namespace {

constexpr auto kPoll = std::chrono::milliseconds(100);
// Silence on a stream before a keep-alive comment.
constexpr auto kKeepAlive = std::chrono::seconds(1);

// JSON text; invalid UTF-8 (quoted from a request) replaced, never thrown.
std::string text_of(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(text_of(e.body()), "application/json");
}

std::string sse(const json& j) {
  return "data: " + text_of(j) + "\n\n";
}

// A request's progress as its HTTP thread sees it: text so far, counts,
// and why it ended.
struct Progress {
  Progress(
      std::shared_ptr<Channel> channel,
      int64_t id,
      CompletionRequest request,
      const std::optional<Tokenizer>& tokenizer)
      : channel(std::move(channel)),
        id(id),
        request(std::move(request)),
        text(tokenizer, this->request.prompt_ids, this->request.stop) {}

  // Takes what came; returns the new text that may be sent.
  std::string advance(Engine& engine) {
    std::string out;
    for (const auto& u : channel->take(kPoll)) {
      if (done) {
        break;
      }
      if (u.token >= 0) {
        ++completion_tokens;
        out += text.add(u.token);
        if (text.stopped()) {
          // A stop string: the engine need not go on.
          engine.cancel(id);
          finish("stop");
          break;
        }
      }
      if (u.finished != FinishReason::none) {
        out += text.finish();
        finish(
            text.stopped()                          ? "stop"
                : u.finished == FinishReason::cancelled ? "cancelled"
                                                        : finish_reason_name(u.finished));
      }
    }
    return out;
  }

  void finish(const std::string& reason) {
    done = true;
    finish_reason = reason;
  }

  json usage() const {
    const int64_t prompt = static_cast<int64_t>(request.prompt_ids.size());
    return {
        {"prompt_tokens", prompt},
        {"completion_tokens", completion_tokens},
        {"total_tokens", prompt + completion_tokens}};
  }

  std::shared_ptr<Channel> channel;
  int64_t id;
  CompletionRequest request;
  TextStream text;
  int64_t completion_tokens = 0;
  bool done = false;
  std::string finish_reason;
};

} // namespace

Server::Server(
    Engine& engine,
    ModelLimits model,
    std::optional<Tokenizer> tokenizer,
    ServerOptions options)
    : engine_(engine),
      model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      options_(std::move(options)),
      http_(std::make_unique<httplib::Server>()),
      created_(std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count()) {
  const int threads = options_.http_threads;
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // httplib's own options (SO_REUSEADDR), and the listening socket kept:
  // run() widens its backlog, which httplib leaves at 5 (a burst of 64
  // clients connecting at once lost 20 of them here).
  http_->set_socket_options([this](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_socket_ = sock;
  });
  http_->set_payload_max_length(options_.max_body_bytes);
  routes();
}

Server::~Server() = default;

void Server::check_key(const httplib::Request& req) const {
  if (options_.api_key.empty()) {
    return;
  }
  if (req.get_header_value("Authorization") != "Bearer " + options_.api_key) {
    throw ApiError(
        401, "Incorrect or missing API key: send 'Authorization: Bearer KEY'",
        "", "invalid_api_key");
  }
}

void Server::routes() {
  auto& http = *http_;
  // Every handler answers errors in OpenAI's shape.
  auto guarded = [this](auto handler) {
    return [this, handler](const httplib::Request& req, httplib::Response& res) {
      try {
        check_key(req);
        handler(req, res);
      } catch (const ApiError& e) {
        metrics_.rejected(e.status);
        send_error(res, e);
      }
    };
  };
  http.Post(
      "/v1/completions",
      guarded([this](const httplib::Request& req, httplib::Response& res) {
        completion(req, res, /*chat=*/false);
      }));
  http.Post(
      "/v1/chat/completions",
      guarded([this](const httplib::Request& req, httplib::Response& res) {
        completion(req, res, /*chat=*/true);
      }));
  http.Get(
      "/v1/models",
      guarded([this](const httplib::Request&, httplib::Response& res) {
        json model = {
            {"id", model_.name},
            {"object", "model"},
            {"created", created_},
            {"owned_by", "torchtp"},
            {"max_model_len", model_.context}};
        res.set_content(
            json{{"object", "list"}, {"data", json::array({model})}}.dump(),
            "application/json");
      }));
  http.Get(
      "/health",
      guarded([this](const httplib::Request&, httplib::Response& res) {
        std::lock_guard<std::mutex> lock(failure_mutex_);
        if (!failure_.empty() || draining_) {
          throw ApiError(
              503, failure_.empty() ? "shutting down" : "failed: " + failure_);
        }
        res.set_content(json{{"status", "ok"}}.dump(), "application/json");
      }));
  http.Get(
      "/metrics",
      guarded([this](const httplib::Request&, httplib::Response& res) {
        res.set_content(metrics_.render(), "text/plain; version=0.0.4");
      }));
  // What no handler answered (unknown paths, a body over the limit).
  http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) {
      return;
    }
    const int status = res.status;
    std::string message = status == 404 ? "no such endpoint: " + req.method +
            " " + req.path
        : status == 413 ? "the request body is larger than " +
            std::to_string(options_.max_body_bytes) + " bytes"
                        : "HTTP error " + std::to_string(status);
    metrics_.rejected(status);
    send_error(res, ApiError(status, message));
  });
  http.set_exception_handler([](const httplib::Request&,
                                httplib::Response& res,
                                std::exception_ptr e) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(e);
    } catch (const c10::Error& x) {
      what = x.what_without_backtrace();
    } catch (const std::exception& x) {
      what = x.what();
    } catch (...) {
    }
    send_error(res, ApiError(500, what));
  });
}

void Server::completion(
    const httplib::Request& req, httplib::Response& res, bool chat) {
  const auto arrival = Clock::now();
  {
    std::lock_guard<std::mutex> lock(failure_mutex_);
    if (!failure_.empty()) {
      throw ApiError(503, "the server failed: " + failure_);
    }
  }
  if (draining_) {
    throw ApiError(503, "the server is shutting down");
  }
  auto request = parse_completion_request(req.body, chat, model_);
  auto channel = std::make_shared<Channel>(arrival);
  int64_t id;
  {
    // Registered before the engine's thread can see the request, and only
    // while the server still steps: stopping and failing take this lock to
    // tell every registered request.
    std::lock_guard<std::mutex> lock(channels_mutex_);
    if (draining_ || stopped_) {
      throw ApiError(503, "the server is shutting down");
    }
    {
      std::lock_guard<std::mutex> failure(failure_mutex_);
      if (!failure_.empty()) {
        throw ApiError(503, "the server failed: " + failure_);
      }
    }
    try {
      id = engine_.add_request(request.prompt_ids, request.engine);
    } catch (const c10::Error& e) {
      const std::string why = e.what_without_backtrace();
      throw ApiError(
          why.find("queue is full") != std::string::npos ? 429 : 400, why);
    }
    channels_[id] = channel;
  }
  const std::string response_id = (chat ? "chatcmpl-" : "cmpl-") +
      std::to_string(created_) + "-" + std::to_string(next_response_++);
  const json head = {
      {"id", response_id},
      {"object",
       chat ? (request.stream ? "chat.completion.chunk" : "chat.completion")
            : "text_completion"},
      {"created",
       std::chrono::duration_cast<std::chrono::seconds>(
           std::chrono::system_clock::now().time_since_epoch())
           .count()},
      {"model", model_.name}};
  auto progress =
      std::make_shared<Progress>(channel, id, std::move(request), tokenizer_);
  ++in_flight_;

  if (!progress->request.stream) {
    struct Leave {
      std::atomic<int>& n;
      ~Leave() {
        --n;
      }
    } leave{in_flight_};
    std::string text;
    while (!progress->done) {
      text += progress->advance(engine_);
    }
    metrics_.finished(progress->finish_reason);
    json choice = {
        {"index", 0},
        {"logprobs", nullptr},
        {"finish_reason", progress->finish_reason}};
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", text}};
    } else {
      choice["text"] = text;
    }
    json body = head;
    body["choices"] = json::array({choice});
    body["usage"] = progress->usage();
    res.set_content(text_of(body), "application/json");
    return;
  }

  // Streamed: httplib calls the provider until it says done; each call
  // sends what the engine produced since the last.
  auto chunk = [head, chat](const std::string& text, const json& finish) {
    json c = head;
    json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish}};
    if (chat) {
      choice["delta"] = finish.is_null() ? json{{"content", text}} : json::object();
    } else {
      choice["text"] = text;
    }
    c["choices"] = json::array({choice});
    return c;
  };
  auto started = std::make_shared<bool>(false);
  auto last_write = std::make_shared<Clock::time_point>(Clock::now());
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, progress, chunk, head, chat, started, last_write](
          size_t, httplib::DataSink& sink) {
        auto send = [&](const std::string& s) {
          // False when the client left: the releaser below cancels.
          *last_write = Clock::now();
          return sink.write(s.data(), s.size());
        };
        if (!*started) {
          *started = true;
          if (chat) {
            json first = head;
            first["choices"] = json::array(
                {{{"index", 0},
                  {"delta", {{"role", "assistant"}, {"content", ""}}},
                  {"logprobs", nullptr},
                  {"finish_reason", nullptr}}});
            if (!send(sse(first))) {
              return false;
            }
          }
        }
        std::string text;
        try {
          text = progress->advance(engine_);
        } catch (const ApiError& e) {
          send(sse(e.body()));
          sink.done();
          return true;
        } catch (const std::exception& e) {
          // Outside the handler's try: nothing may escape to httplib's
          // thread pool (it would end the process).
          send(sse(ApiError(500, e.what()).body()));
          return false;
        }
        if (!text.empty() && !send(sse(chunk(text, nullptr)))) {
          return false;
        }
        // Nothing to say for a while (queued, or text held back by a stop
        // string): an SSE comment, which clients skip, so a client that
        // left is noticed (the write fails) and its request cancelled.
        if (text.empty() && !progress->done &&
            Clock::now() - *last_write > kKeepAlive && !send(": \n\n")) {
          return false;
        }
        if (progress->done) {
          metrics_.finished(progress->finish_reason);
          std::string tail = sse(chunk("", progress->finish_reason));
          if (progress->request.stream_usage) {
            json usage = head;
            usage["choices"] = json::array();
            usage["usage"] = progress->usage();
            tail += sse(usage);
          }
          tail += "data: [DONE]\n\n";
          if (!send(tail)) {
            return false;
          }
          sink.done();
        }
        return true;
      },
      [this, progress](bool) {
        // Ended before its last chunk: the client left, or the server
        // stopped. Its blocks are freed at the next step.
        if (!progress->done) {
          engine_.cancel(progress->id);
          metrics_.finished("cancelled");
        }
        --in_flight_;
      });
}

void Server::dispatch(const std::vector<RequestUpdate>& updates) {
  std::lock_guard<std::mutex> lock(channels_mutex_);
  for (const auto& u : updates) {
    auto it = channels_.find(u.id);
    if (it == channels_.end()) {
      continue;
    }
    it->second->push(u, metrics_);
    if (u.finished != FinishReason::none) {
      channels_.erase(it);
    }
  }
}

void Server::fail_all(const std::string& why) {
  std::lock_guard<std::mutex> lock(channels_mutex_);
  {
    std::lock_guard<std::mutex> failure(failure_mutex_);
    failure_ = why;
  }
  for (auto& [id, channel] : channels_) {
    channel->fail(why);
  }
  channels_.clear();
}

void Server::wait_for_responses(std::chrono::milliseconds limit) {
  const auto until = Clock::now() + limit;
  while (in_flight_ > 0 && Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void Server::run(const std::atomic<bool>& stop) {
  auto& http = *http_;
  const int port = options_.port == 0
      ? http.bind_to_any_port(options_.host)
      : (http.bind_to_port(options_.host, options_.port) ? options_.port : -1);
  TORCH_CHECK(
      port > 0, "torchtp-serve: cannot listen on ", options_.host, ":",
      options_.port, " (in use, or not an address of this host)");
  // Listening again on a listening socket only changes its backlog.
  TORCH_CHECK(
      listen_socket_ >= 0 && ::listen(listen_socket_, SOMAXCONN) == 0,
      "torchtp-serve: cannot widen the listening socket's backlog: ",
      std::strerror(errno));
  if (!options_.port_file.empty()) {
    const auto partial = options_.port_file + ".partial";
    std::ofstream(partial) << port << "\n";
    std::rename(partial.c_str(), options_.port_file.c_str());
  }
  std::printf(
      "torchtp-serve: serving '%s' on http://%s:%d (context %lld)\n",
      model_.name.c_str(), options_.host.c_str(), port,
      static_cast<long long>(model_.context));
  std::fflush(stdout);
  std::thread listener([&] { http.listen_after_bind(); });
  // httplib's stop() does nothing before the listener runs: wait for it
  // (at most 10 s), so that stopping at once cannot leave it running.
  for (int i = 0; i < 1000 && !http.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  struct StopListening {
    httplib::Server& http;
    std::thread& listener;
    ~StopListening() {
      http.stop();
      listener.join();
    }
  } stop_listening{http, listener};

  Clock::time_point deadline;
  bool cancelled_all = false;
  try {
    for (;;) {
      if (stop && !draining_) {
        draining_ = true;
        deadline = Clock::now() +
            std::chrono::duration_cast<Clock::duration>(
                       std::chrono::duration<double>(options_.shutdown_seconds));
        std::printf("torchtp-serve: stopping: no new requests; finishing "
                    "those running\n");
        std::fflush(stdout);
      }
      if (draining_) {
        const auto s = engine_.stats();
        if (s.waiting == 0 && s.running == 0) {
          break;
        }
        if (!cancelled_all && Clock::now() >= deadline) {
          std::lock_guard<std::mutex> lock(channels_mutex_);
          for (const auto& [id, channel] : channels_) {
            engine_.cancel(id);
          }
          cancelled_all = true;
        }
      }
      engine_.wait_for_work(std::chrono::milliseconds(50));
      const auto updates = engine_.step();
      metrics_.engine(engine_.stats());
      dispatch(updates);
    }
  } catch (const c10::Error& e) {
    fail_all(e.what_without_backtrace());
    wait_for_responses(std::chrono::seconds(2));
    throw;
  } catch (const std::exception& e) {
    fail_all(e.what());
    wait_for_responses(std::chrono::seconds(2));
    throw;
  }
  {
    std::lock_guard<std::mutex> lock(channels_mutex_);
    stopped_ = true;
  }
  engine_.shutdown();
  // Nothing registered now can get a step: tell whatever is (none, unless
  // a request came between the last step and `stopped_`).
  fail_all("the server stopped");
  wait_for_responses(std::chrono::seconds(2));
  std::printf("torchtp-serve: stopped\n");
  std::fflush(stdout);
}

} // namespace torchtp::serve
