// Linear attention: feature maps, masked chunk sums, column statistics. Contracts: include/AttentionKernels.h; vector macros: vector.h.

#include "vector.h"

AK_CLONES void ak_feature_rows(ak_feature_kind kind, const float *src, long lds, float *dst,
                               long ldd, long rows, long cols) {
    for (long r = 0; r < rows; r++) {
        const float *x = src + r * lds;
        float *y = dst + r * ldd;
        long i = 0;
        if (kind == AK_FEATURE_ELU1) {
            for (; i + W <= cols; i += W) {
                vf v = LOAD(x + i);
                vi pos = v > 0.0f;
                vf e = EXP16(VMIN(v, (vf)0.0f));
                STORE(y + i, VSELECT(pos, v + 1.0f, e));
            }
            if (i < cols) {
                vf v = LOAD_PARTIAL(x + i, cols - i, 0.0f);
                vi pos = v > 0.0f;
                vf e = EXP16(VMIN(v, (vf)0.0f));
                STORE_PARTIAL(y + i, VSELECT(pos, v + 1.0f, e), cols - i);
            }
        } else {
            for (; i + W <= cols; i += W) STORE(y + i, VMAX(LOAD(x + i), (vf)0.0f));
            for (; i < cols; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
        }
    }
}

AK_CLONES void ak_zero_after(float *s, long rows, long cols, long lds, const int *valid) {
    for (long r = 0; r < rows; r++) {
        long c = clamp_valid(valid, r, cols);
        if (c < cols) memset(s + r * lds + c, 0, (size_t)(cols - c) * sizeof(float));
    }
}

AK_CLONES void ak_row_sums_add(const float *s, long rows, long cols, long lds, float *out) {
    for (long r = 0; r < rows; r++) {
        const float *x = s + r * lds;
        vf acc = 0.0f;
        long i = 0;
        for (; i + W <= cols; i += W) acc += LOAD(x + i);
        float t = HSUM(acc);
        for (; i < cols; i++) t += x[i];
        out[r] += t;
    }
}

AK_CLONES void ak_col_sums_add(const float *x, long rows, long cols, long ldx, float *acc) {
    for (long r = 0; r < rows; r++) {
        const float *row = x + r * ldx;
        long c = 0;
        for (; c + W <= cols; c += W) STORE(acc + c, LOAD(acc + c) + LOAD(row + c));
        for (; c < cols; c++) acc[c] += row[c];
    }
}

AK_CLONES void ak_col_max(const float *x, long rows, long cols, long ldx, float *colmax) {
    for (long r = 0; r < rows; r++) {
        const float *row = x + r * ldx;
        long c = 0;
        for (; c + W <= cols; c += W) STORE(colmax + c, VMAX(LOAD(row + c), LOAD(colmax + c)));
        for (; c < cols; c++) colmax[c] = row[c] > colmax[c] ? row[c] : colmax[c];
    }
}

AK_CLONES void ak_exp_sub_cols(const float *x, long rows, long cols, long ldx, const float *colmax,
                               float *dst, long ldd, float *colsum) {
    for (long r = 0; r < rows; r++) {
        const float *row = x + r * ldx;
        float *out = dst + r * ldd;
        long c = 0;
        for (; c + W <= cols; c += W) {
            vf e = EXP16(LOAD(row + c) - LOAD(colmax + c));
            STORE(out + c, e);
            STORE(colsum + c, LOAD(colsum + c) + e);
        }
        if (c < cols) {
            long n = cols - c;
            vf e = EXP16(LOAD_PARTIAL(row + c, n, 0.0f) - LOAD_PARTIAL(colmax + c, n, 0.0f));
            STORE_PARTIAL(out + c, e, n);
            for (long i = 0; i < n; i++) colsum[c + i] += out[c + i];
        }
    }
}

AK_CLONES void ak_row_sumsq(const float *x, long rows, long cols, long ldx, float alpha, float *out) {
    for (long r = 0; r < rows; r++) {
        const float *row = x + r * ldx;
        vf acc = 0.0f;
        long i = 0;
        for (; i + W <= cols; i += W) { vf v = LOAD(row + i); acc += v * v; }
        float t = HSUM(acc);
        for (; i < cols; i++) t += row[i] * row[i];
        out[r] = t * alpha;
    }
}

AK_CLONES void ak_row_max(const float *x, long rows, long cols, long ldx, float *out) {
    for (long r = 0; r < rows; r++) out[r] = cols > 0 ? row_max(x + r * ldx, cols) : -INFINITY;
}

AK_CLONES void ak_exp_sub_rows(float *p, long rows, long cols, long ldp, const float *shift) {
    for (long r = 0; r < rows; r++) {
        float *row = p + r * ldp;
        vf sh = shift[r];
        long i = 0;
        for (; i + W <= cols; i += W) STORE(row + i, EXP16(LOAD(row + i) - sh));
        if (i < cols) STORE_PARTIAL(row + i, EXP16(LOAD_PARTIAL(row + i, cols - i, 0.0f) - sh), cols - i);
    }
}

void ak_elu1(const float *x, float *y, long n) { ak_feature_rows(AK_FEATURE_ELU1, x, n, y, n, 1, n); }
void ak_relu(const float *x, float *y, long n) { ak_feature_rows(AK_FEATURE_RELU, x, n, y, n, 1, n); }

AK_CLONES void ak_feature_grad_rows(ak_feature_kind kind, const float *x, long ldx, const float *g, long ldg,
                                    float *dst, long ldd, long rows, long cols) {
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * ldx, *gr = g + r * ldg;
        float *out = dst + r * ldd;
        long i = 0;
        if (kind == AK_FEATURE_ELU1) {
            for (; i + W <= cols; i += W) {
                vf v = LOAD(xr + i), gv = LOAD(gr + i);
                STORE(out + i, VSELECT(v > 0.0f, gv, gv * EXP16(VMIN(v, (vf)0.0f))));
            }
            if (i < cols) {
                long n = cols - i;
                vf v = LOAD_PARTIAL(xr + i, n, 0.0f), gv = LOAD_PARTIAL(gr + i, n, 0.0f);
                STORE_PARTIAL(out + i, VSELECT(v > 0.0f, gv, gv * EXP16(VMIN(v, (vf)0.0f))), n);
            }
        } else {
            for (; i < cols; i++) out[i] = xr[i] > 0.0f ? gr[i] : 0.0f;
        }
    }
}

AK_CLONES void ak_mul(float *y, const float *x, long n) {
    long i = 0;
    for (; i + W <= n; i += W) STORE(y + i, LOAD(y + i) * LOAD(x + i));
    for (; i < n; i++) y[i] *= x[i];
}
