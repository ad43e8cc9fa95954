// Uses only the public API of DESIGN.md: random shapes and options, sharded
// layers against an unsharded reference computed here. Exits 1 on mismatch.

#include <torchtp/torchtp.h>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <iostream>
#include <random>

namespace F = torch::nn::functional;

int main() {
  torchtp::Group g = torchtp::init_from_env();
  const int ws = g.size(), r = g.rank();
  std::mt19937 gen(11); // same on every rank
  auto pick = [&](int lo, int hi) {
    return std::uniform_int_distribution<int>(lo, hi)(gen);
  };
  int failures = 0;
  // The chat-template library (torchtp_chat) came with the package.
  const torchtp::ChatTemplate chat(
      "{{ bos_token }}{{ messages[0]['content'] | upper }}",
      {{"bos_token", "<s>"}});
  if (chat.render(
          nlohmann::ordered_json::parse(R"([{"role": "user", "content": "hi"}])"),
          false) != "<s>HI") {
    std::cerr << "mismatch: chat template on rank " << r << "\n";
    ++failures;
  }
  auto check = [&](const char* what, const torch::Tensor& a,
                   const torch::Tensor& b) {
    if (!torch::allclose(a, b, 1e-9, 1e-9)) {
      std::cerr << "mismatch: " << what << " on rank " << r << "\n";
      ++failures;
    }
  };
  for (int trial = 0; trial < 8; ++trial) {
    const int64_t in = pick(1, 5) * ws, hidden = pick(1, 5) * ws,
                  out = pick(1, 6);
    const bool b1 = pick(0, 1), b2 = pick(0, 1), gather = pick(0, 1);
    torch::manual_seed(100 + trial);
    auto w1 = torch::randn({hidden, in}, torch::kDouble);
    auto bias1 = torch::randn({hidden}, torch::kDouble);
    auto w2 = torch::randn({out, hidden}, torch::kDouble);
    auto bias2 = torch::randn({out}, torch::kDouble);
    auto x0 = torch::randn({pick(1, 3), pick(1, 3), in}, torch::kDouble);

    torchtp::ColumnParallelLinear fc1(
        torchtp::ColumnParallelLinearOptions(in, hidden)
            .bias(b1)
            .gather_output(gather)
            .dtype(torch::kDouble));
    torchtp::RowParallelLinear fc2(
        torchtp::RowParallelLinearOptions(hidden, out)
            .bias(b2)
            .input_is_parallel(!gather)
            .dtype(torch::kDouble));
    fc1->load_full_weights(w1, b1 ? bias1 : torch::Tensor());
    fc2->load_full_weights(w2, b2 ? bias2 : torch::Tensor());
    auto x = x0.clone().requires_grad_();
    auto y = fc2(torch::tanh(fc1(x)));
    y.pow(3).sum().backward();

    auto rw1 = w1.clone().requires_grad_(),
         rb1 = bias1.clone().requires_grad_();
    auto rw2 = w2.clone().requires_grad_(),
         rb2 = bias2.clone().requires_grad_();
    auto rx = x0.clone().requires_grad_();
    auto ry = F::linear(
        torch::tanh(F::linear(rx, rw1, b1 ? rb1 : torch::Tensor())), rw2,
        b2 ? rb2 : torch::Tensor());
    ry.pow(3).sum().backward();

    const int64_t h = hidden / ws;
    check("output", y, ry);
    check("input grad", x.grad(), rx.grad());
    check(
        "fc1 weight grad", fc1->weight.grad(), rw1.grad().narrow(0, r * h, h));
    check(
        "fc2 weight grad", fc2->weight.grad(), rw2.grad().narrow(1, r * h, h));
    if (b1) {
      check("fc1 bias grad", fc1->bias.grad(), rb1.grad().narrow(0, r * h, h));
    }
    if (b2) {
      check("fc2 bias grad", fc2->bias.grad(), rb2.grad());
    }
  }
  if (r == 0) {
    std::cout << "consumer: " << (failures ? "FAILED" : "ok")
              << " at world size " << ws << std::endl;
  }
  return failures ? 1 : 0;
}
