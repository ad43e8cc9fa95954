#include "torchtp/group.h"

#include "detail/check.h"
#include "comm/communicator.h"
#include "torchtp/partition.h"

#include "comm/backends.h"
#include "comm/collective_check.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <tuple>
#include <utility>
#include <vector>

namespace torchtp {
namespace {

std::atomic<bool>& debug_checks() {
  static std::atomic<bool> enabled{[] {
    const char* v = std::getenv("TORCHTP_DEBUG");
    return v != nullptr && std::string(v) != "0" && std::string(v) != "";
  }()};
  return enabled;
}

bool debug_checks_enabled() {
  return debug_checks().load(std::memory_order_relaxed);
}

// Runs an in-place collective on `tensor`; communicators take contiguous
// tensors, so a strided one goes through a contiguous copy written back on
// wait().
template <typename Issue>
Work in_place(at::Tensor& tensor, Issue&& issue) {
  if (tensor.is_contiguous()) {
    return issue(tensor);
  }
  auto staged = tensor.contiguous();
  auto work = issue(staged);
  return Work(
      [work, staged, tensor]() mutable {
        work.wait();
        tensor.copy_(staged);
        return tensor;
      },
      [work] { return work.is_completed(); });
}

} // namespace

Group::Group(c10::intrusive_ptr<detail::Communicator> comm)
    : comm_(std::move(comm)) {
  TORCH_CHECK(comm_, "torchtp::Group: no communicator");
}

Group::Group(const Group&) = default;
Group::Group(Group&&) noexcept = default;
Group& Group::operator=(const Group&) = default;
Group& Group::operator=(Group&&) noexcept = default;
Group::~Group() = default;

bool Group::operator==(const Group& other) const {
  return comm_.get() == other.comm_.get();
}

Group Group::self() {
  return Group(detail::make_self_communicator());
}

int Group::rank() const {
  return comm_->rank();
}

int Group::size() const {
  return comm_->size();
}

std::string Group::backend() const {
  return comm_->backend();
}

std::string Group::rank_label() const {
  return detail::rank_label(rank(), size());
}

void Group::check_partition(const char* op, const Partition& part) const {
  TORCHTP_CHECK(
      part.parts() == size() && part.rank() == rank(),
      std::string("torchtp::Group::") + op, *this,
      "the split is of rank ", part.rank(), " of ", part.parts(),
      " parts, not of this rank of the group");
}

void Group::check_same_everywhere(
    const char* op, const at::Tensor& t, int64_t arg) const {
  TORCHTP_CHECK(
      t.defined(), std::string("torchtp::Group::") + op, *this,
      "undefined tensor");
  TORCHTP_CHECK(
      t.device().is_cpu(), std::string("torchtp::Group::") + op, *this,
      "expected a CPU tensor, got one on ", t.device());
  TORCHTP_CHECK(
      t.scalar_type() != at::kBool && !t.is_complex(),
      std::string("torchtp::Group::") + op, *this, "dtype ", t.scalar_type(),
      " is not supported (floating point and integer tensors are)");
  if (size() > 1 && debug_checks_enabled()) {
    detail::check_fingerprints(*comm_, op, &t, arg);
  }
}

Work Group::all_reduce_async(at::Tensor& tensor, ReduceOp op) const {
  check_same_everywhere("all_reduce", tensor, static_cast<int64_t>(op));
  // Nothing to move (and Gloo divides by the element count).
  if (size() == 1 || tensor.numel() == 0) {
    return Work(tensor);
  }
  return in_place(
      tensor, [&](at::Tensor& t) { return comm_->all_reduce(t, op); });
}

void Group::all_reduce(at::Tensor& tensor, ReduceOp op) const {
  all_reduce_async(tensor, op).wait();
}

Work Group::all_gather_async(const at::Tensor& tensor, int64_t dim) const {
  TORCHTP_CHECK(
      tensor.defined() && tensor.dim() >= 1, "torchtp::Group::all_gather",
      *this, "expected a tensor with at least one dim, got ",
      tensor.defined() ? c10::str(tensor.sizes()) : "none");
  const int64_t d = c10::maybe_wrap_dim(dim, tensor.dim());
  return all_gather_async(
      tensor, d,
      Partition(
          tensor.size(d) * size(), size(), rank(),
          "torchtp::Group::all_gather"));
}

at::Tensor Group::all_gather(const at::Tensor& tensor, int64_t dim) const {
  return all_gather_async(tensor, dim).wait();
}

Work Group::all_gather_async(
    const at::Tensor& tensor, int64_t dim, const Partition& part) const {
  TORCHTP_CHECK(
      tensor.defined() && tensor.dim() >= 1, "torchtp::Group::all_gather",
      *this, "expected a tensor with at least one dim, got ",
      tensor.defined() ? c10::str(tensor.sizes()) : "none");
  const int64_t d = c10::maybe_wrap_dim(dim, tensor.dim());
  check_partition("all_gather", part);
  TORCHTP_CHECK(
      tensor.size(d) == part.local_size(), "torchtp::Group::all_gather", *this,
      "expected this rank's part, ", part.local_size(), " indices along dim ",
      d, ", got ", tensor.sizes());
  // Uneven parts travel padded to the largest: every rank passes the same
  // shape.
  const int64_t block = part.max_size();
  auto input = tensor.movedim(d, 0);
  if (block != part.local_size()) {
    auto sizes = input.sizes().vec();
    sizes[0] = block;
    auto padded = at::zeros(sizes, input.options());
    padded.narrow(0, 0, part.local_size()).copy_(input);
    input = padded;
  }
  // The caller's shape, with uneven parts padded: the same on every rank.
  check_same_everywhere("all_gather", input.movedim(0, d), d);
  auto out_sizes = input.sizes().vec();
  out_sizes[0] = part.full_size();
  if (size() == 1) {
    return Work(tensor.clone());
  }
  if (input.numel() == 0) {
    return Work(at::empty(out_sizes, input.options()).movedim(0, d));
  }
  // Gather along dim 0 where every rank's block is contiguous, then move the
  // gathered dim back: the rank order is kept along `d`.
  input = input.contiguous();
  auto sizes = input.sizes().vec();
  sizes[0] *= size();
  auto output = at::empty(sizes, input.options());
  auto work = comm_->all_gather(input, output);
  const bool padded = !part.is_even();
  std::vector<int64_t> parts = part.sizes();
  return Work(
      [work, output, d, block, padded, parts]() mutable {
        work.wait();
        auto full = output;
        if (padded) {
          std::vector<at::Tensor> pieces;
          for (size_t r = 0; r < parts.size(); ++r) {
            pieces.push_back(output.narrow(0, r * block, parts[r]));
          }
          full = at::cat(pieces, 0);
        }
        return d == 0 ? full : full.movedim(0, d).contiguous();
      },
      [work] { return work.is_completed(); });
}

at::Tensor Group::all_gather(
    const at::Tensor& tensor, int64_t dim, const Partition& part) const {
  return all_gather_async(tensor, dim, part).wait();
}

Work Group::reduce_scatter_async(
    const at::Tensor& tensor, int64_t dim, ReduceOp op) const {
  TORCHTP_CHECK(
      tensor.defined() && tensor.dim() >= 1, "torchtp::Group::reduce_scatter",
      *this, "expected a tensor with at least one dim, got ",
      tensor.defined() ? c10::str(tensor.sizes()) : "none");
  const int64_t d = c10::maybe_wrap_dim(dim, tensor.dim());
  return reduce_scatter_async(
      tensor, d,
      Partition(
          tensor.size(d), size(), rank(),
          "torchtp::Group::reduce_scatter: size of dim " + std::to_string(d)),
      op);
}

at::Tensor Group::reduce_scatter(
    const at::Tensor& tensor, int64_t dim, ReduceOp op) const {
  return reduce_scatter_async(tensor, dim, op).wait();
}

Work Group::reduce_scatter_async(
    const at::Tensor& tensor,
    int64_t dim,
    const Partition& part,
    ReduceOp op) const {
  TORCHTP_CHECK(
      tensor.defined() && tensor.dim() >= 1, "torchtp::Group::reduce_scatter",
      *this, "expected a tensor with at least one dim, got ",
      tensor.defined() ? c10::str(tensor.sizes()) : "none");
  const int64_t d = c10::maybe_wrap_dim(dim, tensor.dim());
  check_partition("reduce_scatter", part);
  TORCHTP_CHECK(
      tensor.size(d) == part.full_size(), "torchtp::Group::reduce_scatter",
      *this, "expected ", part.full_size(), " indices along dim ", d,
      " (the split's full size), got ", tensor.sizes());
  check_same_everywhere("reduce_scatter", tensor, d);
  if (size() == 1) {
    return Work(tensor.clone());
  }
  auto input = tensor.movedim(d, 0);
  auto out_sizes = input.sizes().vec();
  out_sizes[0] = part.local_size();
  if (tensor.numel() == 0) {
    return Work(at::empty(out_sizes, tensor.options()).movedim(0, d));
  }
  // Communicators take equal blocks: uneven parts travel padded to the
  // largest, and each rank keeps the real rows of its block.
  const int64_t block = part.max_size();
  at::Tensor blocks;
  if (part.is_even()) {
    blocks = input.contiguous();
  } else {
    auto sizes = input.sizes().vec();
    sizes[0] = block * size();
    blocks = at::zeros(sizes, input.options());
    for (int r = 0; r < size(); ++r) {
      blocks.narrow(0, r * block, part.size(r))
          .copy_(input.narrow(0, part.offset(r), part.size(r)));
    }
  }
  auto sizes = input.sizes().vec();
  sizes[0] = block;
  auto output = at::empty(sizes, input.options());
  auto work = comm_->reduce_scatter(blocks, output, op);
  const int64_t local = part.local_size();
  return Work(
      [work, output, d, local]() mutable {
        work.wait();
        auto mine = output.narrow(0, 0, local);
        return d == 0 && local == output.size(0)
            ? output
            : mine.movedim(0, d).contiguous();
      },
      [work] { return work.is_completed(); });
}

at::Tensor Group::reduce_scatter(
    const at::Tensor& tensor,
    int64_t dim,
    const Partition& part,
    ReduceOp op) const {
  return reduce_scatter_async(tensor, dim, part, op).wait();
}

Partition Group::partition_of(
    int64_t local_size, const std::string& what, int64_t unit) const {
  if (size() == 1) {
    return Partition(local_size, 1, 0, what, /*uneven=*/true, unit);
  }
  auto mine = at::full({1}, local_size, at::kLong);
  auto all = at::empty({size()}, at::kLong);
  comm_->all_gather(mine, all).wait();
  const auto* a = all.data_ptr<int64_t>();
  const int64_t full = std::accumulate(a, a + size(), int64_t{0});
  const bool even = std::all_of(a, a + size(), [&](int64_t s) {
    return s == a[0];
  });
  TORCHTP_CHECK(
      full % unit == 0, "torchtp::Group::partition_of", *this, what,
      ": the ranks' parts ", all.sizes(), " add up to ", full,
      ", not a whole number of units of ", unit);
  Partition part(full, size(), rank(), what, /*uneven=*/!even, unit);
  TORCHTP_CHECK(
      std::equal(part.sizes().begin(), part.sizes().end(), a),
      "torchtp::Group::partition_of", *this, what, ": the ranks' parts ",
      c10::IntArrayRef(a, size()), " are not a torchtp split of ", full,
      " (expected ", c10::IntArrayRef(part.sizes()), ")");
  return part;
}

Work Group::broadcast_async(at::Tensor& tensor, int root) const {
  check_same_everywhere("broadcast", tensor, root);
  TORCHTP_CHECK(
      root >= 0 && root < size(), "torchtp::Group::broadcast", *this, "root ",
      root, " is not a rank of the group");
  if (size() == 1 || tensor.numel() == 0) {
    return Work(tensor);
  }
  return in_place(
      tensor, [&](at::Tensor& t) { return comm_->broadcast(t, root); });
}

void Group::broadcast(at::Tensor& tensor, int root) const {
  broadcast_async(tensor, root).wait();
}

Work Group::barrier_async() const {
  if (size() > 1 && debug_checks_enabled()) {
    detail::check_fingerprints(*comm_, "barrier", nullptr, -1);
  }
  return size() > 1 ? comm_->barrier() : Work();
}

void Group::barrier() const {
  barrier_async().wait();
}

Group Group::split(int color, int key) const {
  if (size() > 1 && debug_checks_enabled()) {
    detail::check_fingerprints(*comm_, "split", nullptr, -1);
  }
  const std::string name =
      comm_->name() + "/s" + std::to_string(comm_->next_split_index());
  auto mine = at::tensor(
      std::vector<int64_t>{color, key < 0 ? rank() : key}, at::kLong);
  auto all = at::empty({2 * size()}, at::kLong);
  comm_->all_gather(mine, all).wait();
  const auto* a = all.data_ptr<int64_t>();
  std::vector<std::tuple<int64_t, int>> members; // (key, rank)
  for (int r = 0; r < size(); ++r) {
    if (a[2 * r] == color) {
      members.emplace_back(a[2 * r + 1], r);
    }
  }
  std::sort(members.begin(), members.end());
  if (members.size() == 1) {
    return Group::self();
  }
  std::vector<int> ranks;
  for (const auto& m : members) {
    ranks.push_back(std::get<1>(m));
  }
  return Group(comm_->split(ranks, name + "c" + std::to_string(color), ""));
}

Group Group::with_backend(const std::string& backend) const {
  const std::string unknown = detail::unknown_backend(backend);
  TORCHTP_CHECK(
      unknown.empty(), "torchtp::Group::with_backend", *this, unknown);
  if (size() == 1) {
    return Group::self();
  }
  std::vector<int> ranks(size());
  for (int r = 0; r < size(); ++r) {
    ranks[r] = r;
  }
  const std::string name = comm_->name() + "/s" +
                           std::to_string(comm_->next_split_index()) + backend;
  return Group(comm_->split(ranks, name, backend));
}

namespace {

std::mutex default_mutex;
c10::optional<Group> default_group_;

} // namespace

Group default_group() {
  std::lock_guard<std::mutex> lock(default_mutex);
  TORCH_CHECK(
      default_group_.has_value(),
      "torchtp: no default group. Call torchtp::init_from_env() first (it "
      "works for a single process too) or pass a group in the options");
  return *default_group_;
}

void set_debug_checks(bool enabled) {
  debug_checks().store(enabled);
}

void set_default_group(const Group& group) {
  std::lock_guard<std::mutex> lock(default_mutex);
  default_group_ = group;
}

bool has_default_group() {
  std::lock_guard<std::mutex> lock(default_mutex);
  return default_group_.has_value();
}

namespace detail {

Group GroupAccess::make(c10::intrusive_ptr<Communicator> comm) {
  return Group(std::move(comm));
}

const c10::intrusive_ptr<Communicator>& GroupAccess::communicator(
    const Group& group) {
  return group.comm_;
}

} // namespace detail
} // namespace torchtp
