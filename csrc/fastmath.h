/*
 * fastmath.h - exp for softmax kernels, written so loops over it vectorise.
 *
 * Softmax only ever exponentiates x - max(x) <= 0. nfcl_exp_nonpos takes such
 * an x and returns e^x to about 2 ulp (a Cephes-style degree-6 polynomial on
 * the reduced argument, scaled by 2^n through the exponent bits). Below
 * -87, where e^x would leave the normal float range, it returns exactly 0:
 * a term that small is below float resolution next to the max term, which
 * contributes 1, and subnormal floats would cost a microcode assist in every
 * later operation that touches them.
 *
 * nfcl_sigmoid and nfcl_tanh, the GRU's gate functions, are built on it the
 * same way (a few ulp; tests/c/gate_accuracy.c measures both).
 *
 * NFCL_CLONES marks a hot elementwise function for gcc's function
 * multiversioning: an AVX-512, an AVX2 and a baseline copy are built and the
 * loader picks the best one the CPU runs. Each copy is deterministic; copies
 * may differ from each other in the last bits of their reductions.
 */
#ifndef NFCL_FASTMATH_H
#define NFCL_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(NFCL_NO_CLONES) && !defined(__SANITIZE_ADDRESS__)
#define NFCL_HAVE_CLONES 1
#define NFCL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NFCL_HAVE_CLONES 0
#define NFCL_CLONES
#endif

static inline float nfcl_exp_nonpos(float x)
{
    const float lo = -87.0f;
    float xc = x < lo ? lo : x;
    xc = xc > 0.0f ? 0.0f : xc; /* callers mask out any x > 0 they pass */

    /* x = n ln2 + r, |r| <= ln2 / 2. Adding 1.5 * 2^23 rounds x log2(e) to
     * the integer n and leaves n in the low bits of t, read as an int. */
    float t = xc * 1.44269504088896341f + 12582912.0f;
    uint32_t tbits;
    memcpy(&tbits, &t, sizeof tbits);
    float n = t - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;

    /* e^r = 1 + r + r^2 p(r) */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float er = p * r * r + r + 1.0f;

    /* 2^n from its exponent bits (n in -126..0 after the clamps; unsigned
     * arithmetic, so even a NaN input stays defined behaviour) */
    uint32_t bits = (tbits - 0x4B400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float y = er * scale;
    return x < lo ? 0.0f : y;
}

/* 1 / (1 + e^-x) from e = e^-|x|: 1 / (1 + e) for x >= 0, e / (1 + e)
 * below; exactly 0 under -87 */
static inline float nfcl_sigmoid(float x)
{
    float e = nfcl_exp_nonpos(-fabsf(x));
    float s = 1.0f / (1.0f + e);
    return x >= 0.0f ? s : e * s;
}

/* tanh: the odd Taylor series up to x^15 for |x| < 0.4 (its first dropped
 * term is below 2^-30 of tanh there), (1 - e) / (1 + e) with e = e^-2|x|
 * above, where 1 - e no longer cancels badly */
static inline float nfcl_tanh(float x)
{
    float a = fabsf(x), z = a * a;
    float p = -929569.0f / 638512875.0f;
    p = p * z + 21844.0f / 6081075.0f;
    p = p * z - 1382.0f / 155925.0f;
    p = p * z + 62.0f / 2835.0f;
    p = p * z - 17.0f / 315.0f;
    p = p * z + 2.0f / 15.0f;
    p = p * z - 1.0f / 3.0f;
    float small = a + a * z * p;
    float e = nfcl_exp_nonpos(-2.0f * a);
    float big = (1.0f - e) / (1.0f + e);
    return copysignf(a < 0.4f ? small : big, x);
}

/* Flush-to-zero and denormals-are-zero for the calling thread, for the length
 * of one core call: late in training, attention probabilities and their
 * gradients drift into the subnormal range, where every float operation
 * takes a microcode assist (the backward ran 2x slower). Values that small
 * are below float resolution next to the terms they are added to. The
 * caller's mode is given back by nfcl_fp_restore, so Python and NumPy never
 * see the change. No-ops off x86. */
static inline unsigned nfcl_fp_fast(void)
{
#if defined(__SSE__)
    unsigned old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
    return old;
#else
    return 0;
#endif
}

static inline void nfcl_fp_restore(unsigned old)
{
#if defined(__SSE__)
    _mm_setcsr(old);
#else
    (void)old;
#endif
}

/* NFCL_FP_SCOPE { ... } runs the block once with the calling thread in the
 * core's float mode and then gives the thread its own mode back. Every
 * parallel region of the core starts with it, so each of the pool's threads
 * computes an element exactly as the calling thread would, and results do
 * not depend on which thread takes which element. */
#define NFCL_FP_SCOPE                                                       \
    for (unsigned nfcl_fp_saved_ = nfcl_fp_fast(), nfcl_fp_once_ = 1;       \
         nfcl_fp_once_; nfcl_fp_restore(nfcl_fp_saved_), nfcl_fp_once_ = 0)

#endif
