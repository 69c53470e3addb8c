import ArgumentParser
import AttentionTensor
import DistributedAttention
import Foundation
import LongAttention
import SequenceParallel
import SwiftMPI

/// `attn dist bench`: ring attention's benchmark rows (`variant: "ring"`, one per rank) under
/// mpirun, or with `--baseline` the single-process rows at the same shape (no MPI), so that
/// `make bench-ring` can set one against the other.
struct DistBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmark rows for ring attention (per rank: time, bytes sent, waits, hidden communication) or, with --baseline, single-process attention.")
    @Option(help: "Sequence length N = M.") var length: Int = 32768
    @Option(help: "Query heads H.") var heads: Int = 8
    @Option(help: "KV heads Hkv.") var kvHeads: Int?
    @Option(help: "Head dimension d (= dv).") var dim: Int = 64
    @Flag(help: "Causal mask.") var causal = false
    @Option(help: "Threads per rank (baseline: threads of the single process).") var threads: Int = 1
    @Option(help: "Timed repetitions (the median is reported).") var repeats: Int = 3
    @Option(help: "Passes: forward and/or backward.") var passes: String = "forward"
    @Option(help: "Also time decoding against a cache of this many tokens (0: no decode rows).") var decodeCache: Int = 0
    @Option(help: "Decode shape: query heads, KV heads, head dimension.") var decodeShape: String = "32,8,128"
    @Flag(help: "Single-process rows at the same shapes (run without mpirun).") var baseline = false
    @Option(help: "Write the rows (JSON array) here (rank 0).") var json: String
    @OptionGroup var mpi: MPIOptions

    func validate() throws {
        if length < 1 || heads < 1 || dim < 1 || threads < 1 || repeats < 1 { throw ValidationError("sizes, threads and repeats must be positive") }
        if heads % (kvHeads ?? heads) != 0 { throw ValidationError("--heads must be a multiple of --kv-heads") }
        if decodeShape.split(separator: ",").compactMap({ Int($0) }).count != 3 { throw ValidationError("--decode-shape is H,Hkv,d") }
    }

    var Hkv: Int { kvHeads ?? heads }

    /// Values in [-√3, √3) from a hash of (seed, batch·head, position, column): any rank makes its
    /// rows of the same tensor without the rest.
    static func fill(_ shape: [Int], positions: Range<Int>, seed: UInt64) throws -> Tensor {
        var t = try Tensor(uninitialized: [shape[0], shape[1], positions.count, shape[3]])
        let p = t.unsafeMutableBaseAddress(), w = shape[3], n = positions.count
        for bh in 0..<(shape[0] * shape[1]) {
            for (i, pos) in positions.enumerated() {
                var g = SplitMix64(seed: seed &+ UInt64(bh) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(pos) &* 0xD1B5_4A32_D192_ED03)
                for c in 0..<w { p[(bh * n + i) * w + c] = Float(g.nextUnitOpen() * 2 - 1) * 1.7320508 }
            }
        }
        return t
    }

    static func median(_ x: [Double]) -> Double { let s = x.sorted(); return s[s.count / 2] }

    func row(_ extra: [String: Any]) -> [String: Any] {
        var r: [String: Any] = ["variant": "ring", "impl": "zigzag", "B": 1, "H": heads, "Hkv": Hkv, "N": length, "M": length,
                                "d": dim, "causal": causal, "threads": threads, "peakFraction": NSNull(), "relError": NSNull(),
                                "workspaceBytes": 0, "pass": "forward"]
        for (k, v) in extra { r[k] = v }
        return r
    }

    /// Attended (query, key) pairs of the whole problem and FLOPs of a forward (2 GEMMs of 2·d per pair).
    var pairs: Double { causal ? Double(length) * Double(length + 1) / 2 : Double(length) * Double(length) }
    var forwardFlops: Double { 4 * Double(heads) * Double(dim) * pairs }
    var backwardFlops: Double { 2.5 * forwardFlops }

    func write(_ rows: [[String: Any]]) throws {
        let data = try JSONSerialization.data(withJSONObject: rows, options: [.prettyPrinted, .sortedKeys])
        let tmp = json + ".tmp"
        try data.write(to: URL(fileURLWithPath: tmp))
        _ = rename(tmp, json)
    }

    func run() throws {
        if baseline { try runBaseline(); return }
        try withWorld(mpi) { comm in try runRing(comm) }
    }

    func runBaseline() throws {
        var rows: [[String: Any]] = []
        let all = 0..<length
        let q = try Self.fill([1, heads, length, dim], positions: all, seed: 1)
        let k = try Self.fill([1, Hkv, length, dim], positions: all, seed: 2)
        let v = try Self.fill([1, Hkv, length, dim], positions: all, seed: 3)
        let mask: AttentionMask = causal ? .causal : .none
        var times: [Double] = []
        var fwd: SoftmaxAttentionForward? = nil
        for _ in 0..<repeats {
            let t0 = Date()
            fwd = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: mask, threads: threads)
            times.append(Date().timeIntervalSince(t0))
        }
        let s = Self.median(times)
        rows.append(row(["variant": "full", "impl": "tiled", "seconds": s, "gflops": forwardFlops / s / 1e9, "ranks": 1,
                         "secondsMin": times.min()!, "secondsMax": times.max()!]))
        if passes.contains("backward"), let fwd {
            let dO = try Self.fill([1, heads, length, dim], positions: all, seed: 4)
            var bt: [Double] = []
            for _ in 0..<repeats {
                let t0 = Date()
                _ = try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: fwd, outputGradient: dO, mask: mask, threads: threads)
                bt.append(Date().timeIntervalSince(t0))
            }
            let b = Self.median(bt)
            rows.append(row(["variant": "full", "impl": "tiled", "pass": "backward", "seconds": b, "gflops": backwardFlops / b / 1e9,
                             "backwardForwardRatio": b / s, "ranks": 1, "secondsMin": bt.min()!, "secondsMax": bt.max()!]))
        }
        if decodeCache > 0 {
            let (dh, dkv, dd) = decodeDims
            var cache = try KVCache(layers: 1, batch: 1, kvHeads: dkv, capacity: decodeCache, headDimension: dd)
            var pos = 0
            while pos < decodeCache {
                let n = min(8192, decodeCache - pos)
                try cache.append(layer: 0, keys: try Self.fill([1, dkv, 0, dd], positions: pos..<(pos + n), seed: 5),
                                 values: try Self.fill([1, dkv, 0, dd], positions: pos..<(pos + n), seed: 6))
                pos += n
            }
            let q1 = try Self.fill([1, dh, 1, dd], positions: 0..<1, seed: 7)
            var dt: [Double] = []
            for _ in 0..<(repeats * 10) {
                let t0 = Date()
                _ = try decodeAttention(queries: q1, cache: cache, layer: 0, threads: threads)
                dt.append(Date().timeIntervalSince(t0))
            }
            let m = Self.median(dt)
            rows.append(row(["variant": "decode", "impl": "tiled", "H": dh, "Hkv": dkv, "N": 1, "M": decodeCache, "d": dd, "causal": true,
                             "seconds": m, "gflops": 4 * Double(dh * dd * decodeCache) / m / 1e9, "ranks": 1, "kvType": "f32",
                             "workspaceBytes": cache.bytes]))
        }
        try write(rows)
    }

    var decodeDims: (Int, Int, Int) {
        let x = decodeShape.split(separator: ",").compactMap { Int($0) }
        return (x[0], x[1], x[2])
    }

    func runRing(_ comm: Communicator) throws {
        let P = comm.size, layout = mpi.layout ?? (causal ? .zigzag : .contiguous)
        let shards = SequenceShards(length: length, ranks: P, layout: layout)
        func shard(_ H: Int, seed: UInt64) throws -> ShardedTensor {
            ShardedTensor(shards: shards, rank: comm.rank,
                          chunks: try shards.ranges(rank: comm.rank).map { try Self.fill([1, H, 0, dim], positions: $0, seed: seed) })
        }
        let q = try shard(heads, seed: 1), k = try shard(Hkv, seed: 2), v = try shard(Hkv, seed: 3)
        let ring = RingAttention(comm: comm, threads: threads)
        let myPairs = Double(attendedPairs(queries: shards, keys: length, causal: causal, rank: comm.rank))
        let imbalance = workImbalance(queries: shards, keys: length, causal: causal)
        let kvShardBytes = k.chunks.reduce(0) { $0 + $1.count * 4 } * 2
        var rows: [[String: Any]] = []
        // Communication alone: the same P - 1 block exchanges with nothing to compute.
        let blockFloats = k.chunks.reduce(0) { $0 + $1.count } * 2
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: max(1, blockFloats)), incoming = UnsafeMutablePointer<Float>.allocate(capacity: max(1, 2 * blockFloats))
        defer { buffer.deallocate(); incoming.deallocate() }
        buffer.initialize(repeating: 1, count: max(1, blockFloats))
        var maxBlock: [Int64] = [Int64(blockFloats)]
        try comm.allreduce(&maxBlock, .max)
        var alone: [Double] = []
        for _ in 0..<3 {
            try comm.barrier()
            let t0 = MPI.wtime()
            for step in 0..<(P - 1) {
                var r = [try comm.isend(buffer, count: blockFloats, to: comm.next, tag: 900 + step),
                         try comm.irecv(incoming, count: Int(maxBlock[0]), from: comm.previous, tag: 900 + step)]
                try comm.wait(&r, what: "the communication-only ring")
            }
            alone.append(MPI.wtime() - t0)
        }
        var jobAlone = [Self.median(alone)]
        try comm.allreduce(&jobAlone, .max)
        let commAlone = jobAlone[0]

        func emit(_ pass: String, _ stats: [RingStatistics], flops: Double, ratio: Double?) throws {
            let secs = stats.map(\.seconds)
            let s = Self.median(secs)
            let pick = stats[secs.firstIndex(of: s)!]
            var job: [Double] = [s]
            try comm.allreduce(&job, .max)
            // Communication not hidden behind compute: at most the wait of each step, and at most
            // that step's communication alone (a longer wait is a slower peer, not the link).
            // hidden = 1 - Σ_steps min(wait, alone per step) / alone: a lower bound.
            // The forward receives one K/V block in each step but the last; the backward a K/V
            // block (steps 0 ..< P-1) and a dK/dV accumulator (steps 1 ..< P, and the last one home). Time polling MPI between pieces of compute
            // (the shared-memory copy happens there) counts as exposed too.
            let block = commAlone / Double(max(1, P - 1))
            let caps = pass == "backward" ? [block] + Array(repeating: 2 * block, count: max(0, P - 2)) + [block, block] : Array(repeating: block, count: P - 1) + [0]
            let total = caps.reduce(0, +)
            var exposed = 0.0
            for (i, w) in pick.stepWaits.enumerated() where i < caps.count {
                exposed += min(w + (i < pick.stepProgress.count ? pick.stepProgress[i] : 0), caps[i])
            }
            let hidden = total > 0 ? max(0, min(1, 1 - exposed / total)) : 1
            var r = row(["impl": layout.rawValue, "pass": pass, "seconds": s, "gflops": flops * myPairs / pairs / s / 1e9,
                         "jobSeconds": job[0], "jobGflops": flops / job[0] / 1e9, "ranks": P, "rank": comm.rank,
                         "bytesSent": pick.bytesSent, "waitSeconds": pick.waitSeconds, "computeSeconds": pick.computeSeconds, "progressSeconds": pick.progressSeconds,
                         "commSecondsAlone": total, "hiddenFraction": hidden,
                         "workspaceBytes": pick.bufferBytes, "kvShardBytes": kvShardBytes, "kvWholeBytes": 2 * Hkv * length * dim * 4,
                         "imbalance": imbalance, "rankWorkFraction": myPairs / pairs, "blocksComputed": pick.blocksComputed,
                         "blocksSkipped": pick.blocksSkipped, "secondsMin": secs.min()!, "secondsMax": secs.max()!])
            if let ratio { r["backwardForwardRatio"] = ratio }
            rows.append(r)
        }
        var fstats: [RingStatistics] = []
        var last: (output: ShardedTensor, logSumExp: [Tensor], statistics: RingStatistics)? = nil
        for _ in 0..<repeats {
            try comm.barrier()
            let f = try ring.forward(queries: q, keys: k, values: v, causal: causal)
            fstats.append(f.statistics)
            last = f
        }
        try emit("forward", fstats, flops: forwardFlops, ratio: nil)
        if passes.contains("backward"), let f = last {
            let dO = try shard(heads, seed: 4)
            var bstats: [RingStatistics] = []
            for _ in 0..<repeats {
                try comm.barrier()
                bstats.append(try ring.backward(queries: q, keys: k, values: v, output: f.output, logSumExp: f.logSumExp,
                                                outputGradient: dO, causal: causal).statistics)
            }
            try emit("backward", bstats, flops: backwardFlops,
                     ratio: Self.median(bstats.map(\.seconds)) / Self.median(fstats.map(\.seconds)))
        }
        last = nil
        if decodeCache > 0 {
            let (dh, dkv, dd) = decodeDims
            var cache = try DistributedKVCache(comm: comm, layers: 1, batch: 1, kvHeads: dkv, capacity: decodeCache, headDimension: dd)
            var pos = 0
            while pos < decodeCache {
                let n = min(8192, decodeCache - pos)
                try cache.append(layer: 0, keys: try Self.fill([1, dkv, 0, dd], positions: pos..<(pos + n), seed: 5),
                                 values: try Self.fill([1, dkv, 0, dd], positions: pos..<(pos + n), seed: 6))
                pos += n
            }
            let q1 = try Self.fill([1, dh, 1, dd], positions: 0..<1, seed: 7)
            var dt: [Double] = [], coll: [Double] = []
            try comm.barrier()
            for _ in 0..<(repeats * 10) {
                let before = cache.collectiveSeconds
                let t0 = MPI.wtime()
                _ = try cache.decode(queries: q1, layer: 0, threads: threads)
                dt.append(MPI.wtime() - t0)
                coll.append(cache.collectiveSeconds - before)
            }
            let m = Self.median(dt)
            rows.append(row(["impl": "decode", "H": dh, "Hkv": dkv, "N": 1, "M": decodeCache, "d": dd, "causal": true,
                             "seconds": m, "gflops": 4 * Double(dh * dd * decodeCache) / m / 1e9, "ranks": P, "rank": comm.rank,
                             "bytesSent": 4 * (dh + dh * (dd + 1)), "waitSeconds": Self.median(coll), "hiddenFraction": 0,
                             "workspaceBytes": cache.local.bytes, "localPositions": cache.local.lengths[0], "kvType": "f32"]))
        }
        // Rank 0 gathers every rank's rows (as JSON text, through a float buffer of bytes).
        let mine = try JSONSerialization.data(withJSONObject: rows)
        var sizes: [Double] = try comm.allgather([Double(mine.count)])
        let maxSize = Int(sizes.max()!)
        var padded = [Double](repeating: 0, count: maxSize)
        for (i, b) in mine.enumerated() { padded[i] = Double(b) }
        let all = try comm.allgather(padded)
        if comm.rank == 0 {
            var merged: [[String: Any]] = []
            for r in 0..<P {
                let bytes = all[(r * maxSize)..<(r * maxSize + Int(sizes[r]))].map { UInt8($0) }
                merged += (try JSONSerialization.jsonObject(with: Data(bytes)) as? [[String: Any]]) ?? []
            }
            try write(merged)
        }
        sizes.removeAll()
    }
}
