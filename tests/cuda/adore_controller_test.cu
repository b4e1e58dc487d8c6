// The ADORE controller kernels (kernels/cuda/adore_controller.cu) against the CPU reference
// (worker/adore_controller.cc): a closed loop of prefill chunks and decode steps over several sequences of
// different lengths, with tokens released and rebuilt between steps by the plan, comparing key features,
// GRU states and scores after every step (1e-4) and every plan exactly (on the CPU's scores; on the GPU's
// own scores up to near-ties); the PyTorch golden vectors through the shipped controller; tie rules on
// exactly tied scores; plan statuses and argument checks.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/adore_controller.h"
#include "nlohmann/json.hpp"
#include "tests/cuda/cuda_test_util.h"
#include "worker/adore_controller.h"

namespace adore::kernels {
namespace {

using Json = nlohmann::json;
using testing::DeviceBuffer;

std::string SourceRoot() {
  if (const char* env = std::getenv("ADORE_SOURCE_DIR")) return env;
  return ADORE_SOURCE_DIR;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A controller's weights on the host, in the file's layout (tests/adore_controller_file.h); written to a
// controller file for the CPU reference (AdoreController::Parse) and handed to DeviceAdoreWeights::Upload
// for the GPU.
using Weights = testing::ControllerWeights;
using testing::RandomControllerWeights;

HostAdoreWeights ToHost(const Weights& w) {
  HostAdoreWeights h;
  h.feature_dim = w.f();
  h.key_dim = w.kd;
  h.state_dim = w.sd;
  h.mass_eps = w.mass_eps;
  h.mass_coef = w.mass_coef;
  h.age_coef = w.age_coef;
  h.key_w = w.key_w;
  h.key_b = w.key_b;
  h.query_w = w.query_w;
  h.query_b = w.query_b;
  h.gru_w_ih = w.w_ih;
  h.gru_w_hh = w.w_hh;
  h.gru_b_ih = w.b_ih;
  h.gru_b_hh = w.b_hh;
  h.score_w = w.score_w;
  h.score_b = w.score_b[0];
  return h;
}

// Reads the weights of a controller file (for the GPU side only; the CPU side loads the same file with
// AdoreController::Load). Test code: the engine will take them from an AdoreController accessor.
bool ReadWeights(const std::string& bytes, Weights* w, std::string* why) {
  if (bytes.size() < 16 || bytes.compare(0, 8, "ADORECTL") != 0) {
    *why = "not a controller file";
    return false;
  }
  uint32_t len;
  std::memcpy(&len, bytes.data() + 12, 4);
  const Json h = Json::parse(bytes.substr(16, len));
  const std::string data = bytes.substr(16 + len);
  w->num_layers = static_cast<int64_t>(h["feature_layers"].size());
  w->hidden = h["hidden_size"].get<int64_t>();
  w->kd = h["key_dim"].get<int64_t>();
  w->sd = h["state_dim"].get<int64_t>();
  w->mass_eps = h["mass_eps"].get<float>();
  w->mass_coef = h["mass_coef"].get<float>();
  w->age_coef = h["age_coef"].get<float>();
  const std::vector<std::pair<std::string, std::vector<float>*>> want = {
      {"key_proj.weight", &w->key_w}, {"key_proj.bias", &w->key_b},  {"query_proj.weight", &w->query_w},
      {"query_proj.bias", &w->query_b}, {"gru.weight_ih", &w->w_ih}, {"gru.weight_hh", &w->w_hh},
      {"gru.bias_ih", &w->b_ih},        {"gru.bias_hh", &w->b_hh},   {"score.weight", &w->score_w},
      {"score.bias", &w->score_b}};
  for (const auto& [name, dst] : want) {
    bool found = false;
    for (const Json& t : h["tensors"]) {
      if (t["name"].get<std::string>() != name) continue;
      int64_t count = 1;
      for (const Json& d : t["shape"]) count *= d.get<int64_t>();
      const size_t offset = t["offset"].get<size_t>();
      if (offset + count * 4 > data.size()) {
        *why = name + " runs past the data";
        return false;
      }
      dst->resize(count);
      std::memcpy(dst->data(), data.data() + offset, count * 4);
      found = true;
    }
    if (!found) {
      *why = name + " missing";
      return false;
    }
  }
  return true;
}

struct SeqSpec {
  int64_t length;  // tokens added in all
  int64_t budget;  // m
  int64_t chunk;   // prefill chunk; the last `decode_tail` tokens come one per round
};

struct SimOptions {
  int64_t max_rebuild = 0, num_sink = 4, num_recent = 16;
  int64_t decode_tail = 3;
  bool f32_features = false;
  float feature_range = 2.0f;
  float mass_scale = 1.0f / 270;
  // Masses are drawn from `mass_values` when set (exact ties), else uniform in [0, 60).
  std::vector<float> mass_values;
  double tol = 1e-4;
  uint32_t seed = 1;
  bool expect_exact_own_plan = false;  // scores are exactly tied or far apart: GPU plan == CPU plan
  // The step's tables as the CUDA engine lays out a prompt chunk: each query of a sequence gets its own
  // copy of the table with its masses beside it (AdoreStepArgs::table_ends, query_mass).
  bool per_query_tables = false;
};

// Positions that differ between two ordered lists (missing from one, or out of relative order).
void CollectDiffs(const std::vector<int32_t>& a, const std::vector<int32_t>& b, std::set<int32_t>* out) {
  const std::set<int32_t> sa(a.begin(), a.end()), sb(b.begin(), b.end());
  std::vector<int32_t> ca, cb;
  for (int32_t x : a) (sb.count(x) ? ca.push_back(x) : void(out->insert(x)));
  for (int32_t x : b) (sa.count(x) ? cb.push_back(x) : void(out->insert(x)));
  for (size_t k = 0; k < ca.size(); ++k) {
    if (ca[k] != cb[k]) {
      out->insert(ca[k]);
      out->insert(cb[k]);
    }
  }
}

// The closed loop: per round, plan (CPU and GPU, compared), apply the CPU plan to the slot tables, add
// the round's new tokens (project), step every sequence (CPU and GPU), compare every token's state.
class Simulation {
 public:
  Simulation(const AdoreController& ctl, const DeviceAdoreWeights& dw, std::vector<SeqSpec> specs, SimOptions opt)
      : ctl_(ctl), dw_(dw), opt_(std::move(opt)), rng_(opt_.seed) {
    int64_t rows = 0;
    for (const SeqSpec& s : specs) {
      Seq q;
      q.spec = s;
      q.cpu = std::make_unique<AdoreSequence>(ctl);
      q.base = rows + 3;  // gaps between sequences' rows
      rows = q.base + s.length;
      seqs_.push_back(std::move(q));
    }
    num_rows_ = rows + 5;
    kd_ = dw.key_dim();
    sd_ = dw.state_dim();
  }

  void Run() {
    const int64_t B = static_cast<int64_t>(seqs_.size());
    // Garbage everywhere: the kernels must initialise what they read (NaN state rows, random slot_of_row).
    keys_.Resize(num_rows_ * kd_);
    states_.Resize(num_rows_ * sd_);
    acc_.Resize(num_rows_);
    scores_.Resize(num_rows_);
    ADORE_ASSERT_CUDA(cudaMemset(keys_.get(), 0xff, keys_.size() * 4));
    ADORE_ASSERT_CUDA(cudaMemset(states_.get(), 0xff, states_.size() * 4));
    ADORE_ASSERT_CUDA(cudaMemset(acc_.get(), 0xff, acc_.size() * 4));
    ADORE_ASSERT_CUDA(cudaMemset(scores_.get(), 0xff, scores_.size() * 4));
    {
      std::uniform_int_distribution<int32_t> garbage(-3, 200);
      std::vector<int32_t> g(num_rows_);
      for (int32_t& x : g) x = garbage(rng_);
      slot_of_row_.Upload(g);
    }
    for (int round = 0;; ++round) {
      SCOPED_TRACE(::testing::Message() << "round " << round);
      std::vector<int64_t> nn(B, 0);
      bool left_any = false, step_any = false;
      for (int64_t b = 0; b < B; ++b) {
        const Seq& s = seqs_[b];
        const int64_t left = s.spec.length - s.cpu->num_tokens();
        if (left == 0) continue;
        left_any = true;
        nn[b] = left <= opt_.decode_tail ? 1 : std::min(s.spec.chunk, left - opt_.decode_tail);
        // Some rounds leave a sequence out (nq = 0), as a batch without it would.
        if (round % 5 == 3 && b % 2 == 1) nn[b] = 0;
        step_any = step_any || nn[b] > 0;
      }
      ASSERT_NO_FATAL_FAILURE(PlanAndCompare(nn));
      if (!left_any) break;
      if (step_any) ASSERT_NO_FATAL_FAILURE(StepAndCompare(nn));
      ++rounds_;
    }
    std::printf("adore sim: %d rounds, %lld sequences, max |GPU - CPU| key %.2e state %.2e score %.2e; plans: "
                "%d compared, %d differed on GPU scores by near-ties (%d tokens)\n",
                rounds_, static_cast<long long>(B), max_key_err_, max_state_err_, max_score_err_, plans_,
                tie_flip_plans_, tie_flip_tokens_);
    for (const Seq& s : seqs_) EXPECT_EQ(s.cpu->num_tokens(), s.spec.length);
  }

  int plans_with_release() const { return plans_with_release_; }
  int plans_with_rebuild() const { return plans_with_rebuild_; }

 private:
  struct Seq {
    SeqSpec spec;
    std::unique_ptr<AdoreSequence> cpu;
    int64_t base = 0;
    std::vector<int32_t> rows, pos;  // slot table; row < 0 = empty
  };

  struct Csr {
    std::vector<int32_t> offsets{0}, rows, pos;
    int64_t max_len = 0;
  };

  Csr BuildCsr(const std::vector<std::vector<std::pair<int32_t, int32_t>>>& extra = {}) const {
    Csr c;
    for (size_t b = 0; b < seqs_.size(); ++b) {
      const Seq& s = seqs_[b];
      c.rows.insert(c.rows.end(), s.rows.begin(), s.rows.end());
      c.pos.insert(c.pos.end(), s.pos.begin(), s.pos.end());
      if (b < extra.size()) {
        for (auto [r, p] : extra[b]) {
          c.rows.push_back(r);
          c.pos.push_back(p);
        }
      }
      c.offsets.push_back(static_cast<int32_t>(c.rows.size()));
      c.max_len = std::max<int64_t>(c.max_len, c.offsets.back() - c.offsets[c.offsets.size() - 2]);
    }
    return c;
  }

  AdoreStateArrays State() {
    AdoreStateArrays st;
    st.keys = keys_.get();
    st.states = states_.get();
    st.acc = acc_.get();
    st.scores = scores_.get();
    st.num_rows = num_rows_;
    return st;
  }

  int32_t NewRow() { return next_kv_row_++; }

  // A slot for a token: an empty one at random if any, else a new one at the end.
  void Occupy(Seq& s, int32_t pos) {
    std::vector<size_t> empty;
    for (size_t k = 0; k < s.rows.size(); ++k) {
      if (s.rows[k] < 0) empty.push_back(k);
    }
    if (!empty.empty()) {
      const size_t k = empty[std::uniform_int_distribution<size_t>(0, empty.size() - 1)(rng_)];
      s.rows[k] = NewRow();
      s.pos[k] = pos;
    } else {
      s.rows.push_back(NewRow());
      s.pos.push_back(pos);
    }
  }

  struct GpuPlan {
    std::vector<int32_t> status, num_release, num_rebuild, release, rebuild;
  };

  void RunGpuPlan(const std::vector<int64_t>& nn, int64_t release_cap, int64_t rebuild_cap, GpuPlan* out) {
    const int64_t B = static_cast<int64_t>(seqs_.size());
    const Csr c = BuildCsr();
    std::vector<int32_t> base(B), scored(B), budget(B), num_new(B);
    int64_t max_pos = 0;
    for (int64_t b = 0; b < B; ++b) {
      base[b] = static_cast<int32_t>(seqs_[b].base);
      scored[b] = static_cast<int32_t>(seqs_[b].cpu->num_steps());
      budget[b] = static_cast<int32_t>(seqs_[b].spec.budget);
      num_new[b] = static_cast<int32_t>(nn[b]);
      max_pos = std::max<int64_t>(max_pos, scored[b]);
    }
    DeviceBuffer<int32_t> d_base(base), d_scored(scored), d_budget(budget), d_new(num_new);
    DeviceBuffer<int32_t> d_off(c.offsets), d_rows(c.rows), d_pos(c.pos);
    DeviceBuffer<int32_t> d_release(std::vector<int32_t>(std::max<int64_t>(1, B * release_cap), -7));
    DeviceBuffer<int32_t> d_rebuild(std::vector<int32_t>(std::max<int64_t>(1, B * rebuild_cap), -7));
    DeviceBuffer<int32_t> d_nrel(std::vector<int32_t>(B, -7)), d_nreb(std::vector<int32_t>(B, -7)),
        d_status(std::vector<int32_t>(B, -7));
    AdorePlanArgs a;
    a.scores = scores_.get();
    a.num_rows = num_rows_;
    a.num_seqs = B;
    a.state_base = d_base.get();
    a.num_scored = d_scored.get();
    a.budget = d_budget.get();
    a.num_new = d_new.get();
    a.max_positions = max_pos;
    a.max_rebuild = opt_.max_rebuild;
    a.num_sink = opt_.num_sink;
    a.num_recent = opt_.num_recent;
    a.slot_offsets = d_off.get();
    a.slot_rows = d_rows.get();
    a.slot_pos = d_pos.get();
    a.release = d_release.get();
    a.release_capacity = release_cap;
    a.rebuild = d_rebuild.get();
    a.rebuild_capacity = rebuild_cap;
    a.num_release = d_nrel.get();
    a.num_rebuild = d_nreb.get();
    a.status = d_status.get();
    const absl::Status st = AdorePlanRelease(a, nullptr);
    ASSERT_TRUE(st.ok()) << st;
    ADORE_ASSERT_CUDA(cudaDeviceSynchronize());
    out->status = d_status.Download();
    out->num_release = d_nrel.Download();
    out->num_rebuild = d_nreb.Download();
    out->release = d_release.Download();
    out->rebuild = d_rebuild.Download();
  }

  static std::vector<int32_t> Slice(const std::vector<int32_t>& v, int64_t b, int64_t cap, int64_t count) {
    const int64_t k = std::min(cap, count);
    return std::vector<int32_t>(v.begin() + b * cap, v.begin() + b * cap + k);
  }

  void PlanAndCompare(const std::vector<int64_t>& nn) {
    const int64_t B = static_cast<int64_t>(seqs_.size());
    std::vector<AdoreReleasePlan> cpu(B);
    int64_t release_cap = 1;
    for (int64_t b = 0; b < B; ++b) {
      Seq& s = seqs_[b];
      const int64_t n = s.cpu->num_steps();
      std::vector<uint8_t> cached(n, 0);
      for (size_t k = 0; k < s.rows.size(); ++k) {
        if (s.rows[k] >= 0) {
          ASSERT_LT(s.pos[k], n) << "test bug: slot of an unscored position";
          cached[s.pos[k]] = 1;
        }
      }
      auto plan = s.cpu->PlanRelease(cached, s.spec.budget, nn[b], opt_.max_rebuild, opt_.num_sink,
                                     opt_.num_recent);
      ASSERT_TRUE(plan.ok()) << "test bug: " << plan.status();
      cpu[b] = *plan;
      release_cap = std::max<int64_t>(release_cap, static_cast<int64_t>(s.rows.size()));
      plans_with_release_ += !plan->release.empty();
      plans_with_rebuild_ += !plan->rebuild.empty();
    }
    const int64_t rebuild_cap = opt_.max_rebuild + opt_.num_sink + opt_.num_recent + 1;

    // 1. On the GPU's own scores: equal up to near-ties.
    GpuPlan own;
    ASSERT_NO_FATAL_FAILURE(RunGpuPlan(nn, release_cap, rebuild_cap, &own));
    const std::vector<float> gpu_scores = scores_.Download();
    // 2. On the CPU's scores (uploaded over the GPU's; scores are only ever written by AdoreStep): exact.
    for (int64_t b = 0; b < B; ++b) {
      const auto sc = seqs_[b].cpu->scores();
      if (!sc.empty()) {
        ADORE_ASSERT_CUDA(cudaMemcpy(scores_.get() + seqs_[b].base, sc.data(), sc.size() * 4,
                                     cudaMemcpyHostToDevice));
      }
    }
    GpuPlan exact, small;
    ASSERT_NO_FATAL_FAILURE(RunGpuPlan(nn, release_cap, rebuild_cap, &exact));
    // 3. Short capacities keep the first entries of each list.
    ASSERT_NO_FATAL_FAILURE(RunGpuPlan(nn, 2, 1, &small));

    for (int64_t b = 0; b < B; ++b) {
      SCOPED_TRACE(::testing::Message() << "sequence " << b << " (" << seqs_[b].cpu->num_steps() << " scored, "
                                        << nn[b] << " new, budget " << seqs_[b].spec.budget << ")");
      const AdoreReleasePlan& want = cpu[b];
      ++plans_;
      EXPECT_EQ(exact.status[b], kAdorePlanOk);
      ASSERT_EQ(exact.num_release[b], static_cast<int32_t>(want.release.size()));
      ASSERT_EQ(exact.num_rebuild[b], static_cast<int32_t>(want.rebuild.size()));
      EXPECT_EQ(Slice(exact.release, b, release_cap, exact.num_release[b]), want.release);
      EXPECT_EQ(Slice(exact.rebuild, b, rebuild_cap, exact.num_rebuild[b]), want.rebuild);

      EXPECT_EQ(small.status[b], kAdorePlanOk);
      EXPECT_EQ(small.num_release[b], exact.num_release[b]);
      EXPECT_EQ(small.num_rebuild[b], exact.num_rebuild[b]);
      EXPECT_EQ(Slice(small.release, b, 2, small.num_release[b]),
                std::vector<int32_t>(want.release.begin(), want.release.begin() + std::min<size_t>(2, want.release.size())));
      EXPECT_EQ(Slice(small.rebuild, b, 1, small.num_rebuild[b]),
                std::vector<int32_t>(want.rebuild.begin(), want.rebuild.begin() + std::min<size_t>(1, want.rebuild.size())));

      EXPECT_EQ(own.status[b], kAdorePlanOk);
      const std::vector<int32_t> rel = Slice(own.release, b, release_cap, own.num_release[b]);
      const std::vector<int32_t> reb = Slice(own.rebuild, b, rebuild_cap, own.num_rebuild[b]);
      if (opt_.expect_exact_own_plan) {
        EXPECT_EQ(rel, want.release);
        EXPECT_EQ(reb, want.rebuild);
      } else if (rel != want.release || reb != want.rebuild) {
        std::set<int32_t> diff;
        CollectDiffs(rel, want.release, &diff);
        CollectDiffs(reb, want.rebuild, &diff);
        const auto sc = seqs_[b].cpu->scores();
        for (int32_t p : diff) {
          ASSERT_GE(p, 0);
          ASSERT_LT(p, static_cast<int32_t>(sc.size()));
          bool partner = false;
          for (int32_t q : diff) {
            partner = partner || (q != p && std::fabs(sc[p] - sc[q]) <= 2e-4 * std::max(1.0f, std::fabs(sc[p])));
          }
          EXPECT_TRUE(partner) << "position " << p << " (CPU score " << sc[p] << ", GPU "
                               << gpu_scores[seqs_[b].base + p] << ") planned differently on the GPU's scores "
                               << "without a near-tie";
        }
        ++tie_flip_plans_;
        tie_flip_tokens_ += static_cast<int>(diff.size());
      }
    }
    // Apply the CPU plan: free the released slots (their stale positions stay), occupy slots for rebuilds.
    for (int64_t b = 0; b < B; ++b) {
      Seq& s = seqs_[b];
      for (int32_t p : cpu[b].release) {
        bool found = false;
        for (size_t k = 0; k < s.rows.size(); ++k) {
          if (s.rows[k] >= 0 && s.pos[k] == p) {
            s.rows[k] = -1;
            found = true;
          }
        }
        ASSERT_TRUE(found) << "released position " << p << " was not cached";
      }
      for (int32_t p : cpu[b].rebuild) Occupy(s, p);
    }
  }

  void StepAndCompare(const std::vector<int64_t>& nn) {
    const int64_t B = static_cast<int64_t>(seqs_.size());
    const int64_t F = dw_.feature_dim(), stride = F + 8, kd = kd_, sd = sd_;
    // New tokens take slots; each stepping sequence also gets an empty slot and a slot for a position
    // past its last query (neither is visible) in this forward's table only.
    std::vector<int64_t> first(B);
    std::vector<std::vector<std::pair<int32_t, int32_t>>> extra(B);
    for (int64_t b = 0; b < B; ++b) {
      Seq& s = seqs_[b];
      first[b] = s.cpu->num_tokens();
      for (int64_t j = 0; j < nn[b]; ++j) Occupy(s, static_cast<int32_t>(first[b] + j));
      if (nn[b] > 0) {
        extra[b].push_back({-1, static_cast<int32_t>(first[b])});
        extra[b].push_back({NewRow(), static_cast<int32_t>(first[b] + nn[b] + 7)});
      }
    }
    const Csr c = BuildCsr(extra);
    const int64_t total_slots = c.rows.size();
    // Queries of sequence b at rows q_offsets[b] + j; items (tokens) in a shuffled order, plus two
    // "rebuilt" items that must be ignored.
    std::vector<int32_t> q_offsets{0}, q_first(B), base(B);
    int64_t max_nq = 0, max_positions = 0;
    for (int64_t b = 0; b < B; ++b) {
      q_offsets.push_back(static_cast<int32_t>(q_offsets.back() + nn[b]));
      q_first[b] = static_cast<int32_t>(first[b]);
      base[b] = static_cast<int32_t>(seqs_[b].base);
      max_nq = std::max(max_nq, nn[b]);
      if (nn[b] > 0) max_positions = std::max(max_positions, first[b] + nn[b]);
    }
    const int64_t num_queries = q_offsets.back();
    struct Item {
      int64_t b, j;
    };
    std::vector<Item> items;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < nn[b]; ++j) items.push_back({b, j});
    }
    items.push_back({-1, 0});
    items.push_back({-1, 1});
    std::shuffle(items.begin(), items.end(), rng_);
    const int64_t n_items = items.size();
    std::vector<float> feats = testing::RandomFloats(n_items * stride, -opt_.feature_range, opt_.feature_range, rng_());
    if (!opt_.f32_features) feats = testing::RoundToBf16(feats);
    std::vector<int32_t> key_rows(n_items), query_rows(n_items);
    // CPU features by (b, j), in position order.
    std::vector<std::vector<std::vector<float>>> cpu_feats(B);
    for (int64_t b = 0; b < B; ++b) cpu_feats[b].resize(nn[b]);
    for (int64_t t = 0; t < n_items; ++t) {
      const Item& it = items[t];
      if (it.b < 0) {
        key_rows[t] = it.j == 0 ? -1 : static_cast<int32_t>(num_rows_ + 4);  // both out of range: skipped
        query_rows[t] = it.j == 0 ? -1 : static_cast<int32_t>(num_queries + 2);
        continue;
      }
      key_rows[t] = static_cast<int32_t>(seqs_[it.b].base + first[it.b] + it.j);
      query_rows[t] = static_cast<int32_t>(q_offsets[it.b] + it.j);
      cpu_feats[it.b][it.j].assign(feats.begin() + t * stride, feats.begin() + t * stride + F);
    }
    // Masses per (query, slot), garbage included for invisible slots (the kernel must ignore them).
    const int64_t mass_stride = total_slots + 3;
    std::vector<float> mass(std::max<int64_t>(1, max_nq * mass_stride), 0.0f);
    std::uniform_real_distribution<float> mdist(0.0f, 60.0f);
    for (float& m : mass) {
      m = opt_.mass_values.empty()
              ? mdist(rng_)
              : opt_.mass_values[std::uniform_int_distribution<size_t>(0, opt_.mass_values.size() - 1)(rng_)];
    }

    // CPU: AddToken for the new tokens, then one Step per query in order.
    for (int64_t b = 0; b < B; ++b) {
      Seq& s = seqs_[b];
      for (int64_t j = 0; j < nn[b]; ++j) ASSERT_TRUE(s.cpu->AddToken(cpu_feats[b][j]).ok());
      for (int64_t j = 0; j < nn[b]; ++j) {
        const int64_t t = first[b] + j;
        std::vector<float> m(t + 1, 0.0f);
        std::vector<uint8_t> cached(t + 1, 0);
        for (int64_t k = c.offsets[b]; k < c.offsets[b + 1]; ++k) {
          if (c.rows[k] < 0 || c.pos[k] > t) continue;
          cached[c.pos[k]] = 1;
          m[c.pos[k]] = mass[j * mass_stride + k];
        }
        ASSERT_TRUE(s.cpu->Step(t, m, cached, opt_.mass_scale).ok());
      }
    }

    // GPU.
    DeviceBuffer<float> d_feats_f32;
    DeviceBuffer<__nv_bfloat16> d_feats_bf16;
    if (opt_.f32_features) {
      d_feats_f32.Upload(feats);
    } else {
      d_feats_bf16.Upload(testing::ToBf16(feats));
    }
    DeviceBuffer<int32_t> d_key_rows(key_rows), d_query_rows(query_rows);
    DeviceBuffer<float> d_queries(std::max<int64_t>(1, num_queries * kd));
    AdoreProjectArgs pa;
    pa.weights = &dw_;
    pa.features_bf16 = opt_.f32_features ? nullptr : d_feats_bf16.get();
    pa.features_f32 = opt_.f32_features ? d_feats_f32.get() : nullptr;
    pa.feature_stride = stride;
    pa.n = n_items;
    pa.key_rows = d_key_rows.get();
    pa.state = State();
    pa.queries = d_queries.get();
    pa.num_query_rows = num_queries;
    pa.query_rows = d_query_rows.get();
    const absl::Status st = AdoreProject(pa, nullptr);
    ASSERT_TRUE(st.ok()) << st;

    // Per-query tables: sequence b's table copied once per query (once when it has none), query j's copy
    // carrying the masses of query j; table_ends marks the end of the first copy.
    std::vector<int32_t> begin(B + 1, 0), ends(B, 0), query_mass(std::max<int64_t>(1, num_queries), 0);
    Csr copies;
    std::vector<float> copy_mass;
    if (opt_.per_query_tables) {
      for (int64_t b = 0; b < B; ++b) {
        const int64_t len = c.offsets[b + 1] - c.offsets[b];
        begin[b] = static_cast<int32_t>(copies.rows.size());
        ends[b] = static_cast<int32_t>(begin[b] + len);
        for (int64_t j = 0; j < std::max<int64_t>(1, nn[b]); ++j) {
          if (j < nn[b]) query_mass[q_offsets[b] + j] = static_cast<int32_t>(copies.rows.size());
          for (int64_t k = c.offsets[b]; k < c.offsets[b + 1]; ++k) {
            copies.rows.push_back(c.rows[k]);
            copies.pos.push_back(c.pos[k]);
            copy_mass.push_back(j < nn[b] ? mass[j * mass_stride + k] : -1.0f);
          }
        }
      }
      begin[B] = static_cast<int32_t>(copies.rows.size());
      copy_mass.push_back(0.0f);  // never empty
      copies.rows.push_back(-1);
      copies.pos.push_back(-1);
    }
    DeviceBuffer<int32_t> d_base(base), d_qfirst(q_first), d_qoff(q_offsets);
    DeviceBuffer<int32_t> d_off(opt_.per_query_tables ? begin : c.offsets);
    DeviceBuffer<int32_t> d_rows(opt_.per_query_tables ? copies.rows : c.rows);
    DeviceBuffer<int32_t> d_pos(opt_.per_query_tables ? copies.pos : c.pos);
    DeviceBuffer<int32_t> d_ends(ends), d_query_mass(query_mass);
    DeviceBuffer<float> d_mass(opt_.per_query_tables ? copy_mass : mass);
    AdoreStepArgs sa;
    sa.weights = &dw_;
    sa.state = State();
    sa.queries = d_queries.get();
    sa.num_seqs = B;
    sa.state_base = d_base.get();
    sa.q_first = d_qfirst.get();
    sa.q_offsets = d_qoff.get();
    sa.max_positions = max_positions;
    sa.slot_offsets = d_off.get();
    sa.slot_rows = d_rows.get();
    sa.slot_pos = d_pos.get();
    sa.max_slots = c.max_len;
    sa.slot_mass = d_mass.get();
    sa.mass_stride = mass_stride;
    sa.mass_scale = opt_.mass_scale;
    sa.slot_of_row = slot_of_row_.get();
    if (opt_.per_query_tables) {
      sa.table_ends = d_ends.get();
      sa.query_mass = d_query_mass.get();
      sa.mass_stride = 0;
    }
    const absl::Status step_st = AdoreStep(sa, nullptr);
    ASSERT_TRUE(step_st.ok()) << step_st;
    ADORE_ASSERT_CUDA(cudaDeviceSynchronize());

    const std::vector<float> keys = keys_.Download(), states = states_.Download(), scores = scores_.Download();
    int reported = 0;
    for (int64_t b = 0; b < B; ++b) {
      const Seq& s = seqs_[b];
      for (int64_t i = 0; i < s.cpu->num_steps(); ++i) {
        const int64_t row = s.base + i;
        const auto k = s.cpu->key_feature(i);
        const auto h = s.cpu->state(i);
        double ek = 0, eh = 0;
        for (int64_t d = 0; d < kd; ++d) {
          ek = std::max<double>(ek, std::fabs(keys[row * kd + d] - k[d]) / std::max(1.0f, std::fabs(k[d])));
        }
        for (int64_t d = 0; d < sd; ++d) eh = std::max(eh, static_cast<double>(std::fabs(states[row * sd + d] - h[d])));
        const float ref = s.cpu->scores()[i];
        const double es = std::fabs(scores[row] - ref) / std::max(1.0f, std::fabs(ref));
        if (std::isnan(ek) || std::isnan(eh) || std::isnan(es)) ek = eh = INFINITY;
        max_key_err_ = std::max(max_key_err_, ek);
        max_state_err_ = std::max(max_state_err_, eh);
        max_score_err_ = std::max(max_score_err_, std::isnan(es) ? INFINITY : es);
        if ((ek > opt_.tol || eh > opt_.tol || !(es <= opt_.tol)) && reported++ < 5) {
          ADD_FAILURE() << "sequence " << b << " position " << i << " of " << s.cpu->num_steps()
                        << ": key err " << ek << ", state err " << eh << ", score " << scores[row] << " vs "
                        << ref;
        }
      }
    }
    ASSERT_EQ(reported, 0);
  }

  const AdoreController& ctl_;
  const DeviceAdoreWeights& dw_;
  SimOptions opt_;
  std::mt19937 rng_;
  std::vector<Seq> seqs_;
  int64_t num_rows_ = 0, kd_ = 0, sd_ = 0;
  int32_t next_kv_row_ = 0;
  DeviceBuffer<float> keys_, states_, acc_, scores_;
  DeviceBuffer<int32_t> slot_of_row_;
  int rounds_ = 0, plans_ = 0, tie_flip_plans_ = 0, tie_flip_tokens_ = 0;
  int plans_with_release_ = 0, plans_with_rebuild_ = 0;
  double max_key_err_ = 0, max_state_err_ = 0, max_score_err_ = 0;
};

class AdoreControllerCudaTest : public ::testing::Test {
 protected:
  void SetUp() override { ADORE_SKIP_WITHOUT_GPU(); }
};

// Random controllers of the shipped shape and a smaller one; sequences of 1, 17, 300 and 4097 tokens. Also
// with each query of a chunk over its own copy of the table (the CUDA engine's prompt chunks).
TEST_F(AdoreControllerCudaTest, ClosedLoopMatchesCpuWithRandomController) {
  const Weights w = RandomControllerWeights(3, 22, 32, 16, 7);  // feature_dim 66: not a multiple of 4 (padding)
  auto ctl = AdoreController::Parse(w.File(), "random");
  ASSERT_TRUE(ctl.ok()) << ctl.status();
  DeviceAdoreWeights dw;
  const absl::Status up = dw.Upload(ToHost(w));
  ASSERT_TRUE(up.ok()) << up;
  for (bool per_query_tables : {false, true}) {
    SCOPED_TRACE(per_query_tables ? "per-query tables" : "one table per sequence");
    SimOptions opt;
    opt.max_rebuild = 4;
    opt.seed = per_query_tables ? 13 : 11;
    opt.per_query_tables = per_query_tables;
    Simulation sim(**ctl, dw,
                   {{1, 16, 8}, {17, 24, 8}, {300, 64, 40}, {4097, 512, 256}, {450, 48, 7}}, opt);
    ASSERT_NO_FATAL_FAILURE(sim.Run());
    EXPECT_GT(sim.plans_with_release(), 10);
    EXPECT_GT(sim.plans_with_rebuild(), 5);
  }
}

TEST_F(AdoreControllerCudaTest, ClosedLoopMatchesCpuWithSmallDimsAndF32Features) {
  for (const auto& [kd, sd] : std::vector<std::pair<int, int>>{{16, 8}, {64, 32}, {16, 32}}) {
    SCOPED_TRACE(::testing::Message() << "key_dim " << kd << " state_dim " << sd);
    const Weights w = RandomControllerWeights(2, 12, kd, sd, 100 + kd + sd);
    auto ctl = AdoreController::Parse(w.File(), "random");
    ASSERT_TRUE(ctl.ok()) << ctl.status();
    DeviceAdoreWeights dw;
    const absl::Status up = dw.Upload(ToHost(w));
    ASSERT_TRUE(up.ok()) << up;
    SimOptions opt;
    opt.f32_features = true;
    opt.max_rebuild = 0;
    opt.num_sink = 2;
    opt.num_recent = 5;
    opt.seed = 3 + kd;
    Simulation sim(**ctl, dw, {{600, 40, 30}, {33, 20, 9}, {2, 30, 1}}, opt);
    ASSERT_NO_FATAL_FAILURE(sim.Run());
    EXPECT_GT(sim.plans_with_release(), 10);
  }
}

// Scores that are exactly tied or far apart (the score is a multiple of log(mass)), so the GPU's own plan
// must equal the CPU's: exercises "ties go to the later position" on both lists.
TEST_F(AdoreControllerCudaTest, TieRulesMatchCpuExactly) {
  Weights w = RandomControllerWeights(1, 4, 16, 8, 5);
  std::fill(w.w_ih.begin(), w.w_ih.end(), 0.0f);
  std::fill(w.w_hh.begin(), w.w_hh.end(), 0.0f);
  std::fill(w.b_ih.begin(), w.b_ih.end(), 0.0f);
  std::fill(w.b_hh.begin(), w.b_hh.end(), 0.0f);
  std::fill(w.score_w.begin(), w.score_w.end(), 0.0f);
  w.score_w[w.sd + 0] = 1.0f;  // score = mass_coef * log(a + eps): a few distinct values
  w.score_b = {0.0f};
  auto ctl = AdoreController::Parse(w.File(), "ties");
  ASSERT_TRUE(ctl.ok()) << ctl.status();
  DeviceAdoreWeights dw;
  ASSERT_TRUE(dw.Upload(ToHost(w)).ok());
  SimOptions opt;
  opt.max_rebuild = 3;
  opt.mass_values = {0.0f, 27.0f, 270.0f};
  opt.mass_scale = 1.0f / 27;
  opt.expect_exact_own_plan = true;
  opt.seed = 5;
  Simulation sim(**ctl, dw, {{200, 40, 12}, {90, 30, 5}, {3000, 300, 200}}, opt);
  ASSERT_NO_FATAL_FAILURE(sim.Run());
  EXPECT_GT(sim.plans_with_release(), 10);
  EXPECT_GT(sim.plans_with_rebuild(), 3);
}

struct ShippedController {
  std::unique_ptr<AdoreController> cpu;
  Weights w;
  DeviceAdoreWeights gpu;
};

void LoadShipped(ShippedController* s) {
  const std::string path = SourceRoot() + "/tools/adore/controller.bin";
  auto ctl = AdoreController::Load(path);
  ASSERT_TRUE(ctl.ok()) << ctl.status();
  s->cpu = std::move(*ctl);
  std::string why;
  ASSERT_TRUE(ReadWeights(ReadFile(path), &s->w, &why)) << why;
  const absl::Status up = s->gpu.Upload(ToHost(s->w));
  ASSERT_TRUE(up.ok()) << up;
  ASSERT_EQ(s->gpu.feature_dim(), s->cpu->config().feature_dim());
}

// The shipped controller on the PyTorch golden vectors (tests/data/adore/controller_golden.json): eight
// decode steps, float32 features, a slot table per step built from the golden cached flags.
TEST_F(AdoreControllerCudaTest, ShippedControllerReproducesGoldenVectors) {
  ShippedController sc;
  ASSERT_NO_FATAL_FAILURE(LoadShipped(&sc));
  std::ifstream in(testing::SourceDataPath("adore/controller_golden.json"));
  ASSERT_TRUE(in) << "missing tests/data/adore/controller_golden.json";
  const Json g = Json::parse(in);
  const int64_t n = g["n_tokens"].get<int64_t>(), F = sc.gpu.feature_dim(), kd = sc.gpu.key_dim(),
                sd = sc.gpu.state_dim();
  std::vector<float> feats;
  for (int64_t t = 0; t < n; ++t) {
    const std::vector<float> f = g["features"][t].get<std::vector<float>>();
    ASSERT_EQ(static_cast<int64_t>(f.size()), F);
    feats.insert(feats.end(), f.begin(), f.end());
  }
  const int64_t base = 2, num_rows = base + n;
  DeviceBuffer<float> keys(num_rows * kd), states(num_rows * sd), acc(num_rows), scores(num_rows);
  DeviceBuffer<float> d_feats(feats), queries(n * kd);
  std::vector<int32_t> key_rows(n);
  std::iota(key_rows.begin(), key_rows.end(), base);
  DeviceBuffer<int32_t> d_key_rows(key_rows), slot_of_row(std::vector<int32_t>(num_rows, 0));
  AdoreStateArrays st{keys.get(), states.get(), acc.get(), scores.get(), num_rows};
  AdoreProjectArgs pa;
  pa.weights = &sc.gpu;
  pa.features_f32 = d_feats.get();
  pa.feature_stride = F;
  pa.n = n;
  pa.key_rows = d_key_rows.get();
  pa.state = st;
  pa.queries = queries.get();
  pa.num_query_rows = n;
  ASSERT_TRUE(AdoreProject(pa, nullptr).ok());
  ADORE_ASSERT_CUDA(cudaDeviceSynchronize());
  const std::vector<float> got_k = keys.Download(), got_q = queries.Download();
  AdoreSequence cpu(*sc.cpu);
  for (int64_t t = 0; t < n; ++t) {
    ASSERT_TRUE(cpu.AddToken(std::vector<float>(feats.begin() + t * F, feats.begin() + (t + 1) * F)).ok());
    const std::vector<float> want_k = g["key_features"][t].get<std::vector<float>>();
    const std::vector<float> want_q = g["query_features"][t].get<std::vector<float>>();
    for (int64_t d = 0; d < kd; ++d) {
      EXPECT_NEAR(got_k[(base + t) * kd + d], want_k[d], 1e-4 + 1e-5 * std::fabs(want_k[d])) << "token " << t;
      EXPECT_NEAR(got_k[(base + t) * kd + d], cpu.key_feature(t)[d], 1e-4 + 1e-5 * std::fabs(want_k[d]));
      EXPECT_NEAR(got_q[t * kd + d], want_q[d], 1e-4 + 1e-5 * std::fabs(want_q[d])) << "token " << t;
    }
  }
  double max_err = 0;
  std::mt19937 rng(3);
  for (const Json& step : g["steps"]) {
    const int32_t pos = step["query_pos"].get<int32_t>();
    SCOPED_TRACE(::testing::Message() << "step " << pos);
    const std::vector<float> mass = step["mass"].get<std::vector<float>>();
    const std::vector<uint8_t> cached = step["cached"].get<std::vector<uint8_t>>();
    const float mass_scale = step["mass_scale"].get<float>();
    ASSERT_TRUE(cpu.Step(pos, mass, cached, mass_scale).ok());
    // Slot table: the cached positions in shuffled slot order, one empty slot; mass by slot.
    std::vector<int32_t> rows, spos;
    std::vector<float> smass;
    for (int32_t p = 0; p <= pos; ++p) {
      if (!cached[p]) continue;
      rows.push_back(100 + p);
      spos.push_back(p);
    }
    rows.push_back(-1);
    spos.push_back(0);
    std::vector<size_t> perm(rows.size());
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> r2, p2;
    for (size_t k : perm) {
      r2.push_back(rows[k]);
      p2.push_back(spos[k]);
      smass.push_back(rows[k] >= 0 ? mass[spos[k]] : 123.0f);
    }
    DeviceBuffer<int32_t> d_rows(r2), d_pos(p2), d_off(std::vector<int32_t>{0, static_cast<int32_t>(r2.size())});
    DeviceBuffer<int32_t> d_base(std::vector<int32_t>{static_cast<int32_t>(base)}),
        d_qfirst(std::vector<int32_t>{pos}), d_qoff(std::vector<int32_t>{0, 1});
    DeviceBuffer<float> d_mass(smass);
    AdoreStepArgs sa;
    sa.weights = &sc.gpu;
    sa.state = st;
    sa.queries = queries.get() + pos * kd;
    sa.num_seqs = 1;
    sa.state_base = d_base.get();
    sa.q_first = d_qfirst.get();
    sa.q_offsets = d_qoff.get();
    sa.max_positions = pos + 1;
    sa.slot_offsets = d_off.get();
    sa.slot_rows = d_rows.get();
    sa.slot_pos = d_pos.get();
    sa.max_slots = static_cast<int64_t>(r2.size());
    sa.slot_mass = d_mass.get();
    sa.mass_scale = mass_scale;
    sa.slot_of_row = slot_of_row.get();
    const absl::Status s = AdoreStep(sa, nullptr);
    ASSERT_TRUE(s.ok()) << s;
    ADORE_ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<float> got_h = states.Download(), got_s = scores.Download();
    const std::vector<std::vector<float>> want_h = step["h"].get<std::vector<std::vector<float>>>();
    const std::vector<float> want_s = step["scores"].get<std::vector<float>>();
    for (int32_t i = 0; i <= pos; ++i) {
      for (int64_t d = 0; d < sd; ++d) {
        const float v = got_h[(base + i) * sd + d];
        EXPECT_NEAR(v, want_h[i][d], 1e-4) << "token " << i << " dim " << d;
        EXPECT_NEAR(v, cpu.state(i)[d], 1e-4) << "token " << i << " dim " << d;
        max_err = std::max(max_err, std::fabs(static_cast<double>(v) - want_h[i][d]));
      }
      EXPECT_NEAR(got_s[base + i], want_s[i], 1e-4) << "token " << i;
      EXPECT_NEAR(got_s[base + i], cpu.scores()[i], 1e-4) << "token " << i;
      max_err = std::max(max_err, std::fabs(static_cast<double>(got_s[base + i]) - want_s[i]));
    }
  }
  std::printf("golden on the GPU: %lld steps, max |GPU - PyTorch| %.2e\n", static_cast<long long>(n), max_err);
}

// The shipped controller (feature_dim 1728, bf16 features) in the closed loop with rebuild.
TEST_F(AdoreControllerCudaTest, ShippedControllerClosedLoopMatchesCpu) {
  ShippedController sc;
  ASSERT_NO_FATAL_FAILURE(LoadShipped(&sc));
  SimOptions opt;
  opt.max_rebuild = 16;
  opt.feature_range = 0.45f;  // std 0.26, as the golden (real) attn_norm features
  opt.seed = 21;
  Simulation sim(*sc.cpu, sc.gpu, {{5, 64, 4}, {700, 128, 100}, {260, 64, 40}}, opt);
  ASSERT_NO_FATAL_FAILURE(sim.Run());
  EXPECT_GT(sim.plans_with_release(), 5);
}

// Timing at the engine's target scale (printed, not asserted): 256 sequences of 4,096 scored tokens with
// 1,024 cached each, one decode query per sequence, the shipped controller's shape.
TEST_F(AdoreControllerCudaTest, DecodeStepCostAt256Sequences) {
  ShippedController sc;
  ASSERT_NO_FATAL_FAILURE(LoadShipped(&sc));
  constexpr int64_t B = 256, T = 4096, M = 1024;
  const int64_t kd = sc.gpu.key_dim(), sd = sc.gpu.state_dim(), F = sc.gpu.feature_dim(), rows = B * T;
  DeviceBuffer<float> keys(testing::RandomFloats(rows * kd, -3, 3, 1)), states(std::vector<float>(rows * sd, 0.1f)),
      acc(std::vector<float>(rows, 0.5f)), scores(rows), queries(testing::RandomFloats(B * kd, -3, 3, 2));
  AdoreStateArrays st{keys.get(), states.get(), acc.get(), scores.get(), rows};
  std::mt19937 rng(4);
  std::vector<int32_t> base(B), q_first(B, static_cast<int32_t>(T - 1)), q_off(B + 1), offsets{0}, srows, spos;
  for (int64_t b = 0; b < B; ++b) {
    base[b] = static_cast<int32_t>(b * T);
    q_off[b + 1] = static_cast<int32_t>(b + 1);
    // M cached positions: the first 4, the last 16 and random others, in shuffled slot order.
    std::vector<int32_t> p(T);
    std::iota(p.begin(), p.end(), 0);
    std::shuffle(p.begin() + 4, p.end() - 16, rng);
    std::vector<int32_t> pick(p.begin(), p.begin() + 4);
    pick.insert(pick.end(), p.end() - 16, p.end());
    pick.insert(pick.end(), p.begin() + 4, p.begin() + 4 + (M - 20));
    std::shuffle(pick.begin(), pick.end(), rng);
    for (int32_t x : pick) {
      srows.push_back(static_cast<int32_t>(srows.size()));
      spos.push_back(x);
    }
    offsets.push_back(static_cast<int32_t>(srows.size()));
  }
  DeviceBuffer<int32_t> d_base(base), d_qfirst(q_first), d_qoff(q_off), d_off(offsets), d_rows(srows), d_pos(spos);
  DeviceBuffer<float> d_mass(testing::RandomFloats(srows.size(), 0, 1, 5));
  DeviceBuffer<int32_t> slot_of_row(rows);
  AdoreStepArgs sa;
  sa.weights = &sc.gpu;
  sa.state = st;
  sa.queries = queries.get();
  sa.num_seqs = B;
  sa.state_base = d_base.get();
  sa.q_first = d_qfirst.get();
  sa.q_offsets = d_qoff.get();
  sa.max_positions = T;
  sa.slot_offsets = d_off.get();
  sa.slot_rows = d_rows.get();
  sa.slot_pos = d_pos.get();
  sa.max_slots = M;
  sa.slot_mass = d_mass.get();
  sa.mass_scale = 1.0f / 270;
  sa.slot_of_row = slot_of_row.get();

  DeviceBuffer<__nv_bfloat16> feats(testing::ToBf16(testing::RandomFloats(B * F, -0.45f, 0.45f, 6)));
  std::vector<int32_t> new_rows(B);
  for (int64_t b = 0; b < B; ++b) new_rows[b] = static_cast<int32_t>(b * T + T - 1);
  DeviceBuffer<int32_t> d_new_rows(new_rows);
  DeviceBuffer<float> new_queries(B * kd);
  AdoreProjectArgs pa;
  pa.weights = &sc.gpu;
  pa.features_bf16 = feats.get();
  pa.feature_stride = F;
  pa.n = B;
  pa.key_rows = d_new_rows.get();
  pa.state = st;
  pa.queries = new_queries.get();
  pa.num_query_rows = B;

  DeviceBuffer<int32_t> d_scored(std::vector<int32_t>(B, static_cast<int32_t>(T))),
      d_budget(std::vector<int32_t>(B, static_cast<int32_t>(M))), d_new(std::vector<int32_t>(B, 1));
  DeviceBuffer<int32_t> d_rel(B * M), d_reb(B * 40), d_nrel(B), d_nreb(B), d_status(B);
  AdorePlanArgs a;
  a.scores = scores.get();
  a.num_rows = rows;
  a.num_seqs = B;
  a.state_base = d_base.get();
  a.num_scored = d_scored.get();
  a.budget = d_budget.get();
  a.num_new = d_new.get();
  a.max_positions = T;
  a.max_rebuild = 16;
  a.slot_offsets = d_off.get();
  a.slot_rows = d_rows.get();
  a.slot_pos = d_pos.get();
  a.release = d_rel.get();
  a.release_capacity = M;
  a.rebuild = d_reb.get();
  a.rebuild_capacity = 40;
  a.num_release = d_nrel.get();
  a.num_rebuild = d_nreb.get();
  a.status = d_status.get();

  cudaEvent_t e0, e1;
  ADORE_ASSERT_CUDA(cudaEventCreate(&e0));
  ADORE_ASSERT_CUDA(cudaEventCreate(&e1));
  auto time_us = [&](auto&& launch) {
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(launch().ok());
    constexpr int kIters = 20;
    EXPECT_EQ(cudaEventRecord(e0), cudaSuccess);
    for (int i = 0; i < kIters; ++i) EXPECT_TRUE(launch().ok());
    EXPECT_EQ(cudaEventRecord(e1), cudaSuccess);
    EXPECT_EQ(cudaEventSynchronize(e1), cudaSuccess);
    float ms = 0;
    EXPECT_EQ(cudaEventElapsedTime(&ms, e0, e1), cudaSuccess);
    return 1000.0 * ms / kIters;
  };
  const double step_us = time_us([&] { return AdoreStep(sa, nullptr); });
  const double project_us = time_us([&] { return AdoreProject(pa, nullptr); });
  const double plan_us = time_us([&] { return AdorePlanRelease(a, nullptr); });
  ADORE_ASSERT_CUDA(cudaDeviceSynchronize());
  const std::vector<int32_t> status = d_status.Download(), nrel = d_nrel.Download();
  for (int64_t b = 0; b < B; ++b) {
    EXPECT_EQ(status[b], kAdorePlanOk);
    EXPECT_GE(nrel[b], 1);
  }
  std::printf("adore on the GPU, %lld sequences x %lld tokens (%lld cached each): step %.1f us (%.1f GB/s at "
              "280 B/token), project %.1f us, plan %.1f us\n",
              static_cast<long long>(B), static_cast<long long>(T), static_cast<long long>(M), step_us,
              280.0 * B * T / step_us / 1e3, project_us, plan_us);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
}

// Statuses: everything fits; budget too small for the protected set and the new tokens; a slot holding
// an unscored position; a sequence longer than max_positions. Plans are empty then.
TEST_F(AdoreControllerCudaTest, PlanStatuses) {
  const int64_t n = 40;
  std::vector<float> scores(4 * n);
  std::mt19937 rng(1);
  for (float& s : scores) s = std::uniform_real_distribution<float>(-1, 1)(rng);
  DeviceBuffer<float> d_scores(scores);
  // Four sequences of 40 scored positions, all cached, except that sequence 2 also holds position 40.
  std::vector<int32_t> offsets{0}, rows, pos;
  for (int b = 0; b < 4; ++b) {
    for (int p = 0; p < n; ++p) {
      rows.push_back(p);
      pos.push_back(p);
    }
    if (b == 2) {
      rows.push_back(99);
      pos.push_back(static_cast<int32_t>(n));
    }
    offsets.push_back(static_cast<int32_t>(rows.size()));
  }
  DeviceBuffer<int32_t> d_off(offsets), d_rows(rows), d_pos(pos);
  DeviceBuffer<int32_t> d_base(std::vector<int32_t>{0, 40, 80, 120}), d_scored(std::vector<int32_t>{40, 40, 40, 40});
  DeviceBuffer<int32_t> d_budget(std::vector<int32_t>{41, 20, 30, 30}), d_new(std::vector<int32_t>{1, 1, 1, 1});
  DeviceBuffer<int32_t> d_rel(4 * 64), d_reb(4 * 64), d_nrel(4), d_nreb(4), d_status(4);
  AdorePlanArgs a;
  a.scores = d_scores.get();
  a.num_rows = 4 * n;
  a.num_seqs = 4;
  a.state_base = d_base.get();
  a.num_scored = d_scored.get();
  a.budget = d_budget.get();
  a.num_new = d_new.get();
  a.max_positions = n;
  a.max_rebuild = 2;
  a.slot_offsets = d_off.get();
  a.slot_rows = d_rows.get();
  a.slot_pos = d_pos.get();
  a.release = d_rel.get();
  a.release_capacity = 64;
  a.rebuild = d_reb.get();
  a.rebuild_capacity = 64;
  a.num_release = d_nrel.get();
  a.num_rebuild = d_nreb.get();
  a.status = d_status.get();
  ASSERT_TRUE(AdorePlanRelease(a, nullptr).ok());
  ADORE_ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(d_status.Download(), (std::vector<int32_t>{kAdorePlanOk, kAdorePlanBudgetTooSmall,
                                                       kAdorePlanUnscoredSlot, kAdorePlanOk}));
  std::vector<int32_t> nrel = d_nrel.Download();
  EXPECT_EQ(nrel[0], 0);  // 40 + 1 <= 41
  EXPECT_EQ(nrel[1], 0);
  EXPECT_EQ(nrel[2], 0);
  EXPECT_EQ(nrel[3], 11);  // keeps 4 + 16 protected + 9 of the 20 others for a budget of 30 with 1 new
  // A longer sequence than max_positions.
  a.max_positions = 39;
  ASSERT_TRUE(AdorePlanRelease(a, nullptr).ok());
  ADORE_ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(d_status.Download()[3], kAdorePlanTooLong);
}

TEST_F(AdoreControllerCudaTest, RejectsBadArguments) {
  Weights w = RandomControllerWeights(1, 8, 24, 16, 1);  // key_dim 24 unsupported
  DeviceAdoreWeights dw;
  EXPECT_EQ(dw.Upload(ToHost(w)).code(), absl::StatusCode::kInvalidArgument);
  w = RandomControllerWeights(1, 8, 16, 12, 1);  // state_dim 12 unsupported
  EXPECT_EQ(dw.Upload(ToHost(w)).code(), absl::StatusCode::kInvalidArgument);
  w = RandomControllerWeights(1, 8, 16, 8, 1);
  w.score_w.pop_back();
  EXPECT_EQ(dw.Upload(ToHost(w)).code(), absl::StatusCode::kInvalidArgument);
  w = RandomControllerWeights(1, 8, 16, 8, 1);
  ASSERT_TRUE(dw.Upload(ToHost(w)).ok());
  EXPECT_FALSE(dw.empty());

  DeviceBuffer<float> f(1024);
  DeviceBuffer<int32_t> idx(std::vector<int32_t>(64, 0));
  AdoreProjectArgs pa;
  pa.weights = &dw;
  pa.features_f32 = f.get();
  pa.feature_stride = 8;
  pa.n = 2;
  pa.key_rows = idx.get();
  pa.state = {f.get(), f.get(), f.get(), f.get(), 4};
  pa.queries = f.get();
  pa.num_query_rows = 2;
  EXPECT_TRUE(AdoreProject(pa, nullptr).ok());
  pa.feature_stride = 7;  // < feature_dim
  EXPECT_EQ(AdoreProject(pa, nullptr).code(), absl::StatusCode::kInvalidArgument);
  pa.feature_stride = 8;
  pa.features_bf16 = reinterpret_cast<const __nv_bfloat16*>(f.get());  // both set
  EXPECT_EQ(AdoreProject(pa, nullptr).code(), absl::StatusCode::kInvalidArgument);

  AdoreStepArgs sa;
  sa.weights = &dw;
  sa.state = {f.get(), f.get(), f.get(), f.get(), 4};
  sa.queries = f.get();
  sa.num_seqs = 1;
  sa.state_base = sa.q_first = sa.q_offsets = idx.get();
  sa.slot_offsets = sa.slot_rows = sa.slot_pos = idx.get();
  sa.slot_mass = f.get();
  sa.max_positions = 4;
  EXPECT_EQ(AdoreStep(sa, nullptr).code(), absl::StatusCode::kInvalidArgument);  // no slot_of_row
  sa.slot_of_row = idx.get();
  sa.num_seqs = 70000;
  EXPECT_EQ(AdoreStep(sa, nullptr).code(), absl::StatusCode::kInvalidArgument);
  DeviceAdoreWeights empty;
  sa.weights = &empty;
  sa.num_seqs = 1;
  EXPECT_EQ(AdoreStep(sa, nullptr).code(), absl::StatusCode::kInvalidArgument);

  AdorePlanArgs a;
  a.scores = f.get();
  a.num_seqs = 1;
  a.state_base = a.num_scored = a.budget = a.num_new = idx.get();
  a.slot_offsets = a.slot_rows = a.slot_pos = idx.get();
  a.num_release = a.num_rebuild = idx.get();
  a.release_capacity = 4;  // without an output list
  a.status = idx.get();
  EXPECT_EQ(AdorePlanRelease(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.release_capacity = 0;
  a.max_positions = (int64_t{1} << 20) + 1;
  EXPECT_EQ(AdorePlanRelease(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  ADORE_ASSERT_CUDA(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace adore::kernels
