/* model/cpu/kernels.h — small inline math shared by the CPU kernels.
 *
 * exp_fast and tanh_fast are written so GCC vectorises them inside loops
 * (glibc's expf does not vectorise without -ffast-math, which ponder avoids).
 * exp_fast: Cody–Waite range reduction and a degree-6 polynomial; relative
 * error below 3e-7 over the float range (tested in tests/test_ops.c). */
#ifndef PONDER_MODEL_CPU_KERNELS_H
#define PONDER_MODEL_CPU_KERNELS_H

#include <stdint.h> /* int32_t, uint32_t */
#include <string.h> /* memcpy */

/* Compile a function for AVX-512, AVX2 and baseline x86-64; the loader picks
 * one at run time. Used on per-row kernels called from OpenMP loops. */
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(PONDER_NO_CLONES)
#define PONDER_HOT __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define PONDER_HOT
#endif

static inline float exp_fast(float x) {
    /* e^x = 2^n * e^r with n = round(x / ln2), |r| <= ln2/2 */
    if (x < -87.0f) x = -87.0f; /* below this e^x is denormal; treat as tiny */
    if (x > 88.0f) x = 88.0f;
    /* rint, not floor(t + 0.5): GCC vectorises rint (it may raise inexact,
     * like the vector round instruction) but not floor without
     * -fno-trapping-math, and one scalar floor kept every loop that calls
     * exp_fast (SwiGLU, GELU, softmax) scalar. Both round to within 1/2. */
    float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* tanh(u) = 1 - 2 / (e^{2u} + 1), stable for large |u| through exp_fast's clamp. */
static inline float tanh_fast(float u) { return 1.0f - 2.0f / (exp_fast(2.0f * u) + 1.0f); }

#endif
