// Test helpers: ADORE controller weights built in memory and written as a controller file in the layout
// tools/adore/train_controller.py writes (read back by AdoreController::Parse), e.g. random controllers
// whose scores make a policy release and rebuild often.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"

namespace adore::testing {

inline std::vector<float> RandomFloats(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A controller's weights on the host, in the file's layout. Feature layers 3, 10, 17, ... (one per
// `num_layers`), each of `hidden` floats.
struct ControllerWeights {
  int64_t num_layers = 1, hidden = 0, kd = 0, sd = 0;
  float mass_eps = 1e-5f, mass_coef = 0.25f, age_coef = 0.125f;
  std::vector<float> key_w, key_b, query_w, query_b, w_ih, w_hh, b_ih, b_hh, score_w, score_b{0.0f};

  int64_t f() const { return num_layers * hidden; }

  // The controller file.
  std::string File() const;
};

// A controller file from a header and named float tensors, laid out as train_controller.py writes it
// (the header gains the tensors' names, shapes and offsets).
inline std::string WriteControllerFile(nlohmann::json header,
                                       const std::vector<std::pair<std::string, std::vector<float>>>& tensors,
                                       const std::vector<std::vector<int64_t>>& shapes) {
  std::string data;
  header["tensors"] = nlohmann::json::array();
  for (size_t i = 0; i < tensors.size(); ++i) {
    header["tensors"].push_back({{"name", tensors[i].first}, {"shape", shapes[i]}, {"offset", data.size()}});
    data.append(reinterpret_cast<const char*>(tensors[i].second.data()), tensors[i].second.size() * 4);
  }
  const std::string h = header.dump();
  std::string out("ADORECTL");
  const uint32_t version = 1, len = static_cast<uint32_t>(h.size());
  out.append(reinterpret_cast<const char*>(&version), 4);
  out.append(reinterpret_cast<const char*>(&len), 4);
  return out + h + data;
}

inline std::string ControllerWeights::File() const {
  nlohmann::json header = {{"feature_layers", std::vector<int>(num_layers, 0)},
                           {"hidden_size", hidden},
                           {"key_dim", kd},
                           {"state_dim", sd},
                           {"num_inputs", 5},
                           {"mass_eps", mass_eps},
                           {"mass_coef", mass_coef},
                           {"age_coef", age_coef},
                           {"num_sink", 4},
                           {"num_recent", 16}};
  for (int64_t l = 0; l < num_layers; ++l) header["feature_layers"][l] = 3 + 7 * l;
  return WriteControllerFile(header,
                             {{"key_proj.weight", key_w}, {"key_proj.bias", key_b}, {"query_proj.weight", query_w},
                              {"query_proj.bias", query_b}, {"gru.weight_ih", w_ih}, {"gru.weight_hh", w_hh},
                              {"gru.bias_ih", b_ih}, {"gru.bias_hh", b_hh}, {"score.weight", score_w},
                              {"score.bias", score_b}},
                             {{kd, f()}, {kd}, {kd, f()}, {kd}, {3 * sd, 5}, {3 * sd, sd}, {3 * sd}, {3 * sd},
                              {1, sd + 5}, {1}});
}

// Uniform random weights at the scales of a freshly initialised controller (seeded, reproducible).
inline ControllerWeights RandomControllerWeights(int64_t num_layers, int64_t hidden, int64_t kd, int64_t sd,
                                                 uint32_t seed) {
  ControllerWeights w;
  w.num_layers = num_layers;
  w.hidden = hidden;
  w.kd = kd;
  w.sd = sd;
  const float a = 1.0f / std::sqrt(static_cast<float>(w.f()));
  w.key_w = RandomFloats(kd * w.f(), -a, a, seed);
  w.key_b = RandomFloats(kd, -0.2f, 0.2f, seed + 1);
  w.query_w = RandomFloats(kd * w.f(), -a, a, seed + 2);
  w.query_b = RandomFloats(kd, -0.2f, 0.2f, seed + 3);
  w.w_ih = RandomFloats(3 * sd * 5, -0.6f, 0.6f, seed + 4);
  w.w_hh = RandomFloats(3 * sd * sd, -0.4f, 0.4f, seed + 5);
  w.b_ih = RandomFloats(3 * sd, -0.2f, 0.2f, seed + 6);
  w.b_hh = RandomFloats(3 * sd, -0.2f, 0.2f, seed + 7);
  w.score_w = RandomFloats(sd + 5, -1.0f, 1.0f, seed + 8);
  w.score_b = {0.1f};
  return w;
}

// A controller file for a model of `hidden` (three feature layers) whose random scores favour released
// tokens over cached ones (a negative weight on the `cached` input), so adore with rebuild rebuilds
// nearly every step: the trained controller rebuilds about once per thousand tokens of prose
// (bench/results/quality.json), too rarely for tests of a few hundred steps. For tests of the rebuild
// mechanics, which do not depend on what the scores mean.
inline std::string RebuildingControllerFile(int64_t hidden) {
  ControllerWeights w = RandomControllerWeights(3, hidden, 32, 16, 21);
  w.score_w[w.sd + 1] = -4.0f;  // inputs after the state: log mass, cached, log age, affinity, log acc
  return w.File();
}

}  // namespace adore::testing
