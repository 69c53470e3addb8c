import AttentionTensor
import Foundation
import AttentionEvaluation
import LongAttention
import XCTest

final class InfiniAttentionTests: XCTestCase {
    static func sigma(_ x: Double) -> Double { x > 0 ? x + 1 : Foundation.exp(x) }

    /// Float64 Infini-Attention straight from SPEC.md, segment by segment.
    static func reference(q: Tensor, k: Tensor, v: Tensor, S: Int, delta: Bool, beta: [Double]) -> [Double] {
        let (B, H, N, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
        let (Hkv, dv) = (k.shape[1], v.shape[3])
        let local = Reference.attention(q: q, k: k, v: v, causal: false, bias: try! causalSegmentBias(N: N, S: S))
        let qs = q.scalars.map(Double.init), ks = k.scalars.map(Double.init), vs = v.scalars.map(Double.init)
        var out = local
        for b in 0..<B { for h in 0..<Hkv {
            var M = [Double](repeating: 0, count: d * dv), z = [Double](repeating: 0, count: d)
            var start = 0
            while start < N {
                let end = min(N, start + S)
                for g in 0..<(H / Hkv) {
                    let head = h * (H / Hkv) + g
                    let gate = 1 / (1 + Foundation.exp(-beta[head]))
                    for i in start..<end {
                        let sq = (0..<d).map { sigma(qs[((b * H + head) * N + i) * d + $0]) }
                        let den = zip(sq, z).reduce(0.0) { $0 + $1.0 * $1.1 }
                        for t in 0..<dv {
                            var num = 0.0
                            for a in 0..<d { num += sq[a] * M[a * dv + t] }
                            let mem = den > 0 ? num / den : 0
                            let o = ((b * H + head) * N + i) * dv + t
                            out[o] = gate * mem + (1 - gate) * local[o]
                        }
                    }
                }
                var newM = M
                for j in start..<end {
                    let sk = (0..<d).map { sigma(ks[((b * Hkv + h) * N + j) * d + $0]) }
                    let den = zip(sk, z).reduce(0.0) { $0 + $1.0 * $1.1 }
                    for t in 0..<dv {
                        var val = vs[((b * Hkv + h) * N + j) * dv + t]
                        if delta && den > 0 {
                            var r = 0.0
                            for a in 0..<d { r += sk[a] * M[a * dv + t] }
                            val -= r / den
                        }
                        for a in 0..<d { newM[a * dv + t] += sk[a] * val }
                    }
                }
                for j in start..<end { for a in 0..<d { z[a] += sigma(ks[((b * Hkv + h) * N + j) * d + a]) } }
                M = newM
                start = end
            }
        } }
        return out
    }

    /// 0 within a segment's causal triangle, -inf elsewhere: local attention as a dense mask.
    static func causalSegmentBias(N: Int, S: Int) throws -> Tensor {
        var b = [Float](repeating: -.infinity, count: N * N)
        for i in 0..<N { for j in 0..<N where j <= i && j / S == i / S { b[i * N + j] = 0 } }
        return try Tensor(shape: [N, N], scalars: b)
    }

    func testAgainstFloat64BothUpdates() throws {
        for (update, hkv, n, s) in [(InfiniAttention.Update.linear, 4, 100, 32), (.delta, 2, 90, 24), (.delta, 1, 61, 61), (.linear, 2, 7, 3)] {
            let (q, k, v) = try Reference.inputs(B: 2, H: 4, Hkv: hkv, N: n, M: n, d: 16, dv: 8, seed: UInt64(n))
            let beta: [Float] = [-1, 0, 0.5, 2]
            let infini = try InfiniAttention(segmentLength: s, update: update, beta: beta)
            let out = try infini(queries: q, keys: k, values: v)
            let expected = Self.reference(q: q, k: k, v: v, S: s, delta: update == .delta, beta: beta.map(Double.init))
            XCTAssertLessThan(Reference.relError(out, expected), 2e-5, "\(update) Hkv \(hkv) N \(n) S \(s)")
        }
    }

    /// One segment: local causal attention blended with an empty memory (A_mem = 0, never NaN).
    func testFirstSegmentIsLocalAttentionWithZeroMemory() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 2, Hkv: 1, N: 20, M: 20, d: 8, dv: 8, seed: 3)
        let infini = try InfiniAttention(segmentLength: 32, beta: [0, 1])
        let out = try infini(queries: q, keys: k, values: v)
        let local = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .causal)
        for h in 0..<2 {
            let keep = Float(1 - 1 / (1 + Foundation.exp(-Double([0, 1][h]))))
            for i in 0..<20 { for t in 0..<8 { XCTAssertEqual(out[0, h, i, t], keep * local[0, h, i, t], accuracy: 1e-6) } }
        }
        XCTAssertTrue(out.scalars.allSatisfy(\.isFinite))
    }

    /// Streaming segment by segment, and saving/loading the memory mid-stream, equal one call.
    func testStreamingAndSaveLoadEqualTheWholeSequence() throws {
        let (q, k, v) = try Reference.inputs(B: 2, H: 4, Hkv: 2, N: 130, M: 130, d: 16, dv: 16, seed: 5)
        for update in InfiniAttention.Update.allCases {
            let infini = try InfiniAttention(segmentLength: 32, update: update, beta: [0.3, -0.2, 1, 0])
            let whole = try infini(queries: q, keys: k, values: v)
            var memory = try CompressiveMemory(batch: 2, kvHeads: 2, headDimension: 16, valueDimension: 16)
            var pieces = [Float]()
            var outRows = [Tensor]()
            for start in stride(from: 0, to: 130, by: 32) {
                let r = start..<min(130, start + 32)
                if start == 64 {   // save and resume, as another process would
                    let path = NSTemporaryDirectory() + "infini-\(UUID().uuidString).npy"
                    try memory.save(to: path)
                    memory = try CompressiveMemory.load(from: path)
                    try? FileManager.default.removeItem(atPath: path)
                }
                outRows.append(try infini.step(queries: try q.rows(r), keys: try k.rows(r), values: try v.rows(r), memory: &memory))
            }
            for (i, seg) in outRows.enumerated() {
                let expected = try whole.rows((i * 32)..<min(130, i * 32 + 32))
                pieces += seg.scalars
                XCTAssertTrue(seg.scalars == expected.scalars, "\(update) segment \(i)")
            }
            XCTAssertEqual(memory.tokens, 130 - 64)
            XCTAssertEqual(memory.stateBytes, 2 * 2 * (16 * 16 + 16) * 4)
        }
    }

    /// With one-hot features (σ(k) = e_i exactly: k = 0 at i, -100 elsewhere) written once each,
    /// both rules retrieve the stored value exactly; re-writing a key, the delta rule replaces the
    /// association (its read points exactly along the new value) while the linear rule mixes.
    func testOneHotKeysAreRetrievedExactly() throws {
        let (d, dv) = (16, 4)
        func oneHot(_ i: Int) -> [Float] { (0..<d).map { $0 == i ? 0 : -100 } }
        func tensor(_ rows: [[Float]]) throws -> Tensor { try Tensor(shape: [1, 1, rows.count, rows[0].count], scalars: rows.flatMap { $0 }) }
        let stored: [[Float]] = (0..<8).map { j in (0..<dv).map { Float(j * dv + $0 + 1) } }
        let replacement: [Float] = [5, -5, 5, -5]
        for update in InfiniAttention.Update.allCases {
            // β = 30: sigmoid(β) is 1 in float32, so outputs are the memory reads alone.
            let infini = try InfiniAttention(segmentLength: 8, update: update, beta: [30])
            var memory = try CompressiveMemory(batch: 1, kvHeads: 1, headDimension: d, valueDimension: dv)
            // Segment 1 writes keys e_0..e_7 with their values.
            _ = try infini.step(queries: try tensor((0..<8).map(oneHot)), keys: try tensor((0..<8).map(oneHot)),
                                values: try tensor(stored), memory: &memory)
            // Segment 2 reads e_0..e_7 back (and writes unrelated keys e_8..e_15).
            let read = try infini.step(queries: try tensor((0..<8).map(oneHot)), keys: try tensor((8..<16).map(oneHot)),
                                       values: try tensor(stored), memory: &memory)
            for j in 0..<8 { for t in 0..<dv { XCTAssertEqual(read[0, 0, j, t], stored[j][t], accuracy: 1e-5, "\(update) key \(j)") } }
            // Segment 3 re-writes e_3 with a new value; segment 4 reads e_3.
            _ = try infini.step(queries: try tensor([oneHot(3)]), keys: try tensor([oneHot(3)]), values: try tensor([replacement]), memory: &memory)
            let after = try infini.step(queries: try tensor([oneHot(3)]), keys: try tensor([oneHot(9)]), values: try tensor([replacement]), memory: &memory)
            let got = (0..<dv).map { Double(after[0, 0, 0, $0]) }
            let target = replacement.map(Double.init)
            let cosine = zip(got, target).reduce(0.0) { $0 + $1.0 * $1.1 } /
                ((got.reduce(0.0) { $0 + $1 * $1 }).squareRoot() * (target.reduce(0.0) { $0 + $1 * $1 }).squareRoot())
            if update == .delta {
                // M_3 = v_old + (v_new - v_old) = v_new; z_3 = 2, so the read is v_new / 2.
                for t in 0..<dv { XCTAssertEqual(got[t], target[t] / 2, accuracy: 1e-5) }
            } else {
                XCTAssertLessThan(cosine, 0.9, "linear mixes old and new values")
            }
        }
    }

    func testGroupedHeadsShareTheirKVHeadsMemory() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 6, Hkv: 2, N: 50, M: 50, d: 8, dv: 8, seed: 9)
        var kr = try Tensor(zeros: [1, 6, 50, 8]), vr = kr
        for h in 0..<6 { for i in 0..<50 { for x in 0..<8 { kr[0, h, i, x] = k[0, h / 3, i, x]; vr[0, h, i, x] = v[0, h / 3, i, x] } } }
        for update in InfiniAttention.Update.allCases {
            let infini = try InfiniAttention(segmentLength: 16, update: update, beta: [0, 1, 2, -1, -2, 0.5])
            let a = try infini(queries: q, keys: k, values: v), b = try infini(queries: q, keys: kr, values: vr)
            XCTAssertLessThan(zip(a.scalars, b.scalars).map { abs($0 - $1) }.max()!, 1e-5)
        }
    }

    /// A long stream of large inputs keeps M and z finite.
    func testLongStreamsStayFinite() throws {
        let n = 16384
        let q = try Tensor.randomUniform([1, 1, n, 16], seed: 1, bound: 20)
        let k = try Tensor.randomUniform([1, 1, n, 16], seed: 2, bound: 20)
        let v = try Tensor.randomUniform([1, 1, n, 16], seed: 3, bound: 20)
        for update in InfiniAttention.Update.allCases {
            var memory = try CompressiveMemory(batch: 1, kvHeads: 1, headDimension: 16, valueDimension: 16)
            let out = try InfiniAttention(segmentLength: 256, update: update, beta: [0])(queries: q, keys: k, values: v, memory: &memory)
            XCTAssertTrue(out.scalars.allSatisfy(\.isFinite), "\(update) output")
            XCTAssertTrue(memory.memory.scalars.allSatisfy(\.isFinite) && memory.normalizer.scalars.allSatisfy(\.isFinite), "\(update) state")
        }
    }

    func testBadInputsThrow() throws {
        let q = try Tensor(zeros: [1, 2, 10, 4]), kv = try Tensor(zeros: [1, 1, 10, 4])
        XCTAssertThrowsError(try InfiniAttention(segmentLength: 0, beta: [0, 0]))
        XCTAssertThrowsError(try InfiniAttention(segmentLength: 4, beta: [0])(queries: q, keys: kv, values: kv))
        var memory = try CompressiveMemory(batch: 1, kvHeads: 1, headDimension: 4, valueDimension: 4)
        XCTAssertThrowsError(try InfiniAttention(segmentLength: 4, beta: [0, 0]).step(queries: q, keys: kv, values: kv, memory: &memory))
        var wrong = try CompressiveMemory(batch: 1, kvHeads: 2, headDimension: 4, valueDimension: 4)
        XCTAssertThrowsError(try InfiniAttention(segmentLength: 10, beta: [0, 0]).step(queries: q, keys: kv, values: kv, memory: &wrong))
        let path = NSTemporaryDirectory() + "bad-memory-\(UUID().uuidString).npy"
        try Numpy.write(try Tensor(zeros: [1, 1, 4]), to: path)
        XCTAssertThrowsError(try CompressiveMemory.load(from: path))
        try? FileManager.default.removeItem(atPath: path)
    }
}

final class NeedleTests: XCTestCase {
    /// Absorbing a prefix with `write` leaves the same memory as stepping through it.
    func testWriteEqualsStepForTheMemory() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 2, Hkv: 1, N: 64, M: 64, d: 8, dv: 8, seed: 4)
        for update in InfiniAttention.Update.allCases {
            let infini = try InfiniAttention(segmentLength: 16, update: update, beta: [0, 0])
            var a = try CompressiveMemory(batch: 1, kvHeads: 1, headDimension: 8, valueDimension: 8), b = a
            for s in stride(from: 0, to: 64, by: 16) {
                let r = s..<(s + 16)
                _ = try infini.step(queries: try q.rows(r), keys: try k.rows(r), values: try v.rows(r), memory: &a)
                try infini.write(keys: try k.rows(r), values: try v.rows(r), memory: &b)
            }
            XCTAssertTrue(a.memory.scalars == b.memory.scalars && a.normalizer.scalars == b.normalizer.scalars)
        }
    }

    /// Exact attention finds a sharp needle anywhere; BigBird finds it in its sink and window
    /// blocks; the protocol's score is a cosine in [-1, 1].
    func testNeedleProtocol() throws {
        var settings = NeedleInAHaystack.Settings()
        settings.d = 32
        settings.segment = 256
        let haystack = try NeedleInAHaystack.Haystack(length: 2000, settings: settings)
        for depth in [0.0, 0.37, 1.0] {
            let exact = try haystack.run(.exact, depth: depth)
            XCTAssertTrue(exact.hit, "exact at depth \(depth)")
            XCTAssertGreaterThan(exact.cosine, 0.95)
        }
        XCTAssertTrue(try haystack.run(.bigbird, depth: 0).hit, "sink block")
        XCTAssertTrue(try haystack.run(.bigbird, depth: 1).hit, "window block")
        XCTAssertTrue(try haystack.run(.infiniDelta, depth: 1).hit, "local segment")
        for v in NeedleInAHaystack.Variant.allCases {
            let r = try haystack.run(v, depth: 0.5)
            XCTAssertTrue((-1.0001...1.0001).contains(r.cosine), "\(v): \(r.cosine)")
        }
        XCTAssertEqual(haystack.position(depth: 0.5), 999)
    }
}
