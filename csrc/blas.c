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

#include <stdlib.h>

#include "blas.h"
#include "fastmath.h"
#include "nfcl.h"

/* Below SPLIT_MIN_WORK multiply-adds a product runs whole. Each row block
 * re-packs all of op(B), so blocks must be tall enough for that to be
 * negligible: MIN_BLOCK_ROWS rows from BIG_WORK up, SMALL_BLOCK_ROWS below
 * it (measured with OpenBLAS's SkylakeX kernels at one thread: 1280 x 128 x
 * 128 in 4 blocks costs +1%, 256 x 192 x 64 in 4 blocks +22%). */
#define SPLIT_MIN_WORK ((int64_t)1 << 22)
#define BIG_WORK ((int64_t)1 << 24)
#define MIN_BLOCK_ROWS 64
#define SMALL_BLOCK_ROWS 256
#define MAX_BLOCKS 8

/* Products with a small output and a long sum (weight gradients: K is the
 * batch's row count) are split along K instead: row blocks would each
 * re-pack all of op(B), which costs 30-50% at one thread, while K blocks
 * pack only their own slice. The partial products of blocks 1.. go to a
 * heap buffer of at most KSPLIT_SCRATCH floats and are added to C in block
 * order. Should that 64 KB allocation fail, the product runs unsplit: the
 * same value up to the order of its sums. */
#define KSPLIT_MIN_K 1024
#define KSPLIT_MAX_BLOCKS 4
#define KSPLIT_SCRATCH 16384

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
    int64_t n = M / (M * N * K >= BIG_WORK ? MIN_BLOCK_ROWS : SMALL_BLOCK_ROWS);
    return n < 1 ? 1 : n > MAX_BLOCKS ? MAX_BLOCKS : n;
}

/* how many K blocks: a function of the shape alone; 1 = do not split */
static int64_t k_blocks(int64_t M, int64_t N, int64_t K)
{
    if (M * N * K < SPLIT_MIN_WORK || M * N > KSPLIT_SCRATCH) {
        return 1;
    }
    int64_t n = K / KSPLIT_MIN_K;
    n = n > KSPLIT_MAX_BLOCKS ? KSPLIT_MAX_BLOCKS : n;
    while (n > 1 && (n - 1) * M * N > KSPLIT_SCRATCH) {
        n--;
    }
    return n < 1 ? 1 : n;
}

/* C = alpha op(A) op(B) + beta C as nb products over K slices: slice 0
 * goes straight into C (with beta), slice i > 0 into part i-1 of the work
 * buffer (beta 0); then each element of C adds its parts in slice order.
 * Returns 0, having written nothing, when the buffer cannot be had. */
static int sgemm_ksplit(int64_t nb, int ta, int tb, int64_t M, int64_t N,
                         int64_t K, float alpha, const float *A, int64_t lda,
                         const float *B, int64_t ldb, float beta, float *C,
                         int64_t ldc)
{
    int64_t MN = M * N;
    float *work = malloc((size_t)((nb - 1) * MN) * sizeof(float));
    if (work == NULL) {
        return 0;
    }

#pragma omp parallel
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < nb; i++) {
            int64_t k0 = K * i / nb, k1 = K * (i + 1) / nb;
            /* op(A) column k is A's column k, or with ta its row k */
            const float *Ai = ta ? A + k0 * lda : A + k0;
            const float *Bi = tb ? B + k0 : B + k0 * ldb;
            if (i == 0) {
                sgemm_block(ta, tb, M, N, k1 - k0, alpha, Ai, lda, Bi, ldb,
                            beta, C, ldc);
            } else {
                sgemm_block(ta, tb, M, N, k1 - k0, alpha, Ai, lda, Bi, ldb,
                            0.0f, work + (i - 1) * MN, N);
            }
        }
        /* the implied barrier: every part is ready */
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) {
            float *c = C + m * ldc;
            for (int64_t i = 1; i < nb; i++) {
                const float *p = work + (i - 1) * MN + m * N;
                for (int64_t n = 0; n < N; n++) {
                    c[n] += p[n];
                }
            }
        }
    }
    free(work);
    return 1;
}

void nfcl_sgemm(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                const float *A, int64_t lda, const float *B, int64_t ldb,
                float beta, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0) {
        return;
    }
    int64_t nk = k_blocks(M, N, K);
    if (nk > 1 && sgemm_ksplit(nk, ta, tb, M, N, K, alpha, A, lda, B, ldb,
                               beta, C, ldc)) {
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
