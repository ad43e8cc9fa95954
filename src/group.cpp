#include "torchtp/group.h"

#include "torchtp/detail/check.h"
#include "torchtp/detail/communicator.h"
#include "torchtp/partition.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <tuple>

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

// The signature compared across ranks by TORCHTP_DEBUG: dtype, rank of the
// tensor, then its sizes, padded so that every rank sends the same length.
constexpr int64_t kMaxSignatureDims = 16;

std::string describe_signature(const int64_t* s) {
  std::ostringstream out;
  out << "[";
  for (int64_t d = 0; d < s[1]; ++d) {
    out << (d ? ", " : "") << s[2 + d];
  }
  out << "] " << c10::toString(static_cast<c10::ScalarType>(s[0]));
  return out.str();
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

void Group::check_same_everywhere(const char* op, const at::Tensor& t) const {
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
  if (size() == 1 || !debug_checks_enabled()) {
    return;
  }
  TORCHTP_CHECK(
      t.dim() <= kMaxSignatureDims, std::string("torchtp::Group::") + op, *this,
      "TORCHTP_DEBUG checks at most ", kMaxSignatureDims, " dims");
  auto sig = at::full({kMaxSignatureDims + 2}, -1, at::kLong);
  auto* s = sig.data_ptr<int64_t>();
  s[0] = static_cast<int64_t>(t.scalar_type());
  s[1] = t.dim();
  for (int64_t d = 0; d < t.dim(); ++d) {
    s[2 + d] = t.size(d);
  }
  auto all = at::empty({size() * sig.numel()}, at::kLong);
  comm_->all_gather(sig, all).wait();
  const auto* a = all.data_ptr<int64_t>();
  for (int r = 0; r < size(); ++r) {
    const int64_t* other = a + r * sig.numel();
    TORCHTP_CHECK(
        std::equal(s, s + sig.numel(), other),
        std::string("torchtp::Group::") + op, *this,
        "ranks disagree on the tensor: this rank passed ",
        describe_signature(s), ", rank ", r, " passed ",
        describe_signature(other));
  }
}

Work Group::all_reduce_async(at::Tensor& tensor, ReduceOp op) const {
  check_same_everywhere("all_reduce", tensor);
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
  check_same_everywhere("all_gather", tensor);
  TORCHTP_CHECK(
      tensor.dim() >= 1, "torchtp::Group::all_gather", *this,
      "expected a tensor with at least one dim, got a scalar");
  const int64_t d = c10::maybe_wrap_dim(dim, tensor.dim());
  if (size() == 1) {
    return Work(tensor.clone());
  }
  if (tensor.numel() == 0) {
    auto sizes = tensor.sizes().vec();
    sizes[d] *= size();
    return Work(at::empty(sizes, tensor.options()));
  }
  // Gather along dim 0 where every rank's block is contiguous, then move the
  // gathered dim back: the rank order is kept along `d`.
  auto input = tensor.movedim(d, 0).contiguous();
  auto sizes = input.sizes().vec();
  sizes[0] *= size();
  auto output = at::empty(sizes, input.options());
  auto work = comm_->all_gather(input, output);
  return Work(
      [work, output, d]() mutable {
        work.wait();
        return d == 0 ? output : output.movedim(0, d).contiguous();
      },
      [work] { return work.is_completed(); });
}

at::Tensor Group::all_gather(const at::Tensor& tensor, int64_t dim) const {
  return all_gather_async(tensor, dim).wait();
}

Work Group::reduce_scatter_async(
    const at::Tensor& tensor, int64_t dim, ReduceOp op) const {
  check_same_everywhere("reduce_scatter", tensor);
  TORCHTP_CHECK(
      tensor.dim() >= 1, "torchtp::Group::reduce_scatter", *this,
      "expected a tensor with at least one dim, got a scalar");
  const int64_t d = c10::maybe_wrap_dim(dim, tensor.dim());
  Partition part(
      tensor.size(d), size(), rank(),
      "torchtp::Group::reduce_scatter: size of dim " + std::to_string(d));
  TORCH_INTERNAL_ASSERT(part.is_even(), "uneven reduce_scatter not built yet");
  if (size() == 1) {
    return Work(tensor.clone());
  }
  if (tensor.numel() == 0) {
    auto sizes = tensor.sizes().vec();
    sizes[d] = part.local_size();
    return Work(at::empty(sizes, tensor.options()));
  }
  auto input = tensor.movedim(d, 0).contiguous();
  auto sizes = input.sizes().vec();
  sizes[0] = part.local_size();
  auto output = at::empty(sizes, input.options());
  auto work = comm_->reduce_scatter(input, output, op);
  return Work(
      [work, output, d]() mutable {
        work.wait();
        return d == 0 ? output : output.movedim(0, d).contiguous();
      },
      [work] { return work.is_completed(); });
}

at::Tensor Group::reduce_scatter(
    const at::Tensor& tensor, int64_t dim, ReduceOp op) const {
  return reduce_scatter_async(tensor, dim, op).wait();
}

Work Group::broadcast_async(at::Tensor& tensor, int root) const {
  check_same_everywhere("broadcast", tensor);
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
  return size() > 1 ? comm_->barrier() : Work();
}

void Group::barrier() const {
  barrier_async().wait();
}

Group Group::split(int color, int key) const {
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
  TORCHTP_CHECK(
      backend == "shm" || backend == "gloo", "torchtp::Group::with_backend",
      *this, "'", backend, "' is not one of shm, gloo");
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
