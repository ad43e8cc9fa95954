// The normalizers, pre-tokenizers, decoders and post-processors of
// tokenizer.json that the GPT-2, Llama, Mistral and Qwen2 families use, read
// from their JSON. Anything else is refused by its type.

#include "tokenizer/tokenizer_impl.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

namespace torchtp::detail {

namespace {

using json = nlohmann::json;

std::string type_of(const json& j, const std::string& where, const char* what) {
  TORCH_CHECK(
      j.is_object() && j.contains("type") && j["type"].is_string(), where,
      ": a ", what, " without a \"type\": ", j.dump());
  return j["type"].get<std::string>();
}

template <typename T>
T value_or(const json& j, const char* key, T fallback) {
  if (!j.contains(key) || j[key].is_null()) {
    return fallback;
  }
  return j[key].get<T>();
}

// A {"String": s} or {"Regex": r} pattern.
struct Pattern {
  std::string literal;
  std::unique_ptr<Regex> regex;

  Pattern(const json& j, const std::string& where) {
    TORCH_CHECK(
        j.is_object(), where,
        ": a pattern must be {\"String\": ...} "
        "or {\"Regex\": ...}, not ",
        j.dump());
    if (j.contains("String")) {
      literal = j["String"].get<std::string>();
      TORCH_CHECK(!literal.empty(), where, ": an empty String pattern");
    } else {
      TORCH_CHECK(
          j.contains("Regex"), where,
          ": a pattern must be "
          "{\"String\": ...} or {\"Regex\": ...}, not ",
          j.dump());
      regex = std::make_unique<Regex>(j["Regex"].get<std::string>(), where);
    }
  }

  // Calls out(begin, end) for every non-overlapping match.
  template <typename F>
  void for_each_match(std::string_view text, F&& out) const {
    if (regex) {
      regex->for_each_match(text, out);
      return;
    }
    size_t pos = 0;
    while ((pos = text.find(literal, pos)) != std::string_view::npos) {
      out(pos, pos + literal.size());
      pos += literal.size();
    }
  }

  std::string replace_all(
      std::string_view text, const std::string& with) const {
    std::string out;
    size_t last = 0;
    for_each_match(text, [&](size_t b, size_t e) {
      out.append(text.data() + last, b - last);
      out += with;
      last = e;
    });
    out.append(text.data() + last, text.size() - last);
    return out;
  }
};

// -------------------------------------------------------------- normalizers

struct SequenceNormalizer : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> steps;
  void normalize(std::string& text) const override {
    for (const auto& s : steps) {
      s->normalize(text);
    }
  }
};

struct UnicodeNormalizer : Normalizer {
  std::string form;
  void normalize(std::string& text) const override {
    bool ascii = true;
    for (const char c : text) {
      ascii = ascii && static_cast<unsigned char>(c) < 0x80;
    }
    if (!ascii) {
      text = unicode_normalize(text, form);
    }
  }
};

struct PrependNormalizer : Normalizer {
  std::string prepend;
  void normalize(std::string& text) const override {
    if (!text.empty()) {
      text.insert(0, prepend);
    }
  }
};

struct ReplaceNormalizer : Normalizer {
  std::unique_ptr<Pattern> pattern;
  std::string content;
  void normalize(std::string& text) const override {
    text = pattern->replace_all(text, content);
  }
};

// -------------------------------------------------------------- pre-tokenizers

enum class Behavior {
  kIsolated,
  kRemoved,
  kMergedWithPrevious,
  kMergedWithNext
};

// Splits every piece at the matches of `pattern` as `behavior` says; empty
// pieces are dropped, as the library drops them.
template <typename Matches>
void split_pieces(
    std::vector<Piece>& pieces, Behavior behavior, Matches&& matches) {
  std::vector<Piece> out;
  out.reserve(pieces.size() * 4);
  for (Piece& piece : pieces) {
    const std::string_view text = piece.text;
    size_t last = 0; // start of the text not yet emitted
    auto emit = [&](size_t b, size_t e) {
      if (e > b) {
        out.push_back(Piece{
            std::string(text.substr(b, e - b)), piece.at_start && b == 0});
      }
    };
    size_t pending = 0; // MergedWithNext: where the current piece starts
    matches(text, [&](size_t b, size_t e) {
      switch (behavior) {
        case Behavior::kIsolated:
          emit(last, b);
          emit(b, e);
          break;
        case Behavior::kRemoved:
          emit(last, b);
          break;
        case Behavior::kMergedWithPrevious:
          emit(last, e);
          break;
        case Behavior::kMergedWithNext:
          emit(pending, b);
          pending = b;
          break;
      }
      last = e;
    });
    if (behavior == Behavior::kMergedWithNext) {
      emit(pending, text.size());
    } else {
      emit(last, text.size());
    }
  }
  pieces.swap(out);
}

struct SequencePreTokenizer : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& s : steps) {
      s->pre_tokenize(pieces);
    }
  }
  bool byte_level() const override {
    for (const auto& s : steps) {
      if (s->byte_level()) {
        return true;
      }
    }
    return false;
  }
};

struct SplitPreTokenizer : PreTokenizer {
  std::unique_ptr<Pattern> pattern;
  Behavior behavior = Behavior::kIsolated;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, behavior, [&](std::string_view text, auto&& out) {
      pattern->for_each_match(text, out);
    });
  }
};

constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
    "\\s+(?!\\S)|\\s+";

// Leaves the pieces as raw bytes: the model reads its vocabulary in the
// byte-to-unicode spelling instead, which is the same mapping.
struct ByteLevelPreTokenizer : PreTokenizer {
  bool add_prefix_space = true;
  std::unique_ptr<Regex> regex; // null: use_regex false
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    if (add_prefix_space) {
      for (Piece& p : pieces) {
        if (!p.text.empty() && p.text[0] != ' ') {
          p.text.insert(0, 1, ' ');
        }
      }
    }
    if (regex) {
      split_pieces(
          pieces, Behavior::kIsolated, [&](std::string_view text, auto&& out) {
            regex->for_each_match(text, out);
          });
    }
  }
  bool byte_level() const override {
    return true;
  }
};

enum class PrependScheme { kAlways, kFirst, kNever };

PrependScheme parse_prepend_scheme(const json& j, const std::string& where) {
  if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
    const auto s = j["prepend_scheme"].get<std::string>();
    if (s == "always") {
      return PrependScheme::kAlways;
    }
    if (s == "first") {
      return PrependScheme::kFirst;
    }
    TORCH_CHECK(
        s == "never", where, ": Metaspace prepend_scheme '", s,
        "' is not always, first or never");
    return PrependScheme::kNever;
  }
  // Files written before prepend_scheme existed.
  return value_or(j, "add_prefix_space", true) ? PrependScheme::kAlways
                                               : PrependScheme::kNever;
}

std::string metaspace_replacement(const json& j, const std::string& where) {
  const auto r = value_or<std::string>(j, "replacement", "\xE2\x96\x81");
  size_t i = 0;
  TORCH_CHECK(
      !r.empty() && (next_code_point(r, i), i == r.size()), where,
      ": Metaspace replacement '", r, "' is not one character");
  return r;
}

struct MetaspacePreTokenizer : PreTokenizer {
  std::string replacement;
  PrependScheme scheme = PrependScheme::kAlways;
  bool split = true;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (Piece& p : pieces) {
      std::string t;
      t.reserve(p.text.size() + replacement.size());
      for (const char c : p.text) {
        if (c == ' ') {
          t += replacement;
        } else {
          t += c;
        }
      }
      const bool starts = t.compare(0, replacement.size(), replacement) == 0;
      if (!starts && (scheme == PrependScheme::kAlways ||
                      (scheme == PrependScheme::kFirst && p.at_start))) {
        t.insert(0, replacement);
      }
      p.text.swap(t);
    }
    if (split) {
      split_pieces(
          pieces, Behavior::kMergedWithNext,
          [&](std::string_view text, auto&& out) {
            size_t pos = 0;
            while ((pos = text.find(replacement, pos)) !=
                   std::string_view::npos) {
              out(pos, pos + replacement.size());
              pos += replacement.size();
            }
          });
    }
  }
};

// -------------------------------------------------------------- decoders

struct SequenceDecoder : Decoder {
  std::vector<std::unique_ptr<Decoder>> steps;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& s : steps) {
      s->decode_chain(tokens);
    }
  }
};

// Every token back to its bytes (a token with a character outside the table,
// such as an added token, as its own UTF-8), then one lossy UTF-8 string.
struct ByteLevelDecoder : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    std::string piece;
    for (const std::string& t : tokens) {
      if (byte_level_to_bytes(t, piece)) {
        bytes += piece;
      } else {
        bytes += t;
      }
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

struct ReplaceDecoder : Decoder {
  std::unique_ptr<Pattern> pattern;
  std::string content;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      t = pattern->replace_all(t, content);
    }
  }
};

// Rust's u8::from_str_radix(s, 16) on two characters: two hex digits, or a
// '+' and one.
int parse_hex_byte(std::string_view s) {
  auto digit = [](char c) {
    if (c >= '0' && c <= '9') {
      return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
      return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
      return c - 'A' + 10;
    }
    return -1;
  };
  if (s[0] == '+') {
    return digit(s[1]);
  }
  const int hi = digit(s[0]);
  const int lo = digit(s[1]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// Runs of <0xNN> tokens become their bytes when those are valid UTF-8, and
// one U+FFFD per byte token when they are not.
struct ByteFallbackDecoder : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string bytes;
    size_t count = 0;
    auto flush = [&] {
      if (count == 0) {
        return;
      }
      if (find_invalid_utf8(bytes) == std::string_view::npos) {
        out.push_back(bytes);
      } else {
        for (size_t k = 0; k < count; ++k) {
          out.emplace_back("\xEF\xBF\xBD");
        }
      }
      bytes.clear();
      count = 0;
    };
    for (std::string& t : tokens) {
      int value = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        value = parse_hex_byte(std::string_view(t).substr(3, 2));
      }
      if (value >= 0) {
        bytes += static_cast<char>(value);
        ++count;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
};

struct FuseDecoder : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) {
      all += t;
    }
    tokens.assign(1, std::move(all));
  }
};

struct StripDecoder : Decoder {
  std::string content; // one character
  size_t start = 0;
  size_t stop = 0;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      size_t b = 0;
      for (size_t k = 0;
           k < start && t.compare(b, content.size(), content) == 0; ++k) {
        b += content.size();
      }
      size_t e = t.size();
      for (size_t k = 0;
           k < stop && e >= b + content.size() &&
           t.compare(e - content.size(), content.size(), content) == 0;
           ++k) {
        e -= content.size();
      }
      t = t.substr(b, e - b);
    }
  }
};

struct MetaspaceDecoder : Decoder {
  std::string replacement;
  PrependScheme scheme = PrependScheme::kAlways;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string t;
      const std::string& in = tokens[i];
      size_t pos = 0;
      while (pos < in.size()) {
        if (in.compare(pos, replacement.size(), replacement) == 0) {
          // The first token loses its replacement characters (the one the
          // pre-tokenizer prepended), as the library does.
          if (i != 0 || scheme == PrependScheme::kNever) {
            t += ' ';
          }
          pos += replacement.size();
        } else {
          t += in[pos++];
        }
      }
      tokens[i].swap(t);
    }
  }
};

std::vector<const json*> list_of(
    const json& j, const char* key, const std::string& where) {
  TORCH_CHECK(
      j.contains(key) && j[key].is_array(), where, ": a ",
      j["type"].get<std::string>(), " without the list \"", key, "\"");
  std::vector<const json*> out;
  for (const auto& e : j[key]) {
    out.push_back(&e);
  }
  return out;
}

// A Sequence of normalizers, pre-tokenizers or decoders: `make` builds each
// step (a null step, JSON null, is left out).
template <typename Sequence, typename Make>
std::unique_ptr<Sequence> make_sequence(
    const json& j, const char* key, const std::string& where, Make&& make) {
  auto sequence = std::make_unique<Sequence>();
  for (const json* e : list_of(j, key, where)) {
    if (auto step = make(*e, where)) {
      sequence->steps.push_back(std::move(step));
    }
  }
  return sequence;
}

} // namespace

std::unique_ptr<Normalizer> make_normalizer(
    const json& j, const std::string& where) {
  if (j.is_null()) {
    return nullptr;
  }
  const std::string type = type_of(j, where, "normalizer");
  if (type == "Sequence") {
    return make_sequence<SequenceNormalizer>(
        j, "normalizers", where, make_normalizer);
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    auto n = std::make_unique<UnicodeNormalizer>();
    n->form = type;
    return n;
  }
  if (type == "Prepend") {
    auto n = std::make_unique<PrependNormalizer>();
    n->prepend = j.at("prepend").get<std::string>();
    return n;
  }
  if (type == "Replace") {
    auto n = std::make_unique<ReplaceNormalizer>();
    n->pattern = std::make_unique<Pattern>(j.at("pattern"), where);
    n->content = j.at("content").get<std::string>();
    return n;
  }
  TORCH_CHECK(
      false, where, ": the normalizer type '", type,
      "' is not supported (NFC, NFD, NFKC, NFKD, Prepend, Replace, "
      "Sequence)");
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(
    const json& j, const std::string& where) {
  if (j.is_null()) {
    return nullptr;
  }
  const std::string type = type_of(j, where, "pre-tokenizer");
  if (type == "Sequence") {
    return make_sequence<SequencePreTokenizer>(
        j, "pretokenizers", where, make_pre_tokenizer);
  }
  if (type == "ByteLevel") {
    auto p = std::make_unique<ByteLevelPreTokenizer>();
    p->add_prefix_space = value_or(j, "add_prefix_space", true);
    if (value_or(j, "use_regex", true)) {
      p->regex = std::make_unique<Regex>(kGpt2Pattern, where);
    }
    return p;
  }
  if (type == "Split") {
    auto p = std::make_unique<SplitPreTokenizer>();
    p->pattern = std::make_unique<Pattern>(j.at("pattern"), where);
    const auto behavior = value_or<std::string>(j, "behavior", "Isolated");
    if (behavior == "Isolated") {
      p->behavior = Behavior::kIsolated;
    } else if (behavior == "Removed") {
      p->behavior = Behavior::kRemoved;
    } else if (behavior == "MergedWithPrevious") {
      p->behavior = Behavior::kMergedWithPrevious;
    } else if (behavior == "MergedWithNext") {
      p->behavior = Behavior::kMergedWithNext;
    } else {
      TORCH_CHECK(
          false, where, ": the Split pre-tokenizer's behavior '", behavior,
          "' is not supported (Isolated, Removed, "
          "MergedWithPrevious, MergedWithNext)");
    }
    TORCH_CHECK(
        !value_or(j, "invert", false), where,
        ": the Split pre-tokenizer with invert: true is not supported");
    return p;
  }
  if (type == "Metaspace") {
    auto p = std::make_unique<MetaspacePreTokenizer>();
    p->replacement = metaspace_replacement(j, where);
    p->scheme = parse_prepend_scheme(j, where);
    p->split = value_or(j, "split", true);
    return p;
  }
  TORCH_CHECK(
      false, where, ": the pre-tokenizer type '", type,
      "' is not supported (ByteLevel, Metaspace, Split, Sequence)");
}

std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& where) {
  if (j.is_null()) {
    return nullptr;
  }
  const std::string type = type_of(j, where, "decoder");
  if (type == "Sequence") {
    return make_sequence<SequenceDecoder>(j, "decoders", where, make_decoder);
  }
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelDecoder>();
  }
  if (type == "Replace") {
    auto d = std::make_unique<ReplaceDecoder>();
    d->pattern = std::make_unique<Pattern>(j.at("pattern"), where);
    d->content = j.at("content").get<std::string>();
    return d;
  }
  if (type == "ByteFallback") {
    return std::make_unique<ByteFallbackDecoder>();
  }
  if (type == "Fuse") {
    return std::make_unique<FuseDecoder>();
  }
  if (type == "Strip") {
    auto d = std::make_unique<StripDecoder>();
    d->content = j.at("content").get<std::string>();
    d->start = j.at("start").get<size_t>();
    d->stop = j.at("stop").get<size_t>();
    return d;
  }
  if (type == "Metaspace") {
    auto d = std::make_unique<MetaspaceDecoder>();
    d->replacement = metaspace_replacement(j, where);
    d->scheme = parse_prepend_scheme(j, where);
    return d;
  }
  TORCH_CHECK(
      false, where, ": the decoder type '", type,
      "' is not supported (ByteLevel, ByteFallback, Fuse, Metaspace, "
      "Replace, Strip, Sequence)");
}

PostProcessor make_post_processor(const json& j, const std::string& where) {
  PostProcessor post;
  if (j.is_null()) {
    return post;
  }
  const std::string type = type_of(j, where, "post-processor");
  if (type == "ByteLevel") {
    return post; // offsets only
  }
  if (type == "Sequence") {
    for (const json* e : list_of(j, "processors", where)) {
      PostProcessor step = make_post_processor(*e, where);
      post.before.insert(
          post.before.end(), step.before.begin(), step.before.end());
      post.after.insert(post.after.end(), step.after.begin(), step.after.end());
    }
    return post;
  }
  if (type == "TemplateProcessing") {
    const json& single = j.at("single");
    const json& specials = j.at("special_tokens");
    bool seen_sequence = false;
    for (const auto& item : single) {
      if (item.contains("Sequence")) {
        TORCH_CHECK(
            item["Sequence"].at("id") == "A", where,
            ": TemplateProcessing's single template names sequence ",
            item["Sequence"].at("id").dump());
        seen_sequence = true;
        continue;
      }
      TORCH_CHECK(
          item.contains("SpecialToken"), where,
          ": a TemplateProcessing item that is neither Sequence nor "
          "SpecialToken: ",
          item.dump());
      const auto name = item["SpecialToken"].at("id").get<std::string>();
      TORCH_CHECK(
          specials.contains(name), where,
          ": TemplateProcessing "
          "uses the special token '",
          name, "' that its special_tokens do not define");
      auto& side = seen_sequence ? post.after : post.before;
      for (const auto& id : specials[name].at("ids")) {
        side.push_back(id.get<int64_t>());
      }
    }
    return post;
  }
  TORCH_CHECK(
      false, where, ": the post-processor type '", type,
      "' is not supported (ByteLevel, TemplateProcessing, Sequence)");
}

std::unique_ptr<PreTokenizer> make_gpt2_pre_tokenizer(
    const std::string& where) {
  auto p = std::make_unique<ByteLevelPreTokenizer>();
  p->add_prefix_space = false;
  p->regex = std::make_unique<Regex>(kGpt2Pattern, where);
  return p;
}

std::unique_ptr<Decoder> make_gpt2_decoder() {
  return std::make_unique<ByteLevelDecoder>();
}

} // namespace torchtp::detail
