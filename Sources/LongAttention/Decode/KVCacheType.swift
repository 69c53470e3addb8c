import CAttentionKernels

/// How a ``KVCache`` stores keys and values, chosen when the cache is created.
///
/// | type | bytes per value | rounding | largest magnitude stored |
/// | --- | --- | --- | --- |
/// | `float32` | 4 | none | any finite float |
/// | `bfloat16` | 2 | nearest even, 8 significant bits (relative error ≤ 2⁻⁹) | 3.39·10³⁸ |
/// | `float16` | 2 | nearest even, 11 significant bits (relative error ≤ 2⁻¹²; below 6.1·10⁻⁵ absolute error ≤ 2⁻²⁵) | 65504 |
/// | `int8` | 34/32 | ggml's q8_0: per group of 32 values an f16 scale `s = max|x|/127`, `q = round(x/s)`; absolute error ≤ 0.57·s | 8.3·10⁶ |
///
/// Decoding reads the stored type directly (see ``decodeAttention(queries:cache:layer:scale:alibi:slidingWindow:outputLayout:threads:)``):
/// a bf16 cache is half the bytes of a float32 one and an int8 cache 27%, and since a decode step
/// streams the whole cache, fewer bytes are also faster steps. Appending a value beyond the
/// largest magnitude throws ``AttentionError/overflow(quantity:bound:limit:)``.
public enum KVCacheType: String, Sendable, CaseIterable, CustomStringConvertible {
    case float32 = "f32"
    case bfloat16 = "bf16"
    case float16 = "f16"
    /// ggml's q8_0 layout (llama.cpp's `--cache-type-k q8_0`).
    case int8 = "int8"

    public var description: String { rawValue }

    /// Bytes of one stored row of `d` values (q8_0: `ceil(d/32)` blocks of 34 bytes, the last zero-padded).
    public func rowBytes(_ d: Int) -> Int { ak_kv_row_bytes(kernelKind, d) }

    /// Values of larger magnitude cannot be stored (they would become ±inf, or an infinite scale).
    public var largestMagnitude: Float {
        switch self {
        case .float32: return .greatestFiniteMagnitude
        // Halfway between the largest finite bf16 (0x7F7F) and infinity rounds to infinity.
        case .bfloat16: return Float(bitPattern: 0x7F7F_8000).nextDown
        // 65520 is halfway between 65504 and the next f16 step: it rounds to infinity.
        case .float16: return Float(65520).nextDown
        // The scale max|x|/127 is stored as f16: it must round below infinity.
        case .int8: return Float(65520).nextDown * 127
        }
    }

    /// The type's `AK_KV_*` constant of the C kernels (CAttentionKernels).
    public var kernelKind: Int32 {
        switch self {
        case .float32: return Int32(AK_KV_F32)
        case .bfloat16: return Int32(AK_KV_BF16)
        case .float16: return Int32(AK_KV_F16)
        case .int8: return Int32(AK_KV_Q8_0)
        }
    }

    /// The path the stored-type kernels take on this CPU: `"f16c"` (AVX2, FMA and F16C
    /// conversions) or `"portable"` (integer bit operations).
    public static var kernelPath: String { String(cString: ak_kv_kernel_path()) }

    /// The float32 decode kernels this CPU runs: `"8-lane (AVX2)"` (AVX2 CPUs, and AMD's AVX-512,
    /// which executes 512-bit operations as two halves) or `"16-lane"` (Intel's AVX-512, baseline).
    public static var float32KernelPath: String { String(cString: ak_decode_kernel_path()) }
}
