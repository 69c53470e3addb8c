import AttentionTensor
import Foundation
import LongAttention
import SequenceParallel
import SwiftMPI

/// What one rank measured in a ring pass.
public struct RingStatistics: Sendable, Codable {
    /// Wall time of the pass on this rank.
    public var seconds = 0.0
    /// Time in attention kernels (block forward/backward and merges).
    public var computeSeconds = 0.0
    /// Time blocked in waits for messages after the step's computation was done: communication
    /// that was not hidden behind compute (plus waiting for a slower peer).
    public var waitSeconds = 0.0
    /// Bytes this rank sent round the ring.
    public var bytesSent = 0
    public var messages = 0
    /// Key blocks computed and skipped (fully masked) by this rank.
    public var blocksComputed = 0, blocksSkipped = 0
    /// Bytes of the ring's K/V (and, backward, dK/dV) buffers this rank allocated.
    public var bufferBytes = 0
    /// Seconds waited at the end of each step (after its computation), step by step; the
    /// backward adds one entry, the wait for this rank's own dK/dV coming home.
    public var stepWaits: [Double] = []
    /// Seconds the computing thread spent stopping the step's background poller (included in
    /// ``computeSeconds``; transfers progress on that thread while the step computes, see
    /// ``SwiftMPI/BackgroundProgress``).
    public var progressSeconds = 0.0
    /// The same, step by step.
    public var stepProgress: [Double] = []

    public init() {}
}

/// Ring attention (Liu et al. 2023) over an MPI communicator: each of the `P` ranks holds a shard
/// of the queries, keys and values (``ShardedTensor``; zigzag under a causal mask, see
/// ``SequenceParallel/SequenceShards``). K/V blocks travel round the ring — each step the rank
/// posts the non-blocking send of the block it holds and the receive of the next one, then
/// computes its queries against the block it holds while a background thread progresses the
/// transfers (``SwiftMPI/BackgroundProgress``; MPI calls one thread at a time), with
/// ``LongAttention/attentionBlockForward(queries:keys:values:scale:causal:queryPosition:keyPosition:keyLengths:threads:)``
/// per pair of chunks (fully masked pairs skipped), and
/// merges the partial results with the (max, sum, output) rule. After `P` steps every rank has its
/// queries' exact output, equal to single-process attention to float32 rounding.
///
/// Memory per rank: its shards (1/P of q, k, v) plus two ring buffers of one block each (the block
/// being computed and the one arriving), allocated once per call.
///
/// The backward passes dK/dV accumulators round the ring with their blocks (FlashAttention-2's
/// block backward with the rows' merged log-sum-exp).
public struct RingAttention: Sendable {
    public let comm: Communicator
    /// Worker threads per rank (default: all cores).
    public var threads: Int?

    public init(comm: Communicator, threads: Int? = nil) {
        self.comm = comm
        self.threads = threads
    }

    /// One block of the ring: the owner's chunk ranges and their K/V views in a buffer.
    struct Block {
        let ranges: [Range<Int>]
        let keys: [Tensor], values: [Tensor]
    }

    /// K/V block geometry: per rank, floats of its block (`Σ_chunks B·Hkv·len·(d + dv)`).
    struct Geometry {
        let keyShards: SequenceShards
        let B: Int, Hkv: Int, d: Int, dv: Int
        func floats(owner: Int) -> Int { B * Hkv * keyShards.count(rank: owner) * (d + dv) }
        var maxFloats: Int { (0..<keyShards.ranks).map { floats(owner: $0) }.max() ?? 0 }

        /// Views of `owner`'s block in `buffer` (a 1-D tensor): per chunk, keys then values.
        func block(owner: Int, in buffer: Tensor) throws -> Block {
            var offset = 0
            var keys: [Tensor] = [], values: [Tensor] = []
            let ranges = keyShards.ranges(rank: owner)
            for r in ranges {
                let kn = B * Hkv * r.count * d, vn = B * Hkv * r.count * dv
                keys.append(try buffer.slice(axis: 0, offset..<(offset + kn)).reshaped([B, Hkv, r.count, d]))
                offset += kn
                values.append(try buffer.slice(axis: 0, offset..<(offset + vn)).reshaped([B, Hkv, r.count, dv]))
                offset += vn
            }
            return Block(ranges: ranges, keys: keys, values: values)
        }

        /// Copies this rank's key and value chunks into `buffer` in block order.
        func pack(keys: [Tensor], values: [Tensor], into p: UnsafeMutablePointer<Float>) {
            var offset = 0
            for (k, v) in zip(keys, values) {
                let kc = k.contiguous(), vc = v.contiguous()
                (p + offset).update(from: kc.unsafeBaseAddress, count: kc.count)
                offset += kc.count
                (p + offset).update(from: vc.unsafeBaseAddress, count: vc.count)
                offset += vc.count
                withExtendedLifetime((kc, vc)) {}
            }
        }
    }

    /// Message tags of a ring step: K/V blocks and dK/dV accumulators in disjoint sets (even and
    /// odd) at every ring size.
    static func keyValueTag(step: Int) -> Int { tagBase + 2 * step }
    static func gradientTag(step: Int) -> Int { tagBase + 2 * step + 1 }
    static let tagBase = 100

    /// The backward's extra arguments, checked with the rest.
    struct SavedForward {
        let output: ShardedTensor, logSumExp: [Tensor], outputGradient: ShardedTensor
    }

    /// Checks one sharded argument against this communicator and its chunk shapes
    /// `[B, heads, len, width]` (B, heads and width those of its first chunk).
    func checkSharding(_ name: String, _ t: ShardedTensor) throws {
        guard t.shards.ranks == comm.size, t.rank == comm.rank else {
            throw AttentionError.shapeMismatch(tensor: name, shape: t.chunks.first?.shape ?? [], expected: "sharding for rank \(comm.rank) of \(comm.size) (it is for rank \(t.rank) of \(t.shards.ranks))")
        }
        let ranges = t.ranges
        guard t.chunks.count == ranges.count else {
            throw AttentionError.shapeMismatch(tensor: "\(name) chunks", shape: [t.chunks.count], expected: "\(ranges.count) chunks, as the \(t.shards.layout) sharding gives rank \(t.rank)")
        }
        guard let first = t.chunks.first, first.rank == 4 else {
            throw AttentionError.wrongRank(name: name, expected: 4, shape: t.chunks.first?.shape ?? [])
        }
        for (c, r) in zip(t.chunks, ranges) where c.shape != [first.shape[0], first.shape[1], r.count, first.shape[3]] {
            throw AttentionError.shapeMismatch(tensor: "the chunk of \(name) for positions \(r)", shape: c.shape, expected: "\([first.shape[0], first.shape[1], r.count, first.shape[3]])")
        }
    }

    /// Largest magnitude of a sharded tensor's chunks; throws on NaN/Inf, naming the whole tensor's index.
    func scan(_ name: String, _ t: ShardedTensor) throws -> Float {
        var m: Float = 0
        for (c, r) in zip(t.chunks, t.ranges) {
            let s = c.scanValues()
            if let i = s.invalidIndex { throw AttentionError.nonFinite(name: name, index: [i[0], i[1], i[2] + r.lowerBound, i[3]]) }
            m = max(m, s.maxMagnitude)
        }
        return m
    }

    /// Everything a block call could refuse, checked on every rank before the first message, and
    /// agreed on in one small all-reduce: if any rank refuses its inputs every rank throws (the
    /// refusing rank its own error) and the communicator stays usable. Checks the shardings (this
    /// communicator, chunk counts and shapes), the shapes (``LongAttention/AttentionShape``), key
    /// lengths in `0...M`, a finite scale, NaN/Inf in every shard, that the ranks agree on the
    /// problem (sizes, layouts, mask, scale, key lengths), and the float32 overflow bounds of the
    /// whole problem (largest magnitudes over all ranks; they bound every block's).
    func validate(queries: ShardedTensor, keys: ShardedTensor, values: ShardedTensor, scale: Float?, causal: Bool,
                  keyLengths: [Int]?, saved: SavedForward? = nil) throws -> Geometry {
        var shape = AttentionShape(B: 0, H: 0, Hkv: 0, N: 0, M: 0, d: 0, dv: 0)
        var magnitudes: [Double] = [0, 0, 0, 0]
        var localError: Error? = nil
        do {
            try checkSharding("queries", queries)
            try checkSharding("keys", keys)
            try checkSharding("values", values)
            guard keys.shards == values.shards else {
                throw AttentionError.shapeMismatch(tensor: "values", shape: [values.shards.length], expected: "sharded as the keys (\(keys.shards.layout) over \(keys.shards.length) positions)")
            }
            shape = try AttentionShape(queries: queries.chunks[0], keys: keys.chunks[0], values: values.chunks[0])
            shape.N = queries.shards.length
            shape.M = keys.shards.length
            if let threads, threads < 1 { throw AttentionError.invalidArgument(name: "threads", value: "\(threads)", expected: "at least 1") }
            if let scale, !scale.isFinite { throw AttentionError.invalidArgument(name: "scale", value: "\(scale)", expected: "a finite number") }
            if let keyLengths {
                guard keyLengths.count == shape.B else {
                    throw AttentionError.shapeMismatch(tensor: "keyLengths", shape: [keyLengths.count], expected: "one length per sequence (B = \(shape.B))")
                }
                if let bad = keyLengths.first(where: { $0 < 0 || $0 > shape.M }) {
                    throw AttentionError.invalidArgument(name: "keyLengths", value: "\(bad)", expected: "a length in 0...\(shape.M)")
                }
            }
            magnitudes[0] = Double(try scan("queries", queries))
            magnitudes[1] = Double(try scan("keys", keys))
            magnitudes[2] = Double(try scan("values", values))
            if let saved {
                try checkSharding("output", saved.output)
                try checkSharding("outputGradient", saved.outputGradient)
                let outputShape = [shape.B, shape.H, shape.N, shape.dv]
                for (name, t) in [("output", saved.output), ("outputGradient", saved.outputGradient)] {
                    guard t.shards == queries.shards, t.chunks[0].shape[0] == shape.B, t.chunks[0].shape[1] == shape.H,
                          t.chunks[0].shape[3] == shape.dv else {
                        throw AttentionError.shapeMismatch(tensor: name, shape: t.chunks[0].shape, expected: "chunks sharded as the queries with the output's shape \(outputShape) (got \(t.shards.length) positions)")
                    }
                }
                guard saved.logSumExp.count == queries.ranges.count else {
                    throw AttentionError.shapeMismatch(tensor: "logSumExp chunks", shape: [saved.logSumExp.count], expected: "one per query chunk (\(queries.ranges.count))")
                }
                for (l, r) in zip(saved.logSumExp, queries.ranges) where l.shape != [shape.B, shape.H, r.count] {
                    throw AttentionError.shapeMismatch(tensor: "the logSumExp chunk for query positions \(r)", shape: l.shape, expected: "\([shape.B, shape.H, r.count])")
                }
                magnitudes[3] = Double(try scan("outputGradient", saved.outputGradient))
            }
        } catch {
            localError = error
        }
        // One all-reduce (max): the lowest refusing rank, the largest magnitudes, and every value
        // the ranks must share as (x, -x) pairs (equal on all ranks iff max(x) == -max(-x)).
        let lengths = keyLengths ?? []
        let shared: [(String, Double)] = [
            ("B", Double(shape.B)), ("H", Double(shape.H)), ("Hkv", Double(shape.Hkv)), ("d", Double(shape.d)),
            ("dv", Double(shape.dv)), ("N", Double(shape.N)), ("M", Double(shape.M)),
            ("the query layout", queries.shards.layout == .zigzag ? 1 : 0),
            ("the key layout", keys.shards.layout == .zigzag ? 1 : 0), ("causal", causal ? 1 : 0),
            ("the scale", Double(scale ?? 0)), ("whether a scale is given", scale == nil ? 0 : 1),
            ("whether key lengths are given", keyLengths == nil ? 0 : 1),
        ]
        var packed = [localError == nil ? 0 : Double(comm.size - comm.rank)] + magnitudes
        for (_, x) in shared { packed += localError == nil ? [x, -x] : [-.infinity, -.infinity] }
        try comm.allreduce(&packed, .max)
        if packed[0] > 0 {
            let failing = comm.size - Int(packed[0])
            if let localError, failing == comm.rank { throw localError }
            throw AttentionError.rankRefused(rank: failing, ranks: comm.size, operation: "its ring attention inputs")
        }
        for (i, (name, _)) in shared.enumerated() where packed[5 + 2 * i] != -packed[6 + 2 * i] {
            throw AttentionError.ranksDisagree(value: name, lowest: "\(-packed[6 + 2 * i])", highest: "\(packed[5 + 2 * i])")
        }
        // The key lengths themselves, element by element (a count and sums let [2, 0, 2] pass for
        // [1, 2, 1]): a second all-reduce, of B pairs, now that every rank has B lengths.
        if !lengths.isEmpty {
            var pairs = lengths.flatMap { [Double($0), -Double($0)] }
            try comm.allreduce(&pairs, .max)
            if let b = lengths.indices.first(where: { pairs[2 * $0] != -pairs[2 * $0 + 1] }) {
                throw AttentionError.ranksDisagree(value: "keyLengths[\(b)]", lowest: "\(Int(-pairs[2 * b + 1]))", highest: "\(Int(pairs[2 * b]))")
            }
        }
        // The whole problem's float32 bounds (as the single-process call checks them).
        let (maxQ, maxK, maxV, maxDO) = (packed[1], packed[2], packed[3], packed[4])
        let s = shape
        let effectiveScale = Double(abs(scale ?? 1 / Float(s.d).squareRoot()))
        let limit = Double(sign: .plus, exponent: 124, significand: 1)
        let scores = effectiveScale * Double(s.d) * maxQ * maxK
        if scores > limit {
            throw AttentionError.overflow(quantity: "the scores |scale|·d·max|q|·max|k|", bound: scores, limit: limit)
        }
        if Double(s.M) * maxV > limit {
            throw AttentionError.overflow(quantity: "the accumulated outputs M·max|v|", bound: Double(s.M) * maxV, limit: limit)
        }
        if saved != nil {
            let dS = 2 * Double(s.dv) * maxDO * maxV
            let bound = max(effectiveScale * Double(s.M) * dS * Double(s.d) * maxK,
                            Double(s.group) * Double(s.N) * dS * effectiveScale * Double(s.d) * maxQ,
                            Double(s.group) * Double(s.N) * maxDO)
            if bound > limit {
                throw AttentionError.overflow(quantity: "the gradients (from the inputs and the output gradient)", bound: bound, limit: limit)
            }
        }
        return Geometry(keyShards: keys.shards, B: s.B, Hkv: s.Hkv, d: s.d, dv: s.dv)
    }

    /// Exact attention of this rank's queries against every rank's keys (see the type's
    /// description). `queries` sharded over `N` positions, `keys`/`values` over `M`, all with
    /// ``SequenceParallel/SequenceShards`` of `P = comm.size` ranks; `causal` is bottom-right
    /// (query `i` sees key `j` iff `j <= i + M - N`); `keyLengths` (each in `0...M`) masks keys at
    /// positions `>= keyLengths[b]`. A row that sees no key outputs zeros (log-sum-exp -inf).
    /// Returns this rank's output chunks `[B, H, len, dv]`, their rows' log-sum-exp `[B, H, len]`
    /// (for the backward) and the rank's statistics. Every rank must call it.
    ///
    /// Errors: inputs are checked on every rank and agreed on before the first message (see
    /// `validate`), so a refused input throws the same way on every rank and the communicator
    /// stays usable. An error after that — mid-ring (an allocation that failed, an MPI error, a
    /// ``SwiftMPI/MPIError/timedOut(what:seconds:)`` because a peer died or failed) — leaves
    /// transfers pending and peers waiting: the ring stops its progress thread and keeps its
    /// buffers allocated for the rest of the process, but the communicator is unusable and the
    /// caller must end the job with ``SwiftMPI/MPI/abort(_:code:)`` (as the `attn dist` commands do).
    public func forward(queries: ShardedTensor, keys: ShardedTensor, values: ShardedTensor, scale: Float? = nil,
                        causal: Bool = false, keyLengths: [Int]? = nil)
        throws -> (output: ShardedTensor, logSumExp: [Tensor], statistics: RingStatistics) {
        let start = MPI.wtime()
        let geo = try validate(queries: queries, keys: keys, values: values, scale: scale, causal: causal, keyLengths: keyLengths)
        let P = comm.size, N = queries.shards.length, M = keys.shards.length
        let H = queries.chunks[0].shape[1]
        var stats = RingStatistics()
        var outputs = try queries.ranges.map { try Tensor(zeros: [geo.B, H, $0.count, geo.dv]) }
        var lses = try queries.ranges.map { try Tensor(filling: -.infinity, [geo.B, H, $0.count]) }
        let capacity = max(1, geo.maxFloats)
        var current = try Tensor(uninitialized: [capacity]), arriving = try Tensor(uninitialized: [capacity])
        var pCurrent = current.unsafeMutableBaseAddress(), pArriving = arriving.unsafeMutableBaseAddress()
        stats.bufferBytes = 2 * capacity * 4
        geo.pack(keys: keys.chunks, values: values.chunks, into: pCurrent)
        var poller: BackgroundProgress? = nil
        do {
            for step in 0..<P {
                let owner = (comm.rank - step + P) % P
                var requests = try startKeyValueExchange(step: step, geo: geo, sending: pCurrent, arriving: pArriving, stats: &stats)
                let block = try geo.block(owner: owner, in: current)
                let t0 = MPI.wtime()
                var polled = 0.0
                let stepPoller = BackgroundProgress(comm: comm, requests: requests)
                poller = stepPoller
                try forEachVisibleBlock(queries: queries.ranges, block: block, queryOffset: M - N, causal: causal,
                                        stats: &stats) { a, b, qpos, kpos in
                    let part = try attentionBlockForward(queries: queries.chunks[a], keys: block.keys[b], values: block.values[b],
                                                         scale: scale, causal: causal, queryPosition: qpos,
                                                         keyPosition: kpos, keyLengths: keyLengths, threads: threads)
                    try mergeAttentionBlock(output: &outputs[a], logSumExp: &lses[a], blockOutput: part.output,
                                            blockLogSumExp: part.logSumExp)
                }
                let tp = MPI.wtime()
                requests = try stepPoller.finish()
                poller = nil
                polled += MPI.wtime() - tp
                stats.computeSeconds += MPI.wtime() - t0
                stats.progressSeconds += polled
                stats.stepProgress.append(polled)
                let waited = try comm.wait(&requests, what: "ring step \(step)'s K/V exchange (block to rank \(comm.next), block from rank \(comm.previous))")
                stats.waitSeconds += waited
                stats.stepWaits.append(waited)
                swap(&current, &arriving)
                swap(&pCurrent, &pArriving)
            }
        } catch {
            // Transfers may be pending: no MPI call from the poller any more, and the buffers they
            // read and write stay allocated until the process ends (the caller aborts).
            poller?.stop()
            RingBufferQuarantine.keep([current, arriving])
            throw error
        }
        withExtendedLifetime((current, arriving)) {}
        stats.seconds = MPI.wtime() - start
        return (ShardedTensor(shards: queries.shards, rank: comm.rank, chunks: outputs), lses, stats)
    }

    /// Step `step`'s K/V exchange, started (none at the last step): the block held, which belongs
    /// to rank `(rank - step) mod P`, goes to the next rank while the previous rank's arrives.
    /// Shared by ``forward(queries:keys:values:scale:causal:keyLengths:)`` and the backward.
    func startKeyValueExchange(step: Int, geo: Geometry, sending: UnsafeMutablePointer<Float>,
                               arriving: UnsafeMutablePointer<Float>, stats: inout RingStatistics) throws -> [Request] {
        let P = comm.size
        guard step < P - 1 else { return [] }
        let owner = (comm.rank - step + P) % P
        let count = geo.floats(owner: owner), incoming = geo.floats(owner: (owner - 1 + P) % P)
        let requests = [try comm.isend(sending, count: count, to: comm.next, tag: Self.keyValueTag(step: step)),
                        try comm.irecv(arriving, count: incoming, from: comm.previous, tag: Self.keyValueTag(step: step))]
        stats.bytesSent += count * 4
        stats.messages += 1
        return requests
    }

    /// Calls `body(a, b, queryPosition, keyPosition)` for every pair of this rank's query chunk `a`
    /// and the held block's key chunk `b` that a query can see (every pair unless causal), and
    /// counts the pairs computed and skipped. Query row 0 sits at key position `queryOffset`.
    func forEachVisibleBlock(queries: [Range<Int>], block: Block, queryOffset: Int, causal: Bool,
                             stats: inout RingStatistics, _ body: (Int, Int, Int, Int) throws -> Void) throws {
        for (a, qr) in queries.enumerated() {
            for (b, kr) in block.ranges.enumerated() {
                let qpos = qr.lowerBound + queryOffset
                let vis = AttentionBlockVisibility(queryRows: qr.count, keyRows: kr.count, queryPosition: qpos,
                                                   keyPosition: kr.lowerBound, causal: causal)
                if vis == .none { stats.blocksSkipped += 1; continue }
                try body(a, b, qpos, kr.lowerBound)
                stats.blocksComputed += 1
            }
        }
    }

    /// Gradients of `L = Σ out ⊙ dOut` over the ring: this rank's dq chunks, and the dk/dv chunks
    /// of the keys it holds. `output` and `logSumExp` are this rank's results of ``forward(queries:keys:values:scale:causal:keyLengths:)``
    /// with the same inputs; `outputGradient` is sharded as the queries. K/V blocks travel as in the
    /// forward; each block's dK/dV accumulator travels one step behind it, gathering every rank's
    /// contribution (computed into a fresh buffer while the accumulator is in flight), and returns to
    /// the block's owner after `P` steps. Rows that see no key get zero dq. Every rank must call it;
    /// errors as in the forward (inputs agreed on before the ring; an error mid-ring leaves the
    /// communicator unusable and the caller must abort).
    public func backward(queries: ShardedTensor, keys: ShardedTensor, values: ShardedTensor, output: ShardedTensor,
                         logSumExp: [Tensor], outputGradient: ShardedTensor, scale: Float? = nil, causal: Bool = false,
                         keyLengths: [Int]? = nil)
        throws -> (queries: ShardedTensor, keys: ShardedTensor, values: ShardedTensor, statistics: RingStatistics) {
        let start = MPI.wtime()
        let geo = try validate(queries: queries, keys: keys, values: values, scale: scale, causal: causal, keyLengths: keyLengths,
                               saved: SavedForward(output: output, logSumExp: logSumExp, outputGradient: outputGradient))
        let P = comm.size, N = queries.shards.length, M = keys.shards.length
        var stats = RingStatistics()
        var dq = try queries.chunks.map { try Tensor(zeros: $0.shape) }
        let capacity = max(1, geo.maxFloats)
        // K/V: the block computed and the one arriving. dK/dV: the accumulator arriving, and two
        // outgoing buffers (a send may still be in flight while the next step fills the other).
        var current = try Tensor(uninitialized: [capacity]), arriving = try Tensor(uninitialized: [capacity])
        var gradIn = try Tensor(uninitialized: [capacity])
        var gradOut = [try Tensor(uninitialized: [capacity]), try Tensor(uninitialized: [capacity])]
        var pCurrent = current.unsafeMutableBaseAddress(), pArriving = arriving.unsafeMutableBaseAddress()
        let pGradIn = gradIn.unsafeMutableBaseAddress()
        let pGradOut = [gradOut[0].unsafeMutableBaseAddress(), gradOut[1].unsafeMutableBaseAddress()]
        stats.bufferBytes = 5 * capacity * 4
        geo.pack(keys: keys.chunks, values: values.chunks, into: pCurrent)
        var gradSends: [Request] = [.completed, .completed]
        var poller: BackgroundProgress? = nil
        do {
            for step in 0..<P {
                let owner = (comm.rank - step + P) % P
                let floats = geo.floats(owner: owner)
                var requests = try startKeyValueExchange(step: step, geo: geo, sending: pCurrent, arriving: pArriving, stats: &stats)
                var gradRecv: [Request] = []
                if step > 0 {
                    gradRecv.append(try comm.irecv(pGradIn, count: floats, from: comm.previous, tag: Self.gradientTag(step: step - 1)))
                }
                // This step's contribution to the block's dK/dV, in the outgoing buffer of this parity
                // (its send from two steps ago must be done).
                let slot = step % 2
                stats.waitSeconds += try comm.wait(&gradSends[slot], what: "an earlier dK/dV send to rank \(comm.next)")
                let contribution = pGradOut[slot]
                contribution.update(repeating: 0, count: floats)
                let block = try geo.block(owner: owner, in: current)
                let gradBlock = try geo.block(owner: owner, in: gradOut[slot])
                let t0 = MPI.wtime()
                var polled = 0.0
                let stepPoller = BackgroundProgress(comm: comm, requests: requests + gradRecv)
                poller = stepPoller
                try forEachVisibleBlock(queries: queries.ranges, block: block, queryOffset: M - N, causal: causal,
                                        stats: &stats) { a, b, qpos, kpos in
                    let g = try attentionBlockBackward(queries: queries.chunks[a], keys: block.keys[b], values: block.values[b],
                                                       output: output.chunks[a], logSumExp: logSumExp[a],
                                                       outputGradient: outputGradient.chunks[a], scale: scale, causal: causal,
                                                       queryPosition: qpos, keyPosition: kpos, keyLengths: keyLengths,
                                                       threads: threads)
                    dq[a].add(g.queries)
                    accumulate(UnsafeMutablePointer(mutating: gradBlock.keys[b].unsafeBaseAddress), g.keys.unsafeBaseAddress, g.keys.count)
                    accumulate(UnsafeMutablePointer(mutating: gradBlock.values[b].unsafeBaseAddress), g.values.unsafeBaseAddress, g.values.count)
                    withExtendedLifetime(g) {}
                }
                let tp = MPI.wtime()
                let handedBack = try stepPoller.finish()
                poller = nil
                requests = Array(handedBack.prefix(requests.count))
                gradRecv = Array(handedBack.suffix(gradRecv.count))
                polled += MPI.wtime() - tp
                stats.computeSeconds += MPI.wtime() - t0
                stats.progressSeconds += polled
                stats.stepProgress.append(polled)
                withExtendedLifetime(gradBlock) {}
                var waited = 0.0
                if step > 0 {
                    waited += try comm.wait(&gradRecv, what: "ring step \(step)'s dK/dV accumulator from rank \(comm.previous)")
                    accumulate(contribution, pGradIn, floats)
                }
                // On to the next rank; after the last step that is the block's owner.
                gradSends[slot] = try comm.isend(contribution, count: floats, to: comm.next, tag: Self.gradientTag(step: step))
                stats.bytesSent += floats * 4
                stats.messages += 1
                waited += try comm.wait(&requests, what: "ring step \(step)'s K/V exchange (block to rank \(comm.next), block from rank \(comm.previous))")
                stats.waitSeconds += waited
                stats.stepWaits.append(waited)
                swap(&current, &arriving)
                swap(&pCurrent, &pArriving)
            }
            // This rank's own block comes home with every rank's contribution.
            let own = geo.floats(owner: comm.rank)
            var home = [try comm.irecv(pGradIn, count: own, from: comm.previous, tag: Self.gradientTag(step: P - 1))]
            let homeWait = try comm.wait(&home, what: "the dK/dV of this rank's keys from rank \(comm.previous)")
            stats.waitSeconds += homeWait
            stats.stepWaits.append(homeWait)
            stats.stepProgress.append(0)
            stats.waitSeconds += try comm.wait(&gradSends, what: "the last dK/dV sends to rank \(comm.next)")
        } catch {
            // As in the forward: stop the poller, keep every buffer a pending transfer may touch.
            poller?.stop()
            RingBufferQuarantine.keep([current, arriving, gradIn] + gradOut)
            throw error
        }
        let finished = try geo.block(owner: comm.rank, in: gradIn)
        let dk = ShardedTensor(shards: keys.shards, rank: comm.rank, chunks: try finished.keys.map { try $0.contiguous().copied() })
        let dv = ShardedTensor(shards: values.shards, rank: comm.rank, chunks: try finished.values.map { try $0.contiguous().copied() })
        withExtendedLifetime((current, arriving, gradIn, gradOut)) {}
        stats.seconds = MPI.wtime() - start
        return (ShardedTensor(shards: queries.shards, rank: comm.rank, chunks: dq), dk, dv, stats)
    }
}

/// Buffers of a ring (or gather) that ended in an error while non-blocking transfers on them may
/// still be pending: kept allocated for the rest of the process (which is about to be aborted),
/// so that MPI never writes into, or reads from, freed memory.
enum RingBufferQuarantine {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var kept: [Tensor] = []
    static func keep(_ buffers: [Tensor]) {
        lock.lock()
        kept += buffers
        lock.unlock()
    }
}

extension Tensor {
    /// A copy with its own storage (a view of a ring buffer must not outlive the buffer's reuse).
    func copied() throws -> Tensor {
        var t = try Tensor(uninitialized: shape)
        let src = contiguous()
        t.unsafeMutableBaseAddress().update(from: src.unsafeBaseAddress, count: count)
        withExtendedLifetime(src) {}
        return t
    }
}
