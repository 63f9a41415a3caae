/* Check of nfcl_exp_nonpos (csrc/fastmath.h) against libm's double exp:
 * every 61st float of [-87, 0] by bit pattern (18 M of them, all binades)
 * plus both ends, and a sweep below -87 (must give 0).
 * Prints "max_ulp <float> zeros_ok <0|1>". */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fastmath.h"

int main(void)
{
    double max_ulp = 0.0;
    int zeros_ok = 1;
    float lo = -87.0f;
    uint32_t first = 0x80000000u, last;
    memcpy(&last, &lo, sizeof last);
    for (uint32_t u = first; u <= last + 61u; u += 61u) {
        float x;
        uint32_t v = u > last ? last : u; /* the last step lands on -87 */
        memcpy(&x, &v, sizeof x);
        double ref = exp((double)x);
        double ulp = ldexp(1.0, ilogb(ref) - 23); /* float spacing at ref */
        double err = fabs((double)nfcl_exp_nonpos(x) - ref) / ulp;
        max_ulp = err > max_ulp ? err : max_ulp;
    }
    for (float x = nextafterf(-87.0f, -INFINITY); x > -200.0f; x -= 0.01f) {
        zeros_ok &= nfcl_exp_nonpos(x) == 0.0f;
    }
    zeros_ok &= nfcl_exp_nonpos(-INFINITY) == 0.0f;
    printf("max_ulp %.4f zeros_ok %d\n", max_ulp, zeros_ok);
    return 0;
}
