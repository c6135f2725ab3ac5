/* util/rng.h — the one random number generator every part of ponder uses.
 *
 * xoshiro256** for streams, splitmix64 to seed them. Streams are derived from
 * a tuple of integers (seed, step, prompt, sample, ...) by hashing, so a
 * sample's randomness does not depend on batch size, batch order or rank
 * count. The state is four words: checkpoints store it verbatim. */
#ifndef PONDER_UTIL_RNG_H
#define PONDER_UTIL_RNG_H

#include <stdint.h> /* uint64_t */

typedef struct Rng {
    uint64_t s[4];
} Rng;

/* A stream determined by seed alone. */
Rng rng_from_seed(uint64_t seed);
/* A stream determined by (seed, a, b, c): independent streams per tuple. */
Rng rng_derive(uint64_t seed, uint64_t a, uint64_t b, uint64_t c);

uint64_t rng_next_u64(Rng *r);
/* Uniform in [0, 1) with 24 random bits (exactly representable). */
float rng_uniform(Rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double rng_uniform_double(Rng *r);
/* Uniform integer in [0, n). */
uint64_t rng_below(Rng *r, uint64_t n);
/* Standard normal (Box–Muller in double). */
double rng_normal(Rng *r);

#endif
