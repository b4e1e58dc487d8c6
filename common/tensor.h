// A dense row-major float32 host tensor: the CPU engine's only array type.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace adore {

struct Tensor {
  std::vector<int64_t> shape;  // outermost first; GGUF's ne[] reversed (ne[0] is the last dim here)
  std::vector<float> data;     // product(shape) elements

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
};

}  // namespace adore
