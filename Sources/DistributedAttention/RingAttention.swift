import AttentionTensor
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

    func geometry(_ keys: ShardedTensor, _ values: ShardedTensor) throws -> Geometry {
        guard let k0 = keys.chunks.first, let v0 = values.chunks.first, k0.rank == 4, v0.rank == 4 else {
            throw AttentionError.invalidArgument("ring attention needs rank-4 key and value chunks")
        }
        guard keys.shards == values.shards, keys.shards.ranks == comm.size, keys.rank == comm.rank else {
            throw AttentionError.shapeMismatch("keys and values must be sharded alike over the \(comm.size) ranks")
        }
        for (k, v, r) in zip(zip(keys.chunks, values.chunks), keys.ranges).map({ ($0.0, $0.1, $1) }) {
            guard k.shape == [k0.shape[0], k0.shape[1], r.count, k0.shape[3]], v.shape == [k0.shape[0], k0.shape[1], r.count, v0.shape[3]] else {
                throw AttentionError.shapeMismatch("key chunk \(k.shape) / value chunk \(v.shape) for positions \(r)")
            }
        }
        return Geometry(keyShards: keys.shards, B: k0.shape[0], Hkv: k0.shape[1], d: k0.shape[3], dv: v0.shape[3])
    }

    /// Exact attention of this rank's queries against every rank's keys (see the type's
    /// description). `queries` sharded over `N` positions, `keys`/`values` over `M`, all with
    /// ``SequenceParallel/SequenceShards`` of `P = comm.size` ranks; `causal` is bottom-right
    /// (query `i` sees key `j` iff `j <= i + M - N`); `keyLengths` masks keys at positions
    /// `>= keyLengths[b]`. Returns this rank's output chunks `[B, H, len, dv]`, their rows'
    /// log-sum-exp `[B, H, len]` (for the backward) and the rank's statistics. Every rank must call it.
    public func forward(queries: ShardedTensor, keys: ShardedTensor, values: ShardedTensor, scale: Float? = nil,
                        causal: Bool = false, keyLengths: [Int]? = nil)
        throws -> (output: ShardedTensor, logSumExp: [Tensor], statistics: RingStatistics) {
        let start = MPI.wtime()
        let geo = try geometry(keys, values)
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
        for step in 0..<P {
            let owner = (comm.rank - step + P) % P
            var requests: [Request] = []
            if step < P - 1 {
                let sending = geo.floats(owner: owner), incoming = geo.floats(owner: (owner - 1 + P) % P)
                requests.append(try comm.isend(pCurrent, count: sending, to: comm.next, tag: 100 + step))
                requests.append(try comm.irecv(pArriving, count: incoming, from: comm.previous, tag: 100 + step))
                stats.bytesSent += sending * 4
                stats.messages += 1
            }
            let block = try geo.block(owner: owner, in: current)
            let t0 = MPI.wtime()
            var polled = 0.0
            let poller = BackgroundProgress(comm: comm, requests: requests)
            for (a, qr) in queries.ranges.enumerated() {
                for (b, kr) in block.ranges.enumerated() {
                    let qpos = qr.lowerBound + M - N
                    let vis = AttentionBlockVisibility(queryRows: qr.count, keyRows: kr.count, queryPosition: qpos,
                                                       keyPosition: kr.lowerBound, causal: causal)
                    if vis == .none { stats.blocksSkipped += 1; continue }
                    let part = try attentionBlockForward(queries: queries.chunks[a], keys: block.keys[b], values: block.values[b],
                                                         scale: scale, causal: causal, queryPosition: qpos,
                                                         keyPosition: kr.lowerBound, keyLengths: keyLengths, threads: threads)
                    try mergeAttentionBlock(output: &outputs[a], logSumExp: &lses[a], blockOutput: part.output,
                                            blockLogSumExp: part.logSumExp)
                    stats.blocksComputed += 1
                }
            }
            let tp = MPI.wtime()
            requests = try poller.finish()
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
        withExtendedLifetime((current, arriving)) {}
        stats.seconds = MPI.wtime() - start
        return (ShardedTensor(shards: queries.shards, rank: comm.rank, chunks: outputs), lses, stats)
    }

    /// Gradients of `L = Σ out ⊙ dOut` over the ring: this rank's dq chunks, and the dk/dv chunks
    /// of the keys it holds. `output` and `logSumExp` are this rank's results of ``forward(queries:keys:values:scale:causal:keyLengths:)``
    /// with the same inputs; `outputGradient` is sharded as the queries. K/V blocks travel as in the
    /// forward; each block's dK/dV accumulator travels one step behind it, gathering every rank's
    /// contribution (computed into a fresh buffer while the accumulator is in flight), and returns to
    /// the block's owner after `P` steps. Every rank must call it.
    public func backward(queries: ShardedTensor, keys: ShardedTensor, values: ShardedTensor, output: ShardedTensor,
                         logSumExp: [Tensor], outputGradient: ShardedTensor, scale: Float? = nil, causal: Bool = false,
                         keyLengths: [Int]? = nil)
        throws -> (queries: ShardedTensor, keys: ShardedTensor, values: ShardedTensor, statistics: RingStatistics) {
        let start = MPI.wtime()
        let geo = try geometry(keys, values)
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
        for step in 0..<P {
            let owner = (comm.rank - step + P) % P
            let floats = geo.floats(owner: owner)
            var requests: [Request] = []
            if step < P - 1 {
                let incoming = geo.floats(owner: (owner - 1 + P) % P)
                requests.append(try comm.isend(pCurrent, count: floats, to: comm.next, tag: 100 + step))
                requests.append(try comm.irecv(pArriving, count: incoming, from: comm.previous, tag: 100 + step))
                stats.bytesSent += floats * 4
                stats.messages += 1
            }
            var gradRecv: [Request] = []
            if step > 0 {
                gradRecv.append(try comm.irecv(pGradIn, count: floats, from: comm.previous, tag: 300 + step - 1))
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
            let poller = BackgroundProgress(comm: comm, requests: requests + gradRecv)
            for (a, qr) in queries.ranges.enumerated() {
                for (b, kr) in block.ranges.enumerated() {
                    let qpos = qr.lowerBound + M - N
                    let vis = AttentionBlockVisibility(queryRows: qr.count, keyRows: kr.count, queryPosition: qpos,
                                                       keyPosition: kr.lowerBound, causal: causal)
                    if vis == .none { stats.blocksSkipped += 1; continue }
                    let g = try attentionBlockBackward(queries: queries.chunks[a], keys: block.keys[b], values: block.values[b],
                                                       output: output.chunks[a], logSumExp: logSumExp[a],
                                                       outputGradient: outputGradient.chunks[a], scale: scale, causal: causal,
                                                       queryPosition: qpos, keyPosition: kr.lowerBound, keyLengths: keyLengths,
                                                       threads: threads)
                    dq[a].add(g.queries)
                    accumulate(UnsafeMutablePointer(mutating: gradBlock.keys[b].unsafeBaseAddress), g.keys.unsafeBaseAddress, g.keys.count)
                    accumulate(UnsafeMutablePointer(mutating: gradBlock.values[b].unsafeBaseAddress), g.values.unsafeBaseAddress, g.values.count)
                    withExtendedLifetime(g) {}
                    stats.blocksComputed += 1
                }
            }
            let tp = MPI.wtime()
            let handedBack = try poller.finish()
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
            gradSends[slot] = try comm.isend(contribution, count: floats, to: comm.next, tag: 300 + step)
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
        var home = [try comm.irecv(pGradIn, count: own, from: comm.previous, tag: 300 + P - 1)]
        let homeWait = try comm.wait(&home, what: "the dK/dV of this rank's keys from rank \(comm.previous)")
        stats.waitSeconds += homeWait
        stats.stepWaits.append(homeWait)
        stats.stepProgress.append(0)
        stats.waitSeconds += try comm.wait(&gradSends, what: "the last dK/dV sends to rank \(comm.next)")
        let finished = try geo.block(owner: comm.rank, in: gradIn)
        let dk = ShardedTensor(shards: keys.shards, rank: comm.rank, chunks: try finished.keys.map { try $0.contiguous().copied() })
        let dv = ShardedTensor(shards: values.shards, rank: comm.rank, chunks: try finished.values.map { try $0.contiguous().copied() })
        withExtendedLifetime((current, arriving, gradIn, gradOut)) {}
        stats.seconds = MPI.wtime() - start
        return (ShardedTensor(shards: queries.shards, rank: comm.rank, chunks: dq), dk, dv, stats)
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
