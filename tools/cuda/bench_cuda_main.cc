// adore-bench-cuda: batched-decode and prefill throughput of the CUDA engine over a grid of batch sizes and
// prompt lengths, each set against the floor this GPU allows (measured copy bandwidth for decode, measured
// bf16 matmul rate for prefill). Prints a table and writes JSON in the bench/results format.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <barrier>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/model_weights.h"
#include "common/status.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/ops.h"
#include "nlohmann/json.hpp"
#include "tools/bench_util.h"
#include "worker/adore_controller.h"
#include "worker/cuda/cuda_engine.h"
#include "worker/cuda/device_adore.h"
#include "worker/release_policy.h"
#if ADORE_HAVE_NCCL
#include "worker/comm/nccl_communicator.h"
#endif

ABSL_FLAG(std::string, model, "", "GGUF file or HF checkpoint directory (or use --synthetic)");
ABSL_FLAG(std::string, synthetic, "", "random bf16 weights of a known shape: smollm2-135m, llama2-7b, llama3-8b");
ABSL_FLAG(int32_t, max_context, 0,
          "override the model's max_context (RoPE runs at any position; for timing only); 0 = keep it");
ABSL_FLAG(std::vector<std::string>, batch, std::vector<std::string>({"1", "4", "16", "64", "256"}),
          "batch sizes, comma-separated; 'max' = the largest batch whose KV fits the pool at each prompt length "
          "(at most --max_fit_batch); empty: no decode grid, e.g. with --prefill_only");
ABSL_FLAG(int32_t, max_fit_batch, 512, "upper bound of --batch max");
ABSL_FLAG(std::string, policy, "full",
          "release policy of the decode rows: full, window, heavy_hitter, adore (adore runs its controller on the "
          "GPU); with a releasing policy prompts go in token by token (the policy observes every query)");
ABSL_FLAG(int64_t, kv_budget, 1024, "releasing policies: KV slots per sequence (m)");
ABSL_FLAG(int64_t, rebuild, 0, "adore: released tokens rebuilt per step (R)");
ABSL_FLAG(std::string, controller, "tools/adore/controller.bin", "adore: the controller file");
ABSL_FLAG(int32_t, policy_chunk, 1,
          "releasing policies: prompt tokens per forward call and sequence (CudaEngineOptions::policy_chunk, 1 to "
          "64; 1 = token by token), at most what the policy's protected tokens leave of the budget");
ABSL_FLAG(bool, skip_prefill, false,
          "decode rows: take each prompt's KV rows from the pool without computing them (their bytes are whatever "
          "the pool holds: a decode step reads and costs the same), so large batches at long contexts are timed "
          "without their prefill; prefill columns are then empty. With --policy adore: each sequence starts from "
          "the window cache of such a prompt and random controller state for every prompt position");
ABSL_FLAG(std::vector<std::string>, prompt, std::vector<std::string>({"2048", "8192", "32768"}),
          "prompt lengths in tokens, comma-separated");
ABSL_FLAG(int32_t, gen, 32, "timed decode steps per configuration (greedy; every step has the full batch)");
ABSL_FLAG(int32_t, warmup, 4, "untimed decode steps after each prefill, before the timed ones");
ABSL_FLAG(int32_t, prefill_tokens, 8192, "at most this many prompt tokens per forward call, over all sequences");
ABSL_FLAG(int32_t, prefill_reps, 3, "--prefill_only: timed prefills per length (the median is reported; all in prefill_ms_runs)");
ABSL_FLAG(std::vector<std::string>, prefill_only, {},
          "also time the prefill of one sequence of each of these lengths against the compute floor");
ABSL_FLAG(double, kv_memory_fraction, 0.9, "share of the device memory left after weights given to the KV pool");
ABSL_FLAG(int64_t, copy_mib, 2048, "buffer size (MiB) of the device-to-device copy bandwidth measurement");
ABSL_FLAG(int32_t, gemm_size, 8192, "M = N = K of the bf16 cuBLAS matmul rate measurement");
ABSL_FLAG(int32_t, device, 0, "CUDA device ordinal (with --tp N: devices 0..N-1)");
ABSL_FLAG(int32_t, tp, 1,
          "tensor-parallel ranks, one per GPU, as threads of this process over NCCL (every rank runs the same "
          "calls; rank 0 reports, with the time its collectives took)");
ABSL_FLAG(std::string, commit, "", "commit to record in the JSON (default: git rev-parse in the working directory)");
ABSL_FLAG(bool, cuda_graphs, true, "replay decode steps from captured CUDA graphs");
ABSL_FLAG(std::string, decode_attention, "auto", "decode attention kernel: auto (= mma at GQA >= 2, chunked at 1), lanes, lanes_prefetch, chunked, mma or pipelined (A/B runs)");
ABSL_FLAG(std::string, prefill_attention, "auto", "prefill attention kernel: auto (= mma), mma or wmma (A/B runs; the two give bit-identical outputs)");
ABSL_FLAG(uint64_t, seed, 1, "seed of the random prompt tokens and synthetic weights");
ABSL_FLAG(std::string, json, "", "write the results as JSON to this file");

namespace {

using adore::bench::Clock;
using adore::bench::SecondsSince;
namespace k = adore::kernels;

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "adore-bench-cuda: %s\n", std::string(s.ToString()).c_str());
  return 1;
}

// ---------------------------------------------------------------------------------------------------------
// Model shapes and the byte / FLOP counts of the floors.

// Elements of one layer's matrices (QKV, output, gate+up, down): what each token multiplies.
int64_t LayerMatrixParams(const adore::ModelConfig& c) {
  const int64_t d = c.hidden_size, q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  return d * (q_dim + 2 * kv_dim) + q_dim * d + 3 * c.intermediate_size * d;
}

// bf16 bytes one decode step reads: every layer's matrices and norms, the final norm and the LM head, read
// in full (the embedding rows gathered are negligible; tied embeddings are counted once, as the head).
int64_t DecodeWeightBytes(const adore::ModelConfig& c) {
  const int64_t d = c.hidden_size;
  return 2 * (c.num_layers * (LayerMatrixParams(c) + 2 * d) + d + c.vocab_size * d);
}

// K and V bytes of one cached token over all layers (bf16).
int64_t KvBytesPerToken(const adore::ModelConfig& c) { return c.num_layers * 2 * c.num_kv_heads * c.head_dim * 2; }

// FLOPs of one causal prefill of n tokens: the layer products plus QK^T and PV over the causal triangle.
double PrefillFlops(const adore::ModelConfig& c, int64_t n) {
  const double q_dim = static_cast<double>(c.num_heads * c.head_dim);
  return 2.0 * static_cast<double>(n) * c.num_layers * LayerMatrixParams(c) +
         2.0 * static_cast<double>(n) * n * c.num_layers * q_dim;
}

// ---------------------------------------------------------------------------------------------------------
// Ceilings of this GPU, measured before the engine takes the memory.

struct Ceilings {
  std::string gpu;
  double copy_bytes_per_s = 0.0;  // read + write
  double matmul_flops_per_s = 0.0;
};

// Times `reps` launches of `op` (after 2 untimed ones) with CUDA events; seconds per launch.
template <typename Op>
absl::StatusOr<double> TimeOnStream(cudaStream_t s, int reps, Op op) {
  for (int i = 0; i < 2; ++i) ADORE_RETURN_IF_ERROR(op());
  cudaEvent_t start = nullptr, stop = nullptr;
  ADORE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  absl::Cleanup destroy_start = [&] { cudaEventDestroy(start); };
  ADORE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
  absl::Cleanup destroy_stop = [&] { cudaEventDestroy(stop); };
  ADORE_CUDA_RETURN_IF_ERROR(cudaEventRecord(start, s));
  for (int i = 0; i < reps; ++i) ADORE_RETURN_IF_ERROR(op());
  ADORE_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop, s));
  ADORE_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(stop));
  float ms = 0.0f;
  ADORE_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start, stop));
  return ms / 1e3 / reps;
}

absl::StatusOr<Ceilings> MeasureCeilings(int device, int64_t copy_bytes, int64_t n) {
  int count = 0;
  if (const cudaError_t err = cudaGetDeviceCount(&count); err != cudaSuccess || count == 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "no usable CUDA device (cudaGetDeviceCount: %s); this benchmark needs a GPU",
        err != cudaSuccess ? cudaGetErrorString(err) : "0 devices"));
  }
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(absl::StrFormat("--device %d: %d CUDA device(s) visible", device, count));
  }
  ADORE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  cudaDeviceProp prop;
  ADORE_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  int driver = 0;
  ADORE_CUDA_RETURN_IF_ERROR(cudaDriverGetVersion(&driver));
  Ceilings c;
  c.gpu = absl::StrFormat("%s (%d MiB, %d SMs, CUDA driver %d.%d)", prop.name, prop.totalGlobalMem >> 20,
                          prop.multiProcessorCount, driver / 1000, driver % 1000 / 10);
  cudaStream_t s = nullptr;
  ADORE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  absl::Cleanup destroy_stream = [&] { cudaStreamDestroy(s); };

  {  // Copy bandwidth: a buffer far larger than L2, copied device to device; bytes read + written.
    void *src = nullptr, *dst = nullptr;
    absl::Cleanup free_bufs = [&] {
      cudaFree(src);
      cudaFree(dst);
    };
    ADORE_CUDA_RETURN_IF_ERROR(cudaMalloc(&src, copy_bytes));
    ADORE_CUDA_RETURN_IF_ERROR(cudaMalloc(&dst, copy_bytes));
    ADORE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(src, 1, copy_bytes, s));
    ADORE_ASSIGN_OR_RETURN(const double sec, TimeOnStream(s, 10, [&]() -> absl::Status {
      return k::CudaStatus(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync");
    }));
    c.copy_bytes_per_s = 2.0 * static_cast<double>(copy_bytes) / sec;
  }
  {  // bf16 matmul rate: one n^3 product of uniform random operands (zeros run faster), float32 accumulate.
    k::bf16 *x = nullptr, *w = nullptr, *y = nullptr;
    absl::Cleanup free_bufs = [&] {
      cudaFree(x);
      cudaFree(w);
      cudaFree(y);
    };
    const size_t bytes = sizeof(k::bf16) * n * n;
    for (k::bf16** p : {&x, &w, &y}) ADORE_CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(p), bytes));
    ADORE_RETURN_IF_ERROR(k::FillUniform({.out = x, .n = n * n, .low = -1.0f, .high = 1.0f, .seed = 1}, s));
    ADORE_RETURN_IF_ERROR(k::FillUniform({.out = w, .n = n * n, .low = -1.0f, .high = 1.0f, .seed = 2}, s));
    ADORE_ASSIGN_OR_RETURN(std::unique_ptr<k::Blas> blas, k::Blas::Create());
    ADORE_ASSIGN_OR_RETURN(const double sec, TimeOnStream(s, 10, [&] {
      return blas->Linear({.x = x, .w = w, .n = n, .in = n, .out = n, .y_bf16 = y}, s);
    }));
    c.matmul_flops_per_s = 2.0 * static_cast<double>(n) * n * n / sec;
  }
  ADORE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  return c;
}

// ---------------------------------------------------------------------------------------------------------
// Engine rounds. Every call below goes through ForwardSample, which synchronizes, so host clocks time
// whole steps.

std::vector<std::vector<int32_t>> RandomPrompts(int32_t count, int32_t len, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab) - 1);
  std::vector<std::vector<int32_t>> prompts(count, std::vector<int32_t>(len));
  for (auto& p : prompts) std::generate(p.begin(), p.end(), [&] { return dist(rng); });
  return prompts;
}

// Prefills every sequence with its prompt, packing up to `budget` tokens (and `max_items` sequences) into
// each forward call: whole prompts while they fit, chunks otherwise. last[i] gets the greedy token that
// follows prompt i.
absl::Status Prefill(adore::CudaEngine& engine, std::span<adore::SequenceKv> seqs,
                     const std::vector<std::vector<int32_t>>& prompts, int64_t budget, size_t max_items,
                     std::vector<int32_t>* last, adore::CallTimings* total = nullptr) {
  const size_t n = seqs.size();
  last->assign(n, 0);
  std::vector<size_t> done(n, 0), owner;
  std::vector<adore::ForwardItem> items;
  std::vector<adore::SamplingParams> params;
  std::vector<int32_t> sampled;
  for (size_t first = 0; first < n;) {
    items.clear();
    owner.clear();
    int64_t used = 0;
    for (size_t i = first; i < n && used < budget && items.size() < max_items; ++i) {
      const int64_t len = std::min<int64_t>(static_cast<int64_t>(prompts[i].size() - done[i]), budget - used);
      items.push_back({&seqs[i], std::span<const int32_t>(prompts[i]).subspan(done[i], len)});
      owner.push_back(i);
      used += len;
    }
    params.assign(items.size(), adore::SamplingParams{});
    ADORE_RETURN_IF_ERROR(engine.ForwardSample(std::span<adore::ForwardItem>(items), params, &sampled));
    if (total != nullptr) {
      total->plan_ms += engine.last_timings().plan_ms;
      total->stage_ms += engine.last_timings().stage_ms;
    }
    for (size_t j = 0; j < items.size(); ++j) {
      done[owner[j]] += items[j].tokens.size();
      if (done[owner[j]] == prompts[owner[j]].size()) (*last)[owner[j]] = sampled[j];
    }
    while (first < n && done[first] == prompts[first].size()) ++first;
  }
  return absl::OkStatus();
}

// `steps` greedy decode steps over all sequences, feeding back the sampled tokens. Per-step seconds.
absl::StatusOr<std::vector<double>> Decode(adore::CudaEngine& engine, std::span<adore::SequenceKv> seqs,
                                           std::vector<int32_t>* last, int32_t steps,
                                           std::span<const std::unique_ptr<adore::ReleasePolicy>> policies = {},
                                           int64_t kv_budget = 0, adore::CallTimings* total = nullptr) {
  std::vector<adore::ForwardItem> items(seqs.size());
  const std::vector<adore::SamplingParams> params(seqs.size(), adore::SamplingParams{});
  std::vector<int32_t> next;
  std::vector<double> seconds;
  for (int32_t step = 0; step < steps; ++step) {
    for (size_t b = 0; b < seqs.size(); ++b) {
      items[b] = {&seqs[b], std::span<const int32_t>(&(*last)[b], 1)};
      if (!policies.empty()) {
        items[b].policy = policies[b].get();
        items[b].kv_budget = kv_budget;
      }
    }
    const auto t0 = Clock::now();
    ADORE_RETURN_IF_ERROR(engine.ForwardSample(std::span<adore::ForwardItem>(items), params, &next));
    seconds.push_back(SecondsSince(t0));
    if (total != nullptr) {
      total->plan_ms += engine.last_timings().plan_ms;
      total->stage_ms += engine.last_timings().stage_ms;
      total->controller_ms += engine.last_timings().controller_ms;
    }
    *last = next;
  }
  return seconds;
}

struct Grid {
  int32_t gen = 0, warmup = 0, prefill_tokens = 0, prefill_reps = 1;
  size_t max_items = 0;
  uint64_t seed = 0;
  double bandwidth = 0.0, matmul = 0.0;  // bytes/s, FLOP/s
  int tp = 1;
  bool skip_prefill = false;
  int32_t policy_chunk = 1;
  adore::ReleaseConfig release;  // kind kFull: no policy
  int64_t pool_rows = 0;  // the smallest KV pool of the ranks, so every rank skips the same rows
  adore::comm::Communicator* comm = nullptr;  // rank 0's, for the time its collectives take (tp > 1)
};

nlohmann::json NullRow(const std::string& model, int32_t batch, int32_t prompt, int32_t gen, const char* kind) {
  nlohmann::json row = {{"engine", "adore"}, {"kind", kind}, {"model", model}, {"batch", batch},
                        {"prompt", prompt},  {"gen", gen},   {"note", ""},
                        {"cuda_graphs", absl::GetFlag(FLAGS_cuda_graphs)}, {"tp", absl::GetFlag(FLAGS_tp)},
                        {"decode_attention", absl::GetFlag(FLAGS_decode_attention)},
                        {"prefill_attention", absl::GetFlag(FLAGS_prefill_attention)},
                        {"policy", absl::GetFlag(FLAGS_policy)}, {"m", absl::GetFlag(FLAGS_kv_budget)},
                        {"R", absl::GetFlag(FLAGS_rebuild)}};
  for (const char* key :
       {"decode_tok_s", "step_ms", "floor_step_ms", "step_over_floor", "prefill_tok_s", "prefill_ms"}) {
    row[key] = nullptr;
  }
  return row;
}

// One (batch, prompt) configuration: prefill, `warmup` untimed steps, `gen` timed steps, then release.
// --skip_prefill with the device adore policy: each sequence holds the window cache of an uncomputed prompt
// (the sinks and the most recent kv_budget - sinks positions, rows from the pool as they are) and its
// controller lane holds random per-token state for every prompt position, so each timed step does the work
// of a step after a real prompt: the controller over all `prompt` positions, the plan, the release and the
// m-slot attention. Only the tokens chosen differ.
absl::Status AdoptSyntheticHistory(adore::CudaEngine& engine, std::span<adore::SequenceKv> seqs,
                                   const std::vector<std::vector<int32_t>>& prompts,
                                   std::span<const std::unique_ptr<adore::ReleasePolicy>> policies, const Grid& g,
                                   std::vector<int32_t>* last) {
  const int64_t m = g.release.kv_budget, sinks = g.release.num_sink;
  std::vector<float> keys, states, acc, scores;
  for (size_t b = 0; b < seqs.size(); ++b) {
    auto* dp = dynamic_cast<adore::DeviceAdorePolicy*>(policies[b].get());
    if (dp == nullptr) {
      return absl::InvalidArgumentError("--skip_prefill with a releasing policy needs --policy adore with its "
                                        "controller on the GPU");
    }
    const int64_t n = static_cast<int64_t>(prompts[b].size());
    if (keys.empty()) {  // one random history, written into every lane
      const adore::AdoreControllerConfig& ac = dp->runtime()->controller().config();
      std::mt19937 rng(static_cast<uint32_t>(g.seed));
      std::normal_distribution<float> normal(0.0f, 1.0f);
      std::uniform_real_distribution<float> unit(0.0f, 1.0f);
      keys.resize(n * ac.key_dim);
      states.resize(n * ac.state_dim);
      acc.resize(n);
      scores.resize(n);
      for (float& x : keys) x = normal(rng);
      for (float& x : states) x = 2.0f * unit(rng) - 1.0f;
      for (float& x : acc) x = 2.0f * unit(rng);
      for (float& x : scores) x = normal(rng);
    }
    ADORE_RETURN_IF_ERROR(dp->runtime()->WriteLaneState(dp->lane(), n, keys, states, acc, scores));
    const int64_t cached = std::min(n, m);
    ADORE_ASSIGN_OR_RETURN(std::vector<int32_t> rows, engine.pool().Allocate(cached));
    seqs[b].rows = std::move(rows);
    seqs[b].pos.clear();
    for (int64_t p = 0; p < std::min(sinks, cached); ++p) seqs[b].pos.push_back(static_cast<int32_t>(p));
    for (int64_t p = n - (cached - static_cast<int64_t>(seqs[b].pos.size())); p < n; ++p) {
      seqs[b].pos.push_back(static_cast<int32_t>(p));
    }
    seqs[b].next_pos = n;
    seqs[b].RehashSlotMap();
    ++seqs[b].version;  // edited outside PlanForward
    ADORE_RETURN_IF_ERROR(dp->AdoptHistory(seqs[b], prompts[b], m));
    last->push_back(prompts[b].back());
  }
  return absl::OkStatus();
}

nlohmann::json RunDecodeRow(adore::CudaEngine& engine, const std::string& model, int32_t batch, int32_t prompt,
                            const Grid& g) {
  const adore::ModelConfig& c = engine.config();
  nlohmann::json row = NullRow(model, batch, prompt, g.gen, "decode");
  const int64_t ctx_end = static_cast<int64_t>(prompt) + g.warmup + g.gen;
  const bool policy = g.release.kind != adore::PolicyKind::kFull;
  // A releasing policy holds at most kv_budget slots per sequence.
  const int64_t rows_needed = static_cast<int64_t>(batch) * (policy ? g.release.kv_budget + 1 : ctx_end);
  if (ctx_end > c.max_context) {
    row["note"] = absl::StrFormat("skipped: prompt + warmup + gen = %d exceeds max_context %d (see --max_context)",
                                  ctx_end, c.max_context);
    return row;
  }
  if (rows_needed > g.pool_rows) {
    row["note"] = absl::StrFormat("does not fit: needs %d KV rows (%.1f GiB per rank), the pool has %d", rows_needed,
                                  static_cast<double>(rows_needed) * KvBytesPerToken(c) / g.tp / (1 << 30),
                                  g.pool_rows);
    return row;
  }
  const auto prompts = RandomPrompts(batch, prompt, c.vocab_size, g.seed);
  std::vector<adore::SequenceKv> seqs(batch);
  absl::Cleanup release = [&] {
    for (adore::SequenceKv& s : seqs) engine.Release(s);
  };
  std::vector<int32_t> last;
  const auto t0 = Clock::now();
  absl::Status st;
  std::vector<std::unique_ptr<adore::ReleasePolicy>> policies;
  absl::Cleanup drop_policies = [&] { policies.clear(); };  // before the sequences' rows go back
  if (policy) {
    for (int32_t b = 0; b < batch && st.ok(); ++b) {
      absl::StatusOr<std::unique_ptr<adore::ReleasePolicy>> p = engine.MakePolicy(g.release);
      if (!p.ok()) st = p.status();
      if (p.ok()) policies.push_back(*std::move(p));
    }
  }
  if (policy && g.skip_prefill) {
    if (st.ok()) st = AdoptSyntheticHistory(engine, std::span<adore::SequenceKv>(seqs), prompts, policies, g, &last);
  } else if (policy) {
    // The policy observes every query: the prompts go in chunks (token by token with --policy_chunk 1), all
    // sequences in each call.
    std::vector<adore::ForwardItem> items(batch);
    const std::vector<adore::SamplingParams> params(batch, adore::SamplingParams{});
    std::vector<size_t> done(batch, 0);
    while (done[0] < static_cast<size_t>(prompt) && st.ok()) {
      for (int32_t b = 0; b < batch; ++b) {
        items[b] = adore::NextPolicyPromptChunk(engine, &seqs[b], policies[b].get(), g.release.kv_budget,
                                                g.policy_chunk, prompts[b], &done[b]);
      }
      st = engine.ForwardSample(std::span<adore::ForwardItem>(items), params, &last);
    }
  } else if (g.skip_prefill) {
    // Slot tables of `prompt` tokens over uncomputed rows; the first decode token is the prompt's last.
    for (int32_t b = 0; b < batch && st.ok(); ++b) {
      absl::StatusOr<std::vector<int32_t>> rows = engine.pool().Allocate(prompt);
      if (!rows.ok()) {
        st = rows.status();
        break;
      }
      seqs[b].rows = *std::move(rows);
      seqs[b].pos.resize(prompt);
      for (int32_t x = 0; x < prompt; ++x) seqs[b].pos[x] = x;
      seqs[b].next_pos = prompt;
      seqs[b].RehashSlotMap();
      ++seqs[b].version;  // edited outside PlanForward
      last.push_back(prompts[b].back());
    }
  } else {
    st = Prefill(engine, std::span<adore::SequenceKv>(seqs), prompts, g.prefill_tokens, g.max_items, &last);
  }
  const double prefill_s = SecondsSince(t0);
  absl::StatusOr<std::vector<double>> steps;
  adore::CallTimings timings;  // summed over the timed steps
  const std::span<const std::unique_ptr<adore::ReleasePolicy>> pol(policies);
  if (st.ok()) steps = Decode(engine, std::span<adore::SequenceKv>(seqs), &last, g.warmup, pol, g.release.kv_budget);
  if (g.comm != nullptr) g.comm->TakeStats();
  const int64_t updates_before = engine.num_slot_table_updates();
  if (st.ok() && steps.ok()) {
    steps = Decode(engine, std::span<adore::SequenceKv>(seqs), &last, g.gen, pol, g.release.kv_budget, &timings);
  }
  // Timed steps whose slot tables went up as changed entries (the GPU kept the previous step's tables).
  row["slot_table_update_steps"] = engine.num_slot_table_updates() - updates_before;
  if (g.comm != nullptr) {
    // Device time of the collectives, recorded for eager steps only (a graph replays them unobserved).
    const adore::comm::CommStats cs = g.comm->TakeStats();
    row["comm_ms_per_step"] = cs.TotalCalls() > 0 ? nlohmann::json(1e3 * cs.TotalSeconds() / g.gen) : nlohmann::json();
    row["comm_calls_per_step"] = static_cast<double>(cs.TotalCalls()) / g.gen;
  }
  if (st.ok()) st = steps.status();
  if (!st.ok()) {
    row["note"] = "error: " + std::string(st.ToString());
    return row;
  }
  double decode_s = 0.0;
  for (double s : *steps) decode_s += s;
  const double step_ms = 1e3 * decode_s / g.gen;
  // Bytes at mid-generation of the timed steps: all weights plus every sequence's cached K/V.
  const double ctx_mid = prompt + g.warmup + g.gen / 2.0;
  // Per rank with tensor parallelism: its share of the layers' matrices and the KV heads, the LM head whole.
  const double kv_bytes = static_cast<double>(batch) * (policy ? static_cast<double>(g.release.kv_budget) : ctx_mid) *
                          KvBytesPerToken(c) / g.tp;
  const double weight_bytes = static_cast<double>(DecodeWeightBytes(c)) -
                              (1.0 - 1.0 / g.tp) * 2.0 * c.num_layers * LayerMatrixParams(c);
  const double floor_ms = 1e3 * (weight_bytes + kv_bytes) / g.bandwidth;
  row["decode_tok_s"] = static_cast<double>(batch) * g.gen / decode_s;
  row["step_ms"] = step_ms;
  row["ms_per_token"] = step_ms;  // each sequence gets one token per step
  row["step_ms_min"] = 1e3 * *std::min_element(steps->begin(), steps->end());
  row["floor_step_ms"] = floor_ms;
  row["step_over_floor"] = step_ms / floor_ms;
  // Host time with the GPU idle for the release plans (PlanForward) and for staging the slot tables and
  // index arrays (together: KV management), and the GPU time of the device controller, per step and as
  // shares of the step.
  row["plan_ms_per_step"] = timings.plan_ms / g.gen;
  row["controller_ms_per_step"] = timings.controller_ms / g.gen;
  row["stage_ms_per_step"] = timings.stage_ms / g.gen;
  row["kv_management_share"] = (timings.plan_ms + timings.stage_ms) / g.gen / step_ms;
  row["controller_share"] = timings.controller_ms / g.gen / step_ms;
  row["kv_bytes_per_step"] = kv_bytes;
  if (!g.skip_prefill) {
    row["prefill_ms"] = 1e3 * prefill_s;  // with a policy: the prompt in chunks of policy_chunk tokens
    if (policy) row["policy_chunk"] = g.policy_chunk;
    row["prefill_tok_s"] = static_cast<double>(batch) * prompt / prefill_s;
  }
  if (policy) {
    int64_t released = 0, rebuilt = 0;
    for (const auto& p : policies) {
      released += p->stats().released;
      rebuilt += p->stats().rebuilt;
    }
    row["tokens_released"] = released;
    row["tokens_rebuilt"] = rebuilt;
  }
  row["prefill_skipped"] = g.skip_prefill;
  row["warmup"] = g.warmup;
  return row;
}

// One sequence of `n` tokens prefilled alone, against the compute floor at the measured matmul rate.
nlohmann::json RunPrefillRow(adore::CudaEngine& engine, const std::string& model, int32_t n, const Grid& g) {
  const adore::ModelConfig& c = engine.config();
  nlohmann::json row = NullRow(model, 1, n, 0, "prefill");
  if (n + 1 > c.max_context) {
    row["note"] = absl::StrFormat("skipped: %d tokens exceed max_context %d (see --max_context)", n, c.max_context);
    return row;
  }
  if (n > g.pool_rows) {
    row["note"] = absl::StrFormat("does not fit: needs %d KV rows, the pool has %d", n, g.pool_rows);
    return row;
  }
  const auto prompts = RandomPrompts(1, n, c.vocab_size, g.seed);
  // The same prompt `prefill_reps` times, each into a fresh sequence; the median is the figure.
  std::vector<double> runs;
  adore::CallTimings host;  // the last run's host time with the GPU idle (plans, staging)
  for (int32_t rep = 0; rep < g.prefill_reps; ++rep) {
    adore::SequenceKv seq;
    absl::Cleanup release = [&] { engine.Release(seq); };
    std::vector<int32_t> last;
    host = {};
    const auto t0 = Clock::now();
    const absl::Status st =
        Prefill(engine, std::span<adore::SequenceKv>(&seq, 1), prompts, g.prefill_tokens, 1, &last, &host);
    runs.push_back(SecondsSince(t0));
    if (!st.ok()) {
      row["note"] = "error: " + std::string(st.ToString());
      return row;
    }
  }
  row["host_plan_ms"] = host.plan_ms;
  row["host_stage_ms"] = host.stage_ms;
  row["prefill_ms_runs"] = nlohmann::json::array();
  for (const double r : runs) row["prefill_ms_runs"].push_back(1e3 * r);
  std::sort(runs.begin(), runs.end());
  const double sec = runs[runs.size() / 2];
  const double floor_ms = 1e3 * PrefillFlops(c, n) / g.tp / g.matmul;
  row["prefill_ms"] = 1e3 * sec;
  row["prefill_tok_s"] = n / sec;
  row["compute_floor_ms"] = floor_ms;
  row["prefill_over_floor"] = 1e3 * sec / floor_ms;
  row["prefill_tflops"] = PrefillFlops(c, n) / sec / 1e12;
  return row;
}

std::string Num(const nlohmann::json& v, int decimals) {
  return v.is_number() ? absl::StrFormat("%.*f", decimals, v.get<double>()) : "-";
}

void PrintRow(const nlohmann::json& r) {
  std::printf("%-7s %-7s %5d %6d %4d %10s %12s %12s %9s %9s %7s  %s\n", "adore", r["kind"].get<std::string>().c_str(),
              r["batch"].get<int>(), r["prompt"].get<int>(), r["gen"].get<int>(), Num(r["prefill_ms"], 1).c_str(),
              Num(r["prefill_tok_s"], 0).c_str(), Num(r["decode_tok_s"], 1).c_str(),
              Num(r["step_ms"], 3).c_str(),
              Num(r.contains("compute_floor_ms") ? r["compute_floor_ms"] : r["floor_step_ms"], 3).c_str(),
              Num(r.contains("prefill_over_floor") ? r["prefill_over_floor"] : r["step_over_floor"], 2).c_str(),
              r["note"].get<std::string>().c_str());
  std::fflush(stdout);
}

absl::Status Run(int argc, char** argv) {
  // Flags first, so a bad one fails before any GPU work.
  const std::string model_path = absl::GetFlag(FLAGS_model), synthetic = absl::GetFlag(FLAGS_synthetic);
  if (model_path.empty() == synthetic.empty()) {
    return absl::InvalidArgumentError("give exactly one of --model PATH and --synthetic SHAPE");
  }
  std::vector<int32_t> batches, prompts, prefill_only;
  if (!absl::GetFlag(FLAGS_batch).empty()) {
    std::vector<std::string> listed;
    for (const std::string& b : absl::GetFlag(FLAGS_batch)) {
      if (b == "max") {
        batches.push_back(0);  // resolved per prompt length once the pool size is known
      } else {
        listed.push_back(b);
      }
    }
    if (!listed.empty()) {
      ADORE_ASSIGN_OR_RETURN(const std::vector<int32_t> fixed, adore::bench::ParsePositiveList("batch", listed));
      batches.insert(batches.end(), fixed.begin(), fixed.end());
    }
    if (absl::GetFlag(FLAGS_max_fit_batch) <= 0) return absl::InvalidArgumentError("--max_fit_batch must be > 0");
    ADORE_ASSIGN_OR_RETURN(prompts, adore::bench::ParsePositiveList("prompt", absl::GetFlag(FLAGS_prompt)));
  }
  if (!absl::GetFlag(FLAGS_prefill_only).empty()) {
    ADORE_ASSIGN_OR_RETURN(prefill_only,
                           adore::bench::ParsePositiveList("prefill_only", absl::GetFlag(FLAGS_prefill_only)));
  }
  if (batches.empty() && prefill_only.empty()) {
    return absl::InvalidArgumentError("--batch and --prefill_only are empty");
  }
  Grid grid;
  Grid& g = grid;
  g.gen = absl::GetFlag(FLAGS_gen);
  g.warmup = absl::GetFlag(FLAGS_warmup);
  g.prefill_tokens = absl::GetFlag(FLAGS_prefill_tokens);
  g.prefill_reps = absl::GetFlag(FLAGS_prefill_reps);
  if (g.prefill_reps < 1) return absl::InvalidArgumentError("--prefill_reps must be >= 1");
  g.seed = absl::GetFlag(FLAGS_seed);
  g.tp = absl::GetFlag(FLAGS_tp);
  g.skip_prefill = absl::GetFlag(FLAGS_skip_prefill);
  g.policy_chunk = absl::GetFlag(FLAGS_policy_chunk);
  std::unique_ptr<adore::AdoreController> controller;
  {
    const std::string name = absl::GetFlag(FLAGS_policy);
    adore::PolicyKind kind;
    if (name == "full") {
      kind = adore::PolicyKind::kFull;
    } else if (name == "window") {
      kind = adore::PolicyKind::kWindow;
    } else if (name == "heavy_hitter") {
      kind = adore::PolicyKind::kHeavyHitter;
    } else if (name == "adore") {
      kind = adore::PolicyKind::kAdore;
      ADORE_ASSIGN_OR_RETURN(controller, adore::AdoreController::Load(absl::GetFlag(FLAGS_controller)));
    } else {
      return absl::InvalidArgumentError(absl::StrFormat("--policy: '%s' is not full, window, heavy_hitter or adore", name));
    }
    g.release = {.kind = kind, .kv_budget = kind == adore::PolicyKind::kFull ? 0 : absl::GetFlag(FLAGS_kv_budget),
                 .rebuild = absl::GetFlag(FLAGS_rebuild), .controller = controller.get()};
    ADORE_RETURN_IF_ERROR(g.release.Validate(int64_t{1} << 20));
    if (kind != adore::PolicyKind::kFull && kind != adore::PolicyKind::kAdore && g.skip_prefill) {
      return absl::InvalidArgumentError(
          "--skip_prefill: only adore (controller on the GPU) can start from a synthetic history; other releasing "
          "policies must observe their prompt");
    }
  }
  if (g.tp < 1) return absl::InvalidArgumentError("--tp must be >= 1");
  const int32_t max_context = absl::GetFlag(FLAGS_max_context), gemm_size = absl::GetFlag(FLAGS_gemm_size);
  const int64_t copy_mib = absl::GetFlag(FLAGS_copy_mib);
  if (g.gen <= 0) return absl::InvalidArgumentError("--gen must be > 0");
  if (g.warmup < 0) return absl::InvalidArgumentError("--warmup must be >= 0");
  if (g.prefill_tokens <= 0) return absl::InvalidArgumentError("--prefill_tokens must be > 0");
  if (max_context < 0) return absl::InvalidArgumentError("--max_context must be >= 0");
  if (copy_mib <= 0 || gemm_size <= 0) return absl::InvalidArgumentError("--copy_mib and --gemm_size must be > 0");
  adore::ModelConfig synthetic_config;
  if (!synthetic.empty()) {
    ADORE_ASSIGN_OR_RETURN(synthetic_config, adore::SyntheticShape(synthetic));
  }

  const int device = absl::GetFlag(FLAGS_device);
  std::fprintf(stderr, "measuring copy bandwidth (%d MiB) and bf16 matmul rate (%d^3) ...\n",
               static_cast<int>(copy_mib), gemm_size);
  ADORE_ASSIGN_OR_RETURN(const Ceilings ceilings, MeasureCeilings(device, copy_mib << 20, gemm_size));
  g.bandwidth = ceilings.copy_bytes_per_s;
  g.matmul = ceilings.matmul_flops_per_s;
  std::fprintf(stderr, "%s: copy %.2f TB/s (read + write), bf16 matmul %.0f TFLOP/s\n", ceilings.gpu.c_str(),
               g.bandwidth / 1e12, g.matmul / 1e12);

  // One engine per rank; with --tp N each runs in its own thread on its own GPU and all issue the same calls.
  const int tp = absl::GetFlag(FLAGS_tp);
  struct Shared {
    std::barrier<> sync;
    std::vector<int64_t> rows;
  } shared{std::barrier<>(tp), std::vector<int64_t>(tp, -1)};
  auto run_rank = [&](int rank, adore::comm::Communicator* comm) -> absl::Status {
    Grid g = grid;
    adore::ModelConfig config = synthetic_config;  // a copy per rank (threads)
    int32_t max_batch = batches.empty() ? 1 : *std::max_element(batches.begin(), batches.end());
    if (std::find(batches.begin(), batches.end(), 0) != batches.end()) {
      max_batch = std::max(max_batch, absl::GetFlag(FLAGS_max_fit_batch));
    }
    adore::CudaEngineOptions options;
    options.max_tokens = std::max<int64_t>(g.prefill_tokens, static_cast<int64_t>(max_batch) * (1 + g.release.rebuild));
    if (g.release.kind != adore::PolicyKind::kFull) {
      options.max_mass_slots = static_cast<int64_t>(max_batch) * (g.release.kv_budget + 2);
      options.adore_controller = g.release.controller;
      options.adore_lanes = std::max<int64_t>(max_batch, 16);
      // Slot tables of every item, read by the decode and the rebuild group (CudaEngine's worst case).
      options.max_slots = static_cast<int64_t>(max_batch) * 3 * (g.release.kv_budget + 2) + options.max_tokens;
      if (g.policy_chunk > 1) {  // a chunk's tokens each read their own copy of the table
        const int64_t table = g.release.kv_budget + g.policy_chunk + 1;
        options.policy_chunk = g.policy_chunk;
        options.max_tokens = std::max<int64_t>(options.max_tokens, int64_t{max_batch} * (g.policy_chunk + g.release.rebuild));
        options.max_mass_slots = int64_t{max_batch} * g.policy_chunk * table;
        options.max_slots = int64_t{max_batch} * (g.policy_chunk + 2) * table + options.max_tokens;
      }
    }
    options.max_batch = std::max(max_batch, 16);  // the warmup round below runs up to 16 sequences
    options.max_logit_rows = options.max_batch;
    options.kv_memory_fraction = absl::GetFlag(FLAGS_kv_memory_fraction);
    options.cuda_graphs = absl::GetFlag(FLAGS_cuda_graphs);
    options.time_calls = true;
    ADORE_ASSIGN_OR_RETURN(options.decode_attention,
                           adore::kernels::ParseDecodeAttentionKernel(absl::GetFlag(FLAGS_decode_attention)));
    ADORE_ASSIGN_OR_RETURN(options.prefill_attention,
                           adore::kernels::ParsePrefillAttentionKernel(absl::GetFlag(FLAGS_prefill_attention)));
    options.device = tp > 1 ? rank : device;
    options.tp_rank = rank;
    options.tp_size = tp;
    options.comm = comm;
    g.max_items = static_cast<size_t>(options.max_batch);
    std::unique_ptr<adore::CudaEngine> engine;
    std::string model;
    const auto t_load = Clock::now();
    absl::StatusOr<std::unique_ptr<adore::CudaEngine>> created;
    if (!synthetic.empty()) {
      if (max_context > 0) config.max_context = max_context;
      model = config.name;
      created = adore::CudaEngine::CreateSynthetic(config, g.seed, options);
    } else {
      if (rank == 0) std::fprintf(stderr, "loading %s ...\n", model_path.c_str());
      absl::StatusOr<adore::ModelWeights> weights = adore::LoadModelWeights(model_path);
      if (weights.ok() && max_context > 0) weights->config.max_context = max_context;
      model = adore::bench::ModelLabel(model_path);
      created = weights.ok() ? adore::CudaEngine::Create(*weights, options) : weights.status();
    }
    // Every rank learns the smallest pool (and whether all engines exist) before any collective runs.
    shared.rows[rank] = created.ok() ? (*created)->pool().num_rows() : -1;
    shared.sync.arrive_and_wait();
    g.pool_rows = *std::min_element(shared.rows.begin(), shared.rows.end());
    if (!created.ok()) return created.status();
    if (g.pool_rows < 0) return absl::AbortedError("another rank failed to create its engine");
    engine = *std::move(created);
    const adore::ModelConfig& c = engine->config();
    if (rank == 0) std::fprintf(stderr, "%s ready in %.1f s: %.2f GB of bf16 weights read per step, KV pool %lld rows (%.1f GiB)\n",
                 model.c_str(), SecondsSince(t_load), DecodeWeightBytes(c) / 1e9,
                 static_cast<long long>(engine->pool().num_rows()),
                 static_cast<double>(engine->pool().num_rows()) * KvBytesPerToken(c) / (1 << 30));

    {  // Warm up cuBLAS and every kernel once: a full prefill call, then a few batched decode steps.
      const int32_t seqs_n = std::min(16, std::max(1, g.prefill_tokens / 512));
      const int32_t len = static_cast<int32_t>(std::min<int64_t>(512, c.max_context - 8));
      const auto warm_prompts = RandomPrompts(seqs_n, len, c.vocab_size, g.seed + 1);
      std::vector<adore::SequenceKv> seqs(seqs_n);
      absl::Cleanup release = [&] {
        for (adore::SequenceKv& s : seqs) engine->Release(s);
      };
      std::vector<int32_t> last;
      ADORE_RETURN_IF_ERROR(Prefill(*engine, std::span<adore::SequenceKv>(seqs), warm_prompts, g.prefill_tokens,
                                    g.max_items, &last));
      ADORE_RETURN_IF_ERROR(Decode(*engine, std::span<adore::SequenceKv>(seqs), &last, 4).status());
    }

    nlohmann::json result = {
        {"command", absl::StrJoin(std::vector<std::string>(argv, argv + argc), " ")},
        {"machine", absl::StrFormat("%s; host %s", ceilings.gpu, adore::bench::CpuDescription())},
        {"commit", absl::GetFlag(FLAGS_commit).empty() ? adore::bench::GitCommit() : absl::GetFlag(FLAGS_commit)},
        {"measured",
         {{"gpu", ceilings.gpu},
          {"copy_bandwidth_bytes_per_s", g.bandwidth},
          {"copy_bandwidth_note", "cudaMemcpyAsync device to device, bytes read + written"},
          {"copy_buffer_bytes", copy_mib << 20},
          {"matmul_tflops", g.matmul / 1e12},
          {"matmul_note", absl::StrFormat("cuBLAS bf16 %d^3, float32 accumulate, uniform random operands", gemm_size)}}},
        {"model",
         {{"name", model},
          {"source", synthetic.empty() ? model_path : "synthetic " + synthetic},
          {"weight_bytes_per_step", DecodeWeightBytes(c)},
          {"kv_bytes_per_token", KvBytesPerToken(c)},
          {"layer_matrix_params", LayerMatrixParams(c) * c.num_layers},
          {"max_context", c.max_context},
          {"max_context_overridden", max_context > 0},
          {"kv_pool_rows", engine->pool().num_rows()}}},
        {"settings",
         {{"gen", g.gen}, {"warmup", g.warmup}, {"prefill_tokens", g.prefill_tokens}, {"sampling", "greedy, on GPU"},
          {"tp", tp},
          {"tp_note", tp > 1 ? "one rank per GPU, threads of one process, NCCL all-reduces; floors per rank" : ""}}},
        {"rows", nlohmann::json::array()}};
    // Rewritten after every row, so a run stopped midway keeps what it measured.
    const std::string json_path = absl::GetFlag(FLAGS_json);
    g.comm = rank == 0 ? comm : nullptr;
    auto add_row = [&](nlohmann::json row) -> absl::Status {
      if (rank != 0) return absl::OkStatus();  // the other ranks ran the same calls; rank 0 reports
      PrintRow(row);
      result["rows"].push_back(std::move(row));
      if (json_path.empty()) return absl::OkStatus();
      std::ofstream out(json_path);
      out << result.dump(2) << "\n";
      return out ? absl::OkStatus() : absl::PermissionDeniedError(absl::StrFormat("cannot write %s", json_path));
    };

    if (rank == 0) std::printf("%-7s %-7s %5s %6s %4s %10s %12s %12s %9s %9s %7s  %s\n", "engine", "kind", "batch", "prompt", "gen",
                "prefill_ms", "prefill_t/s", "decode_t/s", "step_ms", "floor_ms", "/floor", "note");
    for (int32_t n : prefill_only) {
      if (rank == 0) std::fprintf(stderr, "[prefill %d tokens]\n", n);
      ADORE_RETURN_IF_ERROR(add_row(RunPrefillRow(*engine, model, n, g)));
    }
    for (int32_t listed : batches) {
      for (int32_t prompt : prompts) {
        int32_t batch = listed;
        if (batch == 0) {  // 'max': what the smallest pool of the ranks holds at this length
          const int64_t ctx_end = static_cast<int64_t>(prompt) + g.warmup + g.gen;
          const int64_t per_seq = g.release.kind != adore::PolicyKind::kFull ? g.release.kv_budget + 1 : ctx_end;
          batch = static_cast<int32_t>(std::clamp<int64_t>(g.pool_rows / per_seq, 1, options.max_batch));
        }
        if (rank == 0) std::fprintf(stderr, "[batch %d, prompt %d, gen %d]\n", batch, prompt, g.gen);
        nlohmann::json row = RunDecodeRow(*engine, model, batch, prompt, g);
        row["max_fit"] = listed == 0;
        ADORE_RETURN_IF_ERROR(add_row(std::move(row)));
      }
    }
    if (rank == 0 && !json_path.empty()) std::fprintf(stderr, "wrote %s\n", json_path.c_str());
    return absl::OkStatus();
  };
  
  if (tp == 1) return run_rank(0, nullptr);
#if ADORE_HAVE_NCCL
  ADORE_ASSIGN_OR_RETURN(const std::string id, adore::comm::NcclCommunicator::CreateUniqueId());
  std::vector<absl::Status> results(tp);
  std::vector<std::thread> threads;
  for (int r = 0; r < tp; ++r) {
    threads.emplace_back([&, r] {
      absl::StatusOr<std::unique_ptr<adore::comm::NcclCommunicator>> comm =
          adore::comm::NcclCommunicator::Create(id, r, tp, r);
      if (!comm.ok()) {
        results[r] = comm.status();
        shared.rows[r] = -1;
        shared.sync.arrive_and_wait();  // the others learn it before their first collective
        return;
      }
      results[r] = run_rank(r, comm->get());
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < tp; ++r) {
    if (!results[r].ok()) return absl::Status(results[r].code(), absl::StrFormat("rank %d: %s", r, results[r].message()));
  }
  return absl::OkStatus();
#else
  return absl::UnimplementedError("--tp > 1 needs NCCL, and this build has none");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "adore-bench-cuda (--model PATH | --synthetic smollm2-135m|llama2-7b|llama3-8b) [--max_context N] "
      "[--batch 1,4,16,64,256] [--prompt 2048,8192,32768] [--gen 32] [--warmup 4] [--prefill_tokens 8192] "
      "[--prefill_only 8192,32768] [--json OUT.json]");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    return Fail(absl::InvalidArgumentError(absl::StrFormat("unexpected argument '%s'", positional[1])));
  }
  const absl::Status s = Run(argc, argv);
  return s.ok() ? 0 : Fail(s);
}
