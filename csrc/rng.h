/*
 * rng.h - the counter-based generator behind nfcl_hash3 / nfcl_uniform.
 *
 * A draw is mix(key(seed, stream) ^ f(counter)). Hot loops (dropout masks)
 * compute the key once per call and then pay one mixing round per element;
 * nfcl_uniform in common.c is the same function with the key inlined.
 */
#ifndef NFCL_RNG_H
#define NFCL_RNG_H

#include <stdint.h>

/* splitmix64's finaliser */
static inline uint64_t nfcl_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t nfcl_stream_key(uint64_t seed, uint64_t stream)
{
    uint64_t h = nfcl_mix64(seed + 0x9e3779b97f4a7c15ULL);
    return nfcl_mix64(h ^ (stream + 0x632be59bd9b4e019ULL));
}

static inline uint64_t nfcl_keyed_hash(uint64_t key, uint64_t counter)
{
    return nfcl_mix64(key ^ (counter * 0x9e3779b97f4a7c15ULL + 0x2545f4914f6cdd1dULL));
}

/* top 24 bits as a float in [0, 1); via int32 since u64 -> float is slow */
static inline float nfcl_keyed_uniform(uint64_t key, uint64_t counter)
{
    return (float)(int32_t)(nfcl_keyed_hash(key, counter) >> 40) *
           (1.0f / 16777216.0f);
}

#endif /* NFCL_RNG_H */
