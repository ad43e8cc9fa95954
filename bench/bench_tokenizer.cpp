// bench_tokenizer: encode throughput (MB/s of UTF-8 on one core) of
// torchtp::Tokenizer next to Hugging Face's `tokenizers` (the Rust library,
// through its npm Node binding, one thread) on the same long mixed-script
// text, per vocabulary. Needs scripts/setup.sh's cache (node, the binding,
// the vocabularies); no LibTorch.
//
//   ./bench_tokenizer [--models gpt2,llama3,qwen3,llama2,mistral] [--rounds 5]
//       [--repeats 3] [--chars 500000] [--json F] [--no-reference]
//
// Each round runs both sides, in alternating order; each side encodes the
// text `repeats` times after a warm-up encode (both libraries keep a cache
// of words seen). The table shows medians over every encode; the ratio is
// torchtp's MB/s over the Rust library's. Both sides' ids are compared
// through a checksum.

#include <torchtp/tokenizer.h>

#include "bench_common.h"

#include <c10/util/Exception.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "cannot read ", path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string run_command(const std::string& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(
      ::popen(command.c_str(), "r"), ::pclose);
  TORCH_CHECK(pipe != nullptr, "cannot run ", command);
  std::string out;
  std::array<char, 4096> buf{};
  size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe.get())) > 0) {
    out.append(buf.data(), n);
  }
  const int status = ::pclose(pipe.release());
  TORCH_CHECK(status == 0, "failed (status ", status, "): ", command);
  return out;
}

std::string quoted(const std::string& s) {
  return "'" + s + "'";
}

int64_t checksum(const std::vector<int64_t>& ids) {
  int64_t sum = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    sum = (sum + ids[i] * static_cast<int64_t>(i + 1)) % 1000000007;
  }
  return sum;
}

int run(int argc, char** argv) {
  const char* cache_env = std::getenv("TORCHTP_CACHE");
  const char* home = std::getenv("HOME");
  std::string cache =
      cache_env != nullptr
          ? cache_env
          : std::string(home != nullptr ? home : ".") + "/.cache/torchtp";
  std::vector<std::string> models{"gpt2", "llama3", "qwen3", "llama2", "mistral"};
  int rounds = 5;
  int repeats = 3;
  int chars = 500000;
  bool reference = true;
  std::string json_path = "bench_tokenizer.json";
  CLI::App app(
      "Encode throughput of torchtp::Tokenizer next to Hugging Face's "
      "tokenizers (one thread)");
  app.add_option("--models", models, "vocabularies in the cache")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--cache", cache, "scripts/setup.sh's cache")
      ->capture_default_str();
  app.add_option("--rounds", rounds, "rounds, sides alternating")
      ->capture_default_str();
  app.add_option("--repeats", repeats, "encodes per side and round")
      ->capture_default_str();
  app.add_option("--chars", chars, "length of the text in characters")
      ->capture_default_str();
  app.add_flag("!--no-reference", reference, "skip the Rust library");
  app.add_option("--json", json_path, "output file")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const std::string script = TORCHTP_SOURCE_DIR "/bench/bench_tokenizer.js";
  const std::string node_modules = cache + "/npm/node_modules";
  const std::string text_path = json_path + ".text.txt";
  run_command(
      "node " + quoted(script) + " text " + quoted(text_path) + " " +
      std::to_string(chars));
  const std::string text = read_file(text_path);
  const double mb = static_cast<double>(text.size()) / 1e6;

  std::printf(
      "# bench_tokenizer on %s; one thread; text %.2f MB UTF-8 "
      "(mixed scripts, code, numbers); %d rounds x %d encodes per "
      "side, medians\n",
      torchtp::bench::cpu_model().c_str(), mb, rounds, repeats);
  std::printf(
      "%-10s %9s %14s %14s %8s %6s\n", "vocab", "ids", "torchtp_MB/s",
      "hf_rust_MB/s", "ratio", "same");
  nlohmann::json rows = nlohmann::json::array();
  for (const std::string& name : models) {
    const std::string dir = cache + "/tokenizer-models/" + name;
    const auto tok = torchtp::Tokenizer::from_directory(dir);
    std::vector<int64_t> ids = tok.encode(text); // warm-up
    std::vector<double> ours;
    std::vector<double> theirs;
    int64_t their_ids = -1;
    int64_t their_checksum = -1;
    auto run_ours = [&] {
      for (int r = 0; r < repeats; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        ids = tok.encode(text);
        ours.push_back(torchtp::bench::seconds_since(t0));
      }
    };
    auto run_theirs = [&] {
      const auto out = nlohmann::json::parse(run_command(
          "RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false node " +
          quoted(script) + " encode " + quoted(node_modules) + " " +
          quoted(dir + "/tokenizer.json") + " " + quoted(text_path) + " " +
          std::to_string(repeats)));
      for (const auto& s : out["seconds"]) {
        theirs.push_back(s.get<double>());
      }
      their_ids = out["ids"].get<int64_t>();
      their_checksum = out["checksum"].get<int64_t>();
    };
    for (int round = 0; round < rounds; ++round) {
      if (round % 2 == 0 || !reference) {
        run_ours();
        if (reference) {
          run_theirs();
        }
      } else {
        run_theirs();
        run_ours();
      }
    }
    const double our_mbs = mb / torchtp::bench::median(ours);
    const double their_mbs =
        reference ? mb / torchtp::bench::median(theirs) : 0.0;
    const bool same = their_ids == static_cast<int64_t>(ids.size()) &&
                      their_checksum == checksum(ids);
    std::printf(
        "%-10s %9zu %14.2f %14.2f %8.2f %6s\n", name.c_str(), ids.size(),
        our_mbs, their_mbs, reference ? our_mbs / their_mbs : 0.0,
        reference ? (same ? "yes" : "NO") : "-");
    std::fflush(stdout);
    rows.push_back(
        {{"vocab", name},
         {"ids", ids.size()},
         {"torchtp_mb_per_s", our_mbs},
         {"hf_tokenizers_mb_per_s", their_mbs},
         {"ratio", reference ? our_mbs / their_mbs : 0.0},
         {"same_ids", same},
         {"torchtp_seconds", ours},
         {"hf_tokenizers_seconds", theirs}});
  }
  nlohmann::json out = {
      {"machine", torchtp::bench::cpu_model()},
      {"threads", 1},
      {"text_mb", mb},
      {"rounds", rounds},
      {"repeats", repeats},
      {"reference",
       "npm tokenizers (Hugging Face's Rust library), "
       "RAYON_NUM_THREADS=1"},
      {"rows", rows}};
  std::ofstream(json_path) << out.dump(2) << "\n";
  std::printf("wrote %s\n", json_path.c_str());
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
  }
  return 1;
}
