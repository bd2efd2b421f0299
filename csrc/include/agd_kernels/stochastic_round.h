// Stochastic rounding of fp32 values to bf16 (agd_kernels::stochastic_round_), shared by the CPU loop
// (csrc/cpu/stochastic_round.cpp) and the grid kernel body (grid/stochastic_round.h), so both draw the
// same bits. The spec is agd_kernels/reference/stochastic_round.py; the Triton kernel writes the same
// arithmetic in tl uint32 operations.
//
// Random bits: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; the
// constants of Random123), a counter-based generator: the bits of an element are a pure function of
// (key, counter), so any backend, thread or block order draws the same ones and nothing is carried from
// call to call. Key = the seed's two 32-bit halves; counter = (global element index low and high 32 bits,
// step, 0). Of the 4 x 32 bits one call gives, the low 16 bits of the first word are used: one call per
// element keeps every backend's indexing trivial, at 4x the arithmetic of sharing a call between 4
// elements, which is still far below the memory time of the op.
#pragma once
#include <stdint.h>

#include "agd_kernels/common.h"

namespace agd_kernels {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;
// bf16 bits every NaN becomes: the canonical quiet NaN. (Round-to-nearest conversions disagree here:
// torch 2.14's CPU conversion writes 0xFFFF, CUDA's __float2bfloat16_rn 0x7FFF; one value keeps backends equal.)
constexpr uint16_t kBf16NaN = 0x7FC0u;

// The first 32-bit word of Philox4x32-10(counter (c0, c1, c2, c3), key (k0, k1)).
AGDK_HOST_DEVICE uint32_t philox_first_word(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                            uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxW0;  // the bump after the last round is unused
    k1 += kPhiloxW1;
  }
  return c0;
}

// The 16 random bits of global element `index` at `step` under key (k0, k1).
AGDK_HOST_DEVICE uint32_t rounding_bits(int64_t index, uint32_t step, uint32_t k0, uint32_t k1) {
  const uint64_t i = static_cast<uint64_t>(index);
  return philox_first_word(static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), step, 0u, k0, k1) & 0xFFFFu;
}

AGDK_HOST_DEVICE uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  __builtin_memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

// bf16 bits of fp32 bits `x` rounded with 16 random bits `r`: the upper half of x + r. The lower half of
// x is the distance above the bf16 value below (in units of its ulp / 65536) and carries into the upper
// half exactly when r >= 65536 - that distance, so x rounds up with probability distance / ulp: unbiased.
// Magnitude bits only change (the sign is bit 31, and only a NaN's bits could carry into it); ±inf stays
// ±inf; every NaN becomes kBf16NaN. Above the largest bf16 (0x7F7F0000, 3.3895e38) values round to inf
// with probability proportional to their distance from it, as if inf were the next bf16 value.
AGDK_HOST_DEVICE uint16_t stochastic_round_bf16(uint32_t x, uint32_t r) {
  const bool nan = (x & 0x7FFFFFFFu) > 0x7F800000u;
  return nan ? kBf16NaN : static_cast<uint16_t>((x + r) >> 16);
}

}  // namespace agd_kernels
