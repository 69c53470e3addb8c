// The language model's row kernels: RMSNorm, the SwiGLU gate and the cross-entropy with a fused
// log-softmax, forward and backward. Contracts: include/AttentionKernels.h; vector macros: vector.h.
// Each works on `rows` independent rows, so callers split rows across threads.

#include "vector.h"

/// Sum of x[i]·y[i] over n values in float64 lanes of float32 products: the RMSNorm statistics
/// are over a few hundred values, and summing them in double keeps the result independent of
/// the vector width (the clones agree bitwise).
AK_INLINE double dot_d(const float *x, const float *y, long n) {
    double s = 0;
    for (long i = 0; i < n; i++) s += (double)x[i] * (double)y[i];
    return s;
}

AK_CLONES void ak_rmsnorm_rows(const float *x, long ldx, const float *w, float *y, long ldy, float *rstd, long rows, long n,
                               float eps) {
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        float *yr = y + r * ldy;
        // Hugging Face's LlamaRMSNorm: mean of squares in float32 there; float64 here (the
        // difference is below float32 rounding of the result).
        float s = (float)(1.0 / sqrt(dot_d(xr, xr, n) / (double)n + (double)eps));
        if (rstd) rstd[r] = s;
        long i = 0;
        for (; i + W <= n; i += W) STORE(yr + i, LOAD(w + i) * (LOAD(xr + i) * s));
        for (; i < n; i++) yr[i] = w[i] * (xr[i] * s);
    }
}

AK_CLONES void ak_rmsnorm_backward_rows(const float *x, long ldx, const float *w, const float *rstd, const float *dy, long lddy,
                                        float *dx, long lddx, float *dw, long rows, long n) {
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * ldx, *gr = dy + r * lddy;
        float *dxr = dx + r * lddx;
        const float s = rstd[r];
        // dx += s·(w ∘ dy) − s³/n · x · Σ(w ∘ dy ∘ x);   dw += dy ∘ x·s
        double c = 0;
        for (long i = 0; i < n; i++) c += (double)w[i] * (double)gr[i] * (double)xr[i];
        const float k = (float)((double)s * s * s * c / (double)n);
        long i = 0;
        for (; i + W <= n; i += W) {
            vf xv = LOAD(xr + i), gv = LOAD(gr + i);
            STORE(dxr + i, LOAD(dxr + i) + (LOAD(w + i) * gv * s - xv * k));
            if (dw) STORE(dw + i, LOAD(dw + i) + gv * (xv * s));
        }
        for (; i < n; i++) {
            dxr[i] += w[i] * gr[i] * s - xr[i] * k;
            if (dw) dw[i] += gr[i] * (xr[i] * s);
        }
    }
}

/// σ(x) on 16 lanes through the vectorised exp: 1 / (1 + e^{-x}) (exp(-x) = inf for x < -88 gives 0).
#define SIGMOID16(x) (1.0f / (1.0f + EXP16(-(x))))

AK_CLONES void ak_swiglu(const float *g, const float *u, float *h, long n) {
    long i = 0;
    for (; i + W <= n; i += W) {
        vf gv = LOAD(g + i);
        STORE(h + i, gv * SIGMOID16(gv) * LOAD(u + i));
    }
    for (; i < n; i++) h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

AK_CLONES void ak_swiglu_backward(const float *g, const float *u, const float *dh, float *dg, float *du, long n) {
    long i = 0;
    for (; i + W <= n; i += W) {
        vf gv = LOAD(g + i), uv = LOAD(u + i), dv = LOAD(dh + i), sg = SIGMOID16(gv);
        STORE(du + i, dv * gv * sg);
        STORE(dg + i, dv * uv * sg * (1.0f + gv * (1.0f - sg)));
    }
    for (; i < n; i++) {
        float sg = 1.0f / (1.0f + expf(-g[i]));
        du[i] = dh[i] * g[i] * sg;
        dg[i] = dh[i] * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
    }
}

/// tanh through the vectorised exp: 1 − 2 / (e^{2a} + 1) (e^{2a} = inf gives 1, 0 gives −1).
#define TANH16(a) (1.0f - 2.0f / (EXP16(2.0f * (a)) + 1.0f))
#define GELU_C 0.7978845608028654f   /* √(2/π) */
#define GELU_A 0.044715f

// GeGLU with the tanh form of GELU (PyTorch's gelu(approximate="tanh"), Gemma's
// gelu_pytorch_tanh): h = ½·g·(1 + tanh(c·(g + a·g³)))·u.
AK_CLONES void ak_geglu_tanh(const float *g, const float *u, float *h, long n) {
    long i = 0;
    for (; i + W <= n; i += W) {
        vf gv = LOAD(g + i), t = TANH16(GELU_C * (gv + GELU_A * gv * gv * gv));
        STORE(h + i, 0.5f * gv * (1.0f + t) * LOAD(u + i));
    }
    for (; i < n; i++) {
        float t = tanhf(GELU_C * (g[i] + GELU_A * g[i] * g[i] * g[i]));
        h[i] = 0.5f * g[i] * (1.0f + t) * u[i];
    }
}

// d/dg gelu(g) = ½(1 + t) + ½·g·(1 − t²)·c·(1 + 3a·g²).
AK_CLONES void ak_geglu_tanh_backward(const float *g, const float *u, const float *dh, float *dg, float *du, long n) {
    long i = 0;
    for (; i + W <= n; i += W) {
        vf gv = LOAD(g + i), uv = LOAD(u + i), dv = LOAD(dh + i);
        vf t = TANH16(GELU_C * (gv + GELU_A * gv * gv * gv));
        vf gelu = 0.5f * gv * (1.0f + t);
        vf slope = 0.5f * (1.0f + t) + 0.5f * gv * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * gv * gv);
        STORE(du + i, dv * gelu);
        STORE(dg + i, dv * uv * slope);
    }
    for (; i < n; i++) {
        float t = tanhf(GELU_C * (g[i] + GELU_A * g[i] * g[i] * g[i]));
        du[i] = dh[i] * 0.5f * g[i] * (1.0f + t);
        dg[i] = dh[i] * u[i] * (0.5f * (1.0f + t) + 0.5f * g[i] * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * g[i] * g[i]));
    }
}

AK_CLONES double ak_cross_entropy_rows(float *z, long ldz, long rows, long vocab, const int *targets, float gradScale,
                                       int writeGradient) {
    double total = 0;
    for (long r = 0; r < rows; r++) {
        float *zr = z + r * ldz;
        int t = targets[r];
        if (t < 0) {   // ignored position (no target): no loss, zero gradient
            if (writeGradient) memset(zr, 0, (size_t)vocab * sizeof(float));
            continue;
        }
        const float m = row_max(zr, vocab), zt = zr[t];
        // log-sum-exp in float64 over float32 exponentials of (z − max) ≤ 0.
        double sum = 0;
        long j = 0;
        for (; j + W <= vocab; j += W) {
            vf e = EXP16(LOAD(zr + j) - m);
            float tmp[W];
            STORE(tmp, e);
            for (int k = 0; k < W; k++) sum += tmp[k];
            if (writeGradient) STORE(zr + j, e);
        }
        for (; j < vocab; j++) {
            float e = expf(zr[j] - m);
            sum += e;
            if (writeGradient) zr[j] = e;
        }
        total += (double)m + log(sum) - (double)zt;
        if (!writeGradient) continue;
        // zr now holds e^{z − m}: the gradient is softmax(z) − onehot(t), times gradScale.
        const float k = (float)(1.0 / sum) * gradScale;
        j = 0;
        for (; j + W <= vocab; j += W) STORE(zr + j, LOAD(zr + j) * k);
        for (; j < vocab; j++) zr[j] *= k;
        zr[t] -= gradScale;
    }
    return total;
}
