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
            /// A named check that holds when `body` is true on every rank (a rank without the data
            /// returns true).
            func check(_ name: String, _ body: () throws -> Bool) throws {
                cases += 1
                var all: [Int64] = [try body() ? 1 : 0]
                try comm.allreduce(&all, .min)
                let ok = all[0] == 1
                guard comm.rank == 0 else { return }
                if !ok { failures += 1 }
                print("\(ok ? "PASS" : "FAIL") P=\(comm.size) \(name)")
            }
            /// `body` must throw on every rank (and the ranks must stay in step after it).
            func expectThrowEverywhere(_ name: String, _ body: () throws -> Void) throws {
                var threw: [Int64] = [1]
                var text = "no error"
                do { try body(); threw[0] = 0 } catch { text = String(describing: error) }
                try comm.allreduce(&threw, .min)
                try check("\(name) throws on every rank (rank 0: \(text))") { threw[0] == 1 }
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
                // Rows that see no key: causal N > M (early rows before every key), key lengths 0.
                ("full causal N=40 M=5 (empty rows)", 1, 2, 1, 40, 5, 8, 8, true, .zigzag, nil),
                ("full causal N=40 M=5 contiguous (empty rows)", 2, 2, 2, 40, 5, 8, 8, true, .contiguous, [5, 3]),
                ("full key lengths with 0", 3, 2, 2, 19, 26, 8, 8, false, .contiguous, [0, 13, 26]),
                ("full causal key lengths with 0", 2, 4, 2, 33, 33, 8, 8, true, .zigzag, [17, 0]),
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
                let wholeOutput = try f.output.gather(on: comm)
                try report(name, wholeOutput, ref.output)
                let emptyRows = invisibleRows(B: B, N: N, M: M, causal: causal, keyLengths: lengths)
                // Gradients (every case with keys; the key-length cases included).
                let dOut = try Tensor.randomNormal(ref.output.shape, seed: UInt64(200 + i))
                let grads = try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: ref, outputGradient: dOut,
                                                                  mask: mask, threads: threads)
                let sdo = try ShardedTensor(slicing: dOut, shards: qs, rank: comm.rank)
                let g = try ring.backward(queries: sq, keys: sk, values: sv, output: f.output, logSumExp: f.logSumExp,
                                          outputGradient: sdo, causal: causal, keyLengths: lengths)
                let wholeDq = try g.queries.gather(on: comm, tag: 7100)
                try report(name + " dq", wholeDq, grads.queries)
                if !emptyRows.isEmpty {
                    // Rows without a visible key: output and dq exactly zero (not merely close).
                    try check("\(name): \(emptyRows.count) rows that see no key have zero output and dq") {
                        guard let wholeOutput, let wholeDq else { return true }
                        return exactlyZero(wholeOutput, rows: emptyRows) && exactlyZero(wholeDq, rows: emptyRows)
                    }
                }
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
            // Refused ring inputs: every rank throws before the ring, and the ring works after.
            do {
                let (q, k, v) = try inputs(B: 2, H: 2, Hkv: 2, N: 12, M: 12, d: 8, dv: 8, seed: 600)
                let shards = SequenceShards(length: 12, ranks: comm.size, layout: .zigzag)
                let sq = try ShardedTensor(slicing: q, shards: shards, rank: comm.rank)
                let sk = try ShardedTensor(slicing: k, shards: shards, rank: comm.rank)
                let sv = try ShardedTensor(slicing: v, shards: shards, rank: comm.rank)
                let ring = RingAttention(comm: comm, threads: threads)
                try expectThrowEverywhere("ring key length 13 > M = 12") {
                    _ = try ring.forward(queries: sq, keys: sk, values: sv, causal: true, keyLengths: [12, 13])
                }
                // Chunks that are views (rows of the whole, not copied) gather as the whole.
                let views = ShardedTensor(shards: shards, rank: comm.rank, chunks: try shards.ranges(rank: comm.rank).map { try q.rows($0) })
                try report("gather of strided chunks", try views.gather(on: comm), q)
                if comm.size > 1 {
                    // The same count, sum and weighted sum: only the lengths themselves tell them apart.
                    let (q3, k3, v3) = try inputs(B: 3, H: 2, Hkv: 2, N: 12, M: 12, d: 8, dv: 8, seed: 601)
                    let s3 = try [q3, k3, v3].map { try ShardedTensor(slicing: $0, shards: shards, rank: comm.rank) }
                    try expectThrowEverywhere("ring with one rank's key lengths [1, 2, 1] against [2, 0, 2]") {
                        _ = try ring.forward(queries: s3[0], keys: s3[1], values: s3[2], causal: false,
                                             keyLengths: comm.rank == comm.size - 1 ? [1, 2, 1] : [2, 0, 2])
                    }
                }
                try expectThrowEverywhere("ring with one rank's zigzag keys missing a chunk") {
                    var short = sk
                    if comm.rank == comm.size - 1 { short.chunks.removeLast() }
                    _ = try ring.forward(queries: sq, keys: short, values: sv, causal: true)
                }
                try expectThrowEverywhere("ring with one rank's NaN key") {
                    var bad = sk
                    if comm.rank == comm.size - 1 { bad.chunks[1][0, 0, 0, 0] = .nan }
                    _ = try ring.forward(queries: sq, keys: bad, values: sv, causal: true)
                }
                try expectThrowEverywhere("ring backward with a log-sum-exp chunk missing") {
                    let f = try ring.forward(queries: sq, keys: sk, values: sv, causal: true)
                    _ = try ring.backward(queries: sq, keys: sk, values: sv, output: f.output, logSumExp: Array(f.logSumExp.prefix(1)),
                                          outputGradient: f.output, causal: true)
                }
                let ref = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: .causal, threads: threads)
                let f = try ring.forward(queries: sq, keys: sk, values: sv, causal: true)
                try report("ring after refused inputs", try f.output.gather(on: comm), ref.output)
            }
            // The sharded cache refuses, on every rank, appends past its global capacity, with a
            // NaN, or beyond its type's range, and stays usable (lengths unchanged, decoding exact).
            do {
                let (H, Hkv, d, capacity) = (4, 2, 8, 10)
                let (_, k, v) = try inputs(B: 1, H: H, Hkv: Hkv, N: 1, M: capacity + 4, d: d, dv: d, seed: 700)
                var single = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: capacity, headDimension: d, type: .float16)
                var dist = try DistributedKVCache(comm: comm, layers: 1, batch: 1, kvHeads: Hkv, capacity: capacity, headDimension: d,
                                                  type: .float16)
                try single.append(layer: 0, keys: try k.rows(0..<7), values: try v.rows(0..<7))
                try dist.append(layer: 0, keys: try k.rows(0..<7), values: try v.rows(0..<7))
                try expectThrowEverywhere("sharded cache append 7 + 4 past capacity 10") {
                    try dist.append(layer: 0, keys: try k.rows(7..<11), values: try v.rows(7..<11))
                }
                // Position 7 + r on rank (7 + r) % P: the bad token lives on one rank only.
                var kNaN = try k.rows(7..<10).contiguous()
                kNaN[0, 0, 2, 0] = .nan
                try expectThrowEverywhere("sharded cache append with a NaN at position 9") {
                    try dist.append(layer: 0, keys: kNaN, values: try v.rows(7..<10))
                }
                var vHuge = try v.rows(7..<10).contiguous()
                vHuge[0, 1, 1, 3] = 1e6
                try expectThrowEverywhere("sharded f16 cache append with 1e6 at position 8") {
                    try dist.append(layer: 0, keys: try k.rows(7..<10), values: vHuge)
                }
                try expectThrowEverywhere("sharded cache append to layer 1 of 1") {
                    try dist.append(layer: 1, keys: try k.rows(7..<8), values: try v.rows(7..<8))
                }
                try check("sharded cache length 7 on every rank after the refused appends") { dist.lengths == [7] }
                try single.append(layer: 0, keys: try k.rows(7..<10), values: try v.rows(7..<10))
                try dist.append(layer: 0, keys: try k.rows(7..<10), values: try v.rows(7..<10))
                let q = try Tensor.randomNormal([1, H, 1, d], seed: 701)
                let want = try decodeAttention(queries: q, cache: single, layer: 0, threads: threads)
                try report("sharded cache decode after refused appends (full at 10)", try dist.decode(queries: q, layer: 0, threads: threads), want)
                try expectThrowEverywhere("sharded cache append to a full cache") {
                    try dist.append(layer: 0, keys: try k.rows(10..<11), values: try v.rows(10..<11))
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
                let kr = try linearKeyRange(queries: qs, keys: M, rank: comm.rank)
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

/// max|a - b| / max(1, max|b|) (∞ when the shapes differ or either holds NaN/Inf).
func relativeError(_ a: Tensor, _ b: Tensor) -> Double {
    guard a.shape == b.shape else { return .infinity }
    let x = a.scalars, y = b.scalars
    var diff = 0.0, scale = 1.0
    for i in x.indices {
        if !x[i].isFinite || !y[i].isFinite { return .infinity }
        diff = max(diff, Double(abs(x[i] - y[i])))
        scale = max(scale, Double(abs(y[i])))
    }
    return diff / scale
}

/// (batch, query row) pairs that see no key: bottom-right causal rows before every key
/// (`i + M - N < 0`), and every row of a batch whose key length is 0 (or whose causal window ends
/// before the first key).
func invisibleRows(B: Int, N: Int, M: Int, causal: Bool, keyLengths: [Int]?) -> [(b: Int, i: Int)] {
    var rows: [(b: Int, i: Int)] = []
    for b in 0..<B {
        let length = keyLengths?[b] ?? M
        for i in 0..<N {
            let last = min(causal ? i + M - N : M - 1, length - 1)
            if last < 0 { rows.append((b, i)) }
        }
    }
    return rows
}

/// Whether rows `(b, i)` of `t [B, H, N, w]` are exactly zero in every head.
func exactlyZero(_ t: Tensor, rows: [(b: Int, i: Int)]) -> Bool {
    let (H, w) = (t.shape[1], t.shape[3])
    for (b, i) in rows {
        for h in 0..<H {
            for c in 0..<w where t[b, h, i, c] != 0 { return false }
        }
    }
    return true
}
