import AttentionTensor
import CAttentionKernels
import Foundation
@testable import LongAttention
import XCTest

/// KV caches stored as bf16, f16 and int8 (q8_0): decoding against float64 attention over the
/// dequantised cache (equal to float32 rounding: the kernels read exactly those values), against
/// the float32 cache (the storage error, with stated bounds), appends in pieces, the bytes, the
/// refusals.
final class KVCacheTypeTests: XCTestCase {
    let lowPrecision: [KVCacheType] = [.bfloat16, .float16, .int8]

    /// float64 attention of `q [B, H, n, d]` against dequantised `k`, `v` (`[B, Hkv, M, ·]`),
    /// bottom-right causal.
    func reference(_ q: Tensor, _ k: Tensor, _ v: Tensor) -> [Double] {
        Reference.attention(q: q, k: k, v: v, causal: true)
    }

    /// Stated storage errors on uniform inputs in [-1, 1): max |out − out_f32| / max |out_f32|.
    func bound(_ t: KVCacheType) -> Double {
        switch t {
        case .float32: return 0
        case .bfloat16: return 1e-2    // 2⁻⁹ per value, amplified by the softmax through q·k
        case .float16: return 2e-3     // 2⁻¹²
        case .int8: return 2e-2        // 0.57 · max|group| / 127 per value
        }
    }

    /// The int8 cache's integer q·k: one decode step bitwise the same on 1 and 2 threads, on the
    /// vector and the portable path, for GQA groups 1, 2 and 4 and 1, 7, 33 and 129 keys.
    func testInt8DecodeSameBitsAcrossThreadsAndPaths() throws {
        defer { ak_kv_force_portable(0) }
        for (H, Hkv) in [(2, 2), (4, 2), (8, 2)] {
            for M in [1, 7, 33, 129] {
                for d in [64, 80] {
                    let (q, k, v) = try Reference.inputs(B: 1, H: H, Hkv: Hkv, N: 1, M: M, d: d, dv: d, seed: UInt64(M * 10 + H + d))
                    var cache = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: 130, headDimension: d, type: .int8)
                    try cache.append(layer: 0, keys: k, values: v)
                    var outs = [[UInt32]]()
                    for portable in [false, true] {
                        ak_kv_force_portable(portable ? 1 : 0)
                        for threads in [1, 2] {
                            outs.append(try decodeAttention(queries: q, cache: cache, layer: 0, threads: threads).scalars.map(\.bitPattern))
                        }
                    }
                    XCTAssertEqual(outs[0], outs[1], "H \(H) Hkv \(Hkv) M \(M) d \(d): 1 and 2 threads")
                    XCTAssertEqual(outs[2], outs[3], "H \(H) Hkv \(Hkv) M \(M) d \(d): 1 and 2 threads, portable")
                    // The integer q·k is bitwise across paths; P·V's float path fuses multiply-adds on
                    // F16C only (as before), so the outputs agree to float32 rounding there.
                    let a = outs[0].map { Double(Float(bitPattern: $0)) }, b = outs[2].map { Double(Float(bitPattern: $0)) }
                    let scale = max(1, b.map(abs).max() ?? 0)
                    let diff = zip(a, b).map { abs($0 - $1) }.max() ?? 0
                    XCTAssertLessThan(diff / scale, 1e-5, "H \(H) Hkv \(Hkv) M \(M) d \(d): vector and portable")
                }
            }
        }
    }

    func testDecodeAgainstFloat64AndFloat32Cache() throws {
        // Groups of 1, 2, 3, 4, 5, 8 and 32 query heads per KV head; d ∈ {64, 80, 128, 129}.
        for (H, Hkv) in [(2, 2), (4, 2), (6, 2), (8, 2), (5, 1), (8, 1), (32, 1)] {
            for d in [64, 80, 128, 129] {
                let M = 77, n = 1
                let (q, k, v) = try Reference.inputs(B: 2, H: H, Hkv: Hkv, N: n, M: M, d: d, dv: d, seed: UInt64(H * 100 + d))
                var f32 = try KVCache(layers: 1, batch: 2, kvHeads: Hkv, capacity: 80, headDimension: d)
                try f32.append(layer: 0, keys: k, values: v)
                let exact = try decodeAttention(queries: q, cache: f32, layer: 0)
                for type in lowPrecision {
                    var cache = try KVCache(layers: 1, batch: 2, kvHeads: Hkv, capacity: 80, headDimension: d, type: type)
                    try cache.append(layer: 0, keys: k, values: v)
                    let out = try decodeAttention(queries: q, cache: cache, layer: 0)
                    let ref = reference(q, try cache.keys(layer: 0), try cache.values(layer: 0))
                    // int8: groups of up to 4 query heads round the query to 8-bit blocks of 32 for the
                    // integer q·k (½ · max|q_block| / 127 per value; measured ≤ 5e-3 here).
                    let storedBound = type == .int8 && H / Hkv <= 4 ? 1e-2 : 2e-6
                    XCTAssertLessThan(Reference.relError(out, ref), storedBound, "\(type) H \(H) Hkv \(Hkv) d \(d): against float64 over the stored values")
                    let err = Reference.relError(out, exact.scalars.map(Double.init))
                    XCTAssertLessThan(err, bound(type), "\(type) H \(H) Hkv \(Hkv) d \(d): against the float32 cache")
                    XCTAssertGreaterThan(err, 0, "\(type): a lower-precision cache that equals float32 stored nothing lower")
                }
            }
        }
    }

    /// Prefill against the cache: 12 queries × a group of 4 = 48 stacked rows take the GEMM path,
    /// which converts one key tile at a time; ALiBi and odd sizes on the way.
    func testPrefillAgainstCacheAndALiBi() throws {
        let (B, H, Hkv, n, M, d) = (1, 8, 2, 12, 301, 33)
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: n, M: M, d: d, dv: d, seed: 5)
        let alibi = ALiBi(heads: H)
        for type in lowPrecision {
            var cache = try KVCache(layers: 1, batch: B, kvHeads: Hkv, capacity: M, headDimension: d, type: type)
            try cache.append(layer: 0, keys: k, values: v)
            let out = try decodeAttention(queries: q, cache: cache, layer: 0, alibi: alibi)
            let expected = try scaledDotProductAttention(queries: q, keys: try cache.keys(layer: 0), values: try cache.values(layer: 0),
                                                         mask: AttentionMask(isCausal: true, alibi: alibi))
            XCTAssertLessThan(Reference.relError(out, expected.scalars.map(Double.init)), 2e-6, "\(type)")
        }
    }

    /// Appending in pieces (1, 7, 33, … tokens) stores the same bytes as one append, in every layer.
    func testAppendsInPiecesEqualOneAppend() throws {
        let (Hkv, M, d) = (3, 90, 40)
        let (_, k, v) = try Reference.inputs(B: 2, H: Hkv, Hkv: Hkv, N: 1, M: M, d: d, dv: 24, seed: 9)
        for type in KVCacheType.allCases {
            var whole = try KVCache(layers: 2, batch: 2, kvHeads: Hkv, capacity: 100, headDimension: d, valueDimension: 24, type: type)
            var pieces = whole
            try whole.append(layer: 1, keys: k, values: v)
            var at = 0
            for len in [1, 7, 33, 1, 48] {
                try pieces.append(layer: 1, keys: try k.rows(at..<(at + len)), values: try v.rows(at..<(at + len)))
                at += len
            }
            XCTAssertEqual(pieces.lengths, [0, M])
            XCTAssertEqual(try pieces.keys(layer: 1).scalars, try whole.keys(layer: 1).scalars, "\(type)")
            XCTAssertEqual(try pieces.values(layer: 1).scalars, try whole.values(layer: 1).scalars, "\(type)")
            XCTAssertEqual(try pieces.keys(layer: 0).shape, [2, Hkv, 0, d])
        }
    }

    /// Token-by-token decoding with an int8 cache follows the float32 cache within the int8 bound.
    func testTokenByTokenDecoding() throws {
        let (H, Hkv, N, d) = (4, 2, 20, 32)
        let (q, k, v) = try Reference.inputs(B: 1, H: H, Hkv: Hkv, N: N, M: N, d: d, dv: d, seed: 21)
        var f32 = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: N, headDimension: d)
        var q8 = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: N, headDimension: d, type: .int8)
        for t in 0..<N {
            let kt = try k.rows(t..<(t + 1)), vt = try v.rows(t..<(t + 1)), qt = try q.rows(t..<(t + 1))
            try f32.append(layer: 0, keys: kt, values: vt)
            try q8.append(layer: 0, keys: kt, values: vt)
            let a = try decodeAttention(queries: qt, cache: f32, layer: 0), b = try decodeAttention(queries: qt, cache: q8, layer: 0)
            XCTAssertLessThan(Reference.relError(b, a.scalars.map(Double.init)), bound(.int8), "token \(t)")
        }
    }

    func testBytesAreTheStoredSize() throws {
        let args = (layers: 2, batch: 1, kvHeads: 8, capacity: 1024, d: 128)
        let f32 = KVCache.bytes(layers: 2, batch: 1, kvHeads: 8, capacity: 1024, headDimension: 128)!
        XCTAssertEqual(f32, 2 * 8 * 1024 * 2 * 128 * 4)
        XCTAssertEqual(KVCache.bytes(layers: 2, batch: 1, kvHeads: 8, capacity: 1024, headDimension: 128, type: .bfloat16), f32 / 2)
        XCTAssertEqual(KVCache.bytes(layers: 2, batch: 1, kvHeads: 8, capacity: 1024, headDimension: 128, type: .int8), f32 * 34 / 128)
        let cache = try KVCache(layers: args.layers, batch: args.batch, kvHeads: args.kvHeads, capacity: args.capacity,
                                headDimension: args.d, type: .int8)
        XCTAssertEqual(cache.bytes, f32 * 34 / 128)
        XCTAssertNil(KVCache.bytes(layers: 1 << 20, batch: 1 << 20, kvHeads: 1 << 20, capacity: 1 << 20, headDimension: 128))
        XCTAssertThrowsError(try KVCache(layers: 1 << 20, batch: 1 << 20, kvHeads: 1, capacity: 1 << 20, headDimension: 128, type: .int8))
    }

    /// Values a type cannot hold are refused with a typed error, and nothing is appended.
    func testOutOfRangeValuesAreRefused() throws {
        for (type, big) in [(KVCacheType.float16, Float(70000)), (.int8, 1e7), (.bfloat16, 3.4e38)] {
            var cache = try KVCache(layers: 1, batch: 1, kvHeads: 1, capacity: 4, headDimension: 2, type: type)
            let k = try Tensor(shape: [1, 1, 1, 2], scalars: [1, big])
            XCTAssertThrowsError(try cache.append(layer: 0, keys: k, values: k)) { error in
                guard case AttentionError.overflow = error else { return XCTFail("\(type): \(error)") }
            }
            XCTAssertEqual(cache.lengths, [0])
            // Just inside the range is stored.
            let fine = try Tensor(shape: [1, 1, 1, 2], scalars: [1, type.largestMagnitude])
            XCTAssertNoThrow(try cache.append(layer: 0, keys: fine, values: fine))
            XCTAssertTrue(try cache.keys(layer: 0).scalars.allSatisfy { $0.isFinite }, "\(type)")
        }
    }

    /// Growing a cache across types converts: f32 → int8 equals appending to an int8 cache.
    func testCopyBetweenTypes() throws {
        let (_, k, v) = try Reference.inputs(B: 1, H: 2, Hkv: 2, N: 1, M: 10, d: 48, dv: 48, seed: 4)
        var f32 = try KVCache(layers: 1, batch: 1, kvHeads: 2, capacity: 10, headDimension: 48)
        try f32.append(layer: 0, keys: k, values: v)
        var direct = try KVCache(layers: 1, batch: 1, kvHeads: 2, capacity: 10, headDimension: 48, type: .int8)
        try direct.append(layer: 0, keys: k, values: v)
        var grown = try KVCache(layers: 1, batch: 1, kvHeads: 2, capacity: 32, headDimension: 48, type: .int8)
        try grown.copy(from: f32)
        XCTAssertEqual(try grown.keys(layer: 0).scalars, try direct.keys(layer: 0).scalars)
        XCTAssertEqual(try grown.values(layer: 0).scalars, try direct.values(layer: 0).scalars)
        var back = try KVCache(layers: 1, batch: 1, kvHeads: 2, capacity: 10, headDimension: 48, type: .bfloat16)
        try back.copy(from: grown)
        XCTAssertEqual(back.lengths, [10])
    }

    func testQueriesOfTheWrongShapeAreRefused() throws {
        var cache = try KVCache(layers: 1, batch: 1, kvHeads: 2, capacity: 8, headDimension: 16, type: .float16)
        let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: 2, N: 1, M: 3, d: 16, dv: 16, seed: 2)
        try cache.append(layer: 0, keys: k, values: v)
        let wrongD = try Tensor(zeros: [1, 4, 1, 8]), wrongHeads = try Tensor(zeros: [1, 3, 1, 16])
        XCTAssertThrowsError(try decodeAttention(queries: wrongD, cache: cache, layer: 0))
        XCTAssertThrowsError(try decodeAttention(queries: wrongHeads, cache: cache, layer: 0))
        XCTAssertThrowsError(try decodeAttention(queries: q, cache: cache, layer: 1))
        var nan = q
        nan.withUnsafeMutableBufferPointer { $0[3] = .nan }
        XCTAssertThrowsError(try decodeAttention(queries: nan, cache: cache, layer: 0))
        XCTAssertEqual(try decodeAttention(queries: q, cache: cache, layer: 0).shape, [1, 4, 1, 16])
    }
}
