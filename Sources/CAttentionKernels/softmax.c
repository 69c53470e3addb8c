// Row softmax, FlashAttention's online softmax tile, row normalisation. Contracts: include/AttentionKernels.h; vector macros: vector.h.

#include "vector.h"

AK_CLONES void ak_softmax_rows_lse(float *s, long rows, long cols, long lds, const int *valid, float *lse) {
    for (long r = 0; r < rows; r++) {
        float *row = s + r * lds;
        long c = clamp_valid(valid, r, cols);
        float mx = c > 0 ? row_max(row, c) : -INFINITY;
        if (mx == -INFINITY) {              // fully masked row: zeros, never NaN
            memset(row, 0, (size_t)cols * sizeof(float));
            if (lse) lse[r] = -INFINITY;
            continue;
        }
        float sum = exp_shift_sum(row, c, mx);   // sum >= 1: the max contributes exp(0)
        scale_row(row, c, 1.0f / sum);
        if (c < cols) memset(row + c, 0, (size_t)(cols - c) * sizeof(float));
        if (lse) lse[r] = mx + logf(sum);
    }
}

void ak_softmax_rows(float *s, long rows, long cols, long lds, const int *valid) {
    ak_softmax_rows_lse(s, rows, cols, lds, valid, NULL);
}

AK_CLONES void ak_online_softmax_tile(float *s, long rows, long cols, long lds, const int *valid,
                                      float *m, float *l, float *o, long ldo, long dv) {
    for (long r = 0; r < rows; r++) {
        float *row = s + r * lds;
        long c = clamp_valid(valid, r, cols);
        float tile_max = c > 0 ? row_max(row, c) : -INFINITY;
        float m_old = m[r];
        float m_new = tile_max > m_old ? tile_max : m_old;
        if (m_new == -INFINITY) {           // nothing seen yet for this row: contribute nothing
            memset(row, 0, (size_t)cols * sizeof(float));
            continue;
        }
        float sum = c > 0 ? exp_shift_sum(row, c, m_new) : 0.0f;
        if (c < cols) memset(row + c, 0, (size_t)(cols - c) * sizeof(float));
        if (m_new != m_old) {
            // m_old = -inf means o and l are still 0: alpha = 0 keeps them 0 without exp(-inf).
            float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
            scale_row(o + r * ldo, dv, alpha);
            l[r] = l[r] * alpha + sum;
            m[r] = m_new;
        } else {
            l[r] += sum;
        }
    }
}

AK_CLONES void ak_divide_rows(const float *src, long lds, float *dst, long ldd, long rows,
                              long cols, const float *l) {
    for (long r = 0; r < rows; r++) {
        const float *a = src + r * lds;
        float *b = dst + r * ldd;
        float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        if (inv == INFINITY) {   // a subnormal normaliser: divide, so 0/l stays 0 and x/l stays exact
            for (long j = 0; j < cols; j++) b[j] = a[j] / l[r];
            continue;
        }
        vf vinv = inv;
        long j = 0;
        for (; j + W <= cols; j += W) STORE(b + j, LOAD(a + j) * vinv);
        for (; j < cols; j++) b[j] = a[j] * inv;
    }
}

// ---- Backward ----

AK_CLONES void ak_probs_from_lse(float *s, long rows, long cols, long lds, const int *valid, const float *lse) {
    for (long r = 0; r < rows; r++) {
        float *row = s + r * lds;
        long c = clamp_valid(valid, r, cols);
        float shift = lse[r];
        if (shift == -INFINITY) c = 0;      // a fully masked row: no probability anywhere
        vf vs = shift;
        long j = 0;
        for (; j + W <= c; j += W) STORE(row + j, EXP16(LOAD(row + j) - vs));
        if (j < c) STORE_PARTIAL(row + j, EXP16(LOAD_PARTIAL(row + j, c - j, -INFINITY) - vs), c - j);
        if (c < cols) memset(row + c, 0, (size_t)(cols - c) * sizeof(float));
    }
}

AK_CLONES void ak_softmax_grad(float *p, long ldp, const float *dp, long lddp, long rows, long cols,
                               const float *D) {
    for (long r = 0; r < rows; r++) {
        float *pr = p + r * ldp;
        const float *gr = dp + r * lddp;
        vf vd = D[r];
        long j = 0;
        for (; j + W <= cols; j += W) STORE(pr + j, LOAD(pr + j) * (LOAD(gr + j) - vd));
        for (; j < cols; j++) pr[j] = pr[j] * (gr[j] - D[r]);
    }
}

AK_CLONES void ak_row_dots(const float *a, long lda, const float *b, long ldb, long rows, long cols, float *out) {
    for (long r = 0; r < rows; r++) {
        const float *x = a + r * lda, *y = b + r * ldb;
        vf acc = 0.0f;
        long j = 0;
        for (; j + W <= cols; j += W) acc += LOAD(x + j) * LOAD(y + j);
        float t = HSUM(acc);
        for (; j < cols; j++) t += x[j] * y[j];
        out[r] = t;
    }
}
