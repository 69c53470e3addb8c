import CAttentionKernels

/// ggml's tensor element types, numbered as in ggml.h (the ids GGUF files store). Removed ids
/// (4, 5, 31–33, 36–38) are not cases, so a file naming one is refused as unknown.
///
/// Every case has a layout (``blockSize`` elements in ``typeSize`` bytes), so the reader can check
/// any tensor's size; ``isDequantizable`` tells which ones ``dequantize(_:count:into:)`` converts.
public enum GGMLType: UInt32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39

    /// The name ggml gives the type ("q4_K", "bf16", ...).
    public var name: String { "\(self)" }

    /// Elements per block (1 for the plain types).
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .f64, .i8, .i16, .i32, .i64: 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .iq4_nl, .mxfp4: 32
        default: 256
        }
    }

    /// Bytes per block (ggml's type_size).
    public var typeSize: Int {
        switch self {
        case .f32, .i32: 4
        case .f16, .bf16, .i16: 2
        case .f64, .i64: 8
        case .i8: 1
        case .q4_0: 18
        case .q4_1: 20
        case .q5_0: 22
        case .q5_1: 24
        case .q8_0: 34
        case .q8_1: 36
        case .q2_K: 84
        case .q3_K: 110
        case .q4_K: 144
        case .q5_K: 176
        case .q6_K: 210
        case .q8_K: 292
        case .iq2_xxs: 66
        case .iq2_xs: 74
        case .iq3_xxs: 98
        case .iq1_s: 50
        case .iq4_nl: 18
        case .iq3_s: 110
        case .iq2_s: 82
        case .iq4_xs: 136
        case .iq1_m: 56
        case .tq1_0: 54
        case .tq2_0: 66
        case .mxfp4: 17
        }
    }

    /// The bytes of `elements` values: nil when `elements` is negative, not a whole number of
    /// blocks, or the size overflows Int.
    public func byteCount(elements: Int) -> Int? {
        guard elements >= 0, elements % blockSize == 0 else { return nil }
        let (n, overflow) = (elements / blockSize).multipliedReportingOverflow(by: typeSize)
        return overflow ? nil : n
    }

    /// Whether ``dequantize(_:count:into:)`` converts this type to Float32.
    public var isDequantizable: Bool {
        switch self {
        case .f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K: true
        default: false
        }
    }

    /// Converts `count` elements (a whole number of blocks) of this type, read from `source`
    /// (packed little-endian blocks, no alignment needed), to Float32 in `into`, with the values of
    /// ggml's reference dequantisation bit for bit. F32 is copied unchanged (NaN payloads included).
    /// Throws ``GGUFError/notWholeBlocks(path:tensor:type:count:)`` or
    /// ``GGUFError/notDequantizable(path:tensor:type:)`` before touching any memory.
    public func dequantize(_ source: UnsafeRawPointer, count: Int, into: UnsafeMutablePointer<Float>) throws {
        guard count >= 0, count % blockSize == 0 else { throw GGUFError.notWholeBlocks(path: nil, tensor: nil, type: self, count: count) }
        guard isDequantizable else { throw GGUFError.notDequantizable(path: nil, tensor: nil, type: self) }
        guard count > 0 else { return }
        let n = count
        switch self {
        case .f32: UnsafeMutableRawPointer(into).copyMemory(from: source, byteCount: 4 * n)
        case .f16: ak_dequantize_f16(source, into, n)
        case .bf16: ak_dequantize_bf16(source, into, n)
        case .q4_0: ak_dequantize_q4_0(source, into, n)
        case .q4_1: ak_dequantize_q4_1(source, into, n)
        case .q5_0: ak_dequantize_q5_0(source, into, n)
        case .q5_1: ak_dequantize_q5_1(source, into, n)
        case .q8_0: ak_dequantize_q8_0(source, into, n)
        case .q2_K: ak_dequantize_q2_K(source, into, n)
        case .q3_K: ak_dequantize_q3_K(source, into, n)
        case .q4_K: ak_dequantize_q4_K(source, into, n)
        case .q5_K: ak_dequantize_q5_K(source, into, n)
        case .q6_K: ak_dequantize_q6_K(source, into, n)
        default: throw GGUFError.notDequantizable(path: nil, tensor: nil, type: self)
        }
    }

    /// The types ``quantize(_:count:into:)`` writes.
    public var isQuantizable: Bool { self == .q8_0 || self == .q4_0 }

    /// The quantisable type called `name` (ggml's name: `q8_0`, `q4_0`), or nil.
    public static func quantizable(named name: String) -> GGMLType? {
        allCases.first { $0.name == name && $0.isQuantizable }
    }

    /// Quantises `count` floats (whole blocks) into this type's blocks at `into`
    /// (``byteCount(elements:)`` bytes) by ggml's reference rules (quantize_row_q8_0_ref,
    /// quantize_row_q4_0_ref), so the blocks are what llama.cpp's quantizer writes from the same
    /// floats. The values must be finite (a NaN or infinity has no block).
    public func quantize(_ source: UnsafePointer<Float>, count: Int, into: UnsafeMutableRawPointer) throws {
        guard count >= 0, count % blockSize == 0 else { throw GGUFError.notWholeBlocks(path: nil, tensor: nil, type: self, count: count) }
        guard isQuantizable else { throw GGUFError.notQuantizable(type: self) }
        guard count > 0 else { return }
        switch self {
        case .q8_0: ak_kv_encode_rows(Int32(AK_KV_Q8_0), source, count, 1, count, into, byteCount(elements: count)!)
        default: ak_quantize_q4_0(source, into, count)
        }
    }
}
