import ArgumentParser
import AttentionTensor
import DistributedAttention
import Foundation
import LongAttention
import SequenceParallel
import SwiftMPI

/// `attn dist ...`: the distributed commands, run under `mpirun -np P`. Each rank reads the same
/// `.npy` inputs as `attn run`/`attn grad`, keeps its shard, and rank 0 writes the gathered result.
public struct Dist: ParsableCommand {
    public init() {}
    public static let configuration = CommandConfiguration(
        commandName: "dist",
        abstract: "Sequence-parallel attention over MPI (run under mpirun -np P): ring attention, its gradients, linear attention by prefix scan; a pretrained model's generation and perplexity.",
        subcommands: [DistRun.self, DistGrad.self, DistGenerate.self, DistPerplexity.self, DistSelftest.self, DistBench.self])
}

/// Options every distributed command takes.
struct MPIOptions: ParsableArguments {
    @Option(help: "Seconds any wait for another rank may last before every rank is ended (MPI_Abort).")
    var timeout: Double = 300
    @Option(help: "Sequence split: zigzag (2P chunks, rank r holds r and 2P-1-r; default when causal) or contiguous.")
    var layout: SequenceShards.Layout?
    @Option(help: "Write this rank's ring statistics (JSON, one object per rank) here (rank 0 writes all).")
    var stats: String?
    @Option(help: .hidden) var debugKillRank: Int?
    @Option(help: .hidden) var debugHangRank: Int?

    func validate() throws {
        if !(timeout > 0) { throw ValidationError("--timeout must be positive") }
    }
}

extension SequenceShards.Layout: ExpressibleByArgument {}

/// Raised after the ranks agreed that one of them failed (that rank printed the message).
struct AgreedFailure: Error {}

/// MPI around a command: initialise, run `body` with the world communicator, finalise. An error
/// inside ``agree(_:_:)`` ends every rank cleanly with one message (from the lowest failing rank);
/// any other error (mid-ring) prints the rank's message and ends the job with `MPI_Abort`.
func withWorld(_ options: MPIOptions, _ body: (Communicator) throws -> Void) throws {
    try withWorld(timeout: options.timeout, body)
}

func withWorld(timeout: Double, _ body: (Communicator) throws -> Void) throws {
    do {
        try MPI.initialize()
    } catch {
        throw ValidationError("cannot initialise MPI (run under mpirun): \(error)")
    }
    let comm = try Communicator.world(timeout: timeout)
    do {
        try body(comm)
    } catch is AgreedFailure {
        MPI.finalize()
        Foundation.exit(1)
    } catch {
        MPI.abort("attn: error: rank \(comm.rank) of \(comm.size): \(message(error))")
    }
    MPI.finalize()
}

func message(_ error: Error) -> String {
    if let e = error as? ValidationError { return e.message }
    return String(describing: error)
}

/// Runs `work` on every rank and agrees on the outcome: if any rank failed, the lowest failing
/// rank prints its error (one line) and every rank throws ``AgreedFailure``.
func agree<T>(_ comm: Communicator, _ work: () throws -> T) throws -> T {
    var result: Result<T, Error>
    do { result = .success(try work()) } catch { result = .failure(error) }
    var failing: [Int64] = [Int64(comm.size)]
    if case .failure = result { failing[0] = Int64(comm.rank) }
    try comm.allreduce(&failing, .min)
    if failing[0] < comm.size {
        if failing[0] == comm.rank, case .failure(let e) = result {
            let prefix = comm.size > 1 ? "rank \(comm.rank) of \(comm.size): " : ""
            FileHandle.standardError.write(("attn: error: " + prefix + message(e) + "\n").data(using: .utf8)!)
        }
        throw AgreedFailure()
    }
    return try result.get()
}

/// Checks a shard for NaN/Inf, naming the whole tensor's index.
func checkFinite(_ name: String, _ t: ShardedTensor) throws {
    for (c, r) in zip(t.chunks, t.ranges) {
        if let i = c.scanValues().invalidIndex {
            throw AttentionError.nonFinite(name: name, index: [i[0], i[1], i[2] + r.lowerBound, i[3]])
        }
    }
}

/// The q, k, v inputs (as `attn run`).
struct DistQKV: ParsableArguments {
    @Option(name: .customLong("q"), help: "Queries, float32 .npy [B, H, N, d].") var q: String
    @Option(name: .customLong("k"), help: "Keys, float32 .npy [B, Hkv, M, d].") var k: String
    @Option(name: .customLong("v"), help: "Values, float32 .npy [B, Hkv, M, dv].") var v: String
    @Option(help: "Worker threads per rank (default: all cores).") var threads: Int?

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }
}

struct DistFullOptions: ParsableArguments {
    @Flag(help: "Bottom-right causal mask: query i sees key j iff j <= i + M - N.") var causal = false
    @Option(help: "Score scale (default 1/sqrt(d)).") var scale: Float?
    @Flag(exclusivity: .exclusive, help: "Accepted for attn run's syntax (the ring always runs the tiled kernel).")
    var implementation: Implementation = .automatic
    enum Implementation: String, EnumerableFlag {
        case automatic, tiled, materialized
        static func name(for value: Self) -> NameSpecification { value == .automatic ? .customLong("auto") : .long }
    }
    func validate() throws {
        if let scale, !scale.isFinite { throw ValidationError("--scale must be finite") }
    }
}

/// Reads q, k, v on every rank, checks them, and keeps this rank's shards.
func loadShards(_ io: DistQKV, comm: Communicator, causal: Bool, layout: SequenceShards.Layout?)
    throws -> (q: ShardedTensor, k: ShardedTensor, v: ShardedTensor) {
    try agree(comm) {
        let q = try Numpy.readTensor(io.q, rank: 4), k = try Numpy.readTensor(io.k, rank: 4), v = try Numpy.readTensor(io.v, rank: 4)
        let shape = try AttentionShape(queries: q, keys: k, values: v)
        let lay = layout ?? (causal ? .zigzag : .contiguous)
        let qs = SequenceShards(length: shape.N, ranks: comm.size, layout: lay)
        let ks = SequenceShards(length: shape.M, ranks: comm.size, layout: lay)
        let sq = try ShardedTensor(slicing: q, shards: qs, rank: comm.rank)
        let sk = try ShardedTensor(slicing: k, shards: ks, rank: comm.rank)
        let sv = try ShardedTensor(slicing: v, shards: ks, rank: comm.rank)
        try checkFinite("queries", sq)
        try checkFinite("keys", sk)
        try checkFinite("values", sv)
        return (sq, sk, sv)
    }
}

/// Every rank's statistics, gathered (a collective: every rank calls it); rows on rank 0, nil
/// elsewhere or without `path`. Written by ``writeStats(_:to:)`` inside the final agreement, so a
/// file that cannot be written ends every rank cleanly.
func gatherStats(_ stats: [RingStatistics], comm: Communicator, for path: String?) throws -> [[String: Double]]? {
    guard path != nil else { return nil }
    var mine = [Double]()
    for s in stats {
        mine += [s.seconds, s.computeSeconds, s.waitSeconds, Double(s.bytesSent), Double(s.messages),
                 Double(s.blocksComputed), Double(s.blocksSkipped), Double(s.bufferBytes)]
    }
    let all = try comm.allgather(mine)
    guard comm.rank == 0 else { return nil }
    let per = mine.count
    var rows: [[String: Double]] = []
    for r in 0..<comm.size {
        for (i, _) in stats.enumerated() {
            let x = Array(all[(r * per + i * 8)..<(r * per + i * 8 + 8)])
            rows.append(["rank": Double(r), "pass": Double(i), "seconds": x[0], "computeSeconds": x[1], "waitSeconds": x[2],
                         "bytesSent": x[3], "messages": x[4], "blocksComputed": x[5], "blocksSkipped": x[6], "bufferBytes": x[7]])
        }
    }
    return rows
}

/// Rank 0 writes the gathered statistics (no-op elsewhere).
func writeStats(_ rows: [[String: Double]]?, to path: String?) throws {
    guard let rows, let path else { return }
    let data = try JSONSerialization.data(withJSONObject: rows, options: [.prettyPrinted, .sortedKeys])
    try data.write(to: URL(fileURLWithPath: path), options: .atomic)
}

/// Test hooks: a rank that dies (SIGKILL) or stops answering (sleeps) just before the ring.
func killIfAsked(_ options: MPIOptions, _ comm: Communicator) {
    killIfAsked(kill: options.debugKillRank, hang: options.debugHangRank, comm)
}

func killIfAsked(kill killRank: Int?, hang: Int?, _ comm: Communicator) {
    if killRank == comm.rank { kill(getpid(), SIGKILL) }
    if hang == comm.rank { while true { sleep(60) } }
}

struct DistRun: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run", abstract: "A variant across ranks; rank 0 writes the gathered output.",
        subcommands: [DistRunFull.self, DistRunLinear.self])
}

struct DistRunFull: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "full", abstract: "Exact attention by ring attention (K/V blocks round the ring, merged by (max, sum, output)).")
    @OptionGroup var io: DistQKV
    @Option(name: [.customShort("o"), .customLong("output")], help: "Output .npy [B, H, N, dv], written by rank 0.") var output: String
    @OptionGroup var options: DistFullOptions
    @OptionGroup var mpi: MPIOptions

    func run() throws {
        try withWorld(mpi) { comm in
            let (q, k, v) = try loadShards(io, comm: comm, causal: options.causal, layout: mpi.layout)
            killIfAsked(mpi, comm)
            let ring = RingAttention(comm: comm, threads: io.threads)
            let result = try ring.forward(queries: q, keys: k, values: v, scale: options.scale, causal: options.causal)
            let whole = try result.output.gather(on: comm)
            let rows = try gatherStats([result.statistics], comm: comm, for: mpi.stats)
            try agree(comm) {
                if let whole { try Numpy.write(whole, to: output) }
                try writeStats(rows, to: mpi.stats)
            }
        }
    }
}

struct DistRunLinear: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "linear", abstract: "Linear attention across ranks: causal by an exclusive scan of the (S, z) state, else an all-reduce.")
    @OptionGroup var io: DistQKV
    @Option(name: [.customShort("o"), .customLong("output")], help: "Output .npy [B, H, N, dv], written by rank 0.") var output: String
    @Flag(help: "Causal (bottom-right).") var causal = false
    @Option(help: "Feature map: elu or relu (softmax and favor need every key's statistics first and are single-process only).")
    var featureMap: String = "elu"
    @Option(help: "Causal chunk size.") var chunkSize: Int = 64
    @OptionGroup var mpi: MPIOptions

    func validate() throws {
        if chunkSize < 1 { throw ValidationError("--chunk-size must be at least 1") }
        if featureMap != "elu" && featureMap != "relu" {
            throw ValidationError("--feature-map \(featureMap): attn dist run linear takes elu or relu")
        }
    }

    func run() throws {
        let map: LinearFeatureMap = featureMap == "relu" ? .relu : .elu
        try withWorld(mpi) { comm in
            let (q, k, v, N) = try agree(comm) { () -> (Tensor, Tensor, Tensor, Int) in
                let q = try Numpy.readTensor(io.q, rank: 4), k = try Numpy.readTensor(io.k, rank: 4), v = try Numpy.readTensor(io.v, rank: 4)
                let shape = try AttentionShape(queries: q, keys: k, values: v)
                let qs = SequenceShards(length: shape.N, ranks: comm.size, layout: .contiguous)
                let kr = try linearKeyRange(queries: qs, keys: shape.M, rank: comm.rank)
                let lq = try q.rows(qs.chunk(comm.rank)).contiguous(), lk = try k.rows(kr).contiguous(), lv = try v.rows(kr).contiguous()
                for (n, t) in [("queries", lq), ("keys", lk), ("values", lv)] {
                    if let i = t.scanValues().invalidIndex { throw AttentionError.nonFinite(name: n, index: i) }
                }
                return (lq, lk, lv, shape.N)
            }
            killIfAsked(mpi, comm)
            let (out, _) = try distributedLinearAttention(queries: q, keys: k, values: v, comm: comm, featureMap: map, causal: causal,
                                                         chunkSize: chunkSize, threads: io.threads)
            let qs = SequenceShards(length: N, ranks: comm.size, layout: .contiguous)
            let whole = try ShardedTensor(shards: qs, rank: comm.rank, chunks: [out]).gather(on: comm)
            try agree(comm) { if let whole { try Numpy.write(whole, to: output) } }
        }
    }
}


struct DistGrad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "grad", abstract: "Gradients across ranks; rank 0 writes the gathered dq, dk, dv.",
        subcommands: [DistGradFull.self])
}

struct DistGradFull: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "full", abstract: "Exact attention's gradients by the ring (dK/dV travel with their blocks).")
    @OptionGroup var io: DistQKV
    @Option(help: "Upstream gradient .npy [B, H, N, dv].") var dout: String
    @Option(help: "dL/dq output .npy.") var dq: String
    @Option(help: "dL/dk output .npy.") var dk: String
    @Option(help: "dL/dv output .npy.") var dv: String
    @Option(name: [.customShort("o"), .customLong("output")], help: "Also write the forward output here.") var output: String?
    @OptionGroup var options: DistFullOptions
    @OptionGroup var mpi: MPIOptions

    func validate() throws {
        let outs = [dq, dk, dv] + [output].compactMap { $0 }
        if Set(outs).count != outs.count { throw ValidationError("output files must differ: \(outs.joined(separator: ", "))") }
    }

    func run() throws {
        try withWorld(mpi) { comm in
            let (q, k, v) = try loadShards(io, comm: comm, causal: options.causal, layout: mpi.layout)
            let dO = try agree(comm) { () -> ShardedTensor in
                let g = try Numpy.readTensor(dout, rank: 4)
                guard g.shape == [q.chunks[0].shape[0], q.chunks[0].shape[1], q.shards.length, v.chunks[0].shape[3]] else {
                    throw AttentionError.shapeMismatch(tensor: "outputGradient \(dout)", shape: g.shape, expected: "the output's \([q.chunks[0].shape[0], q.chunks[0].shape[1], q.shards.length, v.chunks[0].shape[3]])")
                }
                let s = try ShardedTensor(slicing: g, shards: q.shards, rank: comm.rank)
                try checkFinite("outputGradient", s)
                return s
            }
            killIfAsked(mpi, comm)
            let ring = RingAttention(comm: comm, threads: io.threads)
            let f = try ring.forward(queries: q, keys: k, values: v, scale: options.scale, causal: options.causal)
            let g = try ring.backward(queries: q, keys: k, values: v, output: f.output, logSumExp: f.logSumExp, outputGradient: dO,
                                      scale: options.scale, causal: options.causal)
            let wq = try g.queries.gather(on: comm, tag: 7000), wk = try g.keys.gather(on: comm, tag: 7100)
            let wv = try g.values.gather(on: comm, tag: 7200)
            let wo = output == nil ? nil : try f.output.gather(on: comm, tag: 7300)
            let rows = try gatherStats([f.statistics, g.statistics], comm: comm, for: mpi.stats)
            try agree(comm) {
                try writeStats(rows, to: mpi.stats)
                guard comm.rank == 0, let wq, let wk, let wv else { return }
                try Numpy.write(wq, to: dq)
                try Numpy.write(wk, to: dk)
                try Numpy.write(wv, to: dv)
                if let output, let wo { try Numpy.write(wo, to: output) }
            }
        }
    }
}
