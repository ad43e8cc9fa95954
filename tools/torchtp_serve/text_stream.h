#pragma once

// The text a request's tokens make, as it may be sent: whole UTF-8
// characters, spaced as in a decode of prompt and completion together,
// and ending before the first stop string. Text that could still turn out
// to begin a stop string is held back until it cannot.

#include <torchtp/tokenizer.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace torchtp::serve {

class TextStream {
 public:
  /// `prompt` ids give the decoder its context (they produce no text).
  TextStream(
      const std::optional<Tokenizer>& tokenizer,
      const std::vector<int64_t>& prompt,
      std::vector<std::string> stop);

  /// The text that may be sent now, after one more token.
  std::string add(int64_t token);
  /// What is still held back, at the end of the completion.
  std::string finish();
  /// A stop string came: nothing more is sent.
  bool stopped() const {
    return stopped_;
  }

 private:
  std::string release(bool all);

  std::optional<DecodeStream> decoder_;
  std::vector<std::string> stop_;
  size_t longest_stop_ = 0;
  std::string held_;
  bool stopped_ = false;
};

} // namespace torchtp::serve
