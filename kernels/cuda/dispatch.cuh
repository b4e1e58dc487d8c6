// Turns runtime shape values into template constants, so a kernel is written once and instantiated per
// supported value instead of repeating the launch ladder at every call site.
#pragma once

// Runs `...` (a lambda body or statement) with `constexpr int HEAD_DIM` set to head_dim; otherwise
// returns INVALID_ARGUMENT from the enclosing function. Supported: 64, 128.
#define ADORE_DISPATCH_HEAD_DIM(head_dim, HEAD_DIM, ...)                                          \
  [&]() -> ::absl::Status {                                                                       \
    switch (head_dim) {                                                                           \
      case 64: {                                                                                  \
        constexpr int HEAD_DIM = 64;                                                              \
        return __VA_ARGS__();                                                                     \
      }                                                                                           \
      case 128: {                                                                                 \
        constexpr int HEAD_DIM = 128;                                                             \
        return __VA_ARGS__();                                                                     \
      }                                                                                           \
      default:                                                                                    \
        return ::absl::InvalidArgumentError(                                                      \
            ::absl::StrCat("head_dim ", head_dim, " is not supported (64 or 128)"));              \
    }                                                                                             \
  }()

// Runs `...` with `constexpr int GROUP_TILE` = the number of query heads one block handles per KV head:
// the largest of 8, 4, 3, 2, 1 dividing `group` (num_heads / num_kv_heads). Any group works; tiles that
// cover the whole group read each K/V row once for all its query heads.
#define ADORE_DISPATCH_GROUP_TILE(group, GROUP_TILE, ...)                \
  [&]() -> ::absl::Status {                                              \
    if ((group) % 8 == 0) {                                              \
      constexpr int GROUP_TILE = 8;                                      \
      return __VA_ARGS__();                                              \
    } else if ((group) % 4 == 0) {                                       \
      constexpr int GROUP_TILE = 4;                                      \
      return __VA_ARGS__();                                              \
    } else if ((group) % 3 == 0) {                                       \
      constexpr int GROUP_TILE = 3;                                      \
      return __VA_ARGS__();                                              \
    } else if ((group) % 2 == 0) {                                       \
      constexpr int GROUP_TILE = 2;                                      \
      return __VA_ARGS__();                                              \
    } else {                                                             \
      constexpr int GROUP_TILE = 1;                                      \
      return __VA_ARGS__();                                              \
    }                                                                    \
  }()
