// Bad input at every public entry point, table-driven: Options and
// constructors, forward, collectives, mappings, the cross-entropy, the
// sampling and the checkpoint loaders. Each row must raise a c10::Error
// naming the component, what was expected and what came, and (where a
// group exists) the rank and world size; never crash or hang. Empty and
// non-contiguous tensors are not bad input: they must work, and equal the
// unsharded computation. (init_from_env's variables: test_init.cpp; the
// launcher's flags: launcher/test_launcher.sh.)

#include "reference.h"

#include <functional>

using torchtp::testing::all_close;
using torchtp::testing::own;
using torchtp::testing::raises_with;
using torchtp::testing::world;

namespace F = torch::nn::functional;

namespace {

struct BadInput {
  const char* what;
  std::function<void()> call;
  std::vector<std::string> needles;
  /// The message ends with "[rank r/ws]".
  bool labelled = true;
};

void expect_all_refused(const std::vector<BadInput>& rows) {
  const std::string label = world().rank_label();
  for (const auto& row : rows) {
    SCOPED_TRACE(row.what);
    try {
      row.call();
      ADD_FAILURE() << "did not raise";
    } catch (const c10::Error& e) {
      const std::string msg = e.what_without_backtrace();
      for (const auto& n : row.needles) {
        EXPECT_NE(msg.find(n), std::string::npos)
            << "lacks '" << n << "': " << msg;
      }
      if (row.labelled) {
        EXPECT_NE(msg.find(label), std::string::npos)
            << "lacks " << label << ": " << msg;
      }
    } catch (const std::exception& e) {
      ADD_FAILURE() << "raised a non-c10::Error: " << e.what();
    }
  }
}

using Column = torchtp::ColumnParallelLinear;
using ColumnOptions = torchtp::ColumnParallelLinearOptions;
using Row = torchtp::RowParallelLinear;
using RowOptions = torchtp::RowParallelLinearOptions;

} // namespace

TEST(BadInput, OptionsAndConstructors) {
  const int64_t ws = world().size();
  expect_all_refused({
      {"Column in_features 0", [] { Column(ColumnOptions(0, 4)); },
       {"torchtp::ColumnParallelLinear", "must be positive, got 0 and 4"}},
      {"Column segments 0", [] { Column(ColumnOptions(4, 4).segments(0)); },
       {"torchtp::ColumnParallelLinear", "segments (0)"}},
      {"Column out_features not a multiple of segments",
       [] { Column(ColumnOptions(4, 5).segments(3)); },
       {"out_features (5) is not divisible by segments (3)"}},
      {"Column split_unit 0", [] { Column(ColumnOptions(4, 4).split_unit(0)); },
       {"split units of 0"}},
      {"Column out_features not whole units",
       [ws] { Column(ColumnOptions(4, 3 * ws + 1).split_unit(3).uneven(true)); },
       {"is not a whole number of split units of 3"}},
      {"Row out_features 0", [] { Row(RowOptions(4, 0)); },
       {"torchtp::RowParallelLinear", "must be positive"}},
      {"Row in_features not whole units",
       [] { Row(RowOptions(5, 4).split_unit(2).uneven(true)); },
       {"in_features (5) is not a whole number of split units of 2"}},
      {"Embedding of no rows",
       [] {
         torchtp::VocabParallelEmbedding(
             torchtp::VocabParallelEmbeddingOptions(0, 4));
       },
       {"torchtp::VocabParallelEmbedding", "must be positive, got 0 and 4"}},
      {"Attention d_model not a multiple of heads",
       [] {
         torchtp::ParallelSelfAttention(
             torchtp::ParallelSelfAttentionOptions(10, 4));
       },
       {"torchtp::ParallelSelfAttention", "d_model (10)", "num_heads (4)"}},
      {"Attention of no heads",
       [] {
         torchtp::ParallelSelfAttention(
             torchtp::ParallelSelfAttentionOptions(8, 0));
       },
       {"torchtp::ParallelSelfAttention", "num_heads (0)"}},
      {"GPT of an empty vocabulary",
       [] { torchtp::GPT(torchtp::GPTOptions(0, 8)); },
       {"torchtp::GPT", "must be positive"}},
      {"GPT of no positions", [] { torchtp::GPT(torchtp::GPTOptions(10, 0)); },
       {"torchtp::GPT", "must be positive"}},
  });
}

// The names torchtp's programs accept, against LibTorch's own dtypes, each
// read back from the name it prints; others refused naming the accepted.
TEST(BadInput, DtypeNames) {
  const std::vector<std::pair<std::string, torch::Dtype>> names = {
      {"float32", torch::kFloat},    {"float", torch::kFloat},
      {"float64", torch::kDouble},   {"double", torch::kDouble},
      {"bfloat16", torch::kBFloat16}, {"float16", torch::kHalf},
      {"half", torch::kHalf}};
  for (const auto& [name, dtype] : names) {
    EXPECT_EQ(torchtp::dtype_from_name(name), dtype) << name;
    EXPECT_EQ(
        torchtp::dtype_from_name(torchtp::dtype_name(dtype)), dtype)
        << name;
  }
  EXPECT_EQ(torchtp::dtype_name(torch::kLong), "Long");
  expect_all_refused({
      {"int8 (weights, not a tensor dtype here)",
       [] { torchtp::dtype_from_name("int8"); },
       {"unknown dtype 'int8'", "float32, float64, bfloat16 or float16"},
       false},
      {"a capitalised name", [] { torchtp::dtype_from_name("BFloat16"); },
       {"unknown dtype 'BFloat16'"}, false},
      {"nothing", [] { torchtp::dtype_from_name(""); },
       {"unknown dtype ''"}, false},
  });
}

TEST(BadInput, Forward) {
  const int64_t ws = world().size();
  Column column(ColumnOptions(6, 2 * ws));
  Row row(RowOptions(2 * ws, 3).input_is_parallel(true));
  torchtp::VocabParallelEmbedding embedding(
      torchtp::VocabParallelEmbeddingOptions(4 * ws, 3));
  torchtp::ParallelSelfAttention attention(
      torchtp::ParallelSelfAttentionOptions(2 * ws, ws));
  torchtp::GPT gpt(torchtp::GPTOptions(10, 4)
                       .d_model(2 * ws)
                       .num_heads(ws)
                       .num_layers(1)
                       .vocab_pad_multiple(4 * ws));
  expect_all_refused({
      {"Column input of another width",
       [&] { column(torch::randn({2, 5})); },
       {"torchtp::ColumnParallelLinear", "expected input of shape [*, 6]",
        "but got [2, 5]"}},
      {"Column input of another dtype",
       [&] { column(torch::ones({2, 6}, torch::kLong)); },
       {"expected input dtype Float", "but got Long"}},
      {"Column undefined input", [&] { column(torch::Tensor()); },
       {"undefined input"}},
      {"Column scalar input", [&] { column(torch::tensor(1.0f)); },
       {"expected input of shape [*, 6]", "but got []"}},
      {"Column input on another device",
       [&] { column(torch::empty({2, 6}, torch::Device(torch::kMeta))); },
       {"expected input on cpu", "meta"}},
      {"Row input of the full width though input_is_parallel",
       [&] { row(torch::randn({2, 2 * ws + 1})); },
       {"torchtp::RowParallelLinear", "expected input of shape [*, 2]",
        "input_is_parallel"}},
      {"Embedding of float ids", [&] { embedding(torch::zeros({3})); },
       {"torchtp::VocabParallelEmbedding", "expected integer ids", "Float"}},
      {"Embedding id past the vocabulary",
       [&] { embedding(torch::full({2}, 4 * ws, torch::kLong)); },
       {"ids must be in [0, ", "got values in ["}},
      {"Embedding negative id",
       [&] { embedding(torch::full({2}, -1, torch::kLong)); },
       {"ids must be in [0, "}},
      {"Attention input of two dims",
       [&] { attention(torch::randn({3, 2 * ws})); },
       {"torchtp::ParallelSelfAttention", "expected input [batch, seq, ",
        "but got [3, "}},
      {"GPT ids of one dim",
       [&] { gpt(torch::zeros({4}, torch::kLong)); },
       {"torchtp::GPT", "expected ids [batch, seq <= 4]", "but got [4]"}},
      {"GPT sequence past max_seq_len",
       [&] { gpt(torch::zeros({1, 5}, torch::kLong)); },
       {"expected ids [batch, seq <= 4]", "but got [1, 5]"}},
      {"GPT id past the vocabulary",
       [&] { gpt(torch::full({1, 2}, 10, torch::kLong)); },
       {"ids must be below vocab_size (10)"}},
      {"load_full_weights of the wrong shape",
       [&] { column->load_full_weights(torch::zeros({2 * ws, 5})); },
       {"load_full_weights", "expected full weight of shape [",
        "but got [", "5]"}},
  });
}

TEST(BadInput, CollectivesAndMappings) {
  auto g = world();
  const int64_t ws = g.size();
  std::vector<BadInput> rows = {
      {"all_reduce of bools",
       [&] {
         auto t = torch::ones({2}, torch::kBool);
         g.all_reduce(t);
       },
       {"torchtp::Group::all_reduce", "Bool is not supported"}},
      {"all_reduce of an undefined tensor",
       [&] {
         torch::Tensor t;
         g.all_reduce(t);
       },
       {"torchtp::Group::all_reduce", "undefined tensor"}},
      {"all_reduce on another device",
       [&] {
         auto t = torch::empty({2}, torch::Device(torch::kMeta));
         g.all_reduce(t);
       },
       {"expected a CPU tensor", "meta"}},
      {"all_gather of a scalar", [&] { g.all_gather(torch::tensor(1.0), 0); },
       {"torchtp::Group::all_gather", "at least one dim"}},
      {"broadcast from a rank outside the group",
       [&] {
         auto t = torch::ones({2});
         g.broadcast(t, static_cast<int>(ws));
       },
       {"torchtp::Group::broadcast", "root", "is not a rank of the group"}},
      {"copy_to_tp_region of an undefined tensor",
       [&] { torchtp::copy_to_tp_region(torch::Tensor(), g); },
       {"torchtp::copy_to_tp_region", "undefined input"}},
      {"gather_from_sequence_region with another rank's split",
       [&] {
         torchtp::gather_from_sequence_region(
             torch::ones({1, 2}), g,
             torchtp::Partition(ws + 1, ws + 1, ws, "seq", true), 0);
       },
       {"torchtp::gather_from_sequence_region", "not of this rank"}},
  };
  if (ws > 1) {
    rows.push_back(
        {"reduce_scatter of a size that does not divide",
         [&] { g.reduce_scatter(torch::ones({ws + 1}), 0); },
         {"torchtp::Group::reduce_scatter", "is not divisible by the "
                                            "tensor-parallel size"}});
  }
  expect_all_refused(rows);
}

TEST(BadInput, CrossEntropyAndSampling) {
  const int64_t ws = world().size();
  auto logits = torch::randn({3, 4});
  auto gen = at::detail::createCPUGenerator(0);
  expect_all_refused({
      {"cross-entropy targets of another shape",
       [&] {
         torchtp::vocab_parallel_cross_entropy(
             logits, torch::zeros({2}, torch::kLong));
       },
       {"torchtp::vocab_parallel_cross_entropy",
        "expected integer targets of shape [3]", "but got [2]"}},
      {"cross-entropy float targets",
       [&] { torchtp::vocab_parallel_cross_entropy(logits, torch::zeros({3})); },
       {"expected integer targets", "Float"}},
      {"cross-entropy integer logits",
       [&] {
         torchtp::vocab_parallel_cross_entropy(
             torch::ones({3, 4}, torch::kLong),
             torch::zeros({3}, torch::kLong));
       },
       {"expected floating-point logits"}},
      {"cross-entropy label smoothing above 1",
       [&] {
         torchtp::vocab_parallel_cross_entropy(
             logits, torch::zeros({3}, torch::kLong),
             torchtp::VocabParallelCrossEntropyOptions().label_smoothing(2));
       },
       {"label_smoothing must be in [0, 1], got 2"}},
      {"cross-entropy target past the vocabulary",
       [&] {
         torchtp::vocab_parallel_cross_entropy(
             logits, torch::full({3}, 4 * ws, torch::kLong));
       },
       {"targets must be in [0, "}},
      {"cross-entropy with a partition of another size",
       [&] {
         torchtp::vocab_parallel_cross_entropy(
             logits, torch::zeros({3}, torch::kLong),
             torchtp::VocabParallelCrossEntropyOptions().vocab_partition(
                 torchtp::Partition(5 * ws, ws, world().rank(), "v")));
       },
       {"does not match the logits, 4 ids"}},
      {"top-k of k 0", [&] { torchtp::vocab_parallel_topk(logits, 0); },
       {"torchtp::vocab_parallel_topk", "k must be positive, got 0"}},
      {"sampling at temperature 0",
       [&] {
         torchtp::sample_next_token(
             logits, gen, torchtp::SamplingOptions().temperature(0));
       },
       {"torchtp::sample_next_token", "temperature must be positive"}},
      {"sampling with top_p 0",
       [&] {
         torchtp::sample_next_token(
             logits, gen, torchtp::SamplingOptions().top_p(0));
       },
       {"top_p must be in (0, 1], got 0"}},
      {"sampling with a vocab_size past the logits",
       [&] {
         torchtp::sample_next_token(
             logits, gen,
             torchtp::SamplingOptions().greedy(true).vocab_size(4 * ws + 1));
       },
       {"vocab_size (", "must be in [0, "}},
  });
}

TEST(BadInput, CheckpointLoaders) {
  Column column(ColumnOptions(4, 2 * world().size()));
  expect_all_refused({
      {"load_checkpoint of a directory that is not there",
       [&] { torchtp::load_checkpoint("/nonexistent/torchtp-ckpt", *column); },
       {"meta.json", "not found"},
       /*labelled=*/false},
      {"load_full_state of a file that is not there",
       [&] { torchtp::load_full_state("/nonexistent/model.pt", *column); },
       {"/nonexistent/model.pt"},
       /*labelled=*/false},
  });
}

// Not bad input: empty batches and non-contiguous tensors work, and equal
// the unsharded computation.
TEST(BadInput, EmptyAndNonContiguousTensorsWork) {
  auto g = world();
  const int64_t ws = g.size();
  torch::manual_seed(3);
  auto w = torch::randn({2 * ws, 6}, torch::kDouble);
  auto b = torch::randn({2 * ws}, torch::kDouble);
  Column column(ColumnOptions(6, 2 * ws).gather_output(true).dtype(torch::kDouble));
  column->load_full_weights(w, b);
  Row row(RowOptions(2 * ws, 6).dtype(torch::kDouble));
  row->load_full_weights(w.t().contiguous(), torch::zeros({6}, torch::kDouble));

  auto empty = torch::zeros({0, 6}, torch::kDouble).requires_grad_();
  auto y = column(empty);
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({0, 2 * ws}));
  y.sum().backward();
  EXPECT_EQ(empty.grad().sizes(), empty.sizes());
  EXPECT_EQ(row(torch::zeros({2, 0, 2 * ws}, torch::kDouble)).sizes(),
            torch::IntArrayRef({2, 0, 6}));

  // A transposed input (strided) against its contiguous copy and F::linear.
  auto base = torch::randn({6, 5}, torch::kDouble);
  auto strided = base.t(); // [5, 6], not contiguous
  ASSERT_FALSE(strided.is_contiguous());
  auto expected = F::linear(strided.contiguous(), w, b);
  EXPECT_TRUE(all_close(column(strided), expected));
  auto wide = torch::randn({2 * ws, 5}, torch::kDouble).t();
  EXPECT_TRUE(all_close(row(wide), F::linear(wide.contiguous(), w.t())));

  torchtp::VocabParallelEmbedding embedding(
      torchtp::VocabParallelEmbeddingOptions(4 * ws, 3));
  EXPECT_EQ(embedding(torch::zeros({0}, torch::kLong)).sizes(),
            torch::IntArrayRef({0, 3}));

  // Collectives of strided tensors.
  auto t = torch::arange(12, torch::kDouble).reshape({3, 4}).t();
  auto gathered = g.all_gather(t, 0);
  EXPECT_TRUE(all_close(gathered, t.repeat({ws, 1})));
}
