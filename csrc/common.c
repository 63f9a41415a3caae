/*
 * common.c - status strings, the counter-based RNG and the touched-row set.
 */
#include <math.h>

#include "nfcl.h"
#include "rng.h"

/* ---------------------------------------------------------------------- */
/* status strings: fixed text, never formatted, so they are safe anywhere */

const char *nfcl_strerror(int status)
{
    switch (status) {
    case NFCL_OK:
        return "ok";
    case NFCL_E_SIZE:
        return "a size is zero, negative or too large for the core";
    case NFCL_E_RANGE:
        return "an item id or index is out of range";
    case NFCL_E_NOMEM:
        return "out of memory for scratch space";
    case NFCL_E_NONFINITE:
        return "a NaN or infinite value was found";
    case NFCL_E_ARG:
        return "invalid combination of arguments";
    case NFCL_E_CANDIDATES:
        return "the catalogue is too small for the requested candidates";
    default:
        return "unknown nfcl status";
    }
}

/* ---------------------------------------------------------------------- */
/* RNG (rng.h): each draw depends only on (seed, stream, counter), never on
 * which thread asks or when. */

uint64_t nfcl_hash3(uint64_t seed, uint64_t stream, uint64_t counter)
{
    return nfcl_keyed_hash(nfcl_stream_key(seed, stream), counter);
}

float nfcl_uniform(uint64_t seed, uint64_t stream, uint64_t counter)
{
    return nfcl_keyed_uniform(nfcl_stream_key(seed, stream), counter);
}

/* ---------------------------------------------------------------------- */
/* truncated normal by rejection; each element owns a counter range, so the
 * value of x[i] does not depend on n */

int nfcl_trunc_normal(float *x, int64_t n, float std, uint64_t seed,
                      uint64_t stream)
{
    if (n < 0 || n > NFCL_MAX_ELEMS || !(std >= 0.0f)) {
        return NFCL_E_SIZE;
    }
    for (int64_t i = 0; i < n; i++) {
        double z = 0.0;
        for (uint64_t tries = 0;; tries++) {
            /* Box-Muller from two uniforms in (0, 1] and [0, 1) */
            uint64_t c = ((uint64_t)i << 8) + 2 * tries;
            double u1 = 1.0 - (double)nfcl_uniform(seed, stream, c);
            double u2 = (double)nfcl_uniform(seed, stream, c + 1);
            z = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
            if (fabs(z) <= 2.0 || tries >= 100) {
                break;
            }
        }
        x[i] = (float)(z * std);
    }
    return NFCL_OK;
}

/* ---------------------------------------------------------------------- */
/* touched rows */

void nfcl_rowset_mark(nfcl_rowset *rs, int32_t row)
{
    if (rs == NULL || row <= 0 || rs->mask[row]) {
        return;
    }
    rs->mask[row] = 1;
    rs->rows[*rs->count] = row;
    *rs->count += 1;
}

/* ---------------------------------------------------------------------- */
/* id ranges, checked before any table row is read */

int nfcl_check_ids(const int32_t *ids, int64_t n, int64_t lo, int64_t hi)
{
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < lo || ids[i] >= hi) {
            return NFCL_E_RANGE;
        }
    }
    return NFCL_OK;
}
