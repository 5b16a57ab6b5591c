/* Fused softmax attention for a CPU, one (T_t, T_s) block at a time.

   Built by alignkit_models/layers/attention_kernel.py with the system C compiler and loaded with
   ctypes; every pointer is to a contiguous tensor that the Python side checked. For each of the
   N = batch * heads blocks:

       S = q k^T + bias,  P = softmax(S) by rows,  D = P * mask,  out = scale * D v

   q is already multiplied by h^-1/2; bias (masked entries a large finite negative number, as
   -inf would meet the fast-math flags) has strides (b, head, row) and unit stride along T_s;
   mask is 0/1 of shape (N, T_t, T_s) or NULL. The forward stores each row's log-sum-exp, from
   which the backward recomputes P block by block, so no (N, T_t, T_s) tensor is written: each
   block's scores stay in cache, where the unfused version made several passes over 5 MB. Rows go
   four at a time (ROWS), so that each loaded column of k^T or v^T serves four rows: at T_s = 100
   the loops are short, and their overhead, not the arithmetic, was most of the time. A last,
   partial group repeats its last row, whose copies write nothing and add zero gradients.

   Backward, with c = scale and delta_i = dO_i . out_i (= rowsum(dP * P) for dP = c (dO v^T) * mask):
       dv = c D^T dO,   dS = P * (c (dO v^T) * mask - delta),   dq = dS k,   dk = dS^T q. */

#ifndef REAL
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define REAL float
#define NAME(x) x##_f32
#define EXP expf
#define LOG logf
#include __FILE__
#undef REAL
#undef NAME
#undef EXP
#undef LOG

#define REAL double
#define NAME(x) x##_f64
#define EXP exp
#define LOG log
#include __FILE__

#else

#ifndef ROWS
#define ROWS 4
#endif

/* Rows row[0..3] of S = q k^T + bias into s (4 x T_s). */
static void NAME(scores)(const REAL *qb, const REAL *kt, const REAL *bias_block, int64_t si, const int64_t *row,
                         REAL *restrict s, int64_t ts, int64_t h) {
    for (int r = 0; r < ROWS; r++) {
        if (bias_block) memcpy(s + r * ts, bias_block + row[r] * si, (size_t)ts * sizeof(REAL));
        else memset(s + r * ts, 0, (size_t)ts * sizeof(REAL));
    }
    REAL *restrict s0 = s, *restrict s1 = s + ts, *restrict s2 = s + 2 * ts, *restrict s3 = s + 3 * ts;
    for (int64_t c = 0; c < h; c++) {
        const REAL a0 = qb[row[0] * h + c], a1 = qb[row[1] * h + c], a2 = qb[row[2] * h + c], a3 = qb[row[3] * h + c];
        const REAL *restrict kc = kt + c * ts;
        for (int64_t j = 0; j < ts; j++) {
            const REAL x = kc[j];
            s0[j] += a0 * x;
            s1[j] += a1 * x;
            s2[j] += a2 * x;
            s3[j] += a3 * x;
        }
    }
}

void NAME(attention_forward)(int64_t n_blocks, int64_t heads, int64_t tt, int64_t ts, int64_t h, const REAL *q,
                             const REAL *k_t, const REAL *v_t, const REAL *bias, int64_t sb, int64_t sh, int64_t si,
                             const REAL *mask, REAL scale, REAL *out, REAL *lse, int threads) {
#pragma omp parallel num_threads(threads)
    {
        REAL *s = malloc((size_t)(ROWS * ts) * sizeof(REAL));
#pragma omp for schedule(static)
        for (int64_t n = 0; n < n_blocks; n++) {
            const REAL *qb = q + n * tt * h, *bias_block = bias ? bias + (n / heads) * sb + (n % heads) * sh : NULL;
            const REAL *kt = k_t + n * ts * h, *vt = v_t + n * ts * h;
            for (int64_t i0 = 0; i0 < tt; i0 += ROWS) {
                int64_t row[ROWS];
                REAL total[ROWS], shift[ROWS];
                for (int r = 0; r < ROWS; r++) row[r] = i0 + r < tt ? i0 + r : tt - 1;
                NAME(scores)(qb, kt, bias_block, si, row, s, ts, h);
                for (int r = 0; r < ROWS; r++) {
                    REAL *restrict sr = s + r * ts;
                    REAL m = sr[0], sum = 0;
                    for (int64_t j = 1; j < ts; j++) m = sr[j] > m ? sr[j] : m;
                    for (int64_t j = 0; j < ts; j++) {
                        sr[j] = EXP(sr[j] - m);
                        sum += sr[j];
                    }
                    if (mask) {
                        const REAL *restrict mrow = mask + (n * tt + row[r]) * ts;
                        for (int64_t j = 0; j < ts; j++) sr[j] *= mrow[j];
                    }
                    shift[r] = m;
                    total[r] = sum;
                }
                const REAL *restrict s0 = s, *restrict s1 = s + ts, *restrict s2 = s + 2 * ts, *restrict s3 = s + 3 * ts;
                for (int64_t c = 0; c < h; c++) {
                    const REAL *restrict vc = vt + c * ts;
                    REAL acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
                    for (int64_t j = 0; j < ts; j++) {
                        const REAL x = vc[j];
                        acc0 += s0[j] * x;
                        acc1 += s1[j] * x;
                        acc2 += s2[j] * x;
                        acc3 += s3[j] * x;
                    }
                    const REAL acc[ROWS] = {acc0, acc1, acc2, acc3};
                    for (int r = 0; r < ROWS && i0 + r < tt; r++) out[(n * tt + i0 + r) * h + c] = acc[r] * (scale / total[r]);
                }
                for (int r = 0; r < ROWS && i0 + r < tt; r++) lse[n * tt + i0 + r] = shift[r] + LOG(total[r]);
            }
        }
        free(s);
    }
}

void NAME(attention_backward)(int64_t n_blocks, int64_t heads, int64_t tt, int64_t ts, int64_t h, const REAL *q,
                              const REAL *k_t, const REAL *v_t, const REAL *bias, int64_t sb, int64_t sh, int64_t si,
                              const REAL *mask, REAL scale, const REAL *out, const REAL *lse, const REAL *grad,
                              REAL *dq, REAL *dk_t, REAL *dv_t, int threads) {
#pragma omp parallel num_threads(threads)
    {
        /* four rows of P (then D) and of dS */
        REAL *p = malloc((size_t)(2 * ROWS * ts) * sizeof(REAL));
        REAL *ds = p + ROWS * ts;
#pragma omp for schedule(static)
        for (int64_t n = 0; n < n_blocks; n++) {
            const REAL *qb = q + n * tt * h, *gb = grad + n * tt * h, *bias_block = bias ? bias + (n / heads) * sb + (n % heads) * sh : NULL;
            const REAL *kt = k_t + n * ts * h, *vt = v_t + n * ts * h;
            REAL *dkt = dk_t + n * ts * h, *dvt = dv_t + n * ts * h;
            memset(dkt, 0, (size_t)(ts * h) * sizeof(REAL));
            memset(dvt, 0, (size_t)(ts * h) * sizeof(REAL));
            for (int64_t i0 = 0; i0 < tt; i0 += ROWS) {
                int64_t row[ROWS];
                for (int r = 0; r < ROWS; r++) row[r] = i0 + r < tt ? i0 + r : tt - 1;
                NAME(scores)(qb, kt, bias_block, si, row, p, ts, h);
                NAME(scores)(gb, vt, NULL, 0, row, ds, ts, h); /* dO v^T */
                for (int r = 0; r < ROWS; r++) {
                    const REAL *gi = gb + row[r] * h, *oi = out + (n * tt + row[r]) * h;
                    REAL *restrict pr = p + r * ts, *restrict dr = ds + r * ts;
                    const REAL l = lse[n * tt + row[r]];
                    REAL delta = 0;
                    for (int64_t c = 0; c < h; c++) delta += gi[c] * oi[c];
                    if (mask) {
                        const REAL *restrict mrow = mask + (n * tt + row[r]) * ts;
                        for (int64_t j = 0; j < ts; j++) {
                            const REAL weight = EXP(pr[j] - l), dropped = weight * mrow[j];
                            dr[j] = dropped * scale * dr[j] - weight * delta;
                            pr[j] = dropped; /* D, for dv */
                        }
                    } else {
                        for (int64_t j = 0; j < ts; j++) {
                            pr[j] = EXP(pr[j] - l);
                            dr[j] = pr[j] * (scale * dr[j] - delta);
                        }
                    }
                }
                const REAL *restrict p0 = p, *restrict p1 = p + ts, *restrict p2 = p + 2 * ts, *restrict p3 = p + 3 * ts;
                const REAL *restrict d0 = ds, *restrict d1 = ds + ts, *restrict d2 = ds + 2 * ts, *restrict d3 = ds + 3 * ts;
                for (int64_t c = 0; c < h; c++) {
                    /* scalars, not arrays: gcc vectorizes the loop below only then; the copies of a
                       repeated row contribute nothing */
                    const REAL a0 = scale * gb[row[0] * h + c], b0 = qb[row[0] * h + c];
                    const REAL a1 = i0 + 1 < tt ? scale * gb[row[1] * h + c] : 0, b1 = i0 + 1 < tt ? qb[row[1] * h + c] : 0;
                    const REAL a2 = i0 + 2 < tt ? scale * gb[row[2] * h + c] : 0, b2 = i0 + 2 < tt ? qb[row[2] * h + c] : 0;
                    const REAL a3 = i0 + 3 < tt ? scale * gb[row[3] * h + c] : 0, b3 = i0 + 3 < tt ? qb[row[3] * h + c] : 0;
                    REAL *restrict dvc = dvt + c * ts, *restrict dkc = dkt + c * ts;
                    const REAL *restrict kc = kt + c * ts;
                    REAL acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
#pragma GCC ivdep /* dv^T and dk^T are separate outputs; the rows, separate parts of the scratch */
                    for (int64_t j = 0; j < ts; j++) {
                        dvc[j] += a0 * p0[j] + a1 * p1[j] + a2 * p2[j] + a3 * p3[j];
                        dkc[j] += b0 * d0[j] + b1 * d1[j] + b2 * d2[j] + b3 * d3[j];
                        const REAL x = kc[j];
                        acc0 += d0[j] * x;
                        acc1 += d1[j] * x;
                        acc2 += d2[j] * x;
                        acc3 += d3[j] * x;
                    }
                    const REAL acc[ROWS] = {acc0, acc1, acc2, acc3};
                    for (int r = 0; r < ROWS && i0 + r < tt; r++) dq[(n * tt + i0 + r) * h + c] = acc[r];
                }
            }
        }
        free(p);
    }
}

#endif
