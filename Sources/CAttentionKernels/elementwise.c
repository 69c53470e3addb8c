// Elementwise kernels: exp, copies with a scale, fills, the finite-value scan. Contracts: include/AttentionKernels.h; vector macros: vector.h.

#include "vector.h"

AK_CLONES void ak_exp(const float *x, float *y, long n) {
    long i = 0;
    for (; i + W <= n; i += W) STORE(y + i, EXP16(LOAD(x + i)));
    if (i < n) STORE_PARTIAL(y + i, EXP16(LOAD_PARTIAL(x + i, n - i, 0.0f)), n - i);
}


AK_CLONES void ak_copy_scaled(const float *src, long lds, float *dst, long ldd, long rows,
                              long cols, float alpha) {
    vf va = alpha;
    for (long r = 0; r < rows; r++) {
        const float *a = src + r * lds;
        float *b = dst + r * ldd;
        long j = 0;
        for (; j + W <= cols; j += W) STORE(b + j, LOAD(a + j) * va);
        for (; j < cols; j++) b[j] = a[j] * alpha;
    }
}

AK_CLONES long ak_scan_values(const float *x, long n, int allow_negative_infinity, float *max_abs) {
    // v - v is 0 for finite v and NaN for NaN or ±Inf; the sum of those is NaN iff one is. -inf,
    // when allowed (a mask in a bias), is replaced by 0 first. The largest |v| of the rest rides
    // along (NaN lanes lose every VMAX, so they never become the max).
    vf acc = 0.0f, mx = 0.0f, ninf = -INFINITY;
    vi allow = allow_negative_infinity ? (vi)-1 : (vi)0;
    long i = 0;
    for (; i + W <= n; i += W) {
        vf v = LOAD(x + i);
        v = VSELECT((v == ninf) & allow, (vf)0.0f, v);
        acc += v - v;
        mx = VMAX((vf)((vi)v & 0x7fffffff), mx);
    }
    float tail = 0.0f, tmx = 0.0f;
    for (long j = i; j < n; j++) {
        float v = x[j];
        if (allow_negative_infinity && v == -INFINITY) v = 0.0f;
        tail += v - v;
        tmx = fabsf(v) > tmx ? fabsf(v) : tmx;
    }
    float total = HSUM(acc) + tail, m = HMAX(mx);
    if (tmx > m) m = tmx;
    if (max_abs && m > *max_abs) *max_abs = m;
    if (total == 0.0f) return -1;
    for (long j = 0; j < n; j++) {
        float v = x[j];
        if (allow_negative_infinity && v == -INFINITY) continue;
        if (!(v - v == 0.0f)) return j;
    }
    return -1;
}

long ak_find_nonfinite(const float *x, long n) { return ak_scan_values(x, n, 0, NULL); }

void ak_fill(float *x, long n, float value) { for (long i = 0; i < n; i++) x[i] = value; }

AK_CLONES void ak_scale(float *x, long n, float alpha) { scale_row(x, n, alpha); }

AK_CLONES void ak_add(float *y, const float *x, long n) {
    long i = 0;
    for (; i + W <= n; i += W) STORE(y + i, LOAD(y + i) + LOAD(x + i));
    for (; i < n; i++) y[i] += x[i];
}
