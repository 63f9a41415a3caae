/*
 * blas.h - the one place the core reaches OpenBLAS.
 *
 * nfcl links the OpenBLAS shipped in the scipy-openblas32 wheel, whose
 * symbols carry a "scipy_" prefix and whose integers are 32-bit (blasint).
 * Callers check sizes against INT32_MAX before calling (nfcl_fits_blas).
 */
#ifndef NFCL_BLAS_H
#define NFCL_BLAS_H

#include <stdint.h>
#include <cblas.h>

/* C (M,N) = alpha * op(A) op(B) + beta * C, row-major.
 * op(A) is (M,K): A is (M,K) or, with ta, (K,M). op(B) is (K,N): B is (K,N)
 * or, with tb, (N,K). Leading dimensions are the stored row lengths.
 * Large products are cut into row blocks, or into slices of K when the
 * output is small, that the core's own threads share (blas.c); OpenBLAS
 * itself runs single-threaded. */
void nfcl_sgemm(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                const float *A, int64_t lda, const float *B, int64_t ldb,
                float beta, float *C, int64_t ldc);

/* true when every size fits OpenBLAS's 32-bit integers */
static inline int nfcl_fits_blas(int64_t a, int64_t b, int64_t c)
{
    return a >= 0 && b >= 0 && c >= 0 && a <= INT32_MAX && b <= INT32_MAX &&
           c <= INT32_MAX;
}

#endif /* NFCL_BLAS_H */
