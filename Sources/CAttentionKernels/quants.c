// Dequantisation of ggml's block formats (contracts and layouts: include/GGMLQuants.h).
//
// Written from the format definitions; each element is computed with exactly the float operations,
// in exactly the order, of ggml's reference dequantize_row_* (and gguf-py's numpy versions, which
// agree with it): the block scale (an f16 widened exactly) times a small integer converted to
// float, then a min added or subtracted where the format has one. FP_CONTRACT is off so that no
// clone fuses a multiply and an add (a fused result would differ in the last bit), and no fast-math
// flag is used, so the vectorised clones give the bits of the scalar code.

#include "GGMLQuants.h"
#include "vector.h"

#pragma STDC FP_CONTRACT OFF

enum { QK = 32, QK_K = 256 };

AK_INLINE uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (uint16_t)p[1] << 8); }
AK_INLINE uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
AK_INLINE float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
AK_INLINE uint32_t to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/// Half → float without branches (so loops of it vectorise): normal numbers rebias the exponent,
/// subnormals are m·2^-24 (exact in float), inf/NaN set the float exponent, NaNs quieted.
AK_INLINE float half(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = h & 0x7c00u, m = h & 0x3ffu;
    uint32_t normal = (((uint32_t)h & 0x7fffu) << 13) + 0x38000000u;          // exponent + (127 - 15)
    uint32_t special = 0x7f800000u | m << 13 | (m ? 0x00400000u : 0u);         // inf, quiet NaN
    uint32_t sub = to_bits((float)m * 0x1p-24f);                              // 0 and subnormals
    uint32_t mag = e == 0x7c00u ? special : e == 0 ? sub : normal;
    return from_bits(sign | mag);
}

float ak_fp16_to_fp32(uint16_t h) { return half(h); }
float ak_bf16_to_fp32(uint16_t h) { return from_bits((uint32_t)h << 16); }

AK_CLONES void ak_dequantize_f16(const void *src, float *dst, long n) {
    const uint8_t *s = src;
    for (long i = 0; i < n; i++) dst[i] = half(rd16(s + 2 * i));
}

AK_CLONES void ak_dequantize_bf16(const void *src, float *dst, long n) {
    const uint8_t *s = src;
    for (long i = 0; i < n; i++) dst[i] = from_bits((uint32_t)rd16(s + 2 * i) << 16);
}

AK_CLONES void ak_dequantize_q4_0(const void *src, float *dst, long n) {
    const uint8_t *b = src;
    for (long k = 0; k < n / QK; k++, b += 18, dst += QK) {
        const float d = half(rd16(b));
        const uint8_t *q = b + 2;
        for (int j = 0; j < QK / 2; j++) {
            dst[j] = (float)((int)(q[j] & 0x0f) - 8) * d;
            dst[j + QK / 2] = (float)((int)(q[j] >> 4) - 8) * d;
        }
    }
}

AK_CLONES void ak_dequantize_q4_1(const void *src, float *dst, long n) {
    const uint8_t *b = src;
    for (long k = 0; k < n / QK; k++, b += 20, dst += QK) {
        const float d = half(rd16(b)), m = half(rd16(b + 2));
        const uint8_t *q = b + 4;
        for (int j = 0; j < QK / 2; j++) {
            dst[j] = (float)(q[j] & 0x0f) * d + m;
            dst[j + QK / 2] = (float)(q[j] >> 4) * d + m;
        }
    }
}

AK_CLONES void ak_dequantize_q5_0(const void *src, float *dst, long n) {
    const uint8_t *b = src;
    for (long k = 0; k < n / QK; k++, b += 22, dst += QK) {
        const float d = half(rd16(b));
        const uint32_t qh = rd32(b + 2);
        const uint8_t *q = b + 6;
        for (int j = 0; j < QK / 2; j++) {
            int lo = (int)((q[j] & 0x0f) | ((qh >> j) & 1u) << 4);
            int hi = (int)((q[j] >> 4) | ((qh >> (j + 16)) & 1u) << 4);
            dst[j] = (float)(lo - 16) * d;
            dst[j + QK / 2] = (float)(hi - 16) * d;
        }
    }
}

AK_CLONES void ak_dequantize_q5_1(const void *src, float *dst, long n) {
    const uint8_t *b = src;
    for (long k = 0; k < n / QK; k++, b += 24, dst += QK) {
        const float d = half(rd16(b)), m = half(rd16(b + 2));
        const uint32_t qh = rd32(b + 4);
        const uint8_t *q = b + 8;
        for (int j = 0; j < QK / 2; j++) {
            uint32_t lo = (q[j] & 0x0fu) | ((qh >> j) & 1u) << 4;
            uint32_t hi = (uint32_t)(q[j] >> 4) | ((qh >> (j + 16)) & 1u) << 4;
            dst[j] = (float)lo * d + m;
            dst[j + QK / 2] = (float)hi * d + m;
        }
    }
}

AK_CLONES void ak_dequantize_q8_0(const void *src, float *dst, long n) {
    const uint8_t *b = src;
    for (long k = 0; k < n / QK; k++, b += 34, dst += QK) {
        const float d = half(rd16(b));
        for (int j = 0; j < QK; j++) dst[j] = (float)(int8_t)b[2 + j] * d;
    }
}

AK_CLONES void ak_dequantize_q2_K(const void *src, float *dst, long n) {
    const uint8_t *b = src;
    for (long k = 0; k < n / QK_K; k++, b += 84) {
        const uint8_t *scales = b, *qs = b + 16;
        const float d = half(rd16(b + 80)), dmin = half(rd16(b + 82));
        // Two halves of 128: 32 bytes of q each, read four times at shifts 0, 2, 4, 6; each read
        // is two sub-blocks of 16 with their own scale (low nibble) and min (high nibble).
        for (int h = 0; h < 2; h++) {
            const uint8_t *q = qs + 32 * h;
            for (int j = 0; j < 4; j++) {
                for (int part = 0; part < 2; part++) {
                    const uint8_t sc = scales[8 * h + 2 * j + part];
                    const float dl = d * (float)(sc & 0x0f), ml = dmin * (float)(sc >> 4);
                    for (int l = 0; l < 16; l++) {
                        *dst++ = dl * (float)((q[16 * part + l] >> (2 * j)) & 3) - ml;
                    }
                }
            }
        }
    }
}

AK_CLONES void ak_dequantize_q3_K(const void *src, float *dst, long n) {
    const uint8_t *b = src;
    for (long k = 0; k < n / QK_K; k++, b += 110) {
        const uint8_t *hmask = b, *qs = b + 32, *sc = b + 96;
        const float d = half(rd16(b + 108));
        // 16 six-bit scales: low 4 bits from bytes 0-7 (low nibbles first, then high), high 2 bits
        // from bytes 8-11 at shifts 0, 2, 4, 6 (one shift per group of four scales); minus 32.
        float dl[16];
        for (int i = 0; i < 16; i++) {
            int low = i < 8 ? sc[i] & 0x0f : sc[i - 8] >> 4;
            int high = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
            dl[i] = d * (float)((low | high << 4) - 32);
        }
        // Element e = 128·h + 32·j + l: 2 low bits from qs[32h + l] >> 2j; the high bit from
        // hmask[l] bit 4h + j, which subtracts 4 when it is clear.
        for (int h = 0; h < 2; h++) {
            for (int j = 0; j < 4; j++) {
                const int bit = 4 * h + j;
                for (int l = 0; l < 32; l++) {
                    int q = (qs[32 * h + l] >> (2 * j)) & 3;
                    q -= (hmask[l] >> bit) & 1 ? 0 : 4;
                    *dst++ = dl[8 * h + 2 * j + l / 16] * (float)q;
                }
            }
        }
    }
}

/// Scale and min j (< 8) of the 12 packed bytes of q4_K and q5_K: 6 bits each; j < 4 in the low
/// 6 bits of bytes j and j + 4, j ≥ 4 split into a nibble of byte j + 4 and the top 2 bits of
/// bytes j - 4 and j.
AK_INLINE void scale_min_k4(int j, const uint8_t *q, int *sc, int *mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | (q[j - 4] >> 6) << 4;
        *mn = (q[j + 4] >> 4) | (q[j] >> 6) << 4;
    }
}

AK_CLONES void ak_dequantize_q4_K(const void *src, float *dst, long n) {
    const uint8_t *b = src;
    for (long k = 0; k < n / QK_K; k++, b += 144) {
        const float d = half(rd16(b)), dmin = half(rd16(b + 2));
        const uint8_t *scales = b + 4, *qs = b + 16;
        // Eight sub-blocks of 32: pairs share 32 bytes of q, low nibbles first.
        for (int s = 0; s < 8; s++) {
            int sc, mn;
            scale_min_k4(s, scales, &sc, &mn);
            const float d1 = d * (float)sc, m1 = dmin * (float)mn;
            const uint8_t *q = qs + 32 * (s / 2);
            const int shift = 4 * (s % 2);
            for (int l = 0; l < 32; l++) *dst++ = d1 * (float)((q[l] >> shift) & 0x0f) - m1;
        }
    }
}

AK_CLONES void ak_dequantize_q5_K(const void *src, float *dst, long n) {
    const uint8_t *b = src;
    for (long k = 0; k < n / QK_K; k++, b += 176) {
        const float d = half(rd16(b)), dmin = half(rd16(b + 2));
        const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + 48;
        // As q4_K, plus a fifth bit from qh[l], bit s for sub-block s.
        for (int s = 0; s < 8; s++) {
            int sc, mn;
            scale_min_k4(s, scales, &sc, &mn);
            const float d1 = d * (float)sc, m1 = dmin * (float)mn;
            const uint8_t *q = qs + 32 * (s / 2);
            const int shift = 4 * (s % 2);
            for (int l = 0; l < 32; l++) {
                int v = ((q[l] >> shift) & 0x0f) | ((qh[l] >> s) & 1) << 4;
                *dst++ = d1 * (float)v - m1;
            }
        }
    }
}

AK_CLONES void ak_dequantize_q6_K(const void *src, float *dst, long n) {
    const uint8_t *b = src;
    for (long k = 0; k < n / QK_K; k++, b += 210) {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *scales = (const int8_t *)(b + 192);
        const float d = half(rd16(b + 208));
        // Element e = 128·h + r: low 4 bits from ql[64h + r % 64] (low nibble for r < 64), high 2
        // bits from qh[32h + r % 32] at shift 2·(r / 32); minus 32; scale e / 16.
        for (int h = 0; h < 2; h++) {
            for (int r = 0; r < 128; r++) {
                int lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
                int hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
                int q = (lo | hi << 4) - 32;
                *dst++ = (d * (float)scales[8 * h + r / 16]) * (float)q;
            }
        }
    }
}

void ak_quantize_q4_0(const float *src, void *dst, long n) {
    uint8_t *out = dst;
    for (long b = 0; b < n / QK; b++, out += 18) {
        const float *x = src + b * QK;
        float amax = 0, max = 0;
        for (int j = 0; j < QK; j++) {
            if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        }
        const float d = max / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
        const uint16_t h = ak_fp32_to_fp16(d);
        out[0] = (uint8_t)h;
        out[1] = (uint8_t)(h >> 8);
        for (int j = 0; j < QK / 2; j++) {
            const int lo = (int)(int8_t)(x[j] * id + 8.5f), hi = (int)(int8_t)(x[j + QK / 2] * id + 8.5f);
            out[2 + j] = (uint8_t)((lo < 15 ? lo : 15) | (hi < 15 ? hi : 15) << 4);
        }
    }
}
