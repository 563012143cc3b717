// XLA:CPU custom call: `expand_and_backup` + `select` of rstar_jax/search/kernels.py (both presets), one tree at a
// time (the Python module's docstring gives the rules; this file follows kernels.py statement by statement, and
// tests/search/native_kernels_test.py checks both give identical trees and selections).
//
// Why: on XLA:CPU the jitted kernels run ~96 operations per simulation at ~10-25 us each, where the work itself (a
// few loads per tree and level) is a fraction of that. One call walking each tree with plain loops does the same work
// without the per-operation cost.
//
// Buffers (B trees, N nodes, A children, L path slots). The tree's arrays are operands aliased to results: the
// handler reads and writes the result buffers (XLA gives them the operands' contents).
//   operands: node_info [B,N,4] s32, node_stats [B,N,2] f32, ppm_value [B,N] f32, children [B,N,A] s32,
//             num_nodes [B] s32, cursor [B] s32, rollouts [B] s32, path [B,L] s32, out_of_nodes [B] pred,
//             rollout_budget [B] s32, seed [B] u32,
//             expansion: parent [B] s32, count [B] s32, terminal_reason [B,A] s32, consecutive_errors [B,A] s32,
//             ppm_value [B,A] f32, value [B,A] f32, update_self [B,A] pred, update_path [B,A] pred
//   results:  the first nine operands (aliased), rollout [B] s32, steps [] s32
//   attributes: c (f32), the exploration constant; paper (bool), the `paper` preset (else `official`);
//               partitionable (bool), jax's `jax_threefry_partitionable` (how `jax.random.uniform` draws its bits).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// A hint to load the cache line at `p`. GCC's dead-code elimination drops `__builtin_prefetch` and `_mm_prefetch`
// from the loops below (GCC 12, -O2: no prefetch left in the library), so on x86 the instruction is volatile asm.
inline void Prefetch(const void* p) {
#if defined(__x86_64__) && defined(__GNUC__)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p);
#endif
}

// tree.py's constants.
constexpr int32_t kNone = -1;  // NO_NODE, NO_CHILD, NO_PARENT
constexpr int32_t kRoot = 0;
constexpr int32_t kReasonNone = 0;
constexpr int32_t kAllChildrenTerminal = 5;
enum InfoColumn { kParent = 0, kDepth = 1, kReason = 2, kErrors = 3 };
enum StatsColumn { kVisits = 0, kValueSum = 1 };

// One tree's slices of the batch's buffers.
struct TreeView {
  int32_t* info;      // [N, 4]
  float* stats;       // [N, 2]
  float* ppm;         // [N]
  int32_t* children;  // [N, A]
  int32_t* path;      // [L]
  int32_t& num_nodes;
  int32_t& cursor;
  int32_t& rollouts;
  bool& out_of_nodes;
  int32_t budget;
  uint32_t seed;
};

struct Sizes {
  int64_t nodes, actions, path_length;
};

struct ExpansionRow {
  int32_t parent, count;
  const int32_t* reason;  // [A]
  const int32_t* errors;  // [A]
  const float* ppm;       // [A]
  const float* value;     // [A]
  const bool* update_self;
  const bool* update_path;
};

// `_add_children` and `expand_and_backup`'s path scatter-add for one tree.
void ExpandAndBackup(TreeView& t, const ExpansionRow& e, const Sizes& s) {
  const bool fits = t.num_nodes + s.actions <= s.nodes;
  const bool has = e.parent != kNone && fits;
  t.out_of_nodes = t.out_of_nodes || (e.parent != kNone && !fits);
  // A parent that is no node, or a node count that went negative (a count below 0 in an earlier expansion): the
  // host broke `Expansion`'s contract. The XLA kernels' scatters drop or clamp such indices; here the tree is left
  // as it is, so nothing is written out of bounds.
  if (!has || e.parent < 0 || e.parent >= s.nodes || t.num_nodes < 0) return;
  const int32_t parent_depth = t.info[4 * e.parent + kDepth];
  int32_t path_count = 0;
  float path_value = 0.0f;
  for (int64_t j = 0; j < s.actions; ++j) {
    const bool valid = j < e.count;
    const int32_t id = t.num_nodes + static_cast<int32_t>(j);
    t.children[s.actions * e.parent + j] = valid ? id : kNone;
    if (!valid) continue;
    int32_t* info = t.info + 4 * id;
    info[kParent] = e.parent;
    info[kDepth] = parent_depth + 1;
    info[kReason] = e.reason[j];
    info[kErrors] = e.errors[j];
    const bool updated = e.update_self[j] || e.update_path[j];
    t.stats[2 * id + kVisits] = updated ? 1.0f : 0.0f;
    t.stats[2 * id + kValueSum] = updated ? e.value[j] : 0.0f;
    t.ppm[id] = e.ppm[j];
    if (e.update_path[j]) {
      path_count += 1;
      path_value += e.value[j];
    }
  }
  // int32 arithmetic wraps, as XLA's does (a count beyond A breaks the contract; it must not be undefined here).
  t.num_nodes = static_cast<int32_t>(static_cast<uint32_t>(t.num_nodes) + static_cast<uint32_t>(e.count));
  // The ancestors are the running rollout's path[0..depth(parent)] (parent included). With no path-scoped value
  // there is nothing to add (the XLA kernels add zeros, which would only turn a value sum of -0.0 into +0.0).
  if (path_count == 0) return;
  for (int64_t d = 0; d <= parent_depth && d < s.path_length; ++d) {
    const int32_t node = t.path[d];
    if (node < 0 || node >= s.nodes) continue;  // the scatter's mode="drop"
    t.stats[2 * node + kVisits] += static_cast<float>(path_count);
    t.stats[2 * node + kValueSum] += path_value;
  }
}

// `uct_scores`, float32 throughout as the XLA kernels compute it; `ln_parent` is log(max(N(parent), 1)), taken once
// per node.
inline float UctScore(float n_child, float w_child, float n_parent, float ln_parent, float c, bool paper) {
  const float q = n_child > 0.0f ? w_child / std::max(n_child, 1.0f) : 0.0f;
  if (paper && n_child == 0.0f) return q + std::numeric_limits<float>::infinity();  // unvisited children first
  if (!paper && !(n_parent > 0.0f && n_child > 0.0f)) return q + 0.0f;  // exploration term 0
  return q + c * std::sqrt(ln_parent / std::max(n_child, 1.0f));
}

// Threefry-2x32 (20 rounds), the block function of jax's default PRNG.
inline uint32_t RotateLeft(uint32_t v, int r) { return (v << r) | (v >> (32 - r)); }

void Threefry2x32(uint32_t k0, uint32_t k1, uint32_t& x0, uint32_t& x1) {
  static constexpr int kRotations[2][4] = {{13, 15, 26, 6}, {17, 29, 16, 24}};
  const uint32_t ks[3] = {k0, k1, k0 ^ k1 ^ 0x1BD11BDAu};
  x0 += ks[0];
  x1 += ks[1];
  for (int i = 0; i < 5; ++i) {
    for (int r : kRotations[i % 2]) {
      x0 += x1;
      x1 = RotateLeft(x1, r) ^ x0;
    }
    x0 += ks[(i + 1) % 3];
    x1 += ks[(i + 2) % 3] + static_cast<uint32_t>(i + 1);
  }
}

// `jax.random.uniform(tie_break_key(seed, rollout, node), [A])[j]` for the `paper` preset's tie-breaks: the key is
// (0, seed) folded with the rollout and then the node (a fold-in is threefry of the key with the count (0, data)),
// and the float is the top 23 bits of the draw's word as a mantissa in [1, 2), minus 1.
class TieBreakDraws {
 public:
  TieBreakDraws(uint32_t seed, int32_t rollout, int32_t node, int64_t actions, bool partitionable)
      : actions_(actions), partitionable_(partitionable) {
    k0_ = 0;
    k1_ = seed;
    FoldIn(static_cast<uint32_t>(rollout));
    FoldIn(static_cast<uint32_t>(node));
  }

  float operator()(int64_t j) const {
    uint32_t x0, x1, bits;
    if (partitionable_) {  // draw j: threefry of the key with the 64-bit count j, its two words xor-ed
      x0 = 0;
      x1 = static_cast<uint32_t>(j);
      Threefry2x32(k0_, k1_, x0, x1);
      bits = x0 ^ x1;
    } else {  // the counts 0..A-1 (a 0 appended when A is odd) in two halves; draw j is word j of the outputs
      const int64_t half = (actions_ + 1) / 2;
      const int64_t i = j < half ? j : j - half;
      x0 = static_cast<uint32_t>(i);
      x1 = i + half < actions_ ? static_cast<uint32_t>(i + half) : 0u;
      Threefry2x32(k0_, k1_, x0, x1);
      bits = j < half ? x0 : x1;
    }
    const uint32_t mantissa = (bits >> 9) | 0x3F800000u;
    float x;
    std::memcpy(&x, &mantissa, sizeof x);
    return x - 1.0f;
  }

 private:
  void FoldIn(uint32_t data) {
    uint32_t x0 = 0, x1 = data;
    Threefry2x32(k0_, k1_, x0, x1);
    k0_ = x0;
    k1_ = x1;
  }

  uint32_t k0_, k1_;
  int64_t actions_;
  bool partitionable_;
};

// Settings of one call.
struct Rule {
  float c;
  bool paper, partitionable;
};

// The most children a node may have here (the per-node score buffers below; `native.MAX_ACTIONS` in Python, where
// "auto" runs the XLA kernels for wider trees and "native" refuses them).
constexpr int64_t kMaxActions = 1024;

// `official`: jnp.argmax, the first maximum, or the first NaN if there is one.
int64_t PickOfficial(const float* scores, int64_t actions) {
  int64_t best = 0;
  for (int64_t j = 1; j < actions && !std::isnan(scores[best]); ++j) {
    if (std::isnan(scores[j]) || scores[j] > scores[best]) best = j;
  }
  return best;
}

// `paper`: uniformly random among the selectable children with the maximum score (jnp.max: NaN if any score is
// NaN, and then none is tied and slot 0 is taken), by the seeded draws.
int64_t PickPaper(const float* scores, const bool* selectable, int64_t actions, uint32_t seed, int32_t rollout,
                  int32_t node, bool partitionable) {
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < actions; ++j) {
    if (std::isnan(scores[j]) || std::isnan(top)) {
      top = std::numeric_limits<float>::quiet_NaN();
    } else {
      top = std::max(top, scores[j]);
    }
  }
  int64_t num_tied = 0, only = 0;
  for (int64_t j = 0; j < actions; ++j) {
    if (selectable[j] && scores[j] == top) {
      ++num_tied;
      only = j;
    }
  }
  if (num_tied <= 1) return only;  // argmax of the draws where tied, -1 elsewhere: the one tied child, or slot 0
  const TieBreakDraws draws(seed, rollout, node, actions, partitionable);
  int64_t best = -1;
  float best_draw = -1.0f;
  for (int64_t j = 0; j < actions; ++j) {
    if (!(selectable[j] && scores[j] == top)) continue;
    const float draw = draws(j);
    if (best < 0 || draw > best_draw) {
      best = j;
      best_draw = draw;
    }
  }
  return best;
}

// One tree's `select` descent (from its cursor); returns the loop steps it needed (the batched loop runs the deepest
// tree's count).
int32_t Select(TreeView& t, const Sizes& s, const Rule& rule) {
  const bool fits = t.num_nodes + s.actions <= s.nodes;
  // The cursor is NO_NODE or a node `select` returned; anything else cannot come from these kernels (and the tree's
  // ids, which only they write, are in range): such a rollout restarts rather than read out of bounds.
  int32_t node = t.cursor >= 0 && t.cursor < s.nodes ? t.cursor : kNone;
  int32_t depth = t.info[4 * std::max(node, 0) + kDepth];
  int32_t dead_end = static_cast<int32_t>(s.nodes);
  bool root_terminal = t.info[4 * kRoot + kReason] != kReasonNone;
  int32_t selected = kNone;
  bool done = t.out_of_nodes;
  int32_t steps = 0;
  while (!done) {
    ++steps;
    if (dead_end < s.nodes) t.info[4 * dead_end + kReason] = kAllChildrenTerminal;
    const bool is_new = node == kNone;
    root_terminal = root_terminal || dead_end == kRoot;
    const bool start = is_new && t.rollouts < t.budget && !root_terminal;
    if (start) {
      t.rollouts += 1;
      node = kRoot;
      depth = 0;
    }
    dead_end = static_cast<int32_t>(s.nodes);
    if (node == kNone) {  // no rollout left to start
      done = true;
      break;
    }
    if (t.info[4 * node + kReason] != kReasonNone) {  // a terminal node ends the rollout
      node = kNone;
      continue;
    }
    const int32_t* children = t.children + s.actions * node;
    if (children[0] == kNone) {  // unexpanded: select it
      if (fits) selected = node; else t.out_of_nodes = true;
      done = true;
      continue;
    }
    // Scores as the XLA kernels build them (-inf where not selectable), then `_pick`.
    const float n_parent = t.stats[2 * node + kVisits];
    const float ln_parent = std::log(std::max(n_parent, 1.0f));
    float scores[kMaxActions];
    bool selectable[kMaxActions];
    bool any_selectable = false;
    for (int64_t j = 0; j < s.actions; ++j) {
      const int32_t kid = children[j];
      selectable[j] = kid != kNone && t.info[4 * kid + kReason] == kReasonNone;
      any_selectable = any_selectable || selectable[j];
      scores[j] = selectable[j] ? UctScore(t.stats[2 * kid + kVisits], t.stats[2 * kid + kValueSum], n_parent,
                                           ln_parent, rule.c, rule.paper)
                                : -std::numeric_limits<float>::infinity();
    }
    const int64_t best_slot = rule.paper ? PickPaper(scores, selectable, s.actions, t.seed, t.rollouts - 1, node,
                                                     rule.partitionable)
                                         : PickOfficial(scores, s.actions);
    if (!any_selectable) {  // all children terminal: marked at the next step, the rollout ends
      dead_end = node;
      node = kNone;
      continue;
    }
    const int32_t best = children[best_slot];
    if (depth + 1 < s.path_length) t.path[depth + 1] = best;
    depth += 1;
    node = best;
    if (t.children[s.actions * best] == kNone) {  // the chosen child is unexpanded: select it
      if (fits) selected = best; else t.out_of_nodes = true;
      done = true;
    }
  }
  t.cursor = selected;  // the selection, and where the next call's descent continues
  return steps;
}

// The batch's buffers; `Run` expands, backs up and selects trees [begin, end).
struct Batch {
  Sizes s;
  int32_t *info, *kids, *paths, *num_nodes, *cursor, *rollouts, *rollout_out;
  float *stats, *ppm;
  bool* out_of_nodes;
  const int32_t *budget, *parent, *count, *reason, *errors;
  const float *e_ppm, *e_value;
  const bool *update_self, *update_path;
  const uint32_t* seed;
  Rule rule;

  TreeView Tree(int64_t b) const {
    return TreeView{info + b * s.nodes * 4, stats + b * s.nodes * 2, ppm + b * s.nodes,
                    kids + b * s.nodes * s.actions, paths + b * s.path_length, num_nodes[b], cursor[b],
                    rollouts[b], out_of_nodes[b], budget[b], seed[b]};
  }

  // The trees' rows are scattered over megabytes that the host's work between two calls evicts from the caches, and
  // each tree's walk is a chain of dependent loads. Prefetching the rows of the trees a few places ahead overlaps
  // those misses: first the rows whose addresses the inputs give (the expanded node, the new children's slots, the
  // path, the root), then, once those have arrived, the rows they point to (the ancestors' stats, the root's
  // children). Prefetches never fault, so the addresses need no bounds checks; the loads below do.
  void PrefetchDirect(int64_t b) const {
    const int64_t tree = b * s.nodes;
    const int64_t expanded = tree + std::clamp<int64_t>(parent[b], 0, s.nodes - 1);
    const int64_t fresh = tree + std::clamp<int64_t>(num_nodes[b], 0, s.nodes - 1);
    Prefetch(info + 4 * expanded);
    Prefetch(kids + s.actions * expanded);
    Prefetch(paths + b * s.path_length);
    for (int64_t j = 0; j < s.actions; j += 4) Prefetch(info + 4 * (fresh + j));
    Prefetch(stats + 2 * fresh);
    Prefetch(ppm + fresh);
    for (int64_t j = 0; j < s.actions; j += 2) Prefetch(kids + s.actions * (fresh + j));
    Prefetch(info + 4 * tree);
    Prefetch(stats + 2 * tree);
    Prefetch(kids + s.actions * tree);
  }

  void PrefetchIndirect(int64_t b) const {
    const int64_t tree = b * s.nodes;
    const int32_t* path = paths + b * s.path_length;
    const int32_t depth = parent[b] >= 0 && parent[b] < s.nodes ? info[4 * (tree + parent[b]) + kDepth] : -1;
    for (int64_t d = 0; d <= depth && d < s.path_length; ++d) Prefetch(stats + 2 * (tree + path[d]));
    const int64_t first = tree + std::clamp<int64_t>(kids[s.actions * tree], 0, s.nodes - 1);
    for (int64_t j = 0; j < s.actions; j += 4) Prefetch(info + 4 * (first + j));
    Prefetch(stats + 2 * first);
  }

  int32_t Run(int64_t begin, int64_t end) const {
    constexpr int64_t kAhead = 8;
    for (int64_t b = begin; b < std::min(end, begin + 2 * kAhead); ++b) PrefetchDirect(b);
    for (int64_t b = begin; b < std::min(end, begin + kAhead); ++b) PrefetchIndirect(b);
    int32_t max_steps = 0;
    for (int64_t b = begin; b < end; ++b) {
      if (b + 2 * kAhead < end) PrefetchDirect(b + 2 * kAhead);
      if (b + kAhead < end) PrefetchIndirect(b + kAhead);
      TreeView t = Tree(b);
      const int64_t a = b * s.actions;
      const ExpansionRow e{parent[b], count[b], reason + a, errors + a, e_ppm + a, e_value + a, update_self + a,
                           update_path + a};
      ExpandAndBackup(t, e, s);
      max_steps = std::max(max_steps, Select(t, s, rule));
      rollout_out[b] = t.rollouts - 1;
    }
    return max_steps;
  }
};

// Runs `batch` in chunks of trees on the calling thread and on XLA's intra-op pool. Every thread takes the next
// chunk from one counter, so the caller never waits for a chunk nobody has started: no deadlock however busy the pool
// is (a helper that starts after all chunks are taken finds nothing to do).
int32_t RunOnPool(const Batch& batch, int64_t num_trees, ffi::ThreadPool& pool) {
  constexpr int64_t kChunk = 64;
  const int64_t num_chunks = (num_trees + kChunk - 1) / kChunk;
  struct Shared {
    std::atomic<int64_t> next{0}, finished{0};
    std::atomic<int32_t> max_steps{0};
  };
  auto shared = std::make_shared<Shared>();  // outlives the call if a helper starts late
  auto work = [shared, &batch, num_trees, num_chunks]() {
    for (int64_t chunk; (chunk = shared->next.fetch_add(1)) < num_chunks;) {
      const int32_t steps = batch.Run(chunk * kChunk, std::min(num_trees, (chunk + 1) * kChunk));
      int32_t seen = shared->max_steps.load();
      while (steps > seen && !shared->max_steps.compare_exchange_weak(seen, steps)) {
      }
      shared->finished.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), num_chunks - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work(); });
  work();
  while (shared->finished.load(std::memory_order_acquire) < num_chunks) std::this_thread::yield();
  return shared->max_steps.load();
}

ffi::Error ExpandAndSelectImpl(
    ffi::Buffer<ffi::S32>, ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::S32>,
    ffi::Buffer<ffi::S32>, ffi::Buffer<ffi::S32>, ffi::Buffer<ffi::S32>, ffi::Buffer<ffi::S32>,
    ffi::Buffer<ffi::PRED>, ffi::Buffer<ffi::S32> rollout_budget, ffi::Buffer<ffi::U32> seed,
    ffi::Buffer<ffi::S32> e_parent, ffi::Buffer<ffi::S32> e_count, ffi::Buffer<ffi::S32> e_reason,
    ffi::Buffer<ffi::S32> e_errors, ffi::Buffer<ffi::F32> e_ppm, ffi::Buffer<ffi::F32> e_value,
    ffi::Buffer<ffi::PRED> e_update_self, ffi::Buffer<ffi::PRED> e_update_path,
    ffi::ResultBuffer<ffi::S32> node_info, ffi::ResultBuffer<ffi::F32> node_stats,
    ffi::ResultBuffer<ffi::F32> ppm_value, ffi::ResultBuffer<ffi::S32> children,
    ffi::ResultBuffer<ffi::S32> num_nodes, ffi::ResultBuffer<ffi::S32> cursor,
    ffi::ResultBuffer<ffi::S32> rollouts, ffi::ResultBuffer<ffi::S32> path,
    ffi::ResultBuffer<ffi::PRED> out_of_nodes, ffi::ResultBuffer<ffi::S32> rollout_out,
    ffi::ResultBuffer<ffi::S32> steps_out, float c, bool paper, bool partitionable, ffi::ThreadPool pool) {
  const auto dims = children->dimensions();
  if (dims.size() != 3 || path->dimensions().size() != 2) {
    return ffi::Error::InvalidArgument("children must be [B, N, A] and path [B, L]");
  }
  if (dims[2] > kMaxActions) {
    return ffi::Error::InvalidArgument("the native tree kernels take at most 1024 children per node (A)");
  }
  const Batch batch{Sizes{dims[1], dims[2], path->dimensions()[1]},
                    node_info->typed_data(), children->typed_data(), path->typed_data(), num_nodes->typed_data(),
                    cursor->typed_data(), rollouts->typed_data(), rollout_out->typed_data(),
                    node_stats->typed_data(), ppm_value->typed_data(), out_of_nodes->typed_data(),
                    rollout_budget.typed_data(), e_parent.typed_data(), e_count.typed_data(), e_reason.typed_data(),
                    e_errors.typed_data(), e_ppm.typed_data(), e_value.typed_data(), e_update_self.typed_data(),
                    e_update_path.typed_data(), seed.typed_data(), Rule{c, paper, partitionable}};
  *steps_out->typed_data() = RunOnPool(batch, dims[0], pool);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    RstarTreeExpandAndSelect, ExpandAndSelectImpl,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::S32>>()   // node_info
        .Arg<ffi::Buffer<ffi::F32>>()   // node_stats
        .Arg<ffi::Buffer<ffi::F32>>()   // ppm_value
        .Arg<ffi::Buffer<ffi::S32>>()   // children
        .Arg<ffi::Buffer<ffi::S32>>()   // num_nodes
        .Arg<ffi::Buffer<ffi::S32>>()   // cursor
        .Arg<ffi::Buffer<ffi::S32>>()   // rollouts
        .Arg<ffi::Buffer<ffi::S32>>()   // path
        .Arg<ffi::Buffer<ffi::PRED>>()  // out_of_nodes
        .Arg<ffi::Buffer<ffi::S32>>()   // rollout_budget
        .Arg<ffi::Buffer<ffi::U32>>()   // seed
        .Arg<ffi::Buffer<ffi::S32>>()   // expansion.parent
        .Arg<ffi::Buffer<ffi::S32>>()   // expansion.count
        .Arg<ffi::Buffer<ffi::S32>>()   // expansion.terminal_reason
        .Arg<ffi::Buffer<ffi::S32>>()   // expansion.consecutive_errors
        .Arg<ffi::Buffer<ffi::F32>>()   // expansion.ppm_value
        .Arg<ffi::Buffer<ffi::F32>>()   // expansion.value
        .Arg<ffi::Buffer<ffi::PRED>>()  // expansion.update_self
        .Arg<ffi::Buffer<ffi::PRED>>()  // expansion.update_path
        .Ret<ffi::Buffer<ffi::S32>>()   // node_info
        .Ret<ffi::Buffer<ffi::F32>>()   // node_stats
        .Ret<ffi::Buffer<ffi::F32>>()   // ppm_value
        .Ret<ffi::Buffer<ffi::S32>>()   // children
        .Ret<ffi::Buffer<ffi::S32>>()   // num_nodes
        .Ret<ffi::Buffer<ffi::S32>>()   // cursor (= the selection)
        .Ret<ffi::Buffer<ffi::S32>>()   // rollouts
        .Ret<ffi::Buffer<ffi::S32>>()   // path
        .Ret<ffi::Buffer<ffi::PRED>>()  // out_of_nodes
        .Ret<ffi::Buffer<ffi::S32>>()   // rollout index of the selection
        .Ret<ffi::Buffer<ffi::S32>>()   // steps
        .Attr<float>("c")
        .Attr<bool>("paper")
        .Attr<bool>("partitionable")
        .Ctx<ffi::ThreadPool>());
