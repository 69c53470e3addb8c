import AttentionTensor
import Foundation
import LongAttention
@testable import LongContextModel
import XCTest

/// StreamingLLM's attention sinks + window (``ModelConfig/streaming``): decoding with KV eviction
/// against the dense masked forward, and the forward's attention against an independent float64
/// reference that assigns positions by slot in the cache explicitly.
final class StreamingAttentionTests: XCTestCase {
    func tinyModel(sinks S: Int, window W: Int, positions: ModelConfig.PositionEncoding = .rope(theta: 10000, scaling: .none),
                   seed: UInt64 = 3) throws -> CausalLM {
        var c = try ModelConfig(vocabSize: 40, hiddenSize: 32, intermediateSize: 48, layers: 2, heads: 4, kvHeads: 2, headDim: 8,
                                positions: positions, maxPositionEmbeddings: 64)
        c.streaming = StreamingWindow(sinks: S, window: W)
        try c.validate()
        let m = try CausalLM(config: c, seed: seed)
        // Larger weights than the init's so attention is far from uniform.
        var rng = SplitMix64(seed: seed &+ 1)
        for e in m.parameters.entries where !e.name.hasSuffix("norm.weight") {
            let p = m.parameters.scalars + e.offset
            for i in 0..<e.count { p[i] = Float(0.25 * rng.nextNormal()) }
        }
        return m
    }

    func tokens(_ n: Int, seed: UInt64 = 9) -> [Int32] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in Int32(rng.next() % 40) }
    }

    /// Token-by-token decoding (the ring evicting all but the sinks and the last W) and chunked
    /// prefill through the cache give the dense forward's logits at every position, to 2e-5
    /// relative to the largest logit; the cache never holds more than S + W positions per layer.
    func testDecodeWithEvictionMatchesDenseMaskedForward() throws {
        for (S, W) in [(2, 6), (0, 5), (3, 1), (4, 16)] {
            let m = try tinyModel(sinks: S, window: W)
            let T = 40, ids = tokens(T), V = m.config.vocabSize
            let dense = try m.forward(tokens: ids, batch: 1, length: T, threads: 1).logits
            let scale = (0..<(T * V)).map { abs(dense.unsafeBaseAddress[$0]) }.max()!
            var cache = try m.makeCache(positions: T, chunk: 1)
            for t in 0..<T {
                let logits = try m.step([ids[t]], cache: &cache, threads: 1)
                for v in 0..<V {
                    XCTAssertEqual(logits[v], dense.unsafeBaseAddress[t * V + v], accuracy: 2e-5 * scale, "S \(S) W \(W) position \(t)")
                }
                for layer in 0..<m.config.layers {
                    XCTAssertLessThanOrEqual(cache.positions(layer: layer).count, W)
                    XCTAssertEqual(try cache.sinkRows(layer: layer).keys.shape[2], min(S, t + 1))
                }
            }
            XCTAssertEqual(cache.slots, [W, W])
            XCTAssertEqual(cache.bytes, 2 * 2 * (S + W) * 8 * 2 * 4, "S + W positions of f32 keys and values, 2 layers × 2 KV heads")
            // Prefill in chunks of 7 through the cache, then one step: the last position's logits.
            var chunked = try m.makeCache(positions: T, chunk: 7)
            let last = try m.step(ids, cache: &chunked, threads: 1)
            for v in 0..<V { XCTAssertEqual(last[v], dense.unsafeBaseAddress[(T - 1) * V + v], accuracy: 2e-5 * scale, "chunked S \(S) W \(W)") }
        }
    }

    /// The same with YaRN scaling (whose attention factor multiplies cos and sin) and with a
    /// low-precision cache (int8: the window's rows rounded as q8_0, the sinks kept in float32).
    func testDecodeMatchesForwardUnderYaRNAndInt8() throws {
        let yarn = ModelConfig.RopeScaling.yarn(factor: 4, originalContext: 16, betaFast: 32, betaSlow: 1, attentionFactor: 0.1 * log(4) + 1,
                                                truncate: true)
        let m = try tinyModel(sinks: 2, window: 6, positions: .rope(theta: 10000, scaling: yarn))
        let T = 30, ids = tokens(T), V = m.config.vocabSize
        let dense = try m.forward(tokens: ids, batch: 1, length: T, threads: 1).logits
        let scale = (0..<(T * V)).map { abs(dense.unsafeBaseAddress[$0]) }.max()!
        for (type, tol) in [(KVCacheType.float32, 2e-5), (.int8, 2e-2)] {
            var cache = try m.makeCache(positions: T, chunk: 1, type: type)
            for t in 0..<T {
                let logits = try m.step([ids[t]], cache: &cache, threads: 1)
                for v in 0..<V {
                    XCTAssertEqual(logits[v], dense.unsafeBaseAddress[t * V + v], accuracy: Float(tol) * scale, "\(type) position \(t)")
                }
            }
        }
    }

    /// The forward's streaming attention (window by the banded kernel, sinks by a re-rotated query,
    /// merged by log-sum-exp) against float64 attention with explicit slot positions: once the
    /// cache is full, sinks at 0..<S, window keys at S..<S+W, the query at S+W−1; before, the
    /// original positions. Tolerance 1e-5 relative to the largest output.
    func testForwardMatchesExplicitSlotPositions() throws {
        let (S, W, T) = (3, 7, 33)
        let m = try tinyModel(sinks: S, window: W)
        let (H, Hkv, hd) = (4, 2, 8)
        var rng = SplitMix64(seed: 21)
        let rawQ = (0..<(T * H * hd)).map { _ in Float(rng.nextNormal()) }
        let rawK = (0..<(T * Hkv * hd)).map { _ in Float(rng.nextNormal()) }
        let rawV = (0..<(T * Hkv * hd)).map { _ in Float(rng.nextNormal()) }
        var q = try Tensor(shape: [T, H * hd], scalars: rawQ), k = try Tensor(shape: [T, Hkv * hd], scalars: rawK)
        let v = try Tensor(shape: [T, Hkv * hd], scalars: rawV)
        try m.applyRoPE(q.unsafeMutableBaseAddress(), layer: 0, batch: 1, length: T, heads: H)
        try m.applyRoPE(k.unsafeMutableBaseAddress(), layer: 0, batch: 1, length: T, heads: Hkv)
        let out = try m.streamingAttention(layer: 0, q: q, k: k, v: v, batch: 1, length: T, threads: 1)
        // float64 RoPE at an explicit position.
        func rotate(_ x: ArraySlice<Float>, _ p: Int) -> [Double] {
            let x = Array(x), h = hd / 2
            var y = [Double](repeating: 0, count: hd)
            for i in 0..<h {
                let a = Double(p) / pow(10000, 2 * Double(i) / Double(hd))
                y[i] = Double(x[i]) * cos(a) - Double(x[i + h]) * sin(a)
                y[i + h] = Double(x[i + h]) * cos(a) + Double(x[i]) * sin(a)
            }
            return y
        }
        var worst = 0.0, largest = 0.0
        for i in 0..<T {
            let shift = max(0, i - (S + W - 1))
            let visible = (0...i).filter { $0 < S || $0 > i - W }
            for h in 0..<H {
                let g = h / (H / Hkv)
                let qi = rotate(rawQ[(i * H + h) * hd..<(i * H + h + 1) * hd], i - shift)
                var scores = [Double]()
                for j in visible {
                    let pj = j < S ? j : j - shift
                    let kj = rotate(rawK[(j * Hkv + g) * hd..<(j * Hkv + g + 1) * hd], pj)
                    scores.append(zip(qi, kj).map(*).reduce(0, +) / Double(hd).squareRoot())
                }
                let mx = scores.max()!, e = scores.map { exp($0 - mx) }, z = e.reduce(0, +)
                for d in 0..<hd {
                    var o = 0.0
                    for (n, j) in visible.enumerated() { o += e[n] / z * Double(rawV[(j * Hkv + g) * hd + d]) }
                    largest = max(largest, abs(o))
                    worst = max(worst, abs(o - Double(out.unsafeBaseAddress[i * H * hd + h * hd + d])))
                }
            }
        }
        XCTAssertLessThan(worst, 1e-5 * largest, "max |error| \(worst) against outputs up to \(largest)")
    }

    /// Sinks are an inference option: a backward through them is refused by name.
    func testBackwardIsRefused() throws {
        let m = try tinyModel(sinks: 2, window: 4)
        XCTAssertThrowsError(try m.forward(tokens: tokens(8), batch: 1, length: 8, keepForBackward: true)) { e in
            XCTAssertTrue("\(e)".contains("attention sinks"), "\(e)")
        }
    }
}
