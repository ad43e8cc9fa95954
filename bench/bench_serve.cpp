// bench_serve: load on a running torchtp-serve, as clients would bring it.
// At each concurrency C, C client threads send streamed completions of
// random token-id prompts of varied length (seeded: the same requests for
// every server), one after another, until --requests have been served.
// Reports generated tokens per second (all tokens / wall time), time to
// first token and inter-token latency percentiles, and writes JSON.
//
//   torchtp-run --nproc-per-node 2 build/torchtp-serve --model M --port 8000 &
//   build/bench/bench_serve --url http://127.0.0.1:8000 --concurrency 1,4,16

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

struct Args {
  std::string url = "http://127.0.0.1:8000";
  std::vector<int> concurrency = {1, 4, 16, 64};
  int requests = 0;
  int min_prompt = 16, max_prompt = 256;
  int max_tokens = 64;
  int vocab = 1000;
  std::string label;
  std::string json_path;
};

struct Outcome {
  double ttft = 0;
  std::vector<double> gaps;
  int tokens = 0;
  bool ok = false;
  std::string error;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) {
    return 0;
  }
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * v.size()));
  return v[i];
}

// One streamed completion; each server-sent event carries one token.
Outcome complete(
    const std::string& host, int port, const json& body) {
  Outcome out;
  httplib::Client client(host, port);
  client.set_read_timeout(300, 0);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  const auto start = Clock::now();
  auto last = start;
  std::string pending;
  int chunks = 0;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    pending.append(data, n);
    size_t end;
    while ((end = pending.find("\n\n")) != std::string::npos) {
      const std::string event = pending.substr(0, end);
      pending.erase(0, end + 2);
      if (event.rfind("data: {", 0) != 0) {
        continue;
      }
      const auto j = json::parse(event.substr(6), nullptr, false);
      if (j.is_discarded()) {
        continue;
      }
      if (j.contains("usage") && j["usage"].is_object()) {
        out.tokens = j["usage"]["completion_tokens"].get<int>();
      }
      if (!j.contains("choices") || j["choices"].empty() ||
          j["choices"][0]["text"].get<std::string>().empty()) {
        continue;
      }
      // Latency between chunks of text (a chunk is one token's text, or
      // several when a character spans tokens).
      const auto now = Clock::now();
      const double since = std::chrono::duration<double>(now - last).count();
      if (chunks++ == 0) {
        out.ttft = since;
      } else {
        out.gaps.push_back(since);
      }
      last = now;
    }
    return true;
  };
  auto res = client.send(req);
  out.ok = res && res->status == 200;
  if (!out.ok) {
    out.error = res ? std::to_string(res->status) + " " + res->body
                    : httplib::to_string(res.error());
  }
  return out;
}

json run_level(const Args& a, const std::string& host, int port, int c) {
  const int total = a.requests > 0 ? a.requests : std::max(2 * c, 8);
  std::mt19937 rng(1234);
  std::vector<json> bodies;
  for (int i = 0; i < total; ++i) {
    std::uniform_int_distribution<int> length(a.min_prompt, a.max_prompt);
    std::uniform_int_distribution<int> id(0, a.vocab - 1);
    std::vector<int> prompt(length(rng));
    for (auto& t : prompt) {
      t = id(rng);
    }
    // Greedy from ids; the model's end-of-text id may end a request early
    // (the tokens column counts what came).
    bodies.push_back(
        {{"prompt", prompt},
         {"max_tokens", a.max_tokens},
         {"temperature", 0},
         {"stream", true},
         {"stream_options", {{"include_usage", true}}}});
  }
  std::atomic<int> next{0};
  std::mutex mutex;
  std::vector<Outcome> outcomes;
  const auto start = Clock::now();
  std::vector<std::thread> clients;
  for (int t = 0; t < c; ++t) {
    clients.emplace_back([&] {
      for (int i; (i = next++) < total;) {
        auto o = complete(host, port, bodies[i]);
        std::lock_guard<std::mutex> lock(mutex);
        outcomes.push_back(std::move(o));
      }
    });
  }
  for (auto& t : clients) {
    t.join();
  }
  const double seconds =
      std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> ttft, gaps;
  int tokens = 0, failed = 0;
  std::string error;
  for (const auto& o : outcomes) {
    if (!o.ok) {
      ++failed;
      error = o.error;
      continue;
    }
    tokens += o.tokens;
    ttft.push_back(o.ttft);
    gaps.insert(gaps.end(), o.gaps.begin(), o.gaps.end());
  }
  const json row = {
      {"label", a.label},
      {"concurrency", c},
      {"requests", total},
      {"failed", failed},
      {"seconds", seconds},
      {"tokens", tokens},
      {"tokens_per_second", tokens / seconds},
      {"ttft_p50_ms", 1e3 * percentile(ttft, 0.5)},
      {"ttft_p99_ms", 1e3 * percentile(ttft, 0.99)},
      {"itl_p50_ms", 1e3 * percentile(gaps, 0.5)},
      {"itl_p99_ms", 1e3 * percentile(gaps, 0.99)}};
  std::printf(
      "%-12s %5d %5d %6d %8.1f %9.1f %9.1f %8.2f %8.2f%s\n", a.label.c_str(),
      c, total, tokens, tokens / seconds, 1e3 * percentile(ttft, 0.5),
      1e3 * percentile(ttft, 0.99), 1e3 * percentile(gaps, 0.5),
      1e3 * percentile(gaps, 0.99),
      failed ? (" FAILED " + std::to_string(failed) + ": " + error).c_str()
             : "");
  std::fflush(stdout);
  return row;
}

} // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app(
      "Load on a running torchtp-serve: C clients each sending streamed "
      "completions (random token-id prompts, greedy, a fixed number of "
      "tokens) one after another; tokens/s, time to first token and "
      "inter-token latency per concurrency");
  app.add_option("--url", a.url, "the server")->capture_default_str();
  app.add_option("--concurrency", a.concurrency, "clients at once, per row")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--requests", a.requests,
                 "requests per row (default: 2 x concurrency, at least 8)");
  app.add_option("--min-prompt", a.min_prompt, "shortest prompt (tokens)")
      ->capture_default_str();
  app.add_option("--max-prompt", a.max_prompt, "longest prompt (tokens)")
      ->capture_default_str();
  app.add_option("--max-tokens", a.max_tokens, "tokens generated per request")
      ->capture_default_str();
  app.add_option("--vocab", a.vocab, "prompt ids are drawn below this")
      ->capture_default_str();
  app.add_option("--label", a.label, "first column of the table");
  app.add_option("--json", a.json_path, "append the rows to this JSON file");
  CLI11_PARSE(app, argc, argv);

  const auto scheme = a.url.find("://");
  const std::string rest =
      scheme == std::string::npos ? a.url : a.url.substr(scheme + 3);
  const auto colon = rest.rfind(':');
  const std::string host = rest.substr(0, colon);
  const int port = colon == std::string::npos ? 80 : std::stoi(rest.substr(colon + 1));

  std::printf(
      "%-12s %5s %5s %6s %8s %9s %9s %8s %8s\n", "server", "conc", "reqs",
      "tokens", "tok/s", "ttft p50", "ttft p99", "itl p50", "itl p99");
  json rows = json::array();
  if (!a.json_path.empty()) {
    std::ifstream in(a.json_path);
    if (in) {
      rows = json::parse(in, nullptr, false);
      if (!rows.is_array()) {
        rows = json::array();
      }
    }
  }
  for (int c : a.concurrency) {
    rows.push_back(run_level(a, host, port, c));
  }
  if (!a.json_path.empty()) {
    std::ofstream(a.json_path) << rows.dump(1) << "\n";
  }
  return 0;
}
