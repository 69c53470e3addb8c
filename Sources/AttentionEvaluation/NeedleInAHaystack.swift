import AttentionTensor
import Foundation
import LongAttention

/// A passkey-style retrieval test that needs no trained weights.
///
/// Protocol (one head, `d` dimensions, `N` tokens):
/// - the haystack: every position `j` gets a random unit key `k_j` and a random unit value `v_j`
///   (uniform on the cube, normalised; seeded);
/// - the needle: at position `p = round(depth · (N - 2))` the key is a fixed random unit vector
///   `u` and the value a fixed random unit vector `w`;
/// - the question: the query at the last position `N - 1` is aimed at the needle key,
///   `q = sharpness · sqrt(d) · u`, so with the usual `1/sqrt(d)` scale its logit for the needle
///   is `sharpness` and for a random key about `sharpness · N(0, 1/d)`;
/// - the answer: the attention output `o` of that last query. Score = cosine(o, w); a hit when
///   `w` is the nearest (by cosine) of all the haystack's values to `o`.
///
/// Every variant answers with its own code path, causally (the question is the stream's last
/// token): exact attention (tiled), causal BigBird (sinks, window, random blocks), causal linear
/// attention (elu), Infini-Attention (linear and delta memories; segments of `segment` tokens,
/// gate `β`).
public enum NeedleInAHaystack {
    public enum Variant: String, Sendable, CaseIterable {
        case exact, bigbird, linear
        case infiniLinear = "infini-linear"
        case infiniDelta = "infini-delta"
    }

    public struct Settings: Sendable {
        public var d = 64
        public var sharpness: Float = 20
        public var seed: UInt64 = 0
        /// Infini-Attention segment length and gate logit.
        public var segment = 2048
        public var beta: Float = 0
        /// BigBird block size and random blocks.
        public var blockSize = 64
        public var randomBlocks = 3
        public var threads = Parallel.defaultThreads
        public init() {}
    }

    public struct Result: Sendable {
        public let variant: Variant
        public let length: Int
        public let depth: Double
        public let needlePosition: Int
        public let cosine: Double
        public let hit: Bool
        public let seconds: Double
    }

    /// Random unit rows `[n, d]` from `seed`.
    static func unitRows(_ n: Int, _ d: Int, seed: UInt64) throws -> Tensor {
        var t = try Tensor.randomUniform([1, 1, n, d], seed: seed)
        t.withUnsafeMutableBufferPointer { p in
            for r in 0..<n {
                var s: Float = 0
                for c in 0..<d { s += p[r * d + c] * p[r * d + c] }
                let inv = 1 / max(s.squareRoot(), 1e-12)
                for c in 0..<d { p[r * d + c] *= inv }
            }
        }
        return t
    }

    /// A haystack of `length` tokens, reused across depths and variants.
    public struct Haystack: Sendable {
        public let length: Int, d: Int
        var keys: Tensor, values: Tensor
        let needleKey: [Float], needleValue: [Float]
        let settings: Settings

        public init(length: Int, settings: Settings = Settings()) throws {
            guard length >= 2 else { throw AttentionError.invalidArgument(name: "length", value: "\(length)", expected: "at least 2 tokens") }
            guard settings.d >= 2, settings.sharpness.isFinite else { throw AttentionError.invalidArgument(name: settings.d >= 2 ? "sharpness" : "d", value: settings.d >= 2 ? "\(settings.sharpness)" : "\(settings.d)", expected: settings.d >= 2 ? "finite" : "at least 2") }
            self.length = length
            d = settings.d
            self.settings = settings
            keys = try unitRows(length, d, seed: settings.seed &* 4 &+ 1)
            values = try unitRows(length, d, seed: settings.seed &* 4 &+ 2)
            let needle = try unitRows(2, d, seed: settings.seed &* 4 &+ 3).scalars
            needleKey = Array(needle[0..<d])
            needleValue = Array(needle[d..<(2 * d)])
        }

        /// The needle's position at `depth` in [0, 1].
        public func position(depth: Double) -> Int { Int((max(0, min(1, depth)) * Double(length - 2)).rounded()) }

        /// Plants the needle at `depth`, asks `variant`, and scores the answer.
        public func run(_ variant: Variant, depth: Double) throws -> Result {
            let p = position(depth: depth)
            var k = keys, v = values
            k.withUnsafeMutableBufferPointer { b in for c in 0..<d { b[p * d + c] = needleKey[c] } }
            v.withUnsafeMutableBufferPointer { b in for c in 0..<d { b[p * d + c] = needleValue[c] } }
            let qScale = settings.sharpness * Float(d).squareRoot()
            let question = try Tensor(shape: [1, 1, 1, d], scalars: needleKey.map { $0 * qScale })
            let t0 = DispatchTime.now().uptimeNanoseconds
            let answer = try ask(variant, question: question, keys: k, values: v)
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
            // Score: cosine with the needle value; hit: the needle value is the nearest of all values.
            let o = answer.scalars
            let norm = max(o.reduce(Float(0)) { $0 + $1 * $1 }.squareRoot(), 1e-30)
            let sims = try Tensor.matmul(v, try Tensor(shape: [d, 1], scalars: o)).scalars
            let best = sims.indices.max { sims[$0] < sims[$1] } ?? 0
            return Result(variant: variant, length: length, depth: depth, needlePosition: p,
                          cosine: Double(sims[p] / norm), hit: best == p && o.allSatisfy(\.isFinite), seconds: seconds)
        }

        func ask(_ variant: Variant, question: Tensor, keys k: Tensor, values v: Tensor) throws -> Tensor {
            let n = length, threads = settings.threads
            switch variant {
            case .exact:
                return try scaledDotProductAttention(queries: question, keys: k, values: v, mask: .causal,
                                                     implementation: .tiled, threads: threads)
            case .linear:
                return try linearAttention(queries: question, keys: k, values: v, featureMap: .elu, causal: true, threads: threads)
            case .bigbird:
                // Causal BigBird over the whole stream; only the last row is the answer (other rows' queries are 0).
                var q = try Tensor(zeros: [1, 1, n, d])
                q.withUnsafeMutableBufferPointer { b in question.withUnsafePointer { s in (b.baseAddress! + (n - 1) * d).update(from: s, count: d) } }
                let plan = try BigBirdPlan(sequenceLength: n, heads: 1, blockSize: settings.blockSize, randomBlocks: settings.randomBlocks,
                                           seed: settings.seed, causal: true)
                return try bigBirdAttention(queries: q, keys: k, values: v, plan: plan, threads: threads).rows((n - 1)..<n)
            case .infiniLinear, .infiniDelta:
                let infini = try InfiniAttention(segmentLength: settings.segment, update: variant == .infiniDelta ? .delta : .linear,
                                                 beta: [settings.beta])
                var memory = try CompressiveMemory(batch: 1, kvHeads: 1, headDimension: d, valueDimension: d)
                // Every segment before the last only writes to memory; the last is attended to.
                let lastStart = (n - 1) / settings.segment * settings.segment
                var start = 0
                while start < lastStart {
                    let r = start..<(start + settings.segment)
                    try infini.write(keys: try k.rows(r), values: try v.rows(r), memory: &memory, threads: threads)
                    start += settings.segment
                }
                let r = lastStart..<n
                var q = try Tensor(zeros: [1, 1, r.count, d])
                q.withUnsafeMutableBufferPointer { b in question.withUnsafePointer { s in (b.baseAddress! + (r.count - 1) * d).update(from: s, count: d) } }
                let out = try infini.step(queries: q, keys: try k.rows(r), values: try v.rows(r), memory: &memory, threads: threads)
                return try out.rows((r.count - 1)..<r.count)
            }
        }
    }
}
