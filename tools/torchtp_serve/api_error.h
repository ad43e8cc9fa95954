#pragma once

// An error the API reports to its client, in OpenAI's shape:
// {"error": {"message", "type", "param", "code"}} with an HTTP status.

#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>

namespace torchtp::serve {

struct ApiError : std::runtime_error {
  ApiError(
      int status,
      const std::string& message,
      std::string param = "",
      std::string code = "")
      : std::runtime_error(message),
        status(status),
        param(std::move(param)),
        code(std::move(code)) {}

  /// OpenAI's `type` for the status.
  const char* type() const {
    switch (status) {
      case 401:
        return "authentication_error";
      case 404:
        return "not_found_error";
      case 429:
        return "rate_limit_error";
      case 503:
        return "service_unavailable";
      default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
  }

  /// The JSON; its text (`dump`) replaces invalid UTF-8 a message may
  /// quote from a request.
  nlohmann::json body() const {
    return {
        {"error",
         {{"message", what()},
          {"type", type()},
          {"param", param.empty() ? nlohmann::json() : nlohmann::json(param)},
          {"code", code.empty() ? nlohmann::json() : nlohmann::json(code)}}}};
  }

  int status;
  std::string param;
  std::string code;
};

} // namespace torchtp::serve
