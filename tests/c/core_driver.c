/*
 * core_driver.c - a short training run of every encoder through the C core
 * alone, for valgrind: no Python, so every report is about the core.
 * Exit status 0 when every call returned NFCL_OK.
 */
#include <stdint.h>
#include <stdlib.h>

#include "nfcl.h"

#define V 60
#define B 4
#define T 6
#define C 8

static int fail(int status)
{
    return status != NFCL_OK;
}

/* one encoder: init, then 3 steps of forward, both losses, backward, Adam */
static int train(int kind)
{
    nfcl_tf_config tf = {V, C, 2, 2, T, 12, 0.1f, kind == 1};
    nfcl_gru_config gru = {V, C, 10, 2, T, 0.1f};
    nfcl_caser_config cs = {V, C, 3, 2, 2, T, 0.1f};
    int64_t np_ = kind <= 1 ? nfcl_tf_num_params(&tf)
                : kind == 2 ? nfcl_gru_num_params(&gru) : nfcl_caser_num_params(&cs);
    int64_t na = kind <= 1 ? nfcl_tf_acts_size(&tf, B, T)
               : kind == 2 ? nfcl_gru_acts_size(&gru, B, T) : nfcl_caser_acts_size(&cs, B, T);
    int64_t ns = kind <= 1 ? nfcl_tf_scratch_size(&tf, B, T)
               : kind == 2 ? nfcl_gru_scratch_size(&gru, B, T)
               : nfcl_caser_scratch_size(&cs, B, T);
    float *p = calloc(np_, 4), *g = calloc(np_, 4), *m = calloc(np_, 4), *v = calloc(np_, 4);
    float *acts = calloc(na, 4), *scr = calloc(ns, 4);
    float *q = calloc(B * T * C, 4), *dq = calloc(B * T * C, 4);
    uint8_t mask[V] = {0}, seen[V] = {0}, skips[B * (T + 1)];
    int32_t rows[V], items[B * (T + 1)], inputs[B * T], targets[B * T];
    int32_t cand[B * T + 20], tidx[B * T];
    int64_t count = 0, K = 0, n_anch = 0;
    nfcl_rowset rs = {mask, rows, &count};
    float loss, gnorm;
    int bad = !p || !g || !m || !v || !acts || !scr || !q || !dq;

    /* sessions of lengths 4..7, right-padded, about a third skipped */
    for (int b = 0; b < B; b++) {
        for (int t = 0; t <= T; t++) {
            int real = t < 4 + b;
            items[b * (T + 1) + t] = real ? 1 + (b * 7 + t * 5) % (V - 1) : 0;
            skips[b * (T + 1) + t] = real && (b + t) % 3 == 0;
        }
        for (int t = 0; t < T; t++) {
            inputs[b * T + t] = items[b * (T + 1) + t];
            targets[b * T + t] = items[b * (T + 1) + t + 1];
        }
    }
    bad = bad || fail(kind <= 1 ? nfcl_tf_init(&tf, p, 1)
                      : kind == 2 ? nfcl_gru_init(&gru, p, 1) : nfcl_caser_init(&cs, p, 1));
    for (int step = 1; !bad && step <= 3; step++) {
        for (int i = 0; i < B * T * C; i++) {
            dq[i] = 0.0f;
        }
        bad = fail(kind <= 1 ? nfcl_tf_forward(&tf, p, acts, inputs, B, T, 2, step, 1, q)
                   : kind == 2 ? nfcl_gru_forward(&gru, p, acts, inputs, B, T, 2, step, 1, q)
                   : nfcl_caser_forward(&cs, p, acts, inputs, B, T, 2, step, 1, q));
        bad = bad || fail(nfcl_sample_candidates(targets, B * T, V, 20, 3, step, seen,
                                                 cand, &K, tidx));
        bad = bad || fail(nfcl_softmax_xent(q, B * T, C, p, V, cand, K, tidx, 1.0f, &loss,
                                            dq, g, &rs));
        bad = bad || fail(nfcl_infonce(q, B, T, C, p, V, items, skips, NULL, 0.1f,
                                       step % 2, 0.5f, &loss, &n_anch, dq, g, &rs));
        bad = bad || fail(kind <= 1 ? nfcl_tf_backward(&tf, p, g, acts, scr, inputs, B, T, 2,
                                                       step, 1, dq, &rs)
                          : kind == 2 ? nfcl_gru_backward(&gru, p, g, acts, scr, inputs, B,
                                                          T, 2, step, 1, dq, &rs)
                          : nfcl_caser_backward(&cs, p, g, acts, scr, inputs, B, T, 2, step,
                                                1, dq, &rs));
        bad = bad || fail(nfcl_adam_step(p, g, m, v, np_, V, C, &rs, 1e-3f, 0.9f, 0.999f,
                                         1e-8f, 0.0f, 5.0f, step, &gnorm));
    }

    /* evaluation kernels on the last prediction vectors */
    int64_t greater[B * T], ties[B * T];
    int32_t ids[B * T * 3], tg[B * T];
    float sc[B * T * 3];
    for (int i = 0; i < B * T; i++) {
        tg[i] = 1 + i % (V - 1);
    }
    bad = bad || fail(nfcl_rank_targets(q, B * T, C, p, V, NULL, V - 1, tg, greater, ties));
    bad = bad || fail(nfcl_topk(q, B * T, C, p, V, 3, NULL, 0, ids, sc));
    free(p), free(g), free(m), free(v), free(acts), free(scr), free(q), free(dq);
    return bad;
}

int main(void)
{
    nfcl_set_threads(1);
    int bad = 0;
    for (int kind = 0; kind < 4; kind++) {
        bad |= train(kind);
    }
    return bad;
}
