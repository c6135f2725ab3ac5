/* util/bf16.h — bf16 as the upper 16 bits of an fp32, rounded to nearest
 * even. One definition for every place that stores bf16: the CPU products'
 * packing reference (model/cpu/gemm_bf16.c gemm_bf16_round) and the bf16 KV
 * cache's scalar store and readers (model/cpu/ops_cpu.c; its vector store
 * rounds the same way, tests/test_bf16.c). Zero and
 * denormals become signed zero, as VCVTNEPS2BF16 makes them; a NaN stays a
 * (quiet) NaN. */
#ifndef PONDER_UTIL_BF16_H
#define PONDER_UTIL_BF16_H

#include <stdint.h> /* uint16_t, uint32_t */
#include <string.h> /* memcpy */

static inline uint16_t bf16_from_float(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float bf16_to_float(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

#endif
