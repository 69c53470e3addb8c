import AttentionTensor
import DistributedAttention
import LongAttention
import SequenceParallel
import SwiftMPI
import XCTest

/// max|a - b| / max(1, max|b|) (infinity for different shapes or a non-finite value).
func relativeError(_ a: Tensor, _ b: Tensor) -> Float {
    guard a.shape == b.shape else { return .infinity }
    let x = a.contiguous().scalars, y = b.contiguous().scalars
    var diff: Float = 0, scale: Float = 1
    for (u, v) in zip(x, y) {
        guard u.isFinite, v.isFinite else { return .infinity }
        diff = max(diff, abs(u - v))
        scale = max(scale, abs(v))
    }
    return diff / scale
}

func inputs(B: Int, H: Int, Hkv: Int, N: Int, M: Int, d: Int, dv: Int, seed: UInt64) throws -> (Tensor, Tensor, Tensor) {
    (try Tensor.randomNormal([B, H, N, d], seed: seed), try Tensor.randomNormal([B, Hkv, M, d], seed: seed &+ 1),
     try Tensor.randomNormal([B, Hkv, M, dv], seed: seed &+ 2))
}

/// Ring attention, the sharded tensor, the position-sharded KV cache and distributed linear
/// attention on a one-rank world: the ring of one step (its own block, both layouts: the zigzag
/// split gives the one rank two chunks) must equal single-process attention, and every input the
/// multi-rank run refuses is refused here with the same typed error (the agreement all-reduce of one).
final class OneRankAttentionTests: XCTestCase {
    func sharded(_ t: Tensor, _ s: SequenceShards, rank: Int = 0) throws -> ShardedTensor {
        try ShardedTensor(slicing: t, shards: s, rank: rank)
    }

    func testRingForwardAndBackwardEqualSingleProcessAttention() throws {
        let comm = try OneRankWorld.communicator()
        // (B, H, Hkv, N, M, d, dv, causal, layout, keyLengths)
        let cases: [(Int, Int, Int, Int, Int, Int, Int, Bool, SequenceShards.Layout, [Int]?)] = [
            (2, 4, 2, 13, 13, 8, 8, false, .contiguous, nil),
            (1, 4, 4, 17, 17, 8, 12, true, .zigzag, nil),
            (1, 4, 1, 5, 11, 8, 8, true, .zigzag, nil),              // cross, bottom-right causal
            (2, 2, 2, 9, 9, 8, 8, true, .contiguous, [6, 0]),        // key lengths, one sequence sees nothing
            (1, 2, 1, 11, 3, 8, 8, true, .zigzag, nil),              // rows before every key
        ]
        for (i, c) in cases.enumerated() {
            let (B, H, Hkv, N, M, d, dv, causal, layout, lengths) = c
            let name = "case \(i): B=\(B) H=\(H) Hkv=\(Hkv) N=\(N) M=\(M) causal=\(causal) \(layout) \(lengths ?? [])"
            let (q, k, v) = try inputs(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: dv, seed: UInt64(10 + i))
            var mask = causal ? AttentionMask.causal : .none
            if let lengths { mask.keyLengths = lengths }
            let ref = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: mask, threads: 1)
            let qs = SequenceShards(length: N, ranks: 1, layout: layout), ks = SequenceShards(length: M, ranks: 1, layout: layout)
            let sq = try sharded(q, qs), sk = try sharded(k, ks), sv = try sharded(v, ks)
            XCTAssertEqual(sq.chunks.count, layout == .zigzag ? 2 : 1, name)
            let ring = RingAttention(comm: comm, threads: 1)
            let f = try ring.forward(queries: sq, keys: sk, values: sv, causal: causal, keyLengths: lengths)
            XCTAssertEqual(f.statistics.messages, 0, name)
            XCTAssertEqual(f.statistics.bytesSent, 0, name)
            let out = try XCTUnwrap(try f.output.gather(on: comm), name)
            XCTAssertLessThan(relativeError(out, ref.output), 1e-5, name)

            let dOut = try Tensor.randomNormal(ref.output.shape, seed: UInt64(50 + i))
            let want = try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: ref, outputGradient: dOut,
                                                             mask: mask, threads: 1)
            let g = try ring.backward(queries: sq, keys: sk, values: sv, output: f.output, logSumExp: f.logSumExp,
                                      outputGradient: try sharded(dOut, qs), causal: causal, keyLengths: lengths)
            XCTAssertLessThan(relativeError(try XCTUnwrap(try g.queries.gather(on: comm)), want.queries), 1e-5, name + " dq")
            XCTAssertLessThan(relativeError(try XCTUnwrap(try g.keys.gather(on: comm)), want.keys), 1e-5, name + " dk")
            XCTAssertLessThan(relativeError(try XCTUnwrap(try g.values.gather(on: comm)), want.values), 1e-5, name + " dv")
        }
    }

    func testRingRefusesBadInputsWithTypedErrorsAndStaysUsable() throws {
        let comm = try OneRankWorld.communicator()
        let (q, k, v) = try inputs(B: 2, H: 2, Hkv: 2, N: 12, M: 12, d: 8, dv: 8, seed: 600)
        let s = SequenceShards(length: 12, ranks: 1, layout: .zigzag)
        let sq = try sharded(q, s), sk = try sharded(k, s), sv = try sharded(v, s)
        let ring = RingAttention(comm: comm, threads: 1)
        XCTAssertThrowsError(try ring.forward(queries: sq, keys: sk, values: sv, causal: true, keyLengths: [12, 13])) {
            XCTAssertEqual($0 as? AttentionError, .invalidArgument(name: "keyLengths", value: "13", expected: "a length in 0...12"))
        }
        XCTAssertThrowsError(try ring.forward(queries: sq, keys: sk, values: sv, keyLengths: [3])) {
            XCTAssertEqual($0 as? AttentionError, .shapeMismatch(tensor: "keyLengths", shape: [1], expected: "one length per sequence (B = 2)"))
        }
        var bad = sk
        bad.chunks[1][1, 0, 2, 3] = .nan
        XCTAssertThrowsError(try ring.forward(queries: sq, keys: bad, values: sv, causal: true)) {
            // The index in the whole tensor: chunk 1 of the zigzag split starts at position 6.
            XCTAssertEqual($0 as? AttentionError, .nonFinite(name: "keys", index: [1, 0, 8, 3]))
        }
        var short = sk
        short.chunks.removeLast()
        XCTAssertThrowsError(try ring.forward(queries: sq, keys: short, values: sv, causal: true)) {
            guard case .shapeMismatch(let tensor, let shape, _)? = $0 as? AttentionError else { return XCTFail("\($0)") }
            XCTAssertEqual(tensor, "keys chunks")
            XCTAssertEqual(shape, [1])
        }
        let twoRanks = ShardedTensor(shards: SequenceShards(length: 12, ranks: 2, layout: .zigzag), rank: 1, chunks: sq.chunks)
        XCTAssertThrowsError(try ring.forward(queries: twoRanks, keys: sk, values: sv)) {
            guard case .shapeMismatch(let tensor, _, let expected)? = $0 as? AttentionError else { return XCTFail("\($0)") }
            XCTAssertEqual(tensor, "queries")
            XCTAssertTrue(expected.contains("rank 1 of 2"), expected)
        }
        XCTAssertThrowsError(try ring.forward(queries: sq, keys: sk, values: sv, scale: .nan)) {
            XCTAssertEqual($0 as? AttentionError, .invalidArgument(name: "scale", value: "nan", expected: "a finite number"))
        }
        XCTAssertThrowsError(try RingAttention(comm: comm, threads: 0).forward(queries: sq, keys: sk, values: sv)) {
            XCTAssertEqual($0 as? AttentionError, .invalidArgument(name: "threads", value: "0", expected: "at least 1"))
        }
        var huge = sv
        huge.chunks[0][0, 0, 0, 0] = 1e37
        XCTAssertThrowsError(try ring.forward(queries: sq, keys: sk, values: huge)) {
            guard case .overflow? = $0 as? AttentionError else { return XCTFail("\($0)") }
        }
        let f = try ring.forward(queries: sq, keys: sk, values: sv, causal: true)
        XCTAssertThrowsError(try ring.backward(queries: sq, keys: sk, values: sv, output: f.output, logSumExp: Array(f.logSumExp.prefix(1)),
                                               outputGradient: f.output, causal: true)) {
            XCTAssertEqual($0 as? AttentionError, .shapeMismatch(tensor: "logSumExp chunks", shape: [1], expected: "one per query chunk (2)"))
        }
        var nanGradient = f.output
        nanGradient.chunks[0][0, 1, 0, 0] = .infinity
        XCTAssertThrowsError(try ring.backward(queries: sq, keys: sk, values: sv, output: f.output, logSumExp: f.logSumExp,
                                               outputGradient: nanGradient, causal: true)) {
            XCTAssertEqual($0 as? AttentionError, .nonFinite(name: "outputGradient", index: [0, 1, 0, 0]))
        }
        // After every refusal the ring still computes the right answer.
        let ref = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: .causal, threads: 1)
        let again = try ring.forward(queries: sq, keys: sk, values: sv, causal: true)
        XCTAssertLessThan(relativeError(try XCTUnwrap(try again.output.gather(on: comm)), ref.output), 1e-5)
    }

    func testShardedTensorSlicingAndGather() throws {
        let comm = try OneRankWorld.communicator()
        let q = try Tensor.randomNormal([2, 3, 10, 4], seed: 5)
        let s = SequenceShards(length: 10, ranks: 1, layout: .zigzag)
        XCTAssertThrowsError(try ShardedTensor(slicing: try Tensor.randomNormal([3, 10, 4], seed: 1), shards: s, rank: 0)) {
            XCTAssertEqual($0 as? AttentionError, .wrongRank(name: "the sharded tensor", expected: 4, shape: [3, 10, 4]))
        }
        XCTAssertThrowsError(try ShardedTensor(slicing: q, shards: SequenceShards(length: 9, ranks: 1, layout: .zigzag), rank: 0)) {
            guard case .shapeMismatch? = $0 as? AttentionError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try ShardedTensor(slicing: q, shards: s, rank: 1)) {
            XCTAssertEqual($0 as? AttentionError, .invalidArgument(name: "rank", value: "1", expected: "0..<1"))
        }
        let t = try sharded(q, s)
        XCTAssertEqual(t.ranges, [0..<5, 5..<10])
        XCTAssertEqual(try XCTUnwrap(try t.gather(on: comm)).scalars, q.scalars)
        // Chunks that are strided views of the whole gather as the whole.
        let views = ShardedTensor(shards: s, rank: 0, chunks: try s.ranges(rank: 0).map { try q.rows($0) })
        XCTAssertEqual(try XCTUnwrap(try views.gather(on: comm)).scalars, q.scalars)
    }

    func testShardedCacheDecodesAsTheSingleCacheAndRefusesBadAppends() throws {
        let comm = try OneRankWorld.communicator()
        let (H, Hkv, d, capacity) = (4, 2, 8, 10)
        let (_, k, v) = try inputs(B: 1, H: H, Hkv: Hkv, N: 1, M: capacity + 2, d: d, dv: d, seed: 700)
        var single = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: capacity, headDimension: d, type: .float16)
        var dist = try DistributedKVCache(comm: comm, layers: 1, batch: 1, kvHeads: Hkv, capacity: capacity, headDimension: d, type: .float16)
        XCTAssertThrowsError(try DistributedKVCache(comm: comm, layers: 1, batch: 1, kvHeads: Hkv, capacity: 0, headDimension: d)) {
            XCTAssertEqual($0 as? AttentionError, .invalidArgument(name: "capacity", value: "0", expected: "positive"))
        }
        try single.append(layer: 0, keys: try k.rows(0..<7), values: try v.rows(0..<7))
        try dist.append(layer: 0, keys: try k.rows(0..<7), values: try v.rows(0..<7))
        XCTAssertThrowsError(try dist.append(layer: 0, keys: try k.rows(7..<11), values: try v.rows(7..<11))) {
            XCTAssertEqual($0 as? AttentionError, .cacheFull(capacity: 10, length: 7, appending: 4))
        }
        var kNaN = try k.rows(7..<10).contiguous()
        kNaN[0, 1, 2, 5] = .nan
        XCTAssertThrowsError(try dist.append(layer: 0, keys: kNaN, values: try v.rows(7..<10))) {
            XCTAssertEqual($0 as? AttentionError, .nonFinite(name: "keys", index: [0, 1, 2, 5]))
        }
        var vHuge = try v.rows(7..<10).contiguous()
        vHuge[0, 1, 1, 3] = 1e6
        XCTAssertThrowsError(try dist.append(layer: 0, keys: try k.rows(7..<10), values: vHuge)) {
            guard case .overflow? = $0 as? AttentionError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try dist.append(layer: 1, keys: try k.rows(7..<8), values: try v.rows(7..<8))) {
            XCTAssertEqual($0 as? AttentionError, .invalidArgument(name: "layer", value: "1", expected: "0..<1"))
        }
        XCTAssertThrowsError(try dist.append(layer: 0, keys: try Tensor.randomNormal([1, Hkv, 1, d + 1], seed: 1), values: try v.rows(7..<8))) {
            guard case .shapeMismatch? = $0 as? AttentionError else { return XCTFail("\($0)") }
        }
        XCTAssertEqual(dist.lengths, [7])
        XCTAssertEqual(dist.local.lengths[0], 7)
        try single.append(layer: 0, keys: try k.rows(7..<10), values: try v.rows(7..<10))
        try dist.append(layer: 0, keys: try k.rows(7..<10), values: try v.rows(7..<10))
        let q = try Tensor.randomNormal([1, H, 1, d], seed: 701)
        let want = try decodeAttention(queries: q, cache: single, layer: 0, threads: 1)
        XCTAssertLessThan(relativeError(try dist.decode(queries: q, layer: 0, threads: 1), want), 1e-6)
        XCTAssertThrowsError(try dist.decode(queries: try Tensor.randomNormal([1, H, 2, d], seed: 2), layer: 0)) {
            guard case .shapeMismatch(tensor: "queries", shape: [1, H, 2, d], _)? = $0 as? AttentionError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try dist.append(layer: 0, keys: try k.rows(10..<11), values: try v.rows(10..<11))) {
            XCTAssertEqual($0 as? AttentionError, .cacheFull(capacity: 10, length: 10, appending: 1))
        }
    }

    func testDistributedLinearAttentionEqualsSingleProcess() throws {
        let comm = try OneRankWorld.communicator()
        for (i, (N, M, map, causal)) in [(20, 20, LinearFeatureMap.elu, true), (9, 14, .relu, true), (16, 16, .elu, false)].enumerated() {
            let (q, k, v) = try inputs(B: 1, H: 4, Hkv: 2, N: N, M: M, d: 8, dv: 8, seed: UInt64(500 + i))
            let want = try linearAttention(queries: q, keys: k, values: v, featureMap: map, causal: causal, chunkSize: 8, threads: 1)
            let qs = SequenceShards(length: N, ranks: 1, layout: .contiguous)
            let kr = try linearKeyRange(queries: qs, keys: M, rank: 0)
            XCTAssertEqual(kr, 0..<M)
            let (out, seconds) = try distributedLinearAttention(queries: q, keys: try k.rows(kr), values: try v.rows(kr), comm: comm,
                                                                featureMap: map, causal: causal, chunkSize: 8, threads: 1)
            XCTAssertGreaterThanOrEqual(seconds, 0)
            XCTAssertLessThan(relativeError(out, want), 1e-5, "case \(i)")
        }
    }
}
