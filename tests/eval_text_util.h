// Test helper: the evaluation prose (the first chapters of Emma) tokenized with the model's own tokenizer.
#pragma once

#include <cstdint>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_weights.h"
#include "common/tokenizer.h"
#include "tests/test_util.h"

namespace adore::testing {

// tests/data/eval/emma_excerpt.txt as token ids (no BOS), with the tokenizer stored in `weights`.
inline absl::StatusOr<std::vector<int32_t>> EmmaExcerptTokens(const ModelWeights& weights) {
  std::ifstream in(DataPath("eval/emma_excerpt.txt"), std::ios::binary);
  if (!in) return absl::NotFoundError("missing " + DataPath("eval/emma_excerpt.txt"));
  std::ostringstream text;
  text << in.rdbuf();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Create(weights.tokenizer);
  if (!tokenizer.ok()) return tokenizer.status();
  return (*tokenizer)->Encode(text.str(), /*parse_special=*/true, /*add_bos=*/false);
}

}  // namespace adore::testing
