import AttentionTensor
import Foundation
@testable import LongAttention
import XCTest

/// Decoding through sliding-window KV cache layers (rings of `min(capacity, W + maxAppend - 1)`
/// rows) and with a window over a full layer, against the float64 reference: windows 1, 3, 7, 33
/// and none, 1 to 129 positions, GQA groups (H = 4 over Hkv = 1, H = 6 over Hkv = 3), every cache
/// type, one token at a time past the ring's wrap many times, chunks (prefill, then decode) up to
/// `maxAppend` and longer than `W`, ALiBi, token-major output, key splits over a long ring,
/// copies between rings, the bytes, and the refusals.
///
/// Tolerances as KVCacheTypeTests: against float64 over the stored (dequantised) values, float32
/// rounding (here 5e-6 of max(1, max |expected|): rows of up to 129 keys); against float64 over
/// the float32 inputs, each type's storage bound.
final class SlidingWindowDecodeTests: XCTestCase {
    let rounding = 5e-6

    func bound(_ t: KVCacheType) -> Double {
        switch t {
        case .float32: return 5e-6
        case .bfloat16: return 1e-2
        case .float16: return 2e-3
        case .int8: return 2e-2
        }
    }

    /// float64 attention of the `n` queries `q [B, H, n, d]` at the last `n` of the positions
    /// `0 ..< L` of `k [B, Hkv, L, d]`, `v`: causal, window `W`, ALiBi as a bias `-slope·|p - j|`.
    func reference(_ q: Tensor, _ k: Tensor, _ v: Tensor, window: Int?, alibi: ALiBi? = nil) throws -> [Double] {
        var bias: Tensor? = nil
        if let alibi {
            let (H, n, L) = (q.shape[1], q.shape[2], k.shape[2])
            var b = [Float](repeating: 0, count: H * n * L)
            for h in 0..<H {
                for i in 0..<n {
                    for j in 0..<L { b[(h * n + i) * L + j] = -alibi.slopes[h] * Float(abs(i + L - n - j)) }
                }
            }
            bias = try Tensor(shape: [H, n, L], scalars: b)
        }
        return Reference.attention(q: q, k: k, v: v, causal: true, window: window, bias: bias)
    }

    /// Decodes `L` positions in `chunks` (repeated until `L` is reached; each appended, then its
    /// queries attended) through a cache of `type` with one layer of `window` (nil: a full layer;
    /// `fullWithWindow`: a full layer given `slidingWindow: W` instead), checking every step
    /// against float64 over the stored values and over the float32 inputs.
    func run(type: KVCacheType, H: Int, Hkv: Int, L: Int, d: Int = 40, dv: Int = 24, window: Int?, chunks: [Int] = [1],
             maxAppend: Int? = nil, fullWithWindow: Bool = false, alibi: Bool = false, capacitySlack: Int = 3, seed: UInt64,
             file: StaticString = #filePath, line: UInt = #line) throws {
        let B = 2
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: L, M: L, d: d, dv: dv, seed: seed)
        // The stored values of every position: a full cache of the same type holds them all.
        var all = try KVCache(layers: 1, batch: B, kvHeads: Hkv, capacity: L, headDimension: d, valueDimension: dv, type: type)
        try all.append(layer: 0, keys: k, values: v)
        let (ks, vs) = (try all.keys(layer: 0), try all.values(layer: 0))
        let maxAppend = maxAppend ?? chunks.max()!
        let ring = window != nil && !fullWithWindow
        var cache = try KVCache(layers: 1, batch: B, kvHeads: Hkv, capacity: L + capacitySlack, headDimension: d, valueDimension: dv,
                                type: type, windows: [ring ? window : nil], maxAppend: maxAppend)
        let slots = ring ? min(L + capacitySlack, window! + maxAppend - 1) : L + capacitySlack
        XCTAssertEqual(cache.slots, [slots], file: file, line: line)
        XCTAssertEqual(cache.bytes, B * Hkv * slots * (type.rowBytes(d) + type.rowBytes(dv)), file: file, line: line)
        let slopes = alibi ? ALiBi(heads: H) : nil
        let what = "\(type) H \(H)/\(Hkv) L \(L) W \(window.map(String.init) ?? "-")\(fullWithWindow ? " (full layer)" : "") chunks \(chunks)\(alibi ? " alibi" : "")"
        var at = 0, c = 0
        while at < L {
            let n = min(chunks[c % chunks.count], L - at)
            c += 1
            try cache.append(layer: 0, keys: try k.rows(at..<(at + n)), values: try v.rows(at..<(at + n)))
            at += n
            let qn = try q.rows((at - n)..<at)
            let out = try decodeAttention(queries: qn, cache: cache, layer: 0, alibi: slopes,
                                          slidingWindow: fullWithWindow ? window : nil, threads: 2)
            XCTAssertEqual(out.shape, [B, H, n, dv], file: file, line: line)
            let stored = try reference(qn, try ks.rows(0..<at), try vs.rows(0..<at), window: window, alibi: slopes)
            let err = Reference.relError(out, stored)
            // An int8 cache's decode rows (up to 4 stacked query rows) also round the query to 8-bit
            // blocks of 32 for the integer q·k: ½ · max|q_block| / 127 per value, the order of the keys'
            // own storage bound (measured ≤ 1.4e-2 over these few-key softmaxes).
            let rounding = type == .int8 ? 2e-2 : self.rounding
            XCTAssertLessThan(err, rounding, "\(what): at \(at), against float64 over the stored values", file: file, line: line)
            if type != .float32 && (at == L || err >= rounding) {
                let exact = try reference(qn, try k.rows(0..<at), try v.rows(0..<at), window: window, alibi: slopes)
                XCTAssertLessThan(Reference.relError(out, exact), bound(type), "\(what): at \(at), against the float32 inputs",
                                  file: file, line: line)
            }
            if err >= rounding { return }   // one failure per configuration is enough
        }
        XCTAssertEqual(cache.lengths, [L], file: file, line: line)
        // The held positions, in order, are the stored values of the last ones.
        let held = cache.positions(layer: 0)
        XCTAssertEqual(held, (ring ? max(0, L - slots) : 0)..<L, file: file, line: line)
        XCTAssertEqual(try cache.keys(layer: 0).scalars, try ks.rows(held).contiguous().scalars, "\(what): keys", file: file, line: line)
        XCTAssertEqual(try cache.values(layer: 0).scalars, try vs.rows(held).contiguous().scalars, "\(what): values", file: file, line: line)
    }

    /// One token at a time: windows 1, 3, 7, 33 and none over 1, 7, 33 and 129 positions (a W = 1
    /// ring wraps at every token, W = 3 over 129 positions 43 times), both groupings, every type;
    /// rings of exactly W rows (maxAppend 1) and of W + 3 (then the ring holds keys outside the
    /// window, and position order matters to the mask).
    func testTokenByTokenEveryTypeWindowAndSize() throws {
        var seed: UInt64 = 100
        for type in KVCacheType.allCases {
            for (H, Hkv) in [(4, 1), (6, 3)] {
                for L in [1, 7, 33, 129] {
                    for window in [1, 3, 7, 33, nil] as [Int?] {
                        for maxAppend in [1, 4] {
                            seed += 1
                            try run(type: type, H: H, Hkv: Hkv, L: L, window: window, maxAppend: maxAppend, seed: seed)
                        }
                    }
                }
            }
        }
    }

    /// The same windows on a full layer (Mistral's window over a full-size cache): `slidingWindow` restricts the keys.
    func testWindowOnAFullLayer() throws {
        var seed: UInt64 = 200
        for type in KVCacheType.allCases {
            for (H, Hkv) in [(4, 1), (6, 3)] {
                for window in [1, 3, 7, 33] {
                    seed += 1
                    try run(type: type, H: H, Hkv: Hkv, L: 129, window: window, fullWithWindow: true, seed: seed)
                    try run(type: type, H: H, Hkv: Hkv, L: 33, window: window, chunks: [5, 1, 3], fullWithWindow: true, seed: seed + 50)
                }
            }
        }
    }

    /// Chunks: a prefill, then single tokens and chunks again; chunks longer than W (W = 1 and 3
    /// against chunks of 5 and 9), the ring sized `W + maxAppend - 1`; a capacity that caps the ring.
    func testChunksPrefillThenDecode() throws {
        var seed: UInt64 = 300
        for type in KVCacheType.allCases {
            for (H, Hkv) in [(4, 1), (6, 3)] {
                for window in [1, 3, 7, 33, nil] as [Int?] {
                    for chunks in [[9, 1, 1, 5, 2], [5, 5, 1, 3]] {
                        seed += 1
                        try run(type: type, H: H, Hkv: Hkv, L: 129, window: window, chunks: chunks, seed: seed)
                    }
                }
                seed += 1
                // The whole prompt at once: the ring is capped at the capacity and never wraps.
                try run(type: type, H: H, Hkv: Hkv, L: 33, window: 7, chunks: [33], capacitySlack: 0, seed: seed)
                try run(type: type, H: H, Hkv: Hkv, L: 7, window: 3, chunks: [7, 1], capacitySlack: 2, seed: seed + 1)
            }
        }
    }

    /// ALiBi with windows, on rings and full layers (the penalty is a function of `p - j`, read
    /// in position order from the ring).
    func testALiBiWithWindows() throws {
        var seed: UInt64 = 400
        for type in [KVCacheType.float32, .float16, .int8] {
            for window in [1, 3, 33, nil] as [Int?] {
                seed += 1
                try run(type: type, H: 4, Hkv: 1, L: 70, window: window, chunks: [4, 1, 1, 3], alibi: true, seed: seed)
                try run(type: type, H: 6, Hkv: 3, L: 70, window: window, chunks: [1], alibi: true, seed: seed + 50)
                if let window {
                    try run(type: type, H: 6, Hkv: 3, L: 70, window: window, chunks: [3, 1], fullWithWindow: true, alibi: true, seed: seed + 70)
                }
            }
        }
    }

    /// A ring of 4,200 + 63 rows decoded past its wrap with keys split across work items (M >= 4096
    /// keys, 512-key tiles crossing the ring's end), head-major and token-major output, f32 and int8.
    func testLongRingKeySplitsAndTokenMajorOutput() throws {
        let (B, H, Hkv, d, W, L) = (1, 4, 1, 16, 4200, 5000)
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: L, M: L, d: d, dv: d, seed: 7)
        for type in [KVCacheType.float32, .int8] {
            var all = try KVCache(layers: 1, batch: B, kvHeads: Hkv, capacity: L, headDimension: d, type: type)
            try all.append(layer: 0, keys: k, values: v)
            let (ks, vs) = (try all.keys(layer: 0), try all.values(layer: 0))
            var cache = try KVCache(layers: 1, batch: B, kvHeads: Hkv, capacity: L, headDimension: d, type: type,
                                    windows: [W], maxAppend: 64)
            XCTAssertEqual(cache.slots, [W + 63])
            var full = try KVCache(layers: 1, batch: B, kvHeads: Hkv, capacity: L, headDimension: d, type: type)
            var at = 0
            for n in Array(repeating: 64, count: 75) + [1, 1, 17, 1] {   // 4,800 then a few steps: the ring wrapped, start mid-tile
                try cache.append(layer: 0, keys: try k.rows(at..<(at + n)), values: try v.rows(at..<(at + n)))
                try full.append(layer: 0, keys: try k.rows(at..<(at + n)), values: try v.rows(at..<(at + n)))
                at += n
                guard at > 4700 else { continue }
                let qn = try q.rows((at - n)..<at)
                let plan = ExactAttentionPlan(shape: AttentionShape(B: B, H: H, Hkv: Hkv, N: n, M: cache.positions(layer: 0).count, d: d, dv: d),
                                              implementation: .tiled)
                if n == 1 { XCTAssertGreaterThan(plan.keySplits, 1, "the decode shape splits its keys") }
                let out = try decodeAttention(queries: qn, cache: cache, layer: 0, threads: 2)
                let expected = try reference(qn, try ks.rows(0..<at), try vs.rows(0..<at), window: W)
                // int8: the integer q·k's 8-bit query blocks (measured ≤ 4.6e-4 over these 4K-key windows).
                let tolerance = type == .int8 ? 2e-3 : rounding * 4
                XCTAssertLessThan(Reference.relError(out, expected), tolerance, "\(type) at \(at)")
                let tokenMajor = try decodeAttention(queries: qn, cache: cache, layer: 0, outputLayout: .tokenMajor, threads: 2)
                XCTAssertEqual(tokenMajor.shape, [B, n, H, d])
                XCTAssertEqual(tokenMajor.scalars, try out.permuted([0, 2, 1, 3]).contiguous().scalars, "\(type) at \(at): token-major")
                // The same window on a full cache of the same type agrees to rounding.
                let windowed = try decodeAttention(queries: qn, cache: full, layer: 0, slidingWindow: W, threads: 2)
                XCTAssertEqual(windowed.shape, out.shape)
                XCTAssertLessThan(Reference.relError(windowed, expected), tolerance, "\(type) at \(at): full layer, W given")
            }
            XCTAssertEqual(cache.positions(layer: 0), (at - W - 63)..<at)
        }
    }

    /// Queries read through strides (a model's token-major rows permuted), and the LSE variant on a ring.
    func testStridedQueriesAndLSEOnARing() throws {
        let (B, H, Hkv, d, W, L) = (1, 6, 3, 16, 5, 40)
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: L, M: L, d: d, dv: d, seed: 9)
        var cache = try KVCache(layers: 1, batch: B, kvHeads: Hkv, capacity: L, headDimension: d, windows: [W], maxAppend: 3)
        try cache.append(layer: 0, keys: try k.rows(0..<3), values: try v.rows(0..<3))
        for t in 3..<L {
            try cache.append(layer: 0, keys: try k.rows(t..<(t + 1)), values: try v.rows(t..<(t + 1)))
        }
        let last = try q.rows((L - 1)..<L)
        let rowsView = try last.permuted([0, 2, 1, 3]).contiguous().permuted([0, 2, 1, 3])   // [B, H, 1, d] over [B, 1, H, d] memory
        let a = try decodeAttention(queries: last, cache: cache, layer: 0)
        let b = try decodeAttention(queries: rowsView, cache: cache, layer: 0)
        XCTAssertEqual(a.scalars, b.scalars)
        let lse = try decodeAttentionKeepingLSE(queries: last, cache: cache, layer: 0)
        XCTAssertLessThan(Reference.relError(lse.output, try reference(last, k, v, window: W)), rounding)
        // The LSE over the window, from float64 scores.
        let (qs, ksc) = (last.scalars, k.scalars)
        for h in 0..<H {
            let kh = h / (H / Hkv)
            var scores = [Double]()
            for j in (L - W)..<L {
                var s = 0.0
                for t in 0..<d { s += Double(qs[h * d + t]) * Double(ksc[(kh * L + j) * d + t]) }
                scores.append(s / Double(d).squareRoot())
            }
            let m = scores.max()!
            let expected = m + Foundation.log(scores.map { Foundation.exp($0 - m) }.reduce(0, +))
            XCTAssertEqual(Double(lse.logSumExp.scalars[h]), expected, accuracy: 1e-5)
        }
    }

    /// Rings in the byte count: Gemma 3's pattern (5 of 6 layers local) at 32K positions is about
    /// a sixth of a full cache; each windowed layer counts `W + maxAppend - 1` slots, not the capacity.
    func testBytesOfWindowedLayers() throws {
        let full = KVCache.bytes(layers: 6, batch: 1, kvHeads: 8, capacity: 32768, headDimension: 128)!
        let pattern: [Int?] = [512, 512, 512, 512, 512, nil]
        let gemma = KVCache.bytes(layers: 6, batch: 1, kvHeads: 8, capacity: 32768, headDimension: 128, windows: pattern)!
        XCTAssertEqual(gemma, 8 * (32768 + 5 * 512) * 2 * 128 * 4)
        XCTAssertEqual(Double(gemma) / Double(full), (1 + 5.0 * 512 / 32768) / 6, accuracy: 1e-12)
        XCTAssertEqual(KVCache.bytes(layers: 6, batch: 1, kvHeads: 8, capacity: 32768, headDimension: 128, type: .int8,
                                     windows: pattern, maxAppend: 64),
                       8 * (32768 + 5 * (512 + 63)) * 2 * 136)
        for type in KVCacheType.allCases {
            let cache = try KVCache(layers: 3, batch: 2, kvHeads: 2, capacity: 1000, headDimension: 40, valueDimension: 24, type: type,
                                    windows: [7, nil, 2000], maxAppend: 4)
            XCTAssertEqual(cache.slots, [10, 1000, 1000])
            let row = type.rowBytes(40) + type.rowBytes(24)
            XCTAssertEqual(cache.bytes(layer: 0), 2 * 2 * 10 * row)
            XCTAssertEqual(cache.bytes, 2 * 2 * 2010 * row)
            XCTAssertEqual(cache.bytes, KVCache.bytes(layers: 3, batch: 2, kvHeads: 2, capacity: 1000, headDimension: 40, valueDimension: 24,
                                                      type: type, windows: [7, nil, 2000], maxAppend: 4))
            XCTAssertEqual(cache.keyStore[0].count, (2 * 2 * 10 * type.rowBytes(40) + 3) / 4, "\(type): the ring's storage")
            XCTAssertEqual(cache.keyStore[1].count, (2 * 2 * 1000 * type.rowBytes(40) + 3) / 4, "\(type): a full layer's storage")
        }
    }

    /// Growing a ring (copy into a larger capacity), a ring into a full layer (refused once
    /// wrapped), a full layer into a ring; decoding continues on the copy.
    func testCopyBetweenRingsAndFullLayers() throws {
        let (H, Hkv, d, W, L) = (4, 2, 16, 4, 30)
        let (q, k, v) = try Reference.inputs(B: 1, H: H, Hkv: Hkv, N: L, M: L, d: d, dv: d, seed: 11)
        var ring = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: 20, headDimension: d, windows: [W])
        for t in 0..<20 { try ring.append(layer: 0, keys: try k.rows(t..<(t + 1)), values: try v.rows(t..<(t + 1))) }
        var grown = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: L, headDimension: d, type: .float16, windows: [W], maxAppend: 2)
        try grown.copy(from: ring)
        XCTAssertEqual(grown.lengths, [20])
        XCTAssertEqual(grown.positions(layer: 0), 16..<20)   // the source held 4; the larger ring holds them, no more
        var at = 20
        for n in [2, 1, 2, 1, 2, 2] {
            try grown.append(layer: 0, keys: try k.rows(at..<(at + n)), values: try v.rows(at..<(at + n)))
            at += n
            let qn = try q.rows((at - n)..<at)
            let out = try decodeAttention(queries: qn, cache: grown, layer: 0)
            XCTAssertLessThan(Reference.relError(out, try reference(qn, try k.rows(0..<at), try v.rows(0..<at), window: W)), bound(.float16))
        }
        var full = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: L, headDimension: d)
        XCTAssertThrowsError(try full.copy(from: ring)) { e in
            guard case .invalidWindow? = e as? AttentionError else { return XCTFail("\(e)") }
        }
        XCTAssertEqual(full.lengths, [0])
        // A full layer into a ring keeps its last positions.
        var source = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: L, headDimension: d)
        try source.append(layer: 0, keys: try k.rows(0..<25), values: try v.rows(0..<25))
        var small = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: L, headDimension: d, windows: [W])
        try small.copy(from: source)
        XCTAssertEqual(small.positions(layer: 0), 21..<25)
        XCTAssertEqual(try small.keys(layer: 0).scalars, try k.rows(21..<25).contiguous().scalars)
        // A ring too small for the source's window: refused.
        var tiny = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: L, headDimension: d, windows: [W])
        let wide = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: L, headDimension: d, windows: [2])
        var wideFilled = wide
        for t in 0..<10 { try wideFilled.append(layer: 0, keys: try k.rows(t..<(t + 1)), values: try v.rows(t..<(t + 1))) }
        XCTAssertThrowsError(try tiny.copy(from: wideFilled)) { e in
            guard case .invalidWindow? = e as? AttentionError else { return XCTFail("\(e)") }
        }
    }

    func testBadArgumentsAreRefused() throws {
        func expect(_ what: String, _ body: () throws -> Void, _ match: (AttentionError) -> Bool) {
            XCTAssertThrowsError(try body(), what) { e in
                guard let a = e as? AttentionError, match(a) else { return XCTFail("\(what): \(e)") }
            }
        }
        let make = { (windows: [Int?]?, maxAppend: Int) in
            try KVCache(layers: 2, batch: 1, kvHeads: 1, capacity: 50, headDimension: 8, windows: windows, maxAppend: maxAppend)
        }
        expect("W = 0", { _ = try make([0, nil], 1) }) { if case .invalidWindow = $0 { return true }; return false }
        expect("W < 0", { _ = try make([-3, nil], 1) }) { if case .invalidWindow = $0 { return true }; return false }
        expect("maxAppend 0", { _ = try make([4, nil], 0) }) { if case .invalidArgument = $0 { return true }; return false }
        expect("windows count", { _ = try make([4], 1) }) { if case .invalidArgument = $0 { return true }; return false }
        expect("overflow", {
            _ = try KVCache(layers: 2, batch: 1 << 20, kvHeads: 1 << 20, capacity: 1 << 20, headDimension: 128, windows: [Int.max, nil],
                            maxAppend: Int.max)
        }) { if case .tooLarge = $0 { return true }; return false }
        XCTAssertNil(KVCache.bytes(layers: 2, batch: 1 << 20, kvHeads: 1 << 20, capacity: 1 << 20, headDimension: 128, windows: [4, nil]))
        XCTAssertNil(KVCache.bytes(layers: 2, batch: 1, kvHeads: 1, capacity: 10, headDimension: 8, windows: [0, nil]))
        XCTAssertNil(KVCache.bytes(layers: 2, batch: 1, kvHeads: 1, capacity: 10, headDimension: 8, windows: [4, nil], maxAppend: 0))
        // A huge window and maxAppend do not overflow the slot count: the ring is capped at the capacity.
        XCTAssertEqual(try make([Int.max, nil], Int.max).slots, [50, 50])

        var cache = try make([3, nil], 2)
        let (q, k, v) = try Reference.inputs(B: 1, H: 2, Hkv: 1, N: 10, M: 10, d: 8, dv: 8, seed: 3)
        expect("append past maxAppend", { try cache.append(layer: 0, keys: try k.rows(0..<3), values: try v.rows(0..<3)) }) {
            $0 == .appendTooLong(maxAppend: 2, appending: 3)
        }
        XCTAssertEqual(cache.lengths, [0, 0])
        try cache.append(layer: 1, keys: try k.rows(0..<10), values: try v.rows(0..<10))   // a full layer takes any length
        for t in 0..<10 { try cache.append(layer: 0, keys: try k.rows(t..<(t + 1)), values: try v.rows(t..<(t + 1))) }
        let q1 = try q.rows(9..<10), q2 = try q.rows(8..<10), q3 = try q.rows(7..<10)
        XCTAssertNoThrow(try decodeAttention(queries: q2, cache: cache, layer: 0))    // 2 queries + W - 1 = 4 = the ring's rows
        expect("more queries than the ring serves", { _ = try decodeAttention(queries: q3, cache: cache, layer: 0) }) {
            if case .invalidWindow = $0 { return true }; return false
        }
        expect("window 0", { _ = try decodeAttention(queries: q1, cache: cache, layer: 1, slidingWindow: 0) }) {
            if case .invalidWindow = $0 { return true }; return false
        }
        expect("wider than the ring's window", { _ = try decodeAttention(queries: q1, cache: cache, layer: 0, slidingWindow: 4) }) {
            if case .invalidWindow = $0 { return true }; return false
        }
        // A narrower window on a ring is fine (W = 2 of the ring's 3) and matches the reference.
        let narrow = try decodeAttention(queries: q1, cache: cache, layer: 0, slidingWindow: 2)
        XCTAssertLessThan(Reference.relError(narrow, try reference(q1, k, v, window: 2)), rounding)
        // The full layer with and without a window.
        XCTAssertLessThan(Reference.relError(try decodeAttention(queries: q3, cache: cache, layer: 1, slidingWindow: 3),
                                             try reference(q3, k, v, window: 3)), rounding)
        XCTAssertLessThan(Reference.relError(try decodeAttention(queries: q3, cache: cache, layer: 1),
                                             try reference(q3, k, v, window: nil)), rounding)
        expect("layer", { _ = try decodeAttention(queries: q1, cache: cache, layer: 2) }) {
            if case .invalidArgument = $0 { return true }; return false
        }
        // Capacity still bounds a windowed layer's positions.
        var short = try KVCache(layers: 1, batch: 1, kvHeads: 1, capacity: 4, headDimension: 8, windows: [2])
        for t in 0..<4 { try short.append(layer: 0, keys: try k.rows(t..<(t + 1)), values: try v.rows(t..<(t + 1))) }
        expect("capacity", { try short.append(layer: 0, keys: try k.rows(4..<5), values: try v.rows(4..<5)) }) {
            $0 == .cacheFull(capacity: 4, length: 4, appending: 1)
        }
        // reset forgets the ring's positions.
        short.reset()
        XCTAssertEqual(short.positions(layer: 0), 0..<0)
        XCTAssertEqual(try decodeAttention(queries: q1, cache: short, layer: 0).scalars, [Float](repeating: 0, count: 16))
    }
}
