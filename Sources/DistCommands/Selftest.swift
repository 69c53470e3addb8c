import ArgumentParser
import AttentionTensor
import DistributedAttention
import Foundation
import LongAttention
import SequenceParallel
import SwiftMPI

/// `attn dist selftest`: every distributed path against the single-process result on the same
/// inputs (computed on every rank), on odd shapes; exits non-zero if any case is off.
struct DistSelftest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Check ring attention (forward, backward, causal, GQA, key lengths), sharded decoding and linear attention against single-process results.")
    @Option(help: "Largest relative error max|x - ref| / max(1, max|ref|) accepted.") var tolerance: Double = 1e-5
    @Option(help: "Worker threads per rank.") var threads: Int = 1
    @Flag(help: "Give rank 1 (or the last rank) a NaN in its keys: the command must end every rank with an error.")
    var badInput = false
    @OptionGroup var mpi: MPIOptions

    func run() throws {
        try withWorld(mpi) { comm in
            var failures = 0, cases = 0
            func report(_ name: String, _ got: Tensor?, _ want: Tensor) throws {
                cases += 1
                guard comm.rank == 0, let got else { return }
                let err = relativeError(got, want)
                let ok = got.shape == want.shape && err <= tolerance
                if !ok { failures += 1 }
                print("\(ok ? "PASS" : "FAIL") P=\(comm.size) \(name): relative error \(String(format: "%.2e", err))")
            }
            if badInput {
                let (q, k, v) = try inputs(B: 1, H: 2, Hkv: 2, N: 24, M: 24, d: 8, dv: 8, seed: 9)
                var kBad = k
                let victim = min(1, comm.size - 1)
                let shards = SequenceShards(length: 24, ranks: comm.size, layout: .zigzag)
                let p = kBad.unsafeMutableBaseAddress()
                p[shards.ranges(rank: victim)[0].lowerBound * 8] = .nan
                let (sq, sk, sv) = try agree(comm) { () -> (ShardedTensor, ShardedTensor, ShardedTensor) in
                    let sk = try ShardedTensor(slicing: kBad, shards: shards, rank: comm.rank)
                    try checkFinite("keys", sk)
                    return (try ShardedTensor(slicing: q, shards: shards, rank: comm.rank), sk,
                            try ShardedTensor(slicing: v, shards: shards, rank: comm.rank))
                }
                _ = try RingAttention(comm: comm, threads: threads).forward(queries: sq, keys: sk, values: sv, causal: true)
                print("bad input was not refused")
                return
            }
            // Exact attention: (B, H, Hkv, N, M, d, dv, causal, layout, keyLengths).
            let fullCases: [(String, Int, Int, Int, Int, Int, Int, Int, Bool, SequenceShards.Layout, [Int]?)] = [
                ("full mha", 2, 4, 4, 37, 37, 16, 16, false, .contiguous, nil),
                ("full causal zigzag", 1, 4, 4, 50, 50, 32, 32, true, .zigzag, nil),
                ("full causal contiguous", 1, 4, 4, 129, 129, 16, 16, true, .contiguous, nil),
                ("full gqa causal N=33", 1, 8, 2, 33, 33, 16, 16, true, .zigzag, nil),
                ("full causal N=129 zigzag", 1, 2, 1, 129, 129, 8, 12, true, .zigzag, nil),
                ("full causal cross N=5 M=40", 1, 4, 2, 5, 40, 16, 16, true, .zigzag, nil),
                ("full mqa cross N=20 M=45", 1, 4, 1, 20, 45, 16, 16, false, .contiguous, nil),
                ("full causal N=3 (empty chunks)", 1, 2, 2, 3, 3, 8, 8, true, .zigzag, nil),
                ("full causal key lengths", 2, 4, 2, 41, 41, 16, 16, true, .zigzag, [30, 17]),
                ("full key lengths", 2, 2, 2, 19, 26, 8, 8, false, .contiguous, [26, 9]),
            ]
            for (i, c) in fullCases.enumerated() {
                let (name, B, H, Hkv, N, M, d, dv, causal, layout, lengths) = c
                let (q, k, v) = try inputs(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: dv, seed: UInt64(100 + i))
                var mask = causal ? AttentionMask.causal : .none
                if let lengths { mask.keyLengths = lengths }
                let ref = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: mask, threads: threads)
                let qs = SequenceShards(length: N, ranks: comm.size, layout: layout)
                let ks = SequenceShards(length: M, ranks: comm.size, layout: layout)
                let sq = try ShardedTensor(slicing: q, shards: qs, rank: comm.rank)
                let sk = try ShardedTensor(slicing: k, shards: ks, rank: comm.rank)
                let sv = try ShardedTensor(slicing: v, shards: ks, rank: comm.rank)
                let ring = RingAttention(comm: comm, threads: threads)
                let f = try ring.forward(queries: sq, keys: sk, values: sv, causal: causal, keyLengths: lengths)
                try report(name, try f.output.gather(on: comm), ref.output)
                // Gradients (every case with keys; the key-length cases included).
                let dOut = try Tensor.randomNormal(ref.output.shape, seed: UInt64(200 + i))
                let grads = try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: ref, outputGradient: dOut,
                                                                  mask: mask, threads: threads)
                let sdo = try ShardedTensor(slicing: dOut, shards: qs, rank: comm.rank)
                let g = try ring.backward(queries: sq, keys: sk, values: sv, output: f.output, logSumExp: f.logSumExp,
                                          outputGradient: sdo, causal: causal, keyLengths: lengths)
                try report(name + " dq", try g.queries.gather(on: comm, tag: 7100), grads.queries)
                try report(name + " dk", try g.keys.gather(on: comm, tag: 7200), grads.keys)
                try report(name + " dv", try g.values.gather(on: comm, tag: 7300), grads.values)
            }
            // Decoding from a position-sharded cache: a prefill in uneven pieces, then steps that
            // append one token (to the rank that owns its position) and decode.
            for (i, (H, Hkv, d, prefill)) in [(8, 2, 16, 301), (4, 4, 8, 7)].enumerated() {
                let total = prefill + 3
                let (_, k, v) = try inputs(B: 1, H: H, Hkv: Hkv, N: 1, M: total, d: d, dv: d, seed: UInt64(300 + i))
                var single = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: total, headDimension: d)
                var dist = try DistributedKVCache(comm: comm, layers: 1, batch: 1, kvHeads: Hkv, capacity: total, headDimension: d)
                var pos = 0
                for piece in [prefill / 3, prefill - prefill / 3] {
                    try single.append(layer: 0, keys: try k.rows(pos..<(pos + piece)), values: try v.rows(pos..<(pos + piece)))
                    try dist.append(layer: 0, keys: try k.rows(pos..<(pos + piece)), values: try v.rows(pos..<(pos + piece)))
                    pos += piece
                }
                for step in 0..<3 {
                    try single.append(layer: 0, keys: try k.rows(pos..<(pos + 1)), values: try v.rows(pos..<(pos + 1)))
                    try dist.append(layer: 0, keys: try k.rows(pos..<(pos + 1)), values: try v.rows(pos..<(pos + 1)))
                    pos += 1
                    let q = try Tensor.randomNormal([1, H, 1, d], seed: UInt64(400 + 10 * i + step))
                    let want = try decodeAttention(queries: q, cache: single, layer: 0, threads: threads)
                    let got = try dist.decode(queries: q, layer: 0, threads: threads)
                    try report("decode H=\(H) Hkv=\(Hkv) cache \(pos) (this rank holds \(dist.local.lengths[0]))", got, want)
                }
            }
            // Linear attention: (B, H, Hkv, N, M, d, map, causal).
            let linearCases: [(String, Int, Int, Int, Int, Int, Int, LinearFeatureMap, Bool)] = [
                ("linear elu causal N=70", 1, 4, 4, 70, 70, 16, .elu, true),
                ("linear relu causal gqa N=64", 1, 4, 2, 64, 64, 16, .relu, true),
                ("linear elu N=40", 2, 4, 4, 40, 40, 16, .elu, false),
                ("linear elu causal cross N=30 M=53", 1, 2, 1, 30, 53, 8, .elu, true),
                ("linear relu causal N=5 M=3", 1, 2, 2, 5, 3, 8, .relu, true),
            ]
            for (i, c) in linearCases.enumerated() {
                let (name, B, H, Hkv, N, M, d, map, causal) = c
                let (q, k, v) = try inputs(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: d, seed: UInt64(500 + i))
                let want = try linearAttention(queries: q, keys: k, values: v, featureMap: map, causal: causal, chunkSize: 16, threads: threads)
                let qs = SequenceShards(length: N, ranks: comm.size, layout: .contiguous)
                let kr = linearKeyRange(queries: qs, keys: M, rank: comm.rank)
                let (out, _) = try distributedLinearAttention(queries: try q.rows(qs.chunk(comm.rank)), keys: try k.rows(kr),
                                                             values: try v.rows(kr), comm: comm, featureMap: map, causal: causal,
                                                             chunkSize: 16, threads: threads)
                try report(name, try ShardedTensor(shards: qs, rank: comm.rank, chunks: [out]).gather(on: comm), want)
            }
            var total: [Int64] = [Int64(failures)]
            try comm.allreduce(&total, .max)
            if comm.rank == 0 { print("\(cases - failures) passed, \(failures) failed (\(comm.size) ranks)") }
            if total[0] > 0 {
                MPI.finalize()
                Foundation.exit(1)
            }
        }
    }
}

/// Deterministic q, k, v (the same on every rank).
func inputs(B: Int, H: Int, Hkv: Int, N: Int, M: Int, d: Int, dv: Int, seed: UInt64) throws -> (Tensor, Tensor, Tensor) {
    (try Tensor.randomNormal([B, H, N, d], seed: seed), try Tensor.randomNormal([B, Hkv, M, d], seed: seed &+ 1),
     try Tensor.randomNormal([B, Hkv, M, dv], seed: seed &+ 2))
}

/// max|a - b| / max(1, max|b|) (∞ when the shapes differ).
func relativeError(_ a: Tensor, _ b: Tensor) -> Double {
    guard a.shape == b.shape else { return .infinity }
    let x = a.scalars, y = b.scalars
    var diff = 0.0, scale = 1.0
    for i in x.indices {
        diff = max(diff, Double(abs(x[i] - y[i])))
        scale = max(scale, Double(abs(y[i])))
    }
    return diff / scale
}
