// adore-attn-layout: times one layer's decode attention (kernels::DecodeAttention) over the same K/V bytes
// stored two ways, to decide the KV pool layout:
//   row-major  [row, kv_head, head_dim] (the pool today): one launch over all KV heads; a block reads one
//              head_dim piece of every row, the rows num_kv_heads * head_dim * 2 bytes apart;
//   head-major [kv_head, row, head_dim]: one launch per KV head (num_kv_heads = 1 over that head's plane),
//              so a head's slots are contiguous wherever a sequence's rows are.
// Each sequence owns `--slots` consecutive rows. Prints and writes (--json) the kernel time and the K/V
// bytes per second for each layout and decode attention kernel.
//
//   adore-attn-layout --shapes 32x32,32x8,9x3 --head_dims 128,128,64 --batch 64 --slots 2048 --json out.json
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "kernels/cuda/ops.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::vector<std::string>, shapes, std::vector<std::string>({"32x32", "32x8", "9x3"}),
          "num_heads x num_kv_heads per shape");
ABSL_FLAG(std::vector<std::string>, head_dims, std::vector<std::string>({"128", "128", "64"}), "head_dim per shape");
ABSL_FLAG(int32_t, batch, 64, "sequences");
ABSL_FLAG(int32_t, slots, 2048, "slots (= consecutive rows) per sequence");
ABSL_FLAG(std::vector<std::string>, kernels,
          std::vector<std::string>({"lanes", "lanes_prefetch", "chunked", "mma", "pipelined"}),
          "decode attention kernels to time (kernels::ParseDecodeAttentionKernel names)");
ABSL_FLAG(std::vector<std::string>, layouts, std::vector<std::string>({"row_major", "head_major"}),
          "KV layouts to time: row_major, head_major");
ABSL_FLAG(int32_t, reps, 20, "timed launches per configuration (after 3 untimed)");
ABSL_FLAG(std::string, json, "", "write the rows here");

namespace {

namespace k = adore::kernels;

#define CHECK_CUDA(x)                                                                  \
  do {                                                                                 \
    cudaError_t e_ = (x);                                                              \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                    \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

#define CHECK_OK(x)                                                                    \
  do {                                                                                 \
    absl::Status s_ = (x);                                                             \
    if (!s_.ok()) {                                                                    \
      std::fprintf(stderr, "%s: %s\n", #x, std::string(s_.message()).c_str());        \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

// Fills with small values so the softmax stays finite (the content does not change the timing).
void FillBf16(__nv_bfloat16* d, size_t n, uint32_t seed) {
  std::vector<__nv_bfloat16> h(n);
  uint32_t x = seed;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    h[i] = __float2bfloat16(((x >> 9) & 0xffff) / 65536.0f - 0.5f);
  }
  CHECK_CUDA(cudaMemcpy(d, h.data(), n * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const auto shapes = absl::GetFlag(FLAGS_shapes);
  const auto head_dims = absl::GetFlag(FLAGS_head_dims);
  const int64_t B = absl::GetFlag(FLAGS_batch), S = absl::GetFlag(FLAGS_slots);
  const int reps = absl::GetFlag(FLAGS_reps);
  if (shapes.size() != head_dims.size()) {
    std::fprintf(stderr, "--shapes and --head_dims must have the same length\n");
    return 2;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  nlohmann::json rows = nlohmann::json::array();
  const int64_t R = B * S;  // rows in the pool
  // Slot table: sequence b's slot s is row b * S + s at position s; the query is at position S - 1.
  std::vector<int32_t> offsets(B + 1), rows_h(R), pos_h(R), qpos_h(B, static_cast<int32_t>(S - 1));
  for (int64_t b = 0; b <= B; ++b) offsets[b] = static_cast<int32_t>(b * S);
  for (int64_t i = 0; i < R; ++i) {
    rows_h[i] = static_cast<int32_t>(i);
    pos_h[i] = static_cast<int32_t>(i % S);
  }
  int32_t *d_off, *d_rows, *d_pos, *d_qpos;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_off), offsets.size() * 4));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_rows), R * 4));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_pos), R * 4));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_qpos), B * 4));
  CHECK_CUDA(cudaMemcpy(d_off, offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_rows, rows_h.data(), R * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_pos, pos_h.data(), R * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_qpos, qpos_h.data(), B * 4, cudaMemcpyHostToDevice));
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));

  for (size_t si = 0; si < shapes.size(); ++si) {
    std::vector<std::string> hk = absl::StrSplit(shapes[si], 'x');
    int64_t H = 0, KV = 0, D = 0;
    if (hk.size() != 2 || !absl::SimpleAtoi(hk[0], &H) || !absl::SimpleAtoi(hk[1], &KV) ||
        !absl::SimpleAtoi(head_dims[si], &D)) {
      std::fprintf(stderr, "bad shape %s / head_dim %s\n", shapes[si].c_str(), head_dims[si].c_str());
      return 2;
    }
    const size_t kv_elems = static_cast<size_t>(R) * KV * D;
    __nv_bfloat16 *k_cache, *v_cache, *q, *out;
    CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&k_cache), kv_elems * 2));
    CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&v_cache), kv_elems * 2));
    CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&q), static_cast<size_t>(B) * H * D * 2));
    CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&out), static_cast<size_t>(B) * H * D * 2));
    FillBf16(k_cache, kv_elems, 1);
    FillBf16(v_cache, kv_elems, 2);
    FillBf16(q, static_cast<size_t>(B) * H * D, 3);
    const size_t ws_bytes = k::DecodeAttentionWorkspaceBytes(B, H, D, 64, 0);
    void* ws;
    CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&ws), ws_bytes));
    const double bytes = 2.0 * static_cast<double>(kv_elems) * 2;  // K and V, bf16
    for (const std::string& layout : absl::GetFlag(FLAGS_layouts)) {
      if (layout != "row_major" && layout != "head_major") {
        std::fprintf(stderr, "--layouts: \"%s\" is neither row_major nor head_major\n", layout.c_str());
        return 2;
      }
      for (const std::string& kname : absl::GetFlag(FLAGS_kernels)) {
        const absl::StatusOr<k::DecodeAttentionKernel> parsed = k::ParseDecodeAttentionKernel(kname);
        CHECK_OK(parsed.status());
        const k::DecodeAttentionKernel kernel = *parsed;
        auto launch = [&]() {
          k::DecodeAttentionArgs a;
          a.q_pos = d_qpos;
          a.num_rows = R;
          a.slot_offsets = d_off;
          a.slot_rows = d_rows;
          a.slot_pos = d_pos;
          a.batch = B;
          a.head_dim = D;
          a.max_slots = S;
          a.scale = 1.0f / std::sqrt(static_cast<float>(D));
          a.q_stride = H * D;
          a.out_stride = H * D;
          a.workspace = ws;
          a.workspace_bytes = ws_bytes;
          a.kernel = kernel;
          if (layout == "row_major") {
            a.q = q;
            a.k_cache = k_cache;
            a.v_cache = v_cache;
            a.num_heads = H;
            a.num_kv_heads = KV;
            a.out = out;
            CHECK_OK(k::DecodeAttention(a, nullptr));
          } else {
            const int64_t group = H / KV;
            for (int64_t h = 0; h < KV; ++h) {  // head h's plane: [R, D]
              a.q = q + h * group * D;
              a.k_cache = k_cache + static_cast<size_t>(h) * R * D;
              a.v_cache = v_cache + static_cast<size_t>(h) * R * D;
              a.num_heads = group;
              a.num_kv_heads = 1;
              a.out = out + h * group * D;
              CHECK_OK(k::DecodeAttention(a, nullptr));
            }
          }
        };
        for (int i = 0; i < 3; ++i) launch();
        CHECK_CUDA(cudaEventRecord(e0));
        for (int i = 0; i < reps; ++i) launch();
        CHECK_CUDA(cudaEventRecord(e1));
        CHECK_CUDA(cudaEventSynchronize(e1));
        float ms = 0;
        CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        const double per = ms / reps;
        const double gbs = bytes / (per * 1e-3) / 1e9;
        std::printf("%-8s D=%-3lld batch %lld x %lld slots  %-10s %-15s %8.3f ms  %7.1f GB/s of K/V\n",
                    shapes[si].c_str(), static_cast<long long>(D), static_cast<long long>(B),
                    static_cast<long long>(S), layout.c_str(), kname.c_str(), per, gbs);
        rows.push_back({{"num_heads", H}, {"num_kv_heads", KV}, {"head_dim", D}, {"batch", B}, {"slots", S},
                        {"layout", layout}, {"kernel", kname}, {"ms", per}, {"kv_gb_s", gbs}});
      }
    }
    CHECK_CUDA(cudaFree(k_cache));
    CHECK_CUDA(cudaFree(v_cache));
    CHECK_CUDA(cudaFree(q));
    CHECK_CUDA(cudaFree(out));
    CHECK_CUDA(cudaFree(ws));
  }
  if (!absl::GetFlag(FLAGS_json).empty()) {
    std::ofstream(absl::GetFlag(FLAGS_json))
        << nlohmann::json({{"command", "adore-attn-layout"}, {"machine", prop.name}, {"rows", rows}}).dump(1);
  }
  return 0;
}
