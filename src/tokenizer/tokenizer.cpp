// Tokenizer: loading a model directory, the added vocabulary, encode and
// decode as Hugging Face's `tokenizers` library runs them, and DecodeStream.

#include "torchtp/tokenizer.h"

#include "tokenizer/tokenizer_impl.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <sys/stat.h>
#include <fstream>
#include <sstream>

namespace torchtp {

namespace detail {

namespace {

using json = nlohmann::json;

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "torchtp::Tokenizer: cannot open ", path);
  std::ostringstream s;
  s << in.rdbuf();
  TORCH_CHECK(!in.bad(), "torchtp::Tokenizer: cannot read ", path);
  return s.str();
}

json parse_json(const std::string& text, const std::string& where) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    TORCH_CHECK(false, where, ": not valid JSON (", e.what(), ")");
  }
}

// The library's test for single_word added tokens: Rust regex's Unicode
// \w (Alphabetic, marks, decimal digits, connector punctuation, joiners).
bool is_word_char_at(std::string_view s, size_t i) {
  static const Regex word(
      "^[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200c}\\x{200d}]",
      "single_word");
  bool found = false;
  word.for_each_match(
      s.substr(i, utf8_length(static_cast<unsigned char>(s[i]))),
      [&](size_t, size_t) { found = true; });
  return found;
}

size_t last_char_start(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) {
    --i;
  }
  return i;
}

struct Split {
  int64_t token; // index into added, or -1 for text
  size_t begin;
  size_t end;
};

std::vector<std::pair<std::string, std::string>> parse_merges(
    const json& merges, const std::string& where) {
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (const auto& m : merges) {
    if (m.is_array()) {
      TORCH_CHECK(m.size() == 2, where, ": a merge is not a pair: ", m.dump());
      out.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      continue;
    }
    const auto s = m.get<std::string>();
    const size_t space = s.find(' ');
    TORCH_CHECK(
        space != std::string::npos &&
            s.find(' ', space + 1) == std::string::npos,
        where, ": the merge '", s, "' is not two tokens");
    out.emplace_back(s.substr(0, space), s.substr(space + 1));
  }
  return out;
}

std::vector<std::pair<std::string, int32_t>> parse_vocab(
    const json& vocab, const std::string& where) {
  TORCH_CHECK(vocab.is_object(), where, ": the vocabulary is not an object");
  std::vector<std::pair<std::string, int32_t>> out;
  out.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    out.emplace_back(token, id.get<int32_t>());
  }
  return out;
}

} // namespace

// ------------------------------------------------------------ AddedMatcher

void AddedMatcher::add(const std::string& pattern, size_t token_index) {
  if (pattern.empty()) {
    return;
  }
  int32_t node = 0;
  for (const char ch : pattern) {
    const auto c = static_cast<unsigned char>(ch);
    int32_t child = -1;
    for (const auto& [b, n] : nodes_[node].next) {
      if (b == c) {
        child = n;
      }
    }
    if (child < 0) {
      child = static_cast<int32_t>(nodes_.size());
      nodes_[node].next.emplace_back(c, child);
      nodes_.emplace_back();
    }
    node = child;
  }
  if (nodes_[node].token < 0) {
    nodes_[node].token = static_cast<int64_t>(token_index);
  }
  first_[static_cast<unsigned char>(pattern[0])] = true;
}

bool AddedMatcher::match_at(
    std::string_view text, size_t pos, size_t& token, size_t& end) const {
  int32_t node = 0;
  bool found = false;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    int32_t child = -1;
    for (const auto& [b, n] : nodes_[node].next) {
      if (b == c) {
        child = n;
        break;
      }
    }
    if (child < 0) {
      break;
    }
    node = child;
    if (nodes_[node].token >= 0) {
      token = static_cast<size_t>(nodes_[node].token);
      end = i + 1;
      found = true;
    }
  }
  return found;
}

// ------------------------------------------------------------ TokenizerImpl

void TokenizerImpl::add_tokens(std::vector<AddedToken> tokens) {
  // Ids as the library gives them: a token already in the model keeps the
  // model's id; a new one takes the next id after the model and the tokens
  // added before it (the file's ids, in every tokenizer.json it wrote).
  for (AddedToken& t : tokens) {
    if (t.content.empty() || added_by_content.count(t.content) != 0) {
      continue;
    }
    const int32_t in_model = model->token_to_id(t.content);
    if (in_model >= 0) {
      t.id = in_model;
    } else {
      int64_t max_added = -1;
      for (const AddedToken& a : added) {
        max_added = std::max(max_added, a.id);
      }
      const auto model_size = static_cast<int64_t>(model->vocab_size());
      t.id = max_added < 0
                 ? model_size
                 : (max_added >= model_size || model_size == 0 ? max_added + 1
                                                               : model_size);
    }
    added_by_content[t.content] = added.size();
    added_by_id[t.id] = added.size();
    added.push_back(std::move(t));
  }
  for (size_t k = 0; k < added.size(); ++k) {
    const AddedToken& t = added[k];
    if (!t.normalized) {
      raw_matcher.add(t.content, k);
    } else {
      std::string pattern = t.content;
      if (normalizer) {
        normalizer->normalize(pattern);
      }
      normalized_matcher.add(pattern, k);
    }
  }
  vocab_size = static_cast<int64_t>(model->vocab_size());
  for (const AddedToken& t : added) {
    if (model->token_to_id(t.content) < 0) {
      ++vocab_size;
    }
  }
}

void TokenizerImpl::encode_piece(
    std::string_view text,
    bool at_start,
    bool normalized_stage,
    std::vector<int64_t>& ids) const {
  const AddedMatcher& matcher =
      normalized_stage ? normalized_matcher : raw_matcher;
  std::vector<Split> splits;
  if (!matcher.empty()) {
    size_t start_offset = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      size_t token = 0;
      size_t match_end = 0;
      if (!matcher.may_start(static_cast<unsigned char>(text[pos])) ||
          !matcher.match_at(text, pos, token, match_end)) {
        ++pos;
        continue;
      }
      const AddedToken& t = added[token];
      size_t start = pos;
      size_t stop = match_end;
      pos = match_end;
      if (t.single_word) {
        const bool space_before =
            start == 0 ||
            !is_word_char_at(text, last_char_start(text.substr(0, start)));
        const bool space_after =
            stop == text.size() || !is_word_char_at(text, stop);
        if (!space_before || !space_after) {
          continue;
        }
      }
      if (t.lstrip) {
        size_t s = start;
        while (s > 0) {
          const size_t c = last_char_start(text.substr(0, s));
          size_t i = c;
          if (!is_unicode_whitespace(next_code_point(text, i))) {
            break;
          }
          s = c;
        }
        start = std::max(s, start_offset);
      }
      if (t.rstrip) {
        size_t i = stop;
        while (i < text.size()) {
          size_t next = i;
          if (!is_unicode_whitespace(next_code_point(text, next))) {
            break;
          }
          i = next;
        }
        stop = i;
      }
      if (start_offset < start) {
        splits.push_back(Split{-1, start_offset, start});
      }
      splits.push_back(Split{static_cast<int64_t>(token), start, stop});
      start_offset = stop;
    }
    if (start_offset < text.size()) {
      splits.push_back(Split{-1, start_offset, text.size()});
    }
  } else {
    splits.push_back(Split{-1, 0, text.size()});
  }
  for (const Split& s : splits) {
    if (s.token >= 0) {
      ids.push_back(added[s.token].id);
      continue;
    }
    const std::string_view sub = text.substr(s.begin, s.end - s.begin);
    const bool starts = at_start && s.begin == 0;
    if (normalized_stage) {
      encode_pre_tokens(Piece{std::string(sub), starts}, ids);
    } else {
      std::string normalized(sub);
      if (normalizer) {
        normalizer->normalize(normalized);
      }
      encode_piece(normalized, starts, true, ids);
    }
  }
}

void TokenizerImpl::encode_pre_tokens(
    Piece piece, std::vector<int64_t>& ids) const {
  if (piece.text.empty()) {
    return;
  }
  if (!pre_tokenizer) {
    model->tokenize(piece.text, ids);
    return;
  }
  std::vector<Piece> local;
  local.push_back(std::move(piece));
  pre_tokenizer->pre_tokenize(local);
  for (const Piece& p : local) {
    model->tokenize(p.text, ids);
  }
}

std::string TokenizerImpl::decode(
    const std::vector<int64_t>& ids, bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int64_t id : ids) {
    const std::string* token = nullptr;
    const auto a = added_by_id.find(id);
    if (a != added_by_id.end()) {
      token = &added[a->second].content;
    } else {
      token = model->id_to_token(id);
    }
    if (token == nullptr) {
      continue;
    }
    if (skip_special) {
      const auto c = added_by_content.find(*token);
      if (c != added_by_content.end() && added[c->second].special) {
        continue;
      }
    }
    tokens.push_back(*token);
  }
  if (!decoder) {
    std::string out;
    for (size_t k = 0; k < tokens.size(); ++k) {
      out += (k ? " " : "") + tokens[k];
    }
    return out;
  }
  decoder->decode_chain(tokens);
  std::string out;
  for (const std::string& t : tokens) {
    out += t;
  }
  return out;
}

namespace {

std::vector<AddedToken> parse_added_tokens(
    const json& j, const std::string& where) {
  std::vector<AddedToken> out;
  if (j.is_null()) {
    return out;
  }
  TORCH_CHECK(j.is_array(), where, ": added_tokens is not a list");
  for (const auto& e : j) {
    AddedToken t;
    t.content = e.at("content").get<std::string>();
    t.id = e.at("id").get<int64_t>();
    t.special = e.value("special", false);
    t.lstrip = e.value("lstrip", false);
    t.rstrip = e.value("rstrip", false);
    t.single_word = e.value("single_word", false);
    t.normalized = e.value("normalized", !t.special);
    out.push_back(std::move(t));
  }
  return out;
}

std::shared_ptr<TokenizerImpl> load_tokenizer_json(
    const std::string& text, const std::string& where) {
  const json j = parse_json(text, where);
  try {
    TORCH_CHECK(j.is_object(), where, ": not a tokenizer.json object");
    for (const char* key : {"truncation", "padding"}) {
      TORCH_CHECK(
          !j.contains(key) || j[key].is_null(), where, ": \"", key,
          "\" is set; encoding with ", key, " is not supported");
    }
    auto impl = std::make_shared<TokenizerImpl>();
    impl->source = where;
    TORCH_CHECK(
        j.contains("model") && j["model"].is_object(), where, ": no \"model\"");
    const json& model = j["model"];
    std::string type = model.value("type", "");
    if (type.empty() && model.contains("merges")) {
      type = "BPE"; // files written before models were tagged
    }
    TORCH_CHECK(
        type == "BPE", where, ": the model type '", type,
        "' is not supported (BPE)");
    TORCH_CHECK(
        !model.contains("dropout") || model["dropout"].is_null() ||
            model["dropout"].get<double>() == 0.0,
        where, ": BPE dropout is not supported");
    for (const char* key :
         {"continuing_subword_prefix", "end_of_word_suffix"}) {
      TORCH_CHECK(
          !model.contains(key) || model[key].is_null() ||
              model[key].get<std::string>().empty(),
          where, ": BPE ", key, " is not supported");
    }
    impl->normalizer = make_normalizer(j.value("normalizer", json()), where);
    impl->pre_tokenizer =
        make_pre_tokenizer(j.value("pre_tokenizer", json()), where);
    impl->decoder = make_decoder(j.value("decoder", json()), where);
    impl->post = make_post_processor(j.value("post_processor", json()), where);
    BpeModel::Options options;
    if (model.contains("unk_token") && !model["unk_token"].is_null()) {
      options.unk_token = model["unk_token"].get<std::string>();
      options.has_unk = true;
    }
    options.fuse_unk = model.value("fuse_unk", false);
    options.byte_fallback = model.value("byte_fallback", false);
    options.ignore_merges = model.value("ignore_merges", false);
    const bool byte_level =
        impl->pre_tokenizer && impl->pre_tokenizer->byte_level();
    impl->model = std::make_unique<BpeModel>(
        parse_vocab(model.at("vocab"), where),
        parse_merges(model.at("merges"), where), options, byte_level, where);
    impl->add_tokens(
        parse_added_tokens(j.value("added_tokens", json()), where));
    return impl;
  } catch (const json::exception& e) {
    TORCH_CHECK(false, where, ": ", e.what());
  }
}

} // namespace

} // namespace detail

// ------------------------------------------------------------ Tokenizer

Tokenizer::Tokenizer(std::shared_ptr<const detail::TokenizerImpl> impl)
    : impl_(std::move(impl)) {}

Tokenizer Tokenizer::from_json(
    const std::string& tokenizer_json_text, const std::string& source) {
  return Tokenizer(detail::load_tokenizer_json(tokenizer_json_text, source));
}

Tokenizer Tokenizer::from_vocab_and_merges(
    const std::string& vocab_json_text,
    const std::string& merges_text,
    const std::string& source) {
  const auto vocab = detail::parse_json(vocab_json_text, source);
  std::vector<std::pair<std::string, std::string>> merges;
  std::istringstream lines(merges_text);
  std::string line;
  size_t number = 0;
  while (std::getline(lines, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') {
      line.pop_back();
    }
    if (line.rfind("#version", 0) == 0 ||
        (line.empty() && lines.peek() == EOF)) {
      continue;
    }
    const size_t space = line.find(' ');
    TORCH_CHECK(
        space != std::string::npos &&
            line.find(' ', space + 1) == std::string::npos,
        source, ": line ", number, " of merges.txt ('", line,
        "') is not two tokens");
    merges.emplace_back(line.substr(0, space), line.substr(space + 1));
  }
  auto impl = std::make_shared<detail::TokenizerImpl>();
  impl->source = source;
  impl->pre_tokenizer = detail::make_gpt2_pre_tokenizer(source);
  impl->decoder = detail::make_gpt2_decoder();
  try {
    impl->model = std::make_unique<detail::BpeModel>(
        detail::parse_vocab(vocab, source), merges, detail::BpeModel::Options{},
        true, source);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, source, ": ", e.what());
  }
  std::vector<detail::AddedToken> added;
  if (impl->model->token_to_id("<|endoftext|>") >= 0) {
    detail::AddedToken eos;
    eos.content = "<|endoftext|>";
    eos.special = true;
    eos.normalized = true;
    added.push_back(eos);
  }
  impl->add_tokens(std::move(added));
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_directory(const std::string& dir) {
  const std::string json_path = dir + "/tokenizer.json";
  if (detail::file_exists(json_path)) {
    return from_json(detail::read_file(json_path), json_path);
  }
  const std::string vocab_path = dir + "/vocab.json";
  const std::string merges_path = dir + "/merges.txt";
  TORCH_CHECK(
      detail::file_exists(vocab_path) && detail::file_exists(merges_path),
      "torchtp::Tokenizer: ", dir,
      " has no tokenizer.json, nor vocab.json with merges.txt");
  return from_vocab_and_merges(
      detail::read_file(vocab_path), detail::read_file(merges_path),
      vocab_path + " + merges.txt");
}

std::vector<int64_t> Tokenizer::encode(
    const std::string& text, bool add_special_tokens) const {
  const size_t bad = detail::find_invalid_utf8(text);
  TORCH_CHECK(
      bad == std::string::npos,
      "torchtp::Tokenizer::encode: the text is not valid UTF-8 (byte ", bad,
      " of ", text.size(), ")");
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) {
    ids = impl_->post.before;
  }
  impl_->encode_piece(text, true, false, ids);
  if (add_special_tokens) {
    ids.insert(ids.end(), impl_->post.after.begin(), impl_->post.after.end());
  }
  return ids;
}

std::string Tokenizer::decode(
    const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens);
}

int64_t Tokenizer::vocab_size() const {
  return impl_->vocab_size;
}

std::optional<int64_t> Tokenizer::token_to_id(const std::string& token) const {
  const auto a = impl_->added_by_content.find(token);
  if (a != impl_->added_by_content.end()) {
    return impl_->added[a->second].id;
  }
  const int32_t id = impl_->model->token_to_id(token);
  if (id < 0) {
    return std::nullopt;
  }
  return id;
}

std::string Tokenizer::id_to_token(int64_t id) const {
  const auto a = impl_->added_by_id.find(id);
  if (a != impl_->added_by_id.end()) {
    return impl_->added[a->second].content;
  }
  const std::string* token = impl_->model->id_to_token(id);
  TORCH_CHECK(
      token != nullptr, "torchtp::Tokenizer::id_to_token: id ", id,
      " is not in the vocabulary of ", impl_->source);
  return *token;
}

bool Tokenizer::is_special(int64_t id) const {
  const auto a = impl_->added_by_id.find(id);
  return a != impl_->added_by_id.end() && impl_->added[a->second].special;
}

// ------------------------------------------------------------ DecodeStream

DecodeStream::DecodeStream(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string DecodeStream::step(int64_t id) {
  // The library's algorithm: decode a window of ids that starts a little
  // before the new text, so that context-dependent decoders (a leading
  // space stripped, bytes joined into characters) see what they would in a
  // full decode; emit what follows the window's previous text once it no
  // longer ends in an incomplete character (U+FFFD).
  ids_.push_back(id);
  // A run of byte-fallback tokens is decoded as one: a later byte can turn
  // the run's text into U+FFFDs (an invalid sequence), so the run is held
  // until a token that is not a byte ends it. (The Rust DecodeStream fails
  // with InvalidPrefix there instead.) Ids the decode skips do not end it.
  const detail::TokenizerImpl& impl = *tokenizer_.impl_;
  const std::string* token = nullptr;
  const auto added = impl.added_by_id.find(id);
  if (added != impl.added_by_id.end()) {
    if (!(skip_special_tokens_ && impl.added[added->second].special)) {
      token = &impl.added[added->second].content;
    }
  } else {
    token = impl.model->id_to_token(id);
  }
  if (token != nullptr) {
    in_byte_run_ = token->size() == 6 && token->compare(0, 3, "<0x") == 0 &&
                   token->back() == '>';
  }
  if (in_byte_run_) {
    return "";
  }
  const std::string text = tokenizer_.decode(ids_, skip_special_tokens_);
  static const std::string kReplacement = "\xEF\xBF\xBD";
  const bool incomplete = text.size() >= kReplacement.size() &&
                          text.compare(
                              text.size() - kReplacement.size(),
                              kReplacement.size(), kReplacement) == 0;
  if (text.size() <= prefix_.size() || incomplete) {
    return "";
  }
  TORCH_CHECK(
      text.compare(0, prefix_.size(), prefix_) == 0,
      "torchtp::DecodeStream: the decoded text no longer starts with "
      "what was already returned");
  std::string fresh = text.substr(prefix_.size());
  const size_t new_prefix_index = ids_.size() - prefix_index_;
  ids_.erase(
      ids_.begin(), ids_.begin() + static_cast<ptrdiff_t>(prefix_index_));
  prefix_ = tokenizer_.decode(ids_, skip_special_tokens_);
  prefix_index_ = new_prefix_index;
  return fresh;
}

std::string DecodeStream::finish() {
  const std::string text = tokenizer_.decode(ids_, skip_special_tokens_);
  std::string rest;
  if (text.size() > prefix_.size() &&
      text.compare(0, prefix_.size(), prefix_) == 0) {
    rest = text.substr(prefix_.size());
  }
  ids_.clear();
  prefix_.clear();
  prefix_index_ = 0;
  in_byte_run_ = false;
  return rest;
}

} // namespace torchtp
