/*
 * blas.c - matrix products and the core's threads.
 *
 * Results must not depend on the number of threads: the same seed gives
 * bitwise the same weights on 1 or 2 cores. OpenBLAS splits its work by the
 * thread count, which changes the order of some sums, so nfcl keeps OpenBLAS
 * single-threaded and splits large products itself into row blocks whose
 * count depends only on the shape. Every block is one OpenBLAS call with the
 * same arguments whichever thread runs it, so each output element is
 * computed identically with any number of threads.
 */
#ifdef _OPENMP
#include <omp.h>
#endif

#include "blas.h"
#include "fastmath.h"
#include "nfcl.h"

/* below this many multiply-adds a product is not worth splitting */
#define SPLIT_MIN_WORK ((int64_t)1 << 24)
#define MIN_BLOCK_ROWS 64
#define MAX_BLOCKS 8

static void sgemm_block(int ta, int tb, int64_t M, int64_t N, int64_t K,
                        float alpha, const float *A, int64_t lda,
                        const float *B, int64_t ldb, float beta, float *C,
                        int64_t ldc)
{
    scipy_cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                      tb ? CblasTrans : CblasNoTrans, (blasint)M, (blasint)N,
                      (blasint)K, alpha, A, (blasint)lda, B, (blasint)ldb,
                      beta, C, (blasint)ldc);
}

/* how many row blocks: a function of the shape alone, never of threads */
static int64_t row_blocks(int64_t M, int64_t N, int64_t K)
{
    if (M * N * K < SPLIT_MIN_WORK) {
        return 1;
    }
    int64_t n = M / MIN_BLOCK_ROWS;
    return n < 1 ? 1 : n > MAX_BLOCKS ? MAX_BLOCKS : n;
}

void nfcl_sgemm(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                const float *A, int64_t lda, const float *B, int64_t ldb,
                float beta, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0) {
        return;
    }
    int64_t nb = row_blocks(M, N, K);
    if (nb == 1) {
        sgemm_block(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }

    /* block i owns rows [M*i/nb, M*(i+1)/nb) of op(A) and of C; with ta the
     * rows of op(A) are columns of the stored A */
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nb; i++) {
        unsigned fp = nfcl_fp_fast(); /* worker threads too */
        int64_t m0 = M * i / nb, m1 = M * (i + 1) / nb;
        const float *Ai = ta ? A + m0 : A + m0 * lda;
        sgemm_block(ta, tb, m1 - m0, N, K, alpha, Ai, lda, B, ldb, beta,
                    C + m0 * ldc, ldc);
        nfcl_fp_restore(fp);
    }
}

/* ---------------------------------------------------------------------- */
/* the core's thread count (OpenMP); 1 when built without OpenMP */

void nfcl_set_threads(int n)
{
    scipy_openblas_set_num_threads(1);
#ifdef _OPENMP
    omp_set_num_threads(n < 1 ? 1 : n);
#else
    (void)n;
#endif
}

int nfcl_get_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
