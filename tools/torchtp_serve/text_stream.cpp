#include "text_stream.h"

#include <algorithm>

namespace torchtp::serve {

TextStream::TextStream(
    const std::optional<Tokenizer>& tokenizer,
    const std::vector<int64_t>& prompt,
    std::vector<std::string> stop)
    : stop_(std::move(stop)) {
  if (tokenizer) {
    decoder_.emplace(*tokenizer);
    for (int64_t id : prompt) {
      decoder_->step(id);
    }
  }
  for (const auto& s : stop_) {
    longest_stop_ = std::max(longest_stop_, s.size());
  }
}

std::string TextStream::add(int64_t token) {
  if (stopped_) {
    return {};
  }
  // Without a tokenizer the text is the ids, space-separated.
  held_ += decoder_ ? decoder_->step(token) : " " + std::to_string(token);
  return release(false);
}

std::string TextStream::finish() {
  if (stopped_) {
    return {};
  }
  if (decoder_) {
    held_ += decoder_->finish();
  }
  return release(true);
}

std::string TextStream::release(bool all) {
  size_t first = std::string::npos;
  for (const auto& s : stop_) {
    first = std::min(first, held_.find(s));
  }
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Keep the last longest_stop - 1 bytes (a stop string may be starting),
  // and never cut a UTF-8 character.
  size_t n = held_.size();
  if (!all && longest_stop_ > 0) {
    n = held_.size() > longest_stop_ - 1 ? held_.size() - (longest_stop_ - 1)
                                         : 0;
    while (n > 0 && n < held_.size() &&
           (static_cast<unsigned char>(held_[n]) & 0xC0) == 0x80) {
      --n;
    }
  }
  std::string out = held_.substr(0, n);
  held_.erase(0, n);
  return out;
}

} // namespace torchtp::serve
