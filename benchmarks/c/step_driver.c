/*
 * step_driver.c - one training step of one encoder through the C core, for
 * instruction counting under callgrind (benchmarks/bench_callgrind.py).
 *
 *   step_driver <model> <setting>
 *   model: sasrec | bert4rec | gru4rec | caser
 *   setting: paper | recbole (those of bench_train.py) | small (the paper
 *   setting shrunk for callgrind: batch 16, dim 64, 2 heads, 10,000 items,
 *   200 negatives, the term on)
 *
 * Builds the model, runs one untimed warm-up step, then exactly one step in
 * one_step() (forward, next-item loss, InfoNCE in the paper setting,
 * backward, Adam), the function callgrind is told to count. Data are fixed
 * pseudo-random sessions, so the count is the same run after run.
 * Exit status 0 when every core call returned NFCL_OK.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nfcl.h"

typedef struct {
    int kind; /* 0 SASRec, 1 BERT4Rec, 2 GRU4Rec, 3 Caser */
    nfcl_tf_config tf;
    nfcl_gru_config gru;
    nfcl_caser_config cs;
    int B, T, C, sampled, n_neg, term;
    int64_t V, n_params, emb_rows;
    float *p, *g, *m, *v, *acts, *scr, *q, *dq;
    int32_t *items, *inputs, *targets, *cand, *tidx, *rows;
    uint8_t *skips, *mask, *seen;
    int64_t count;
} run;

static int64_t sizes(run *r, int which) /* 0 params, 1 acts, 2 scratch */
{
    switch (r->kind) {
    case 0:
    case 1:
        return which == 0 ? nfcl_tf_num_params(&r->tf)
             : which == 1 ? nfcl_tf_acts_size(&r->tf, r->B, r->T)
                          : nfcl_tf_scratch_size(&r->tf, r->B, r->T);
    case 2:
        return which == 0 ? nfcl_gru_num_params(&r->gru)
             : which == 1 ? nfcl_gru_acts_size(&r->gru, r->B, r->T)
                          : nfcl_gru_scratch_size(&r->gru, r->B, r->T);
    default:
        return which == 0 ? nfcl_caser_num_params(&r->cs)
             : which == 1 ? nfcl_caser_acts_size(&r->cs, r->B, r->T)
                          : nfcl_caser_scratch_size(&r->cs, r->B, r->T);
    }
}

/* the counted function: one optimizer step */
__attribute__((noinline)) int one_step(run *r, int step)
{
    int B = r->B, T = r->T, C = r->C, st = NFCL_OK;
    int64_t K = 0, n_anch = 0;
    nfcl_rowset rs = {r->mask, r->rows, &r->count};
    float loss, gnorm;
    memset(r->dq, 0, (size_t)B * T * C * sizeof(float));

    if (r->kind <= 1) {
        st = nfcl_tf_forward(&r->tf, r->p, r->acts, r->inputs, B, T, 7, step, 1, r->q);
    } else if (r->kind == 2) {
        st = nfcl_gru_forward(&r->gru, r->p, r->acts, r->inputs, B, T, 7, step, 1, r->q);
    } else {
        st = nfcl_caser_forward(&r->cs, r->p, r->acts, r->inputs, B, T, 7, step, 1, r->q);
    }
    if (st == NFCL_OK && r->sampled) {
        st = nfcl_sample_candidates(r->targets, (int64_t)B * T, r->V, r->n_neg, 3, step,
                                    r->seen, r->cand, &K, r->tidx);
    } else if (st == NFCL_OK) {
        K = r->V - 1;
        for (int64_t i = 0; i < (int64_t)B * T; i++) {
            r->tidx[i] = r->targets[i] - 1;
        }
    }
    if (st == NFCL_OK) {
        st = nfcl_softmax_xent(r->q, (int64_t)B * T, C, r->p, r->V, r->sampled ? r->cand : NULL,
                               K, r->tidx, 1.0f, &loss, r->dq, r->g, &rs);
    }
    if (st == NFCL_OK && r->term) {
        st = nfcl_infonce(r->q, B, T, C, r->p, r->V, r->items, r->skips, NULL, 0.1f, 0, 0.5f,
                          &loss, &n_anch, r->dq, r->g, &rs);
    }
    if (st == NFCL_OK) {
        st = r->kind <= 1 ? nfcl_tf_backward(&r->tf, r->p, r->g, r->acts, r->scr, r->inputs,
                                             B, T, 7, step, 1, r->dq, &rs)
           : r->kind == 2 ? nfcl_gru_backward(&r->gru, r->p, r->g, r->acts, r->scr,
                                              r->inputs, B, T, 7, step, 1, r->dq, &rs)
                          : nfcl_caser_backward(&r->cs, r->p, r->g, r->acts, r->scr,
                                                r->inputs, B, T, 7, step, 1, r->dq, &rs);
    }
    if (st == NFCL_OK) {
        st = nfcl_adam_step(r->p, r->g, r->m, r->v, r->n_params, r->emb_rows, C, &rs,
                            1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 5.0f, step, &gnorm);
    }
    return st;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: step_driver sasrec|bert4rec|gru4rec|caser paper|recbole|small\n");
        return 2;
    }
    const char *names[] = {"sasrec", "bert4rec", "gru4rec", "caser"};
    run r;
    memset(&r, 0, sizeof r);
    r.kind = -1;
    for (int k = 0; k < 4; k++) {
        r.kind = strcmp(argv[1], names[k]) == 0 ? k : r.kind;
    }
    int paper = strcmp(argv[2], "paper") == 0, small = strcmp(argv[2], "small") == 0;
    if (r.kind < 0 || (!paper && !small && strcmp(argv[2], "recbole") != 0)) {
        fprintf(stderr, "unknown model or setting\n");
        return 2;
    }

    /* the settings of bench_train.py, and the small one */
    r.B = paper ? 64 : small ? 16 : 256;
    r.T = paper || small ? 20 : 50;
    r.C = paper ? 128 : 64;
    r.V = paper ? 100001 : small ? 10001 : 3501;
    r.sampled = paper || small;
    r.n_neg = small ? 200 : 1000;
    r.term = paper || small;
    int heads = paper ? 8 : 2;
    nfcl_tf_config tf = {r.V, r.C, heads, 2, r.T, r.C, 0.2f, r.kind == 1};
    nfcl_gru_config gru = {r.V, r.C, r.C, 1, r.T, 0.2f};
    nfcl_caser_config cs = {r.V, r.C, 5, 16, 4, r.T, 0.2f};
    r.tf = tf, r.gru = gru, r.cs = cs;

    /* tensor 0 is the item table (BERT4Rec's has a [MASK] row more) */
    nfcl_tensor_info emb;
    int ok = r.kind <= 1 ? nfcl_tf_tensor(&r.tf, 0, &emb)
           : r.kind == 2 ? nfcl_gru_tensor(&r.gru, 0, &emb) : nfcl_caser_tensor(&r.cs, 0, &emb);
    if (ok != NFCL_OK) {
        fprintf(stderr, "bad config\n");
        return 1;
    }
    r.emb_rows = emb.shape[0];

    int64_t np_ = sizes(&r, 0), na = sizes(&r, 1), ns = sizes(&r, 2);
    int64_t BT = (int64_t)r.B * r.T, BS = (int64_t)r.B * (r.T + 1);
    r.n_params = np_;
    r.p = calloc(np_, 4), r.g = calloc(np_, 4), r.m = calloc(np_, 4), r.v = calloc(np_, 4);
    r.acts = calloc(na, 4), r.scr = calloc(ns, 4);
    r.q = calloc(BT * r.C, 4), r.dq = calloc(BT * r.C, 4);
    r.items = calloc(BS, 4), r.inputs = calloc(BT, 4), r.targets = calloc(BT, 4);
    r.cand = calloc(BT + r.n_neg, 4), r.tidx = calloc(BT, 4), r.rows = calloc(r.V, 4);
    r.skips = calloc(BS, 1), r.mask = calloc(r.V, 1), r.seen = calloc(r.V, 1);
    if (!r.p || !r.g || !r.m || !r.v || !r.acts || !r.scr || !r.q || !r.dq || !r.items ||
        !r.inputs || !r.targets || !r.cand || !r.tidx || !r.rows || !r.skips || !r.mask ||
        !r.seen) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }

    /* sessions of lengths T/2+1..T+1, right-padded, 30% skipped (an LCG) */
    uint64_t s = 12345;
    for (int b = 0; b < r.B; b++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        int len = r.T / 2 + 1 + (int)((s >> 33) % (uint64_t)(r.T / 2 + 1));
        for (int t = 0; t <= r.T; t++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            int real = t < len;
            r.items[b * (r.T + 1) + t] = real ? 1 + (int32_t)((s >> 33) % (uint64_t)(r.V - 1)) : 0;
            r.skips[b * (r.T + 1) + t] = real && (s >> 20) % 10 < 3;
        }
        for (int t = 0; t < r.T; t++) {
            r.inputs[b * r.T + t] = r.items[b * (r.T + 1) + t];
            r.targets[b * r.T + t] = r.items[b * (r.T + 1) + t + 1];
        }
    }

    nfcl_set_threads(1);
    int st = r.kind <= 1 ? nfcl_tf_init(&r.tf, r.p, 1)
           : r.kind == 2 ? nfcl_gru_init(&r.gru, r.p, 1) : nfcl_caser_init(&r.cs, r.p, 1);
    st = st == NFCL_OK ? one_step(&r, 1) : st; /* warm-up, not counted */
    st = st == NFCL_OK ? one_step(&r, 2) : st;
    if (st != NFCL_OK) {
        fprintf(stderr, "core call failed with status %d\n", st);
    }
    return st != NFCL_OK;
}
