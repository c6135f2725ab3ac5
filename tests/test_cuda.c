/* tests/test_cuda.c — the CUDA backend against the CPU backend: every op
 * forward and backward on fresh random inputs (relative error <= 1e-5 in
 * fp32), whole-model training steps (forward, backward, AdamW) for both
 * architectures, and KV-cache decoding. The checks live in tests/cuda_parity.h,
 * which bench/gpu_bench.c also runs (`gpu_bench --parity`) on GPU machines
 * without Criterion.
 *
 * Without a GPU (or in a build without CUDA) every parity test is SKIPPED
 * with the reason, never passed. PONDER_PARITY_SEED=<n> replays a run's
 * inputs; PONDER_CUDA_SYNC=1 makes the backend name the op of an
 * asynchronous CUDA fault.
 *
 * The fake_device tests run everywhere: the same suite against the CPU ops
 * behind a checked "device" table (tests/fake_device.h), which exercises the
 * model's device code path (staging, host mirrors, packed decode steps) and
 * the suite itself on machines without a GPU. They say nothing about the CUDA
 * kernels. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "tests/cuda_parity.h"
#include "tests/fake_device.h"

static const ModelOps *gpu_or_skip(void) {
    const ModelOps *g = ops_cuda();
    if (!g) cr_skip_test("no CUDA device: %s", ops_cuda_status());
    return g;
}

static void run_case(const char *name, ParityFn fn) {
    const ModelOps *g = gpu_or_skip();
    if (!g) return;
    Parity *p = malloc(sizeof *p);
    cr_assert_not_null(p);
    uint64_t seed = parity_seed();
    printf("cuda parity %s on %s (seed %llu: PONDER_PARITY_SEED=%llu replays it)\n", name,
           ops_cuda_status(), (unsigned long long)seed, (unsigned long long)seed);
    parity_init(p, g, seed);
    fn(p);
    parity_release(p);
    cr_expect_eq(p->failed, 0, "%s: %d of %d checks failed (seed %llu): %s", name, p->failed,
                 p->checks, (unsigned long long)seed, p->failures);
    cr_expect_gt(p->checks, 0, "%s ran no check", name);
    free(p);
}

Test(cuda, matmul) { run_case("matmul", parity_matmul); }
Test(cuda, embedding) { run_case("embedding", parity_embedding); }
Test(cuda, norms) { run_case("norms", parity_norms); }
Test(cuda, rope) { run_case("rope", parity_rope); }
Test(cuda, attention) { run_case("attention", parity_attention); }
Test(cuda, attention_cached) { run_case("attention_cached", parity_attention_cached); }
Test(cuda, attention_cached_write) { run_case("attention_cached_write", parity_attention_cached_write); }
Test(cuda, linear_fused) { run_case("linear_fused", parity_linear_fused); }
Test(cuda, activations) { run_case("activations", parity_activations); }
Test(cuda, lm_head) { run_case("lm_head", parity_lm_head); }
Test(cuda, optimizer) { run_case("optimizer", parity_optimizer); }
Test(cuda, model_step) { run_case("model_step", parity_model); }
Test(cuda, decode) { run_case("decode", parity_decode); }

/* The one check that runs everywhere: asking for a model on an unavailable
 * backend is an error that says why, and on a GPU the model says it is on it. */
Test(cuda, backend_selection) {
    ModelConfig cfg = parity_config(MODEL_ARCH_LLAMA, 1, 0);
    Model *m = NULL;
    PonderError err = {0};
    const ModelOps *g = ops_cuda();
    cr_assert_not_null(ops_cuda_status());
    if (!g) {
        printf("CUDA backend unavailable: %s\n", ops_cuda_status());
        cr_assert_neq(model_create_on(&m, &cfg, NULL, &err), 0);
        cr_assert_null(m);
        cr_expect(strstr(err.msg, "CUDA") != NULL, "error should name CUDA: %s", err.msg);
        return;
    }
    cr_assert_eq(model_create_on(&m, &cfg, g, &err), 0, "%s", err.msg);
    cr_expect_str_eq(model_backend(m), "cuda");
    model_free(m);
}

/* ------------------------------------------------- without a GPU too ---- */

static void run_fake(const char *name, ParityFn fn) {
    Parity *p = malloc(sizeof *p);
    cr_assert_not_null(p);
    uint64_t seed = parity_seed();
    printf("fake-device parity %s (seed %llu)\n", name, (unsigned long long)seed);
    parity_init(p, &FAKE_DEVICE_OPS, seed);
    fn(p);
    parity_release(p);
    cr_expect_eq(p->failed, 0, "%s: %d of %d checks failed (seed %llu): %s", name, p->failed,
                 p->checks, (unsigned long long)seed, p->failures);
    cr_expect_gt(p->checks, 0, "%s ran no check", name);
    cr_expect_eq(g_fake.n, 0, "%s left %d fake-device allocations", name, g_fake.n);
    free(p);
}

Test(fake_device, ops) {
    run_fake("matmul", parity_matmul);
    run_fake("embedding", parity_embedding);
    run_fake("norms", parity_norms);
    run_fake("rope", parity_rope);
    run_fake("attention", parity_attention);
    run_fake("attention_cached", parity_attention_cached);
    run_fake("attention_cached_write", parity_attention_cached_write);
    run_fake("linear_fused", parity_linear_fused);
    run_fake("activations", parity_activations);
    run_fake("lm_head", parity_lm_head);
    run_fake("optimizer", parity_optimizer);
}

Test(fake_device, model_step) { run_fake("model_step", parity_model); }
Test(fake_device, decode) { run_fake("decode", parity_decode); }
